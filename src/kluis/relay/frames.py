"""Relay frames: every message between a client and the relay server, in one schema module.

Each binary WebSocket message is one frame: ``u8 version (1) | u8 type | body``. Parsing follows
the fuzz contract: a frame parses, or raises ``DecodeError`` / ``UnsupportedVersion``; every
count and length is bounded before anything is allocated (docs/PROTOCOL.md §9 lists the layout).

Several envelopes, receipts or deliveries travel in one frame (up to ``MAX_BATCH``), because
per-frame framing cost dominates a Python relay (PERFORMANCE.md); each envelope is still stored
and acknowledged individually.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.keys import SIGNATURE_LEN, X25519_LEN, KeyKind, SignedPublicKey

FRAME_VERSION = 1

ACCOUNT_ID_LEN = 16
ENVELOPE_ID_LEN = 16
TOKEN_LEN = 32
NONCE_LEN = 32
PASS_LEN = 32

MAX_BATCH = 32
"""Envelopes per SEND or DELIVER frame (issue 3: busy clients coalesce up to 32)."""
MAX_ENVELOPE = 256 * 1024
"""Absolute bound on one envelope in a frame; the server's configured limit is lower (the largest
sealed envelope of protocol v1 is 132,213 bytes)."""
MAX_RECEIPTS = 1024
MAX_ONE_TIME_UPLOAD = 1000
MAX_KEM_UPLOAD = 200
MAX_ENVELOPE_KEYS = 8
MAX_ERROR_TEXT = 200


class FrameType(enum.IntEnum):
    # client -> server
    AUTH = 0x01
    OPEN_SEND = 0x02
    SEND = 0x03
    RECEIPT = 0x04
    UPLOAD_KEYS = 0x05
    GET_SEND_PASS = 0x06
    # server -> client
    CHALLENGE = 0x81
    AUTH_OK = 0x82
    SEND_RESULT = 0x83
    DELIVER = 0x84
    KEY_STOCK = 0x85
    SEND_PASS = 0x86
    ERROR = 0x87
    DRAINED = 0x88


class SendStatus(enum.IntEnum):
    """Per-envelope outcome in SEND_RESULT. Only OK means stored durably."""

    OK = 0
    REJECTED = 1  # unknown recipient or wrong delivery token: one code, so tokens cannot be probed
    REVOKED = 2  # the recipient revoked its account (the token was right)
    TOO_LARGE = 3
    RATE_LIMITED = 4
    UNAVAILABLE = 5  # storage failed: nothing stored, resend later


class ErrorCode(enum.IntEnum):
    """ERROR frame codes; the connection closes after any of them."""

    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    AUTH_FAILED = 3
    NOT_ALLOWED = 4  # a frame the connection's state does not allow
    SUBSCRIPTION_EXPIRED = 5
    REVOKED = 6
    RATE_LIMITED = 7
    TOO_LARGE = 8
    TIMEOUT = 9
    INTERNAL = 10
    BAD_KEYS = 11
    SHUTTING_DOWN = 12


# -- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    """Proves possession of the identity key: Ed25519 over ``AUTH_LABEL || nonce || account``."""

    account: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class OpenSend:
    """Opens an anonymous sending connection with the day's send pass (held by every subscriber)."""

    day: int
    send_pass: bytes


class OutgoingEnvelope(NamedTuple):
    """One envelope in a SEND frame. A NamedTuple, not a dataclass: it is built for every envelope
    on the relay's hot path, and tuple construction is several times cheaper."""

    envelope_id: bytes
    recipient: bytes
    token: bytes
    envelope: bytes

    def __repr__(self) -> str:
        return f"OutgoingEnvelope({len(self.envelope)} bytes, ..)"


@dataclass(frozen=True, slots=True)
class Send:
    envelopes: tuple[OutgoingEnvelope, ...]


@dataclass(frozen=True, slots=True)
class Receipt:
    """The client's store committed these deliveries; the server deletes them."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UploadKeys:
    """Prekeys and envelope keys for the directory; the server verifies every signature."""

    signed_prekey: SignedPublicKey | None
    last_resort: SignedPublicKey | None
    one_time: tuple[tuple[int, bytes], ...]
    kem: tuple[SignedPublicKey, ...]
    envelope_keys: tuple[SignedPublicKey, ...]  # newest first; replaces the published set if any


@dataclass(frozen=True, slots=True)
class GetSendPass:
    pass


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    today: int


@dataclass(frozen=True, slots=True)
class AuthOk:
    expires_day: int
    one_time_left: int
    kem_left: int


@dataclass(frozen=True, slots=True)
class SendResult:
    results: tuple[tuple[bytes, SendStatus], ...]


class Delivery(NamedTuple):
    """One envelope in a DELIVER frame (a NamedTuple: built for every delivery on the hot path)."""

    seq: int
    envelope_id: bytes
    envelope: bytes

    def __repr__(self) -> str:
        return f"Delivery(seq={self.seq}, {len(self.envelope)} bytes)"


@dataclass(frozen=True, slots=True)
class Deliver:
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class KeyStock:
    one_time_left: int
    kem_left: int


@dataclass(frozen=True, slots=True)
class SendPass:
    day: int
    send_pass: bytes

    def __repr__(self) -> str:
        return f"SendPass(day={self.day}, ..)"


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class Drained:
    """Everything stored for this mailbox when it connected has been sent."""

    last_seq: int


Frame = (
    Auth
    | OpenSend
    | Send
    | Receipt
    | UploadKeys
    | GetSendPass
    | Challenge
    | AuthOk
    | SendResult
    | Deliver
    | KeyStock
    | SendPass
    | Error
    | Drained
)

AUTH_LABEL = b"Kluis relay auth v1\x00"
_U32 = struct.Struct(">I")
_DELIVERY_HEAD = struct.Struct(f">Q{ENVELOPE_ID_LEN}sI")
_DELIVER_HEADS = [bytes((FRAME_VERSION, FrameType.DELIVER, n)) for n in range(MAX_BATCH + 1)]
_STATUS_BYTE = {status: bytes((status,)) for status in SendStatus}


def auth_message(nonce: bytes, account: bytes) -> bytes:
    """What AUTH signs: the label, the server's fresh nonce and the account id."""
    return AUTH_LABEL + nonce + account


# -- encoding ---------------------------------------------------------------------------------


def _head(kind: FrameType) -> Writer:
    return Writer().u8(FRAME_VERSION).u8(kind)


def _write_signed(w: Writer, key: SignedPublicKey | None) -> None:
    if key is None:
        w.u8(0)
    else:
        w.u8(1)
        key.write(w)


def packed_delivery(seq: int, envelope_id: bytes, envelope: bytes) -> bytes:
    """One delivery as a DELIVER frame carries it, for :func:`deliver_frame`. A busy relay packs each
    delivery as it queues it: no Delivery, Deliver or :func:`serialize` per delivery."""
    return _DELIVERY_HEAD.pack(seq, envelope_id, len(envelope)) + envelope


def deliver_frame(packed: list[bytes]) -> bytes:
    """A DELIVER frame of 1..MAX_BATCH deliveries packed by :func:`packed_delivery`."""
    return _DELIVER_HEADS[len(packed)] + b"".join(packed)


def serialize(frame: Frame) -> bytes:  # noqa: PLR0911, PLR0912 - one branch per frame type
    """The wire bytes of ``frame``."""
    if isinstance(frame, Send):
        w = _head(FrameType.SEND).u8(len(frame.envelopes))
        for e in frame.envelopes:
            w.raw(e.envelope_id).raw(e.recipient).raw(e.token).var32(e.envelope)
        return w.getvalue()
    if isinstance(frame, Deliver):
        return deliver_frame([packed_delivery(*delivery) for delivery in frame.deliveries])
    if isinstance(frame, SendResult):  # hot path, as DELIVER
        parts = [bytes((FRAME_VERSION, FrameType.SEND_RESULT, len(frame.results)))]
        for envelope_id, status in frame.results:
            parts += (envelope_id, _STATUS_BYTE[status])
        return b"".join(parts)
    if isinstance(frame, Receipt):
        w = _head(FrameType.RECEIPT).u16(len(frame.seqs))
        for seq in frame.seqs:
            w.u64(seq)
        return w.getvalue()
    if isinstance(frame, Auth):
        return _head(FrameType.AUTH).raw(frame.account).raw(frame.signature).getvalue()
    if isinstance(frame, OpenSend):
        return _head(FrameType.OPEN_SEND).u32(frame.day).raw(frame.send_pass).getvalue()
    if isinstance(frame, UploadKeys):
        w = _head(FrameType.UPLOAD_KEYS)
        _write_signed(w, frame.signed_prekey)
        _write_signed(w, frame.last_resort)
        w.u16(len(frame.one_time))
        for key_id, public in frame.one_time:
            w.u32(key_id).raw(public)
        w.u16(len(frame.kem))
        for key in frame.kem:
            key.write(w)
        w.u8(len(frame.envelope_keys))
        for key in frame.envelope_keys:
            key.write(w)
        return w.getvalue()
    if isinstance(frame, GetSendPass):
        return _head(FrameType.GET_SEND_PASS).getvalue()
    if isinstance(frame, Challenge):
        return _head(FrameType.CHALLENGE).raw(frame.nonce).u32(frame.today).getvalue()
    if isinstance(frame, AuthOk):
        w = _head(FrameType.AUTH_OK).u32(frame.expires_day)
        return w.u32(frame.one_time_left).u32(frame.kem_left).getvalue()
    if isinstance(frame, KeyStock):
        return _head(FrameType.KEY_STOCK).u32(frame.one_time_left).u32(frame.kem_left).getvalue()
    if isinstance(frame, SendPass):
        return _head(FrameType.SEND_PASS).u32(frame.day).raw(frame.send_pass).getvalue()
    if isinstance(frame, Error):
        text = frame.text.encode("ascii", "replace")[:MAX_ERROR_TEXT]
        return _head(FrameType.ERROR).u16(frame.code).var16(text).getvalue()
    return _head(FrameType.DRAINED).u64(frame.last_seq).getvalue()


# -- parsing ----------------------------------------------------------------------------------


def _count(r: Reader, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise DecodeError(r.what, DecodeReason.TOO_LONG if value > high else DecodeReason.BAD_VALUE)
    return value


def _read_signed(r: Reader, *kinds: KeyKind) -> SignedPublicKey:
    key = SignedPublicKey.read(r)
    if key.kind not in kinds:
        raise DecodeError(r.what, DecodeReason.BAD_TAG)
    return key


def _read_optional_signed(r: Reader, kind: KeyKind) -> SignedPublicKey | None:
    flag = r.u8()
    if flag > 1:
        raise DecodeError(r.what, DecodeReason.BAD_VALUE)
    return _read_signed(r, kind) if flag else None


_SEND_HEAD = ENVELOPE_ID_LEN + ACCOUNT_ID_LEN + TOKEN_LEN + 4


def _parse_send(data: bytes) -> Send:
    """SEND, the frame a busy relay parses most, without the generic Reader (same rules and errors)."""
    end = len(data)
    if end < 3:
        raise DecodeError("relay frame", DecodeReason.TRUNCATED)
    n = data[2]
    if not 1 <= n <= MAX_BATCH:
        raise DecodeError("relay frame", DecodeReason.TOO_LONG if n > MAX_BATCH else DecodeReason.BAD_VALUE)
    envelopes = []
    pos = 3
    unpack = _U32.unpack_from
    for _ in range(n):
        body = pos + _SEND_HEAD
        if body > end:
            raise DecodeError("relay frame", DecodeReason.TRUNCATED)
        (length,) = unpack(data, body - 4)
        if length > MAX_ENVELOPE:
            raise DecodeError("relay frame", DecodeReason.TOO_LONG)
        stop = body + length
        if stop > end:
            raise DecodeError("relay frame", DecodeReason.TRUNCATED)
        envelopes.append(
            OutgoingEnvelope(
                data[pos : pos + 16], data[pos + 16 : pos + 32], data[pos + 32 : pos + 64], data[body:stop]
            )
        )
        pos = stop
    if pos != end:
        raise DecodeError("relay frame", DecodeReason.TRAILING_BYTES)
    return Send(tuple(envelopes))


def _parse_receipt(data: bytes) -> Receipt:
    """RECEIPT, the other frame a busy relay parses for every delivery (same rules and errors)."""
    if len(data) < 4:
        raise DecodeError("relay frame", DecodeReason.TRUNCATED)
    n = (data[2] << 8) | data[3]
    if not 1 <= n <= MAX_RECEIPTS:
        raise DecodeError(
            "relay frame", DecodeReason.TOO_LONG if n > MAX_RECEIPTS else DecodeReason.BAD_VALUE
        )
    expected = 4 + 8 * n
    if len(data) < expected:
        raise DecodeError("relay frame", DecodeReason.TRUNCATED)
    if len(data) > expected:
        raise DecodeError("relay frame", DecodeReason.TRAILING_BYTES)
    return Receipt(struct.unpack_from(f">{n}Q", data, 4))


def _parse_body(kind: int, r: Reader) -> Frame:  # noqa: PLR0911, PLR0912 - one branch per frame type
    """Every frame but SEND and RECEIPT (parsed by the fast paths above)."""
    if kind == FrameType.DELIVER:
        n = _count(r, r.u8(), 1, MAX_BATCH)
        return Deliver(
            tuple(Delivery(r.u64(), r.raw(ENVELOPE_ID_LEN), r.var32(MAX_ENVELOPE)) for _ in range(n))
        )
    if kind == FrameType.SEND_RESULT:
        n = _count(r, r.u8(), 1, MAX_BATCH)
        results = []
        for _ in range(n):
            envelope_id, status = r.raw(ENVELOPE_ID_LEN), r.u8()
            try:
                results.append((envelope_id, SendStatus(status)))
            except ValueError:
                raise DecodeError(r.what, DecodeReason.BAD_VALUE) from None
        return SendResult(tuple(results))
    if kind == FrameType.AUTH:
        return Auth(r.raw(ACCOUNT_ID_LEN), r.raw(SIGNATURE_LEN))
    if kind == FrameType.OPEN_SEND:
        return OpenSend(r.u32(), r.raw(PASS_LEN))
    if kind == FrameType.UPLOAD_KEYS:
        spk = _read_optional_signed(r, KeyKind.SIGNED_PREKEY)
        last_resort = _read_optional_signed(r, KeyKind.KEM_LAST_RESORT)
        n = _count(r, r.u16(), 0, MAX_ONE_TIME_UPLOAD)
        one_time = tuple((r.u32(), r.raw(X25519_LEN)) for _ in range(n))
        n = _count(r, r.u16(), 0, MAX_KEM_UPLOAD)
        kem = tuple(_read_signed(r, KeyKind.KEM_ONE_TIME) for _ in range(n))
        n = _count(r, r.u8(), 0, MAX_ENVELOPE_KEYS)
        envelope_keys = tuple(_read_signed(r, KeyKind.ENVELOPE) for _ in range(n))
        return UploadKeys(spk, last_resort, one_time, kem, envelope_keys)
    if kind == FrameType.GET_SEND_PASS:
        return GetSendPass()
    if kind == FrameType.CHALLENGE:
        return Challenge(r.raw(NONCE_LEN), r.u32())
    if kind == FrameType.AUTH_OK:
        return AuthOk(r.u32(), r.u32(), r.u32())
    if kind == FrameType.KEY_STOCK:
        return KeyStock(r.u32(), r.u32())
    if kind == FrameType.SEND_PASS:
        return SendPass(r.u32(), r.raw(PASS_LEN))
    if kind == FrameType.ERROR:
        code = r.u16()
        text = r.var16(MAX_ERROR_TEXT)
        try:
            return Error(ErrorCode(code), text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise DecodeError(r.what, DecodeReason.BAD_VALUE) from None
    if kind == FrameType.DRAINED:
        return Drained(r.u64())
    raise DecodeError(r.what, DecodeReason.BAD_TAG)


def parse(data: bytes) -> Frame:
    """Parses one frame. Raises DecodeError or UnsupportedVersion; nothing else."""
    if len(data) >= 2 and data[0] == FRAME_VERSION:
        if data[1] == FrameType.SEND:
            return _parse_send(bytes(data))
        if data[1] == FrameType.RECEIPT:
            return _parse_receipt(bytes(data))
    r = Reader(data, "relay frame")
    r.expect_version(FRAME_VERSION)
    frame = _parse_body(r.u8(), r)
    r.done()
    return frame


__all__ = [
    "ACCOUNT_ID_LEN",
    "ENVELOPE_ID_LEN",
    "MAX_BATCH",
    "MAX_ENVELOPE",
    "TOKEN_LEN",
    "Auth",
    "AuthOk",
    "Challenge",
    "Deliver",
    "Delivery",
    "Drained",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameType",
    "GetSendPass",
    "KeyStock",
    "OpenSend",
    "OutgoingEnvelope",
    "Receipt",
    "Send",
    "SendPass",
    "SendResult",
    "SendStatus",
    "UploadKeys",
    "auth_message",
    "deliver_frame",
    "packed_delivery",
    "parse",
    "serialize",
]
