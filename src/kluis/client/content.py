"""What a conversation carries: the application content inside the ratchet plaintext (sans-I/O).

The Double Ratchet encrypts opaque bytes; this module gives them a meaning. Every content starts
with the same header, then a body chosen by the type byte (PROTOCOL.md §10.1)::

    u8 version (1) | u8 type | u8[16] message_id | u64 sent_at_ms | body

    TEXT      = 1  u32 timer_seconds | var32 text (UTF-8, 1..MAX_TEXT_BYTES)
    TIMER     = 2  u32 timer_seconds
    HELLO     = 3  u8[16] invite_id | u8[32] delivery_token | SignedPublicKey envelope_key | u32 timer
    KEYS      = 4  SignedPublicKey envelope_key
    DELIVERED = 5  u16 count (1..MAX_RECEIPTS) | count x u8[16] message_id

A timer is 0 (off) or MIN_TIMER..MAX_TIMER seconds. The envelope keys are parsed but not verified
here: only the caller knows the sender's identity to check the signature against.

Construction validates every field (``ValueError``), so :func:`encode` only ever sees well-formed
content; :func:`decode` maps the same violations to ``DecodeError(BAD_VALUE)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.keys import KeyKind, SignedPublicKey

CONTENT_VERSION = 1
MESSAGE_ID_LEN = 16
INVITE_ID_LEN = 16
TOKEN_LEN = 32
# 16,000 bytes of UTF-8 plus the header stay well under the ratchet's largest padding bucket
# (padding.MAX_PLAINTEXT = 65,535), so a text never fails later, at encryption.
MAX_TEXT_BYTES = 16_000
MIN_TIMER = 5
"""Shorter timers would delete a message before a slow client has shown it."""
MAX_TIMER = 28 * 86400
"""Four weeks: longer than the relay keeps an undelivered envelope, so longer timers mean nothing."""
MAX_RECEIPTS = 256
"""Receipts per DELIVERED message: bounds what a peer can make us process in one message."""
_MAX_U64 = 2**64 - 1
_WHAT = "content"


class ContentType(enum.IntEnum):
    TEXT = 1
    TIMER = 2
    HELLO = 3
    KEYS = 4
    DELIVERED = 5


def _check_timer(seconds: int) -> None:
    if seconds != 0 and not MIN_TIMER <= seconds <= MAX_TIMER:
        raise ValueError(f"timer must be 0 (off) or {MIN_TIMER}..{MAX_TIMER} seconds")


def _check_len(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")


def _check_header(message_id: bytes, sent_at_ms: int) -> None:
    _check_len(message_id, MESSAGE_ID_LEN, "message id")
    if not 0 <= sent_at_ms <= _MAX_U64:
        raise ValueError("sent_at_ms out of range")


def _check_envelope_key(key: SignedPublicKey) -> None:
    if key.kind is not KeyKind.ENVELOPE:
        raise ValueError("envelope key of the wrong kind")


def _text_bytes(text: str) -> bytes:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # The codec's message quotes the offending character: a piece of the plaintext.
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    if not 1 <= len(data) <= MAX_TEXT_BYTES:
        raise ValueError(f"text must be 1..{MAX_TEXT_BYTES} bytes of UTF-8")
    return data


@dataclass(frozen=True, slots=True, repr=False)
class Text:
    """A message the user wrote; ``timer_seconds`` is the disappearing timer it was sent under.

    Raises:
        ValueError: a field is out of range (on construction).
    """

    message_id: bytes
    sent_at_ms: int
    timer_seconds: int
    text: str

    def __post_init__(self) -> None:
        _check_header(self.message_id, self.sent_at_ms)
        _check_timer(self.timer_seconds)
        _text_bytes(self.text)

    def __repr__(self) -> str:
        return f"Text(.., {len(self.text)} chars, timer={self.timer_seconds})"


@dataclass(frozen=True, slots=True, repr=False)
class TimerChange:
    """The sender changed the conversation's disappearing timer (0 = off).

    Raises:
        ValueError: a field is out of range (on construction).
    """

    message_id: bytes
    sent_at_ms: int
    timer_seconds: int

    def __post_init__(self) -> None:
        _check_header(self.message_id, self.sent_at_ms)
        _check_timer(self.timer_seconds)

    def __repr__(self) -> str:
        return f"TimerChange(.., timer={self.timer_seconds})"


@dataclass(frozen=True, slots=True, repr=False)
class Hello:
    """An acceptor's first message to an inviter: what the inviter needs to write back.

    ``invite_id`` names the invite being answered (so it can be used only once), ``token`` is the
    acceptor's delivery token and ``envelope_key`` its current envelope key.

    Raises:
        ValueError: a field is out of range or the key is not an envelope key (on construction).
    """

    message_id: bytes
    sent_at_ms: int
    invite_id: bytes
    token: bytes
    envelope_key: SignedPublicKey
    timer_seconds: int

    def __post_init__(self) -> None:
        _check_header(self.message_id, self.sent_at_ms)
        _check_len(self.invite_id, INVITE_ID_LEN, "invite id")
        _check_len(self.token, TOKEN_LEN, "delivery token")
        _check_envelope_key(self.envelope_key)
        _check_timer(self.timer_seconds)

    def __repr__(self) -> str:
        return f"Hello(.., {self.envelope_key!r}, timer={self.timer_seconds})"


@dataclass(frozen=True, slots=True, repr=False)
class KeyUpdate:
    """The sender rotated its envelope key; seal to this one from now on.

    Raises:
        ValueError: a field is out of range or the key is not an envelope key (on construction).
    """

    message_id: bytes
    sent_at_ms: int
    envelope_key: SignedPublicKey

    def __post_init__(self) -> None:
        _check_header(self.message_id, self.sent_at_ms)
        _check_envelope_key(self.envelope_key)

    def __repr__(self) -> str:
        return f"KeyUpdate(.., {self.envelope_key!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Delivered:
    """Delivery receipts: the sender stored the messages with these ids.

    Raises:
        ValueError: no id, more than MAX_RECEIPTS ids, or an id of the wrong length (on construction).
    """

    message_id: bytes
    sent_at_ms: int
    ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_header(self.message_id, self.sent_at_ms)
        if not isinstance(self.ids, tuple) or not 1 <= len(self.ids) <= MAX_RECEIPTS:
            raise ValueError(f"a receipt names 1..{MAX_RECEIPTS} message ids")
        for value in self.ids:
            _check_len(value, MESSAGE_ID_LEN, "message id")

    def __repr__(self) -> str:
        return f"Delivered(.., {len(self.ids)} ids)"


Content: TypeAlias = Text | TimerChange | Hello | KeyUpdate | Delivered


def _header(kind: ContentType, message_id: bytes, sent_at_ms: int) -> Writer:
    return Writer().u8(CONTENT_VERSION).u8(kind).raw(message_id).u64(sent_at_ms)


def encode(content: Content) -> bytes:
    """The wire form of ``content`` (already validated when it was constructed).

    Raises:
        TypeError: ``content`` is not one of the content classes.
    """
    match content:
        case Text():
            w = _header(ContentType.TEXT, content.message_id, content.sent_at_ms)
            w.u32(content.timer_seconds).var32(_text_bytes(content.text))
        case TimerChange():
            w = _header(ContentType.TIMER, content.message_id, content.sent_at_ms)
            w.u32(content.timer_seconds)
        case Hello():
            w = _header(ContentType.HELLO, content.message_id, content.sent_at_ms)
            w.raw(content.invite_id).raw(content.token)
            content.envelope_key.write(w)
            w.u32(content.timer_seconds)
        case KeyUpdate():
            w = _header(ContentType.KEYS, content.message_id, content.sent_at_ms)
            content.envelope_key.write(w)
        case Delivered():
            w = _header(ContentType.DELIVERED, content.message_id, content.sent_at_ms)
            w.u16(len(content.ids))
            for value in content.ids:
                w.raw(value)
        case _:
            raise TypeError("not a content object")
    return w.getvalue()


def _read_text(r: Reader) -> str:
    data = r.var32(MAX_TEXT_BYTES)
    if not data:
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE) from None


def _read_ids(r: Reader) -> tuple[bytes, ...]:
    count = r.u16()
    # Bound the count before reading (or allocating for) any id.
    if not 1 <= count <= MAX_RECEIPTS:
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE)
    return tuple(r.raw(MESSAGE_ID_LEN) for _ in range(count))


def _read_body(r: Reader, kind: ContentType, message_id: bytes, sent_at_ms: int) -> Content:
    if kind is ContentType.TEXT:
        timer = r.u32()
        return Text(message_id, sent_at_ms, timer, _read_text(r))
    if kind is ContentType.TIMER:
        return TimerChange(message_id, sent_at_ms, r.u32())
    if kind is ContentType.HELLO:
        invite_id = r.raw(INVITE_ID_LEN)
        token = r.raw(TOKEN_LEN)
        key = SignedPublicKey.read(r)
        return Hello(message_id, sent_at_ms, invite_id, token, key, r.u32())
    if kind is ContentType.KEYS:
        return KeyUpdate(message_id, sent_at_ms, SignedPublicKey.read(r))
    return Delivered(message_id, sent_at_ms, _read_ids(r))


def decode(data: bytes) -> Content:
    """Parses one content from the whole of ``data``.

    Raises:
        UnsupportedVersion: a version byte other than 1.
        DecodeError: truncated, trailing bytes, an unknown type (BAD_TAG), a length over its bound
            (TOO_LONG), or a value out of range: a timer, an empty or non-UTF-8 text, a receipt
            count, a key that is not an envelope key (BAD_VALUE).
    """
    r = Reader(data, _WHAT)
    r.expect_version(CONTENT_VERSION)
    try:
        kind = ContentType(r.u8())
    except ValueError:
        raise DecodeError(_WHAT, DecodeReason.BAD_TAG) from None
    message_id = r.raw(MESSAGE_ID_LEN)
    sent_at_ms = r.u64()
    try:
        content = _read_body(r, kind, message_id, sent_at_ms)
    except ValueError:
        # The constructors' range checks (timer, key kind): the peer sent a value we do not accept.
        # DecodeError is not a ValueError, so the codec's own errors pass through untouched.
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE) from None
    r.done()
    return content


__all__ = [
    "CONTENT_VERSION",
    "MAX_RECEIPTS",
    "MAX_TEXT_BYTES",
    "MAX_TIMER",
    "MIN_TIMER",
    "Content",
    "ContentType",
    "Delivered",
    "Hello",
    "KeyUpdate",
    "Text",
    "TimerChange",
    "decode",
    "encode",
]
