"""Relay frames: round trips of every type, bounds, and the state table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kluis.protocol.errors import DecodeError, DecodeReason, UnsupportedVersion
from kluis.relay import frames as f
from kluis.relay.connection import FrameNotAllowed, State, next_state
from tests.support import make_party

ids16 = st.binary(min_size=16, max_size=16)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
envelope = st.binary(min_size=0, max_size=600)

BOB = make_party(b"frames/bob")
SPK = BOB.prekeys.current_signed_prekey()
LAST = BOB.prekeys.last_resort_kem()
KEMS = tuple(s for k, s in BOB.prekeys.kem.values() if not k.last_resort)

frames = st.one_of(
    st.builds(f.Auth, ids16, st.binary(min_size=64, max_size=64)),
    st.builds(f.OpenSend, u32, st.binary(min_size=32, max_size=32)),
    st.builds(
        f.Send,
        st.lists(
            st.builds(f.OutgoingEnvelope, ids16, ids16, st.binary(min_size=32, max_size=32), envelope),
            min_size=1,
            max_size=f.MAX_BATCH,
        ).map(tuple),
    ),
    st.builds(f.Receipt, st.lists(u64, min_size=1, max_size=50).map(tuple)),
    st.builds(
        f.UploadKeys,
        st.sampled_from([None, SPK]),
        st.sampled_from([None, LAST]),
        st.lists(st.tuples(u32, st.binary(min_size=32, max_size=32)), max_size=5).map(tuple),
        st.sampled_from([(), KEMS]),
        st.sampled_from([(), (BOB.envelope_key,)]),
    ),
    st.just(f.GetSendPass()),
    st.builds(f.Challenge, st.binary(min_size=32, max_size=32), u32),
    st.builds(f.AuthOk, u32, u32, u32),
    st.builds(
        f.SendResult,
        st.lists(st.tuples(ids16, st.sampled_from(f.SendStatus)), min_size=1, max_size=32).map(tuple),
    ),
    st.builds(
        f.Deliver, st.lists(st.builds(f.Delivery, u64, ids16, envelope), min_size=1, max_size=32).map(tuple)
    ),
    st.builds(f.KeyStock, u32, u32),
    st.builds(f.SendPass, u32, st.binary(min_size=32, max_size=32)),
    st.builds(f.Error, st.sampled_from(f.ErrorCode), st.text(alphabet="abc xyz", max_size=40)),
    st.builds(f.Drained, u64),
)


@given(frames)
def test_round_trip(frame: f.Frame) -> None:
    data = f.serialize(frame)
    assert f.parse(data) == frame
    assert f.serialize(f.parse(data)) == data


@given(frames, st.data())
def test_truncation_and_trailing_bytes_are_decode_errors(frame: f.Frame, data: st.DataObject) -> None:
    wire = f.serialize(frame)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(DecodeError):
        f.parse(wire[:cut])
    with pytest.raises(DecodeError):
        f.parse(wire + b"\x00")


def test_version_and_type_and_bounds() -> None:
    with pytest.raises(UnsupportedVersion):
        f.parse(b"\x02\x01")
    with pytest.raises(DecodeError) as err:
        f.parse(b"\x01\x7f")
    assert err.value.reason is DecodeReason.BAD_TAG
    with pytest.raises(DecodeError) as err:
        f.parse(b"\x01\x03" + bytes([f.MAX_BATCH + 1]))
    assert err.value.reason is DecodeReason.TOO_LONG
    with pytest.raises(DecodeError):
        f.parse(b"\x01\x03\x00")  # an empty SEND
    huge = b"\x01\x03\x01" + bytes(64) + (f.MAX_ENVELOPE + 1).to_bytes(4, "big")
    with pytest.raises(DecodeError) as err:
        f.parse(huge)
    assert err.value.reason is DecodeReason.TOO_LONG


def test_state_table() -> None:
    assert next_state(State.AWAIT_HELLO, f.FrameType.AUTH) is State.MAILBOX
    assert next_state(State.AWAIT_HELLO, f.FrameType.OPEN_SEND) is State.SENDING
    assert next_state(State.SENDING, f.FrameType.SEND) is State.SENDING
    for state, frame in [
        (State.MAILBOX, f.FrameType.SEND),  # sends never travel on an authenticated connection
        (State.SENDING, f.FrameType.RECEIPT),
        (State.AWAIT_HELLO, f.FrameType.SEND),
        (State.MAILBOX, f.FrameType.AUTH),
        (State.CLOSED, f.FrameType.RECEIPT),
    ]:
        with pytest.raises(FrameNotAllowed):
            next_state(state, frame)


def test_reprs_hide_payloads() -> None:
    e = f.OutgoingEnvelope(b"i" * 16, b"r" * 16, b"t" * 32, b"secret-ish" * 3)
    assert "secret" not in repr(e)
    assert "t" * 32 not in repr(e)
    assert "pass" not in repr(f.SendPass(1, b"p" * 32)).replace("SendPass", "")
