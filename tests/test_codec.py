from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.rng import DeterministicRng


@given(
    st.integers(0, 255),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
    st.binary(max_size=300),
)
def test_round_trip(a: int, b: int, c: int, d: int, e: bytes, f: bytes) -> None:
    data = Writer().u8(a).u16(b).u32(c).u64(d).var16(e).var32(f).raw(b"xy").getvalue()
    r = Reader(data, "test")
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.var16(), r.var32(300), r.raw(2)) == (
        a,
        b,
        c,
        d,
        e,
        f,
        b"xy",
    )
    r.done()


def test_truncated_and_trailing_and_bound() -> None:
    with pytest.raises(DecodeError) as err:
        Reader(b"\x00", "t").u16()
    assert err.value.reason is DecodeReason.TRUNCATED
    r = Reader(b"\x00\x01", "t")
    r.u8()
    with pytest.raises(DecodeError) as err:
        r.done()
    assert err.value.reason is DecodeReason.TRAILING_BYTES
    with pytest.raises(DecodeError) as err:
        Reader(Writer().var32(b"abc").getvalue(), "t").var32(2)
    assert err.value.reason is DecodeReason.TOO_LONG


def test_deterministic_rng_is_reproducible_and_not_repeating() -> None:
    a, b = DeterministicRng(b"seed"), DeterministicRng(b"seed")
    assert [a(32) for _ in range(3)] == [b(32) for _ in range(3)]
    c = DeterministicRng(b"seed")
    assert c(32) != c(32)
    assert repr(c) == "DeterministicRng(..)"
