"""``kluis bench crypto``: each protocol operation against the pyca primitives it must call.

For every operation the *floor* is a function that makes exactly the pyca calls the operation makes
(key loading, signature checks, DH, KEM, HKDF/HMAC, AEAD, HPKE) on equivalent inputs, and nothing
else; ``ratio`` = operation / floor is then the cost of Kluis's own Python around the primitives.
Where vodozemac (Matrix's Rust Olm, through its Python binding) is installed, its Olm ratchet is
measured in the same run as an independent reference.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kluis.bench.timing import Figure, compare, median_us
from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.envelope import SUITE, EnvelopeKeyRing, encode_inner, hpke_info, seal
from kluis.protocol.handshake import INFO, InitialMessage, accept, initiate
from kluis.protocol.keys import IdentityKeyPair, SignedPublicKey
from kluis.protocol.padding import pad, unpad
from kluis.protocol.prekeys import LocalPreKeys
from kluis.protocol.ratchet.constants import ROOT_KDF_INFO
from kluis.protocol.ratchet.session import RatchetSession
from kluis.protocol.session import Session, SessionPayload

MESSAGE = bytes(range(256))
_SHA256 = hashes.SHA256()
_NONCE = bytes(12)


class _Party:
    def __init__(self, now: int) -> None:
        self.identity = IdentityKeyPair.generate(os.urandom)
        self.account = os.urandom(16)
        self.prekeys = LocalPreKeys.create(self.identity, os.urandom, one_time=2, kem_one_time=2)
        self.ring = EnvelopeKeyRing.create(self.identity, os.urandom, now)

    def bundle(self) -> PreKeyBundle:
        return self.prekeys.bundle(self.identity.public, self.ring.current_public())


# -- floors: the pyca calls each operation makes -------------------------------------------------


def _verify(signed: SignedPublicKey, identity_signing: bytes) -> None:
    Ed25519PublicKey.from_public_bytes(identity_signing).verify(
        signed.signature, signed.signed_message(signed.kind, signed.key_id, signed.public)
    )


def _identity_parse_floor(identity: IdentityKeyPair) -> None:
    """IdentityPublicKey.from_bytes: load both keys and verify the binding."""
    pub = identity.public
    Ed25519PublicKey.from_public_bytes(pub.signing).verify(
        pub.binding, b"Kluis identity binding v1\x00" + pub.dh
    )
    x25519.X25519PublicKey.from_public_bytes(pub.dh)


def _kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    mac = hmac.HMAC(ck, _SHA256)
    nxt = mac.copy()
    mac.update(b"\x01")
    nxt.update(b"\x02")
    return mac.finalize(), nxt.finalize()


def _symmetric_step_floor(ck: bytes, plaintext: bytes, ad: bytes) -> None:
    """One message's symmetric work on both sides: KDF_CK twice, AES-256-GCM encrypt + decrypt."""
    mk, _ = _kdf_ck(ck)
    ct = AESGCM(mk).encrypt(_NONCE, plaintext, ad)
    mk2, _ = _kdf_ck(ck)
    AESGCM(mk2).decrypt(_NONCE, ct, ad)


def _dh_step_floor(peer_public: bytes, rk: bytes) -> None:
    """A DH ratchet step seen from both sides (Double Ratchet §3.5): the sender makes a key pair,
    both run DH and KDF_RK."""
    fresh = x25519.X25519PrivateKey.from_private_bytes(os.urandom(32))
    fresh_public = fresh.public_key().public_bytes_raw()
    out = fresh.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    HKDF(_SHA256, 64, rk, ROOT_KDF_INFO).derive(out)
    out = fresh.exchange(x25519.X25519PublicKey.from_public_bytes(fresh_public))
    HKDF(_SHA256, 64, rk, ROOT_KDF_INFO).derive(out)


def _bench_pqxdh(alice: _Party, bob: _Party, samples: int) -> dict[str, Figure]:
    bundle_bytes = bob.bundle().to_bytes()
    b = bob.bundle()

    def pqxdh_initiate() -> None:
        # What a client does with a bundle from the directory: parse, verify, then PQXDH §3.3.
        initiate(alice.identity, PreKeyBundle.from_bytes(bundle_bytes).verify(), os.urandom)

    def pqxdh_initiate_floor() -> None:
        _identity_parse_floor(bob.identity)
        for signed in (b.signed_prekey, b.kem_prekey, b.envelope_key):
            _verify(signed, b.identity.signing)
        spk = x25519.X25519PublicKey.from_public_bytes(b.signed_prekey.public)
        otk = x25519.X25519PublicKey.from_public_bytes(b.one_time_prekey.public if b.one_time_prekey else b"")
        kem = mlkem.MLKEM768PublicKey.from_public_bytes(b.kem_prekey.public)
        ek = x25519.X25519PrivateKey.from_private_bytes(os.urandom(32))
        ss, _ = kem.encapsulate()
        ik = x25519.X25519PublicKey.from_public_bytes(b.identity.dh)
        km = alice.identity.dh(spk) + ek.exchange(ik) + ek.exchange(spk) + ek.exchange(otk) + ss
        ek.public_key().public_bytes_raw()
        HKDF(_SHA256, 32, bytes(32), INFO).derive(b"\xff" * 32 + km)

    message, _ = initiate(alice.identity, b.verify(), os.urandom)
    message_bytes = message.to_bytes()
    spk_pair = bob.prekeys.signed_prekey(message.signed_prekey_id)
    kem_pair = bob.prekeys.kem_prekey(message.kem_prekey_id)
    otk_pair = bob.prekeys.one_time_prekey(message.one_time_prekey_id or 0)
    if spk_pair is None or kem_pair is None or otk_pair is None:
        raise RuntimeError("benchmark bundle lacks a prekey")

    def pqxdh_accept() -> None:
        accept(bob.identity, bob.prekeys, InitialMessage.from_bytes(message_bytes))

    def pqxdh_accept_floor() -> None:
        _identity_parse_floor(alice.identity)
        ek = x25519.X25519PublicKey.from_public_bytes(message.ephemeral)
        ik = x25519.X25519PublicKey.from_public_bytes(alice.identity.public.dh)
        km = spk_pair.private.exchange(ik) + bob.identity.dh(ek) + spk_pair.private.exchange(ek)
        km += otk_pair.private.exchange(ek) + kem_pair.private.decapsulate(message.kem_ciphertext)
        HKDF(_SHA256, 32, bytes(32), INFO).derive(b"\xff" * 32 + km)

    return {
        "pqxdh_initiate": compare(pqxdh_initiate, pqxdh_initiate_floor, samples=samples, inner=20),
        "pqxdh_accept": compare(pqxdh_accept, pqxdh_accept_floor, samples=samples, inner=20),
    }


def _ratchet_pair(alice: _Party, bob: _Party) -> tuple[RatchetSession, RatchetSession, bytes]:
    message, secret = initiate(alice.identity, bob.bundle().verify(), os.urandom)
    received, _ = accept(bob.identity, bob.prekeys, message)
    a = RatchetSession.initiator(secret.shared_secret, secret.ratchet_key, secret.associated_data, os.urandom)
    z = RatchetSession.responder(received.shared_secret, received.ratchet_key, received.associated_data)
    z.decrypt(a.encrypt(MESSAGE, os.urandom))
    return a, z, secret.associated_data


def _bench_ratchet(alice: _Party, bob: _Party, samples: int) -> dict[str, Figure]:
    a, z, associated_data = _ratchet_pair(alice, bob)
    ck = os.urandom(32)
    ad = associated_data + bytes(41)  # the AEAD authenticates AD || header

    def burst() -> None:
        z.decrypt(a.encrypt(MESSAGE, os.urandom))

    turn = [a, z]

    def alternating() -> None:
        # Direction changes with every message, so every message is a DH ratchet step.
        sender, receiver = turn
        receiver.decrypt(sender.encrypt(MESSAGE, os.urandom))
        turn.reverse()

    peer = bob.prekeys.current_signed_prekey().public
    rk = os.urandom(32)

    def alternating_floor() -> None:
        _dh_step_floor(peer, rk)
        _symmetric_step_floor(ck, MESSAGE, ad)

    return {
        "ratchet_burst": compare(
            burst, lambda: _symmetric_step_floor(ck, MESSAGE, ad), samples=samples, inner=200
        ),
        "ratchet_alternating": compare(alternating, alternating_floor, samples=samples, inner=50),
    }


class _EnvelopeFloors:
    """The pyca calls of seal (verify the key, load it, HPKE) and open (HPKE, parse the sender)."""

    def __init__(self, alice: _Party, bob: _Party, ratchet_message: bytes) -> None:
        self.alice, self.bob = alice, bob
        self.key = bob.ring.current_public()
        self.info = hpke_info(1, self.key.key_id, bob.identity.public.signing)
        self.inner = encode_inner(alice.account, alice.identity.public, ratchet_message)
        sealed = seal(self.key, bob.identity.public, alice.account, alice.identity.public, ratchet_message)
        self.hpke_ciphertext = sealed[5:]
        mlkem_seed, x_private = bob.ring.current.seeds()
        self.private = hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed),
            x25519.X25519PrivateKey.from_private_bytes(x_private),
        )

    def seal(self) -> None:
        _verify(self.key, self.bob.identity.public.signing)
        kem = mlkem.MLKEM768PublicKey.from_public_bytes(self.key.public[:1184])
        dh = x25519.X25519PublicKey.from_public_bytes(self.key.public[1184:])
        SUITE.encrypt(self.inner, hpke.MLKEM768X25519PublicKey(kem, dh), info=self.info)

    def open(self) -> None:
        SUITE.decrypt(self.hpke_ciphertext, self.private, info=self.info)
        _identity_parse_floor(self.alice.identity)


def _bench_envelope(alice: _Party, bob: _Party, samples: int, now: int) -> dict[str, Figure]:
    a, _, associated_data = _ratchet_pair(alice, bob)
    ratchet_message = a.encrypt(pad(MESSAGE), os.urandom)
    floors = _EnvelopeFloors(alice, bob, ratchet_message)
    key, recipient = floors.key, bob.identity.public
    sealed = seal(key, recipient, alice.account, alice.identity.public, ratchet_message)

    def envelope_seal() -> None:
        seal(key, recipient, alice.account, alice.identity.public, ratchet_message)

    def envelope_open() -> None:
        bob.ring.open(sealed, now)

    # The whole path of one message: pad + ratchet + seal, then open + decrypt + unpad.
    sender = Session.initiate(alice.identity, bob.bundle().verify(), os.urandom)
    first = sender.encrypt(b"hi", os.urandom)
    opened = bob.ring.open(seal(key, recipient, alice.account, alice.identity.public, first), now)
    receiver, _ = Session.accept(bob.identity, bob.prekeys, SessionPayload.from_bytes(opened.ratchet_message))
    sender.decrypt(SessionPayload.from_bytes(receiver.encrypt(b"ok", os.urandom)))

    def full_path() -> None:
        payload = sender.encrypt(MESSAGE, os.urandom)
        envelope = seal(key, recipient, alice.account, alice.identity.public, payload)
        receiver.decrypt(SessionPayload.from_bytes(bob.ring.open(envelope, now).ratchet_message))

    ck = os.urandom(32)
    ad = associated_data + bytes(41)

    def full_path_floor() -> None:
        _symmetric_step_floor(ck, pad(MESSAGE), ad)
        floors.seal()
        floors.open()

    unpad(pad(MESSAGE))
    return {
        "envelope_seal": compare(envelope_seal, floors.seal, samples=samples, inner=30),
        "envelope_open": compare(envelope_open, floors.open, samples=samples, inner=30),
        "full_path": compare(full_path, full_path_floor, samples=samples, inner=30),
    }


def full_path_floor_us(samples: int = 11) -> float:
    """The primitive floor of one message's whole path (pad, ratchet, seal; open, decrypt)."""
    now = int(time.time())
    return _bench_envelope(_Party(now), _Party(now), samples, now)["full_path"].floor_us


def run(samples: int = 31) -> dict[str, Any]:
    """Measures every figure of issue 2's benchmark; returns the JSON-ready result."""
    now = int(time.time())
    alice, bob = _Party(now), _Party(now)
    results = _bench_pqxdh(alice, bob, samples)
    results |= _bench_ratchet(alice, bob, samples)
    results |= _bench_envelope(alice, bob, samples, now)
    out: dict[str, Any] = {name: figure.as_dict() for name, figure in results.items()}
    reference = _vodozemac_reference(samples)
    if reference is not None:
        out["reference_vodozemac"] = reference
    out["targets"] = {
        "ratchet_burst_ratio_max": 2.5,
        "full_path_ratio_max": 1.5,
        "pqxdh_ratio_max": 1.5,
        "met": _targets_met(results),
    }
    return out


def _targets_met(results: dict[str, Figure]) -> bool:
    return (
        results["ratchet_burst"].ratio <= 2.5
        and results["full_path"].ratio <= 1.5
        and results["pqxdh_initiate"].ratio <= 1.5
        and results["pqxdh_accept"].ratio <= 1.5
    )


def _vodozemac_reference(samples: int) -> dict[str, Any] | None:
    """Olm (vodozemac, Rust) encrypt+decrypt of the same 256-byte message, same run."""
    try:
        import vodozemac
    except ImportError:
        return None
    alice, bob = vodozemac.Account(), vodozemac.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    outbound = alice.create_outbound_session(bob.curve25519_key, otk)
    first = outbound.encrypt(MESSAGE)
    pre_key = first.to_pre_key()
    if pre_key is None:
        return None
    inbound, _ = bob.create_inbound_session(alice.curve25519_key, pre_key)
    outbound.decrypt(inbound.encrypt(MESSAGE))
    inbound.decrypt(outbound.encrypt(MESSAGE))

    def burst() -> None:
        inbound.decrypt(outbound.encrypt(MESSAGE))

    turn: list[Any] = [outbound, inbound]

    def alternating() -> None:
        turn[1].decrypt(turn[0].encrypt(MESSAGE))
        turn.reverse()

    fn: Callable[[], None]
    out: dict[str, Any] = {}
    for name, fn, inner in (("burst_us", burst, 200), ("alternating_us", alternating, 50)):
        out[name] = round(median_us(fn, samples=samples, inner=inner), 2)
    out["version"] = getattr(vodozemac, "__version__", "installed")
    return out
