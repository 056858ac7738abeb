"""PQXDH §3.3/§3.4 as literally as the spec states it, from raw key bytes."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric import x25519


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.2 Extract and §2.3 Expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def dh(private: bytes, public: bytes) -> bytes:
    return x25519.X25519PrivateKey.from_private_bytes(private).exchange(
        x25519.X25519PublicKey.from_public_bytes(public)
    )


def responder_secret(
    *,
    ik_b: bytes,
    spk_b: bytes,
    opk_b: bytes | None,
    ik_a_pub: bytes,
    ek_a_pub: bytes,
    kem_ss: bytes,
    info: bytes,
) -> bytes:
    """SK = KDF(DH1 || DH2 || DH3 || DH4 || SS), computed from Bob's side (§3.4)."""
    dh1 = dh(spk_b, ik_a_pub)
    dh2 = dh(ik_b, ek_a_pub)
    dh3 = dh(spk_b, ek_a_pub)
    dh4 = dh(opk_b, ek_a_pub) if opk_b is not None else b""
    return hkdf_sha256(b"\xff" * 32 + dh1 + dh2 + dh3 + dh4 + kem_ss, b"\x00" * 32, info, 32)
