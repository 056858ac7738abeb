"""padding.py: ISO/IEC 7816-4 padding into power-of-two buckets (256 B .. 64 KiB, 128 KiB for envelopes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kluis.protocol.errors import DecodeError, DecodeReason, LocalProtocolError
from kluis.protocol.padding import (
    BUCKETS,
    ENVELOPE_MAX_BUCKET,
    MAX_PLAINTEXT,
    MESSAGE_MAX_BUCKET,
    PlaintextTooLarge,
    bucket_for,
    pad,
    unpad,
)


class TestBuckets:
    def test_scheme(self) -> None:
        assert BUCKETS == (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
        assert MAX_PLAINTEXT == MESSAGE_MAX_BUCKET - 1 == 65535

    @pytest.mark.parametrize(
        ("length", "bucket"),
        [(0, 256), (1, 256), (255, 256), (256, 512), (511, 512), (512, 1024), (65535, 65536)],
    )
    def test_boundaries(self, length: int, bucket: int) -> None:
        assert bucket_for(length) == bucket
        padded = pad(b"\x00" * length)
        assert len(padded) == bucket
        assert unpad(padded) == b"\x00" * length

    @settings(max_examples=200)
    @given(st.binary(max_size=5000))
    def test_round_trip_and_only_bucket_lengths(self, data: bytes) -> None:
        padded = pad(data)
        assert len(padded) in BUCKETS
        assert len(padded) == bucket_for(len(data))
        assert unpad(padded) == data

    def test_envelope_bucket(self) -> None:
        data = b"\x01" * MAX_PLAINTEXT + b"\x02"
        padded = pad(data, max_bucket=ENVELOPE_MAX_BUCKET)
        assert len(padded) == ENVELOPE_MAX_BUCKET
        assert unpad(padded, max_bucket=ENVELOPE_MAX_BUCKET) == data
        with pytest.raises(DecodeError):
            unpad(padded)  # over the message bound


class TestOversize:
    def test_message(self) -> None:
        with pytest.raises(PlaintextTooLarge) as info:
            pad(b"x" * (MAX_PLAINTEXT + 1))
        assert isinstance(info.value, LocalProtocolError)
        assert info.value.bound == MAX_PLAINTEXT
        with pytest.raises(PlaintextTooLarge):
            bucket_for(MAX_PLAINTEXT + 1)

    def test_envelope(self) -> None:
        with pytest.raises(PlaintextTooLarge):
            pad(b"x" * ENVELOPE_MAX_BUCKET, max_bucket=ENVELOPE_MAX_BUCKET)

    def test_max_bucket_must_be_a_bucket(self) -> None:
        with pytest.raises(LocalProtocolError):
            pad(b"", max_bucket=300)
        with pytest.raises(LocalProtocolError):
            unpad(bytes(256), max_bucket=1 << 20)


class TestMalformed:
    @pytest.mark.parametrize(
        "padded",
        [
            b"",
            b"\x80",
            b"hi\x80" + bytes(252),  # 255 bytes: not a bucket
            bytes(256),  # no marker
            b"\x80" + b"\x01" + bytes(254),  # last non-zero byte is not the marker
            b"a" * 256,
            b"x" * 100 + b"\x80" + bytes(411),  # 512 bytes holding what fits 256: not canonical
            b"x" * 10 + b"\x80" + bytes(65536 * 2 - 11),  # over the message bound
        ],
    )
    def test_rejected(self, padded: bytes) -> None:
        with pytest.raises(DecodeError) as info:
            unpad(padded)
        assert info.value.reason is DecodeReason.BAD_PADDING

    def test_smallest_accepted_in_a_larger_bucket(self) -> None:
        # 256 bytes of data + marker need the 512 bucket; 255 + marker do not.
        assert unpad(b"x" * 256 + b"\x80" + bytes(255)) == b"x" * 256
        with pytest.raises(DecodeError):
            unpad(b"x" * 255 + b"\x80" + bytes(256))

    @settings(max_examples=200)
    @given(st.binary(max_size=600))
    def test_arbitrary_input_is_canonical_or_rejected(self, data: bytes) -> None:
        out: bytes | None = None
        reason: DecodeReason | None = None
        try:
            out = unpad(data)
        except DecodeError as exc:
            reason = exc.reason
        if out is None:
            assert reason is DecodeReason.BAD_PADDING
        else:
            assert pad(out) == data
