"""Builders shared by tests: parties with identities, prekey stores and bundles, from a seed."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    handed_out: set[int] = field(default_factory=set)

    def bundle(
        self, *, one_time: bool = True, kem_one_time: bool = True, directory: bool = False
    ) -> PreKeyBundle:
        """A bundle with the lowest-id one-time keys (not consumed on the device).

        With ``directory=True`` it acts like the server's directory: each one-time key is handed
        out once, then the last-resort KEM key and no one-time X25519 key.
        """
        skip = self.handed_out if directory else set()
        kem_ids = sorted(
            k for k, (pair, _) in self.prekeys.kem.items() if not pair.last_resort and k not in skip
        )
        kem = self.prekeys.kem[kem_ids[0]][1] if kem_one_time and kem_ids else self.prekeys.last_resort_kem()
        otk = None
        free = sorted(k for k in self.prekeys.one_time if k not in skip)
        if one_time and free:
            pair = self.prekeys.one_time[free[0]]
            otk = OneTimePreKeyPublic(pair.key_id, pair.public_bytes)
        if directory:
            self.handed_out.add(kem.key_id)
            if otk is not None:
                self.handed_out.add(otk.key_id)
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
