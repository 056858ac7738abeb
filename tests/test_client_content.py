"""Application content inside the ratchet plaintext (kluis.client.content), PROTOCOL.md §10.1."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kluis.client import content as ct
from kluis.protocol._codec import Writer
from kluis.protocol.errors import DecodeError, DecodeReason, UnsupportedVersion
from kluis.protocol.keys import ENVELOPE_PUBLIC_LEN, SIGNATURE_LEN, KeyKind, SignedPublicKey
from tests.support import make_party

MID = bytes(range(16))
NOW_MS = 1_800_000_000_123
TOKEN = b"T" * 32
INVITE_ID = b"I" * 16
SECRET = "meet at the harbour at 23:00"


def envelope_key(key_id: int = 7, fill: int = 0xAB) -> SignedPublicKey:
    # The codec does not verify keys; any bytes of the right length do.
    return SignedPublicKey(
        KeyKind.ENVELOPE, key_id, bytes([fill]) * ENVELOPE_PUBLIC_LEN, b"s" * SIGNATURE_LEN
    )


ids = st.binary(min_size=16, max_size=16)
timers = st.one_of(st.just(0), st.integers(ct.MIN_TIMER, ct.MAX_TIMER))
stamps = st.integers(0, 2**64 - 1)
keys = st.builds(
    SignedPublicKey,
    st.just(KeyKind.ENVELOPE),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=ENVELOPE_PUBLIC_LEN, max_size=ENVELOPE_PUBLIC_LEN),
    st.binary(min_size=SIGNATURE_LEN, max_size=SIGNATURE_LEN),
)
contents = st.one_of(
    st.builds(
        ct.Text, ids, stamps, timers, st.text(min_size=1, max_size=300, alphabet=st.characters(codec="utf-8"))
    ),
    st.builds(ct.TimerChange, ids, stamps, timers),
    st.builds(ct.Hello, ids, stamps, ids, st.binary(min_size=32, max_size=32), keys, timers),
    st.builds(ct.KeyUpdate, ids, stamps, keys),
    st.builds(ct.Delivered, ids, stamps, st.lists(ids, min_size=1, max_size=ct.MAX_RECEIPTS).map(tuple)),
)


def samples() -> list[ct.Content]:
    return [
        ct.Text(MID, NOW_MS, 30, SECRET),
        ct.TimerChange(MID, NOW_MS, 0),
        ct.Hello(MID, NOW_MS, INVITE_ID, TOKEN, envelope_key(), 3600),
        ct.KeyUpdate(MID, NOW_MS, envelope_key(8)),
        ct.Delivered(MID, NOW_MS, (b"a" * 16, b"b" * 16)),
    ]


def reason(data: bytes) -> DecodeReason:
    with pytest.raises(DecodeError) as info:
        ct.decode(data)
    return info.value.reason


def header(kind: int, *, version: int = 1) -> Writer:
    return Writer().u8(version).u8(kind).raw(MID).u64(NOW_MS)


class TestRoundTrip:
    @given(contents)
    def test_any_content_round_trips(self, content: ct.Content) -> None:
        assert ct.decode(ct.encode(content)) == content

    def test_real_envelope_key(self) -> None:
        party = make_party(b"content/party")
        hello = ct.Hello(MID, NOW_MS, INVITE_ID, TOKEN, party.envelope_key, 0)
        decoded = ct.decode(ct.encode(hello))
        assert isinstance(decoded, ct.Hello)
        decoded.envelope_key.verify(party.identity.public)

    def test_text_layout(self) -> None:
        text = "héllo"
        data = ct.encode(ct.Text(MID, NOW_MS, 30, text))
        body = text.encode()
        expected = b"\x01\x01" + MID + NOW_MS.to_bytes(8, "big") + (30).to_bytes(4, "big")
        assert data == expected + len(body).to_bytes(4, "big") + body

    def test_every_layout_starts_with_the_header(self) -> None:
        for kind, content in enumerate(samples(), start=1):
            assert ct.encode(content)[:26] == bytes([1, kind]) + MID + NOW_MS.to_bytes(8, "big")

    def test_hello_and_delivered_layout(self) -> None:
        key = envelope_key()
        w = header(3).raw(INVITE_ID).raw(TOKEN)
        key.write(w)
        assert ct.encode(ct.Hello(MID, NOW_MS, INVITE_ID, TOKEN, key, 60)) == w.u32(60).getvalue()
        delivered = ct.Delivered(MID, NOW_MS, (b"a" * 16, b"b" * 16))
        assert ct.encode(delivered) == header(5).u16(2).raw(b"a" * 16).raw(b"b" * 16).getvalue()

    def test_text_limit_counts_utf8_bytes(self) -> None:
        longest = "é" * (ct.MAX_TEXT_BYTES // 2)
        assert ct.decode(ct.encode(ct.Text(MID, 0, 0, longest))) == ct.Text(MID, 0, 0, longest)
        with pytest.raises(ValueError, match="bytes of UTF-8"):
            ct.Text(MID, 0, 0, longest + "é")


class TestRejects:
    @pytest.mark.parametrize("content", samples(), ids=lambda c: type(c).__name__)
    def test_every_truncation_and_trailing_byte(self, content: ct.Content) -> None:
        data = ct.encode(content)
        for n in range(len(data)):
            with pytest.raises(DecodeError) as info:
                ct.decode(data[:n])
            assert info.value.reason is DecodeReason.TRUNCATED
        assert reason(data + b"\0") is DecodeReason.TRAILING_BYTES

    def test_version(self) -> None:
        data = ct.encode(samples()[0])
        with pytest.raises(UnsupportedVersion) as info:
            ct.decode(b"\x02" + data[1:])
        assert info.value.version == 2

    @pytest.mark.parametrize("kind", [0, 6, 255])
    def test_unknown_type(self, kind: int) -> None:
        assert reason(header(kind).u32(0).getvalue()) is DecodeReason.BAD_TAG
        assert reason(bytes([1, kind])) is DecodeReason.BAD_TAG

    @pytest.mark.parametrize("timer", [1, ct.MIN_TIMER - 1, ct.MAX_TIMER + 1, 2**32 - 1])
    def test_timer_out_of_range(self, timer: int) -> None:
        assert reason(header(2).u32(timer).getvalue()) is DecodeReason.BAD_VALUE
        assert reason(header(1).u32(timer).var32(b"hi").getvalue()) is DecodeReason.BAD_VALUE
        with pytest.raises(ValueError, match="timer"):
            ct.TimerChange(MID, 0, timer)
        with pytest.raises(ValueError, match="timer"):
            ct.Hello(MID, 0, INVITE_ID, TOKEN, envelope_key(), timer)

    @pytest.mark.parametrize("timer", [0, ct.MIN_TIMER, ct.MAX_TIMER])
    def test_timer_bounds_accepted(self, timer: int) -> None:
        assert ct.decode(header(2).u32(timer).getvalue()) == ct.TimerChange(MID, NOW_MS, timer)

    def test_text_empty_invalid_or_too_long(self) -> None:
        assert reason(header(1).u32(0).var32(b"").getvalue()) is DecodeReason.BAD_VALUE
        assert reason(header(1).u32(0).var32(b"\xff\xfe").getvalue()) is DecodeReason.BAD_VALUE
        assert (
            reason(header(1).u32(0).var32(b"\xed\xa0\x80").getvalue()) is DecodeReason.BAD_VALUE
        )  # surrogate
        too_long = header(1).u32(0).var32(b"a" * (ct.MAX_TEXT_BYTES + 1)).getvalue()
        assert reason(too_long) is DecodeReason.TOO_LONG
        # The length is checked before the bytes are read: a huge claimed length fails at once.
        assert reason(header(1).u32(0).u32(2**32 - 1).getvalue()) is DecodeReason.TOO_LONG

    def test_receipt_count(self) -> None:
        assert reason(header(5).u16(0).getvalue()) is DecodeReason.BAD_VALUE
        over = header(5).u16(ct.MAX_RECEIPTS + 1).raw(b"x" * 16 * (ct.MAX_RECEIPTS + 1)).getvalue()
        assert reason(over) is DecodeReason.BAD_VALUE
        full = header(5).u16(ct.MAX_RECEIPTS).raw(b"x" * 16 * ct.MAX_RECEIPTS).getvalue()
        decoded = ct.decode(full)
        assert isinstance(decoded, ct.Delivered)
        assert len(decoded.ids) == ct.MAX_RECEIPTS

    def test_key_of_the_wrong_kind(self) -> None:
        prekey = SignedPublicKey(KeyKind.SIGNED_PREKEY, 1, b"k" * 32, b"s" * SIGNATURE_LEN)
        w = header(4)
        prekey.write(w)
        assert reason(w.getvalue()) is DecodeReason.BAD_VALUE
        with pytest.raises(ValueError, match="kind"):
            ct.KeyUpdate(MID, 0, prekey)
        assert reason(header(4).u8(99).getvalue()) is DecodeReason.BAD_TAG

    @given(st.integers(0, 6), st.binary(max_size=2000))
    def test_arbitrary_bodies_decode_or_raise_documented_errors(self, kind: int, body: bytes) -> None:
        with contextlib.suppress(DecodeError, UnsupportedVersion):
            ct.decode(header(kind).raw(body).getvalue())
        with contextlib.suppress(DecodeError, UnsupportedVersion):
            ct.decode(body)


class TestConstruction:
    @pytest.mark.parametrize(
        ("build", "match"),
        [
            (lambda: ct.Text(b"short", 0, 0, "x"), "message id"),
            (lambda: ct.Text(MID, -1, 0, "x"), "sent_at_ms"),
            (lambda: ct.Text(MID, 2**64, 0, "x"), "sent_at_ms"),
            (lambda: ct.Text(MID, 0, 0, ""), "1..16000"),
            (lambda: ct.Hello(MID, 0, INVITE_ID, b"short", envelope_key(), 0), "delivery token"),
            (lambda: ct.Hello(MID, 0, b"x" * 17, TOKEN, envelope_key(), 0), "invite id"),
            (lambda: ct.Delivered(MID, 0, ()), "1..256"),
            (lambda: ct.Delivered(MID, 0, (b"x" * 16,) * 257), "1..256"),
            (lambda: ct.Delivered(MID, 0, (b"x" * 15,)), "message id"),
        ],
    )
    def test_invalid_fields_raise_value_error(self, build: object, match: str) -> None:
        assert callable(build)
        with pytest.raises(ValueError, match=match):
            build()

    def test_lone_surrogate_is_refused_without_quoting_it(self) -> None:
        with pytest.raises(ValueError, match="not valid Unicode") as info:
            ct.Text(MID, 0, 0, "secret \ud800")
        assert "secret" not in str(info.value)
        assert "ud800" not in str(info.value)

    def test_encode_refuses_other_objects(self) -> None:
        with pytest.raises(TypeError):
            ct.encode("text")  # type: ignore[arg-type]


class TestReprs:
    def test_no_text_or_token_in_reprs(self) -> None:
        text, timer, hello, keys_, delivered = samples()
        assert repr(text) == f"Text(.., {len(SECRET)} chars, timer=30)"
        assert repr(timer) == "TimerChange(.., timer=0)"
        assert repr(hello) == "Hello(.., SignedPublicKey(ENVELOPE, id=7), timer=3600)"
        assert repr(keys_) == "KeyUpdate(.., SignedPublicKey(ENVELOPE, id=8))"
        assert repr(delivered) == "Delivered(.., 2 ids)"
        for content in samples():
            shown = repr(content) + str(content)
            for secret in (SECRET, TOKEN.hex(), repr(TOKEN), MID.hex(), INVITE_ID.hex(), "harbour"):
                assert secret not in shown
