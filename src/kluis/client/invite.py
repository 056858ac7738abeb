"""Single-use contact invites: everything a new contact needs to write to us first, as one URI.

An invite names the relay (URL and the pinned SHA-256 of its certificate), our account, our identity
key, our delivery token and a random invite id. Whoever holds it can fetch our bundle and send to
us, so it is handed over in person (QR code) or over a channel the user trusts; the acceptor's first
message (content.Hello) quotes the invite id, so the inviter can honour each invite once.

URI: ``kluis:invite/`` followed by the body in base64url without padding (RFC 4648 §5)::

    u8 version (1) | var16 server_url (ASCII, 1..255) | u8 fp_len (0 or 32) | fingerprint
    | u8[16] account | identity (IdentityPublicKey.to_bytes(), ENCODED_LEN bytes)
    | u8[32] delivery token | u8[16] invite id

A ``wss://`` URL must carry a fingerprint; a ``ws://`` URL (no TLS) must not, and must name a
loopback host, as the relay serves plain WebSocket only on loopback (``--insecure-loopback``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kluis.client.errors import ProfileError
from kluis.client.qr import qr_text
from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import BadSignature, DecodeError, UnsupportedVersion
from kluis.protocol.keys import IdentityPublicKey

INVITE_VERSION = 1
URI_PREFIX = "kluis:invite/"
MAX_URL_LEN = 255
FINGERPRINT_LEN = 32
ACCOUNT_LEN = 16
TOKEN_LEN = 32
INVITE_ID_LEN = 16
MAX_BODY_LEN = (
    1 + 2 + MAX_URL_LEN + 1 + FINGERPRINT_LEN + ACCOUNT_LEN + IdentityPublicKey.ENCODED_LEN + TOKEN_LEN
) + INVITE_ID_LEN
MAX_URI_LEN = len(URI_PREFIX) + math.ceil(MAX_BODY_LEN * 4 / 3)
"""Longer text is refused before anything is decoded."""
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
_WHAT = "invite"


class InvalidInvite(ProfileError):
    """The text is not a valid Kluis invite. The message says why in general terms, never quoting input."""

    title = "Invalid invite"

    def __init__(self, detail: str) -> None:
        super().__init__(f"not a valid Kluis invite: {detail}")
        self.detail = detail


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server(url: str, fingerprint: bytes | None) -> None:
    """Checks a relay address as invites and the panic file carry it.

    Raises:
        ValueError: the URL is not 1..255 printable ASCII characters, not ``ws://`` or ``wss://``,
            has no host, has user info, a query or a fragment, or a bad port; or the fingerprint
            does not fit the scheme (32 bytes for ``wss://``, None for a loopback ``ws://``).
    """
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL_LEN:
        raise ValueError(f"server URL must be 1..{MAX_URL_LEN} characters")
    # Printable ASCII only: the URL is shown to users, and control characters could drive a terminal.
    if not all("!" <= c <= "~" for c in url):
        raise ValueError("server URL must be printable ASCII without spaces")
    if not url.startswith(("ws://", "wss://")):
        raise ValueError("server URL must start with ws:// or wss://")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError:
        raise ValueError("server URL is malformed") from None
    # No user info: "wss://trusted.example@evil.example" must not read as trusted.example.
    if not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment or "#" in url:
        raise ValueError("server URL must be scheme://host[:port][/path]")
    if parts.scheme == "wss":
        if fingerprint is None or len(fingerprint) != FINGERPRINT_LEN:
            raise ValueError(f"a wss:// server needs its {FINGERPRINT_LEN}-byte certificate fingerprint")
    else:
        if fingerprint is not None:
            raise ValueError("a ws:// server has no certificate fingerprint")
        if not _is_loopback(parts.hostname):
            raise ValueError("ws:// (no TLS) is only for loopback test servers")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_len(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")


@dataclass(frozen=True, repr=False)
class Invite:
    """One invite. Everything in it is secret towards everyone but the intended contact.

    Raises:
        ValueError: a field is malformed (on construction; see :func:`check_server`).
    """

    server_url: str
    fingerprint: bytes | None
    account: bytes
    identity: IdentityPublicKey
    token: bytes
    invite_id: bytes

    def __post_init__(self) -> None:
        check_server(self.server_url, self.fingerprint)
        _check_len(self.account, ACCOUNT_LEN, "account id")
        _check_len(self.token, TOKEN_LEN, "delivery token")
        _check_len(self.invite_id, INVITE_ID_LEN, "invite id")

    def to_bytes(self) -> bytes:
        w = Writer().u8(INVITE_VERSION).var16(self.server_url.encode("ascii"))
        fingerprint = self.fingerprint or b""
        w.u8(len(fingerprint)).raw(fingerprint)
        w.raw(self.account).raw(self.identity.to_bytes()).raw(self.token).raw(self.invite_id)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Invite:
        """Parses the binary body (no URI prefix, no base64).

        Raises:
            InvalidInvite: malformed, an unknown version, or an identity whose binding does not verify.
        """
        if len(data) > MAX_BODY_LEN:
            raise InvalidInvite("too long")
        try:
            r = Reader(data, _WHAT)
            r.expect_version(INVITE_VERSION)
            url = r.var16(MAX_URL_LEN).decode("ascii")
            fp_len = r.u8()
            if fp_len not in (0, FINGERPRINT_LEN):
                raise InvalidInvite("bad server fingerprint")
            fingerprint = r.raw(fp_len) if fp_len else None
            account = r.raw(ACCOUNT_LEN)
            identity = IdentityPublicKey.from_bytes(r.raw(IdentityPublicKey.ENCODED_LEN))
            token = r.raw(TOKEN_LEN)
            invite_id = r.raw(INVITE_ID_LEN)
            r.done()
        except UnsupportedVersion:
            raise InvalidInvite("made by a newer version of Kluis") from None
        except BadSignature:
            raise InvalidInvite("the identity key does not verify") from None
        except (DecodeError, UnicodeDecodeError):
            raise InvalidInvite("damaged or incomplete") from None
        try:
            return cls(url, fingerprint, account, identity, token, invite_id)
        except ValueError:
            raise InvalidInvite("bad server address") from None

    def to_uri(self) -> str:
        return URI_PREFIX + _b64encode(self.to_bytes())

    @classmethod
    def from_uri(cls, text: str) -> Invite:
        """Parses an invite URI as :meth:`to_uri` writes it; surrounding whitespace is ignored.

        Raises:
            InvalidInvite: anything else (the message never quotes the input).
        """
        text = text.strip()
        if len(text) > MAX_URI_LEN:
            raise InvalidInvite("too long")
        # The scheme is case-insensitive (RFC 3986 §3.1); the base64 body is not.
        if text[: len(URI_PREFIX)].lower() != URI_PREFIX:
            raise InvalidInvite("not an invite link")
        payload = text[len(URI_PREFIX) :]
        if not _BASE64URL.fullmatch(payload) or len(payload) % 4 == 1:
            raise InvalidInvite("damaged or incomplete")
        try:
            body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError):
            raise InvalidInvite("damaged or incomplete") from None
        # One text per invite: unused low bits of the last character must be zero.
        if _b64encode(body) != payload:
            raise InvalidInvite("damaged or incomplete")
        return cls.from_bytes(body)

    def qr_text(self) -> str:
        """The URI as a QR code for the terminal (kluis.client.qr)."""
        return qr_text(self.to_uri())

    def __repr__(self) -> str:
        return "Invite(..)"


__all__ = ["MAX_URI_LEN", "URI_PREFIX", "InvalidInvite", "Invite", "check_server"]
