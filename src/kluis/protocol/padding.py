"""Pads plaintexts to fixed size buckets before encryption, so the bucket is the only length that leaks.

Bucket scheme: powers of two from 256 bytes to 128 KiB (``BUCKETS``).

* 256 bytes is the smallest bucket because almost every chat message ("ok", "on my way", a sentence or
  two) fits in it, so nearly all traffic has one size. The byte overhead of a 256-byte floor is small
  next to what every envelope already carries (the 1,120-byte hybrid KEM ciphertext), so a finer
  scheme (Signal's 160-byte multiples) would buy little and leak more: it has hundreds of sizes where
  this has ten.
* Above that, doubling keeps the number of distinct sizes logarithmic (at most 10 in all) at a cost of
  less than 2x (on average about 1.4x) for long messages, which are rare in chat.
* Chat plaintexts (:func:`pad` / :func:`unpad` with their default) stop at the 64 KiB bucket:
  ``MAX_PLAINTEXT`` = 65,535 bytes. The 128 KiB bucket is only for sealed envelopes, whose inner
  plaintext is a ratchet message (a padded chat plaintext plus headers) with the sender's identity
  (envelope.py passes ``max_bucket=ENVELOPE_MAX_BUCKET``).

Encoding: ISO/IEC 7816-4 padding, ``data || 0x80 || 0x00 * k``, into the smallest bucket that holds
``len(data) + 1`` bytes. It is unambiguous (the last non-zero byte is the marker), and the decoder
rejects every other form: a length that is not a bucket, a missing marker, or a marker placed so that a
smaller bucket would have held the data (non-canonical), so ``pad(unpad(x)) == x`` for every accepted
``x``. Both directions are a few C-level bytes operations (``rstrip``, slicing), never a per-byte loop.
"""

from __future__ import annotations

from bisect import bisect_left

from kluis.protocol.errors import DecodeError, DecodeReason, LocalProtocolError

MIN_BUCKET = 256
ENVELOPE_MAX_BUCKET = 128 * 1024
BUCKETS: tuple[int, ...] = tuple(MIN_BUCKET << i for i in range(10))  # 256 .. 131072 = ENVELOPE_MAX_BUCKET
MESSAGE_MAX_BUCKET = 64 * 1024
# The largest chat plaintext: one byte of the largest message bucket goes to the 0x80 marker.
MAX_PLAINTEXT = MESSAGE_MAX_BUCKET - 1

MARKER = 0x80
_MARKER = b"\x80"
_BUCKET_SET = frozenset(BUCKETS)


class PlaintextTooLarge(LocalProtocolError):
    """The caller asked to pad or seal more bytes than the largest bucket holds."""

    def __init__(self, what: str, length: int, bound: int) -> None:
        super().__init__(f"{what} of {length} bytes is over the bound of {bound}")
        self.what = what
        self.length = length
        self.bound = bound


def bucket_for(length: int, *, max_bucket: int = MESSAGE_MAX_BUCKET) -> int:
    """The bucket that a plaintext of ``length`` bytes pads to. Raises PlaintextTooLarge."""
    if length >= max_bucket:
        raise PlaintextTooLarge("plaintext", length, max_bucket - 1)
    return BUCKETS[bisect_left(BUCKETS, length + 1)]


def _check_max(max_bucket: int) -> None:
    if max_bucket not in _BUCKET_SET:
        raise LocalProtocolError(f"max_bucket {max_bucket} is not one of the padding buckets")


def pad(data: bytes, *, max_bucket: int = MESSAGE_MAX_BUCKET) -> bytes:
    """Returns ``data || 0x80 || 0x00...`` of the smallest bucket length holding ``len(data) + 1``.

    Raises:
        PlaintextTooLarge: ``data`` does not fit ``max_bucket`` (``max_bucket - 1`` bytes at most).
    """
    _check_max(max_bucket)
    n = len(data)
    if n >= max_bucket:
        raise PlaintextTooLarge("plaintext", n, max_bucket - 1)
    bucket = BUCKETS[bisect_left(BUCKETS, n + 1)]
    return b"".join((data, _MARKER, bytes(bucket - n - 1)))


def unpad(padded: bytes, *, max_bucket: int = MESSAGE_MAX_BUCKET) -> bytes:
    """Inverse of :func:`pad`.

    Raises:
        DecodeError: ``BAD_PADDING`` if the length is not a bucket up to ``max_bucket``, the 0x80
            marker is missing, or the padding is not the canonical (smallest-bucket) one.
    """
    _check_max(max_bucket)
    size = len(padded)
    if size not in _BUCKET_SET or size > max_bucket:
        raise DecodeError("padding", DecodeReason.BAD_PADDING)
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != MARKER:
        raise DecodeError("padding", DecodeReason.BAD_PADDING)
    # Canonical: the data (len(stripped) - 1 bytes, plus the marker) must not have fit a smaller bucket.
    if size != MIN_BUCKET and len(stripped) <= size >> 1:
        raise DecodeError("padding", DecodeReason.BAD_PADDING)
    return stripped[:-1]


__all__ = [
    "BUCKETS",
    "ENVELOPE_MAX_BUCKET",
    "MAX_PLAINTEXT",
    "MESSAGE_MAX_BUCKET",
    "MIN_BUCKET",
    "PlaintextTooLarge",
    "bucket_for",
    "pad",
    "unpad",
]
