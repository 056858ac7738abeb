"""Errors of the client's profile storage (key slots, encrypted database, profile glue).

Hierarchy::

    ProfileError                 base; ``title`` is a short heading for the CLI and the TUI
    ├── WrongPassphrase          no slot opens with this passphrase; nothing was changed
    ├── PassphraseRejected       the caller asked for something unsafe (``reason`` says what)
    ├── ProfileExists            create() found a profile already there
    ├── KeySlotFormatError       the key-slot file is malformed or of an unknown version
    └── StoreError               the profile database cannot be opened or used
        └── WrongProfileKey      SQLCipher: "file is not a database" (wrong key or not ours)

Messages never contain passphrases, keys or file contents.
"""

from __future__ import annotations

import enum


class ProfileError(Exception):
    """Base of the client storage errors."""

    title = "Profile error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WrongPassphrase(ProfileError):
    """No key slot opens with this passphrase. The key-slot file is left exactly as it was."""

    title = "Wrong passphrase"

    def __init__(self) -> None:
        super().__init__("wrong passphrase")


class RejectReason(enum.Enum):
    EMPTY = "empty"
    SAME_AS_NORMAL = "same_as_normal"
    SAME_AS_DURESS = "same_as_duress"


class PassphraseRejected(ProfileError):
    """A new passphrase was refused (empty, or equal to the other passphrase of the profile)."""

    title = "Passphrase refused"

    def __init__(self, reason: RejectReason) -> None:
        super().__init__(f"passphrase refused: {reason.value.replace('_', ' ')}")
        self.reason = reason


class ProfileExists(ProfileError):
    title = "Profile exists"

    def __init__(self) -> None:
        super().__init__("a profile already exists here")


class KeySlotFormatError(ProfileError):
    """The key-slot file cannot be parsed: wrong size, magic, version or out-of-range parameters."""

    title = "Damaged profile"


class StoreError(ProfileError):
    title = "Profile database error"


class WrongProfileKey(StoreError):
    """SQLCipher could not decrypt the first page: wrong key, or not a Kluis profile database."""

    def __init__(self) -> None:
        super().__init__("the profile database cannot be decrypted with this key")


__all__ = [
    "KeySlotFormatError",
    "PassphraseRejected",
    "ProfileError",
    "ProfileExists",
    "RejectReason",
    "StoreError",
    "WrongPassphrase",
    "WrongProfileKey",
]


class ClientError(Exception):
    """Base of the messaging errors (the SDK's, shown by the CLI and the TUI as one line)."""

    title = "Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoProfile(ClientError):
    title = "No profile"

    def __init__(self) -> None:
        super().__init__("no profile here; create one with `kluis init`")


class UnknownContact(ClientError):
    title = "Unknown contact"

    def __init__(self) -> None:
        super().__init__("no contact of that name")


class ContactExists(ClientError):
    title = "Contact exists"

    def __init__(self) -> None:
        super().__init__("a contact of that name exists already; choose another name")


class ContactRevoked(ClientError):
    """The contact revoked its account (panic passphrase or certificate): nothing reaches it."""

    title = "Contact revoked"

    def __init__(self) -> None:
        super().__init__("the contact revoked its account; messages can no longer reach it")


class IdentityChanged(ClientError):
    """The contact's identity key changed; sending waits until the safety number is verified again."""

    title = "Identity changed"

    def __init__(self) -> None:
        super().__init__(
            "the contact's identity key changed: compare the new safety number and mark it verified "
            "before sending"
        )


class InviteRefused(ClientError):
    title = "Invite refused"


class ServerUnreachable(ClientError):
    title = "Server unreachable"

    def __init__(self) -> None:
        super().__init__("the server cannot be reached")


class ServerRefused(ClientError):
    """The server refused a request; ``code`` names why (from the relay's error codes)."""

    title = "Server refused"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
