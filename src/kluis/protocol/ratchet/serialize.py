"""The versioned binary form of a session's state (STYLE.md §3: persisted crypto state is versioned).

Layout (``_codec`` conventions: big-endian; ``var16`` = u16 length + bytes)::

    u8      STATE_VERSION (1)
    var16   associated data (<= MAX_AD_LEN)
    32      root key
    32      own ratchet private key (X25519, raw)
    u8      flags: 0x01 remote ratchet key present, 0x02 sending chain present,
                   0x04 receiving chain present; other bits must be zero
    [32]    remote ratchet public key          (if 0x01)
    [32]    sending chain key                  (if 0x02)
    [32]    receiving chain key                (if 0x04)
    u64     Ns  (<= MAX_COUNTER)
    u64     PN  (<= MAX_COUNTER)
    u64     Nr  (<= MAX_COUNTER + 1)
    u8      chain count (<= MAX_OLD_CHAINS + 1), oldest first; per chain:
      32    the remote ratchet public key naming the chain
      u16   key count; per key, in storage (eviction) order:
        u32 N
        32  message key

A sending or receiving chain requires the remote key. Duplicate chains or counters, more than
MAX_SKIPPED_KEYS keys in all, unknown flags and out-of-range counters are DecodeError.
"""

from __future__ import annotations

from typing import NamedTuple

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.ratchet.constants import (
    KEY_LEN,
    MAX_AD_LEN,
    MAX_COUNTER,
    MAX_OLD_CHAINS,
    MAX_SKIPPED_KEYS,
    STATE_VERSION,
)

_WHAT = "ratchet session"
_HAS_DHR = 0x01
_HAS_CKS = 0x02
_HAS_CKR = 0x04


class StateFields(NamedTuple):
    """Every field of a session, in spec §3.2 names where they exist."""

    ad: bytes
    rk: bytes
    dhs_private: bytes
    dhr: bytes | None
    cks: bytes | None
    ns: int
    pn: int
    ckr: bytes | None
    nr: int
    skipped: dict[bytes, dict[int, bytes]]

    def __repr__(self) -> str:
        return "StateFields(..)"


def encode_state(f: StateFields) -> bytes:
    w = Writer().u8(STATE_VERSION).var16(f.ad).raw(f.rk).raw(f.dhs_private)
    flags = (
        (_HAS_DHR if f.dhr is not None else 0)
        | (_HAS_CKS if f.cks is not None else 0)
        | (_HAS_CKR if f.ckr is not None else 0)
    )
    w.u8(flags)
    for opt in (f.dhr, f.cks, f.ckr):
        if opt is not None:
            w.raw(opt)
    w.u64(f.ns).u64(f.pn).u64(f.nr)
    w.u8(len(f.skipped))
    for dh, keys in f.skipped.items():
        w.raw(dh).u16(len(keys))
        for n, mk in keys.items():
            w.u32(n).raw(mk)
    return w.getvalue()


def decode_state(data: bytes) -> StateFields:
    """Parses :func:`encode_state` output; raises DecodeError or UnsupportedVersion."""
    r = Reader(data, _WHAT)
    r.expect_version(STATE_VERSION)
    ad = r.var16(MAX_AD_LEN)
    rk = r.raw(KEY_LEN)
    dhs_private = r.raw(KEY_LEN)
    flags = r.u8()
    if flags & ~(_HAS_DHR | _HAS_CKS | _HAS_CKR):
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE)
    if flags & (_HAS_CKS | _HAS_CKR) and not flags & _HAS_DHR:
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE)
    dhr = r.raw(KEY_LEN) if flags & _HAS_DHR else None
    cks = r.raw(KEY_LEN) if flags & _HAS_CKS else None
    ckr = r.raw(KEY_LEN) if flags & _HAS_CKR else None
    ns, pn, nr = r.u64(), r.u64(), r.u64()
    if ns > MAX_COUNTER or pn > MAX_COUNTER or nr > MAX_COUNTER + 1:
        raise DecodeError(_WHAT, DecodeReason.BAD_VALUE)
    chains = r.u8()
    if chains > MAX_OLD_CHAINS + 1:
        raise DecodeError(_WHAT, DecodeReason.TOO_LONG)
    skipped: dict[bytes, dict[int, bytes]] = {}
    total = 0
    for _ in range(chains):
        dh = r.raw(KEY_LEN)
        count = r.u16()
        total += count
        if total > MAX_SKIPPED_KEYS:
            raise DecodeError(_WHAT, DecodeReason.TOO_LONG)
        keys: dict[int, bytes] = {}
        for _ in range(count):
            n = r.u32()
            keys[n] = r.raw(KEY_LEN)
        if dh in skipped or len(keys) != count:
            raise DecodeError(_WHAT, DecodeReason.BAD_VALUE)
        skipped[dh] = keys
    r.done()
    return StateFields(ad, rk, dhs_private, dhr, cks, ns, pn, ckr, nr, skipped)


__all__ = ["StateFields", "decode_state", "encode_state"]
