"""The device's private prekeys, and the store interface the PQXDH responder needs.

Consumption is two-phase, as libsignal does it: :func:`kluis.protocol.handshake.accept` only *reads*
the keys an initial message names and returns a :class:`UsedPreKeys`; the caller calls
:meth:`PreKeyStore.consume` once the first ratchet message inside has decrypted. A forged initial
message therefore cannot burn a one-time prekey, and a genuine one can be accepted only once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.bundle import OneTimePreKeyPublic, PreKeyBundle
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.keys import (
    MLKEM_SEED_LEN,
    SIGNATURE_LEN,
    X25519_LEN,
    IdentityKeyPair,
    IdentityPublicKey,
    KemKeyPair,
    KeyKind,
    SignedPublicKey,
    X25519KeyPair,
)
from kluis.protocol.rng import Rng

STORE_VERSION = 1

MAX_LAST_RESORT_MARKERS = 10_000
"""How many initial messages that used only last-resort keys we remember, to reject their replay.

PQXDH §4.3: without a one-time prekey the responder cannot tell a replayed initial message from a
new one unless it remembers it. 10,000 markers of 32 bytes is 320 KB; the oldest is dropped first,
and the last-resort key rotates long before 10,000 sessions arrive without a one-time key.
"""

MAX_PREKEYS_PER_KIND = 10_000
"""Bound on stored one-time keys of each kind, so a restored store cannot be made arbitrarily big."""


@dataclass(frozen=True, slots=True)
class UsedPreKeys:
    """Which prekeys an accepted initial message used; consumed only after the first message decrypts."""

    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None
    # Set when no one-time key of either kind was used: a digest of the initial message's EK and CT.
    last_resort_marker: bytes | None


class PreKeyStore(Protocol):
    """What the PQXDH responder reads, and consumes after success."""

    def signed_prekey(self, key_id: int) -> X25519KeyPair | None: ...
    def one_time_prekey(self, key_id: int) -> X25519KeyPair | None: ...
    def kem_prekey(self, key_id: int) -> KemKeyPair | None: ...
    def seen_last_resort(self, marker: bytes) -> bool: ...
    def consume(self, used: UsedPreKeys) -> None: ...


class LocalPreKeys:
    """In-memory reference :class:`PreKeyStore` with a versioned binary snapshot. Secret."""

    def __init__(self) -> None:
        self.signed: dict[int, tuple[X25519KeyPair, SignedPublicKey]] = {}
        self.one_time: dict[int, X25519KeyPair] = {}
        self.kem: dict[int, tuple[KemKeyPair, SignedPublicKey]] = {}
        self.markers: OrderedDict[bytes, None] = OrderedDict()
        self.next_id = 1

    def _take_id(self) -> int:
        key_id = self.next_id
        self.next_id += 1
        return key_id

    # -- generation ---------------------------------------------------------------------------

    def new_signed_prekey(self, identity: IdentityKeyPair, rng: Rng) -> SignedPublicKey:
        pair = X25519KeyPair.generate(self._take_id(), rng)
        signed = identity.sign_public_key(KeyKind.SIGNED_PREKEY, pair.key_id, pair.public_bytes)
        self.signed[pair.key_id] = (pair, signed)
        return signed

    def new_kem_prekey(self, identity: IdentityKeyPair, rng: Rng, *, last_resort: bool) -> SignedPublicKey:
        pair = KemKeyPair.generate(self._take_id(), rng, last_resort=last_resort)
        signed = identity.sign_public_key(pair.kind, pair.key_id, pair.public_bytes)
        self.kem[pair.key_id] = (pair, signed)
        return signed

    def new_one_time_prekeys(self, rng: Rng, count: int) -> list[X25519KeyPair]:
        pairs = [X25519KeyPair.generate(self._take_id(), rng) for _ in range(count)]
        self.one_time.update((p.key_id, p) for p in pairs)
        return pairs

    @classmethod
    def create(
        cls, identity: IdentityKeyPair, rng: Rng, *, one_time: int = 100, kem_one_time: int = 100
    ) -> LocalPreKeys:
        """A fresh store: one signed prekey, one last-resort KEM key, and one-time batches."""
        store = cls()
        store.new_signed_prekey(identity, rng)
        store.new_kem_prekey(identity, rng, last_resort=True)
        store.new_one_time_prekeys(rng, one_time)
        for _ in range(kem_one_time):
            store.new_kem_prekey(identity, rng, last_resort=False)
        return store

    def current_signed_prekey(self) -> SignedPublicKey:
        return self.signed[max(self.signed)][1]

    def bundle(self, identity: IdentityPublicKey, envelope_key: SignedPublicKey) -> PreKeyBundle:
        """A bundle of the lowest-id one-time keys, as a directory would hand out first.

        For in-memory use (demo, benchmark); the relay's directory builds bundles from uploaded keys.
        """
        kem_ids = [k for k, (pair, _) in self.kem.items() if not pair.last_resort]
        kem = self.kem[min(kem_ids)][1] if kem_ids else self.last_resort_kem()
        otk = None
        if self.one_time:
            pair = self.one_time[min(self.one_time)]
            otk = OneTimePreKeyPublic(pair.key_id, pair.public_bytes)
        return PreKeyBundle(identity, self.current_signed_prekey(), kem, envelope_key, otk)

    def last_resort_kem(self) -> SignedPublicKey:
        ids = [k for k, (pair, _) in self.kem.items() if pair.last_resort]
        return self.kem[max(ids)][1]

    # -- PreKeyStore --------------------------------------------------------------------------

    def signed_prekey(self, key_id: int) -> X25519KeyPair | None:
        entry = self.signed.get(key_id)
        return entry[0] if entry else None

    def one_time_prekey(self, key_id: int) -> X25519KeyPair | None:
        return self.one_time.get(key_id)

    def kem_prekey(self, key_id: int) -> KemKeyPair | None:
        entry = self.kem.get(key_id)
        return entry[0] if entry else None

    def seen_last_resort(self, marker: bytes) -> bool:
        return marker in self.markers

    def consume(self, used: UsedPreKeys) -> None:
        if used.one_time_prekey_id is not None:
            self.one_time.pop(used.one_time_prekey_id, None)
        entry = self.kem.get(used.kem_prekey_id)
        if entry is not None and not entry[0].last_resort:
            del self.kem[used.kem_prekey_id]
        if used.last_resort_marker is not None:
            self.markers[used.last_resort_marker] = None
            while len(self.markers) > MAX_LAST_RESORT_MARKERS:
                self.markers.popitem(last=False)

    # -- snapshot -----------------------------------------------------------------------------

    def serialize(self) -> bytes:
        """Secret: private keys in the clear. The client stores it only inside its encrypted profile."""
        w = Writer().u8(STORE_VERSION).u32(self.next_id)
        w.u32(len(self.signed))
        for pair, signed in self.signed.values():
            w.u32(pair.key_id).raw(pair.private_bytes()).raw(signed.signature)
        w.u32(len(self.one_time))
        for pair in self.one_time.values():
            w.u32(pair.key_id).raw(pair.private_bytes())
        w.u32(len(self.kem))
        for kem, signed in self.kem.values():
            w.u32(kem.key_id).u8(kem.last_resort).raw(kem.seed_bytes()).raw(signed.signature)
        w.u32(len(self.markers))
        for marker in self.markers:
            w.raw(marker)
        return w.getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> LocalPreKeys:
        """Raises DecodeError or UnsupportedVersion."""
        r = Reader(data, "prekey store")
        r.expect_version(STORE_VERSION)
        store = cls()
        store.next_id = r.u32()
        for _ in range(_count(r, MAX_PREKEYS_PER_KIND)):
            pair = X25519KeyPair(r.u32(), r.raw(X25519_LEN))
            signed = SignedPublicKey(
                KeyKind.SIGNED_PREKEY, pair.key_id, pair.public_bytes, r.raw(SIGNATURE_LEN)
            )
            store.signed[pair.key_id] = (pair, signed)
        for _ in range(_count(r, MAX_PREKEYS_PER_KIND)):
            pair = X25519KeyPair(r.u32(), r.raw(X25519_LEN))
            store.one_time[pair.key_id] = pair
        for _ in range(_count(r, MAX_PREKEYS_PER_KIND)):
            key_id, flag = r.u32(), r.u8()
            if flag > 1:
                raise DecodeError("prekey store", DecodeReason.BAD_VALUE)
            kem = KemKeyPair(key_id, r.raw(MLKEM_SEED_LEN), last_resort=bool(flag))
            store.kem[key_id] = (
                kem,
                SignedPublicKey(kem.kind, key_id, kem.public_bytes, r.raw(SIGNATURE_LEN)),
            )
        for _ in range(_count(r, MAX_LAST_RESORT_MARKERS)):
            store.markers[r.raw(32)] = None
        r.done()
        return store

    def __repr__(self) -> str:
        return f"LocalPreKeys(one_time={len(self.one_time)}, kem={len(self.kem)}, private=..)"


def _count(r: Reader, bound: int) -> int:
    n = r.u32()
    if n > bound:
        raise DecodeError(r.what, DecodeReason.TOO_LONG)
    return n


__all__ = ["MAX_LAST_RESORT_MARKERS", "LocalPreKeys", "PreKeyStore", "UsedPreKeys"]
