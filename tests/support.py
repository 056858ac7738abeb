"""Builders shared by tests: parties with identities, prekey stores and bundles, from a seed."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from kluis.protocol.bundle import OneTimePreKeyPublic, PreKeyBundle
from kluis.protocol.keys import IdentityKeyPair, KeyKind, SignedPublicKey
from kluis.protocol.prekeys import LocalPreKeys
from kluis.protocol.rng import DeterministicRng


@dataclass
class Party:
    rng: DeterministicRng
    identity: IdentityKeyPair
    prekeys: LocalPreKeys
    envelope_key: SignedPublicKey

    def bundle(self, *, one_time: bool = True, kem_one_time: bool = True) -> PreKeyBundle:
        """What a directory would hand out: takes (but does not consume) the lowest-id keys."""
        kem_ids = sorted(k for k, (pair, _) in self.prekeys.kem.items() if not pair.last_resort)
        kem = self.prekeys.kem[kem_ids[0]][1] if kem_one_time and kem_ids else self.prekeys.last_resort_kem()
        otk = None
        if one_time and self.prekeys.one_time:
            pair = self.prekeys.one_time[min(self.prekeys.one_time)]
            otk = OneTimePreKeyPublic(pair.key_id, pair.public_bytes)
        return PreKeyBundle(
            self.identity.public, self.prekeys.current_signed_prekey(), kem, self.envelope_key, otk
        )


def envelope_public(rng: DeterministicRng) -> bytes:
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(rng(64)).public_key().public_bytes_raw()
    dh = x25519.X25519PrivateKey.from_private_bytes(rng(32)).public_key().public_bytes_raw()
    return kem + dh


def make_party(seed: bytes, *, one_time: int = 3, kem_one_time: int = 3) -> Party:
    rng = DeterministicRng(seed)
    identity = IdentityKeyPair.generate(rng)
    prekeys = LocalPreKeys.create(identity, rng, one_time=one_time, kem_one_time=kem_one_time)
    envelope_key = identity.sign_public_key(KeyKind.ENVELOPE, 1, envelope_public(rng))
    return Party(rng, identity, prekeys, envelope_key)
