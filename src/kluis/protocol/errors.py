"""Errors of the protocol core.

One base class; the two branches keep apart who is at fault (h11's split)::

    KluisProtocolError
    ├── LocalProtocolError          the caller misused the API (a bug on our side)
    │   └── KeyExhausted            no one-time prekey / envelope key left to hand out
    └── RemoteProtocolError         the peer or the wire sent something we reject
        ├── DecodeError             malformed bytes; carries a DecodeReason
        ├── UnsupportedVersion      a version byte we do not speak
        ├── BadSignature            a signed key or bundle does not verify
        ├── PreKeyNotFound          the handshake names a prekey we do not hold (used or never made)
        ├── EnvelopeKeyUnknown      an envelope sealed to a key we do not hold (erased or never made)
        ├── DecryptionError         authentication failed (opaque on purpose, like Fernet's InvalidToken)
        ├── IdentityMismatch        the envelope names one sender identity, the session another
        ├── DuplicateMessage        a ratchet message already decrypted (replay)
        └── TooManySkipped          a message would skip more keys than the bounds allow

Messages never contain key bytes, plaintext or account ids: they name what failed, not with what.
"""

from __future__ import annotations

import enum


class KluisProtocolError(Exception):
    """Base of every error raised by ``kluis.protocol``."""


class LocalProtocolError(KluisProtocolError):
    """The caller used the API wrongly; not the peer's fault."""


class KeyExhausted(LocalProtocolError):
    """A key store has nothing left to give (e.g. all one-time prekeys consumed)."""


class RemoteProtocolError(KluisProtocolError):
    """Input from the peer or the wire was rejected. The local state is unchanged."""


class DecodeReason(enum.Enum):
    """Why bytes failed to parse; tests assert the reason."""

    TRUNCATED = "truncated"
    TRAILING_BYTES = "trailing bytes"
    TOO_LONG = "length over bound"
    BAD_TAG = "unknown type tag"
    BAD_VALUE = "value out of range"
    BAD_KEY = "not a valid public key"
    BAD_PADDING = "bad padding"


class DecodeError(RemoteProtocolError):
    """Malformed bytes."""

    def __init__(self, what: str, reason: DecodeReason) -> None:
        super().__init__(f"cannot decode {what}: {reason.value}")
        self.what = what
        self.reason = reason


class UnsupportedVersion(RemoteProtocolError):
    """A structure carries a version this implementation does not speak."""

    def __init__(self, what: str, version: int) -> None:
        super().__init__(f"unsupported {what} version {version}")
        self.what = what
        self.version = version


class BadSignature(RemoteProtocolError):
    """A signature over a published key does not verify."""

    def __init__(self, what: str) -> None:
        super().__init__(f"bad signature on {what}")
        self.what = what


class PreKeyNotFound(RemoteProtocolError):
    """The initial message names a prekey we do not hold: already consumed, or never ours."""

    def __init__(self, kind: str, key_id: int) -> None:
        super().__init__(f"{kind} prekey {key_id} not available")
        self.kind = kind
        self.key_id = key_id


class EnvelopeKeyUnknown(RemoteProtocolError):
    """An envelope is sealed to an envelope key we do not hold (erased after rotation, or never ours)."""

    def __init__(self, key_id: int) -> None:
        super().__init__(f"envelope key {key_id} not available")
        self.key_id = key_id


class DecryptionError(RemoteProtocolError):
    """Authentication failed. Deliberately opaque: forged, corrupted and mis-keyed look the same."""

    def __init__(self, what: str = "message") -> None:
        super().__init__(f"cannot decrypt {what}")
        self.what = what


class IdentityMismatch(RemoteProtocolError):
    """The sealed envelope's sender identity is not the identity of the session the message is for.

    The envelope does not authenticate its sender; the session does. A message is accepted only when
    both name the same identity, so nobody can speak under another contact's name.
    """

    def __init__(self) -> None:
        super().__init__("sender identity does not match the session")


class DuplicateMessage(RemoteProtocolError):
    """A ratchet message whose key was already used: a replay or a duplicate delivery."""

    def __init__(self, counter: int) -> None:
        super().__init__(f"duplicate message (counter {counter})")
        self.counter = counter


class TooManySkipped(RemoteProtocolError):
    """Accepting the message would store more skipped message keys than the bounds allow."""

    def __init__(self, requested: int, bound: int) -> None:
        super().__init__(f"message skips {requested} keys, bound is {bound}")
        self.requested = requested
        self.bound = bound


__all__ = [
    "BadSignature",
    "DecodeError",
    "DecodeReason",
    "DecryptionError",
    "DuplicateMessage",
    "EnvelopeKeyUnknown",
    "IdentityMismatch",
    "KeyExhausted",
    "KluisProtocolError",
    "LocalProtocolError",
    "PreKeyNotFound",
    "RemoteProtocolError",
    "TooManySkipped",
    "UnsupportedVersion",
]
