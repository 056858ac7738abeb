"""Test-only bridge to the independent ``doubleratchet`` package (PyPI 1.3.0, Syndace).

Configures it exactly as Kluis' ratchet, except for the AEAD, which both sides swap for that package's
recommended AES-256-CBC + HMAC-SHA256 AEAD (``doubleratchet.recommended.aead_aes_hmac``):

- DH ratchet: X25519 (its ``diffie_hellman_ratchet_curve25519``), private keys drawn from a
  :class:`DeterministicRng` so that both implementations generate the same key pairs;
- root chain: HKDF-SHA256 (its ``kdf_hkdf``), salt = root key, info = our ROOT_KDF_INFO;
- message chains: its ``kdf_separate_hmacs`` with constant ``0x02 0x01``: KDFChain keeps the first 32
  output bytes (HMAC(ck, 0x02)) as the next chain key and returns HMAC(ck, 0x01) as the message key,
  which is our KDF_CK;
- associated data: ``_build_associated_data`` returns our layout ``AD || header`` (41-byte header).

:class:`CbcHmacAead` is our ``RatchetAead`` reproducing that AEAD with pyca primitives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from doubleratchet import DoubleRatchet, EncryptedMessage, Header
from doubleratchet.recommended import (
    HashFunction,
    aead_aes_hmac,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)

from kluis.protocol.errors import DecryptionError
from kluis.protocol.ratchet.constants import MAX_SKIP, MAX_SKIPPED_KEYS, MESSAGE_VERSION, ROOT_KDF_INFO
from kluis.protocol.ratchet.header import HEADER, parse_message
from kluis.protocol.rng import Rng

COMPAT_AEAD_INFO = b"Kluis compat AEAD"
MESSAGE_CHAIN_CONSTANT = b"\x02\x01"  # next chain key first, message key second (see docstring)


class CbcHmacAead:
    """pyca re-implementation of ``aead_aes_hmac.AEAD`` with SHA-256 and COMPAT_AEAD_INFO."""

    __slots__ = ()

    @staticmethod
    def _keys(mk: bytes) -> tuple[bytes, bytes, bytes]:
        out = HKDF(algorithm=hashes.SHA256(), length=80, salt=bytes(32), info=COMPAT_AEAD_INFO).derive(mk)
        return out[:32], out[32:64], out[64:]

    def encrypt(self, mk: bytes, plaintext: bytes, ad: bytes) -> bytes:
        ek, ak, iv = self._keys(mk)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
        enc = Cipher(algorithms.AES(ek), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        mac = hmac.HMAC(ak, hashes.SHA256())
        mac.update(ad + ct)
        return ct + mac.finalize()

    def decrypt(self, mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        ek, ak, iv = self._keys(mk)
        ct, tag = ciphertext[:-32], ciphertext[-32:]
        mac = hmac.HMAC(ak, hashes.SHA256())
        mac.update(ad + ct)
        try:
            mac.verify(tag)
            dec = Cipher(algorithms.AES(ek), modes.CBC(iv)).decryptor()
            unpadder = padding.PKCS7(128).unpadder()
            return unpadder.update(dec.update(ct) + dec.finalize()) + unpadder.finalize()
        except Exception:  # InvalidSignature, or bad padding/length after a valid tag
            raise DecryptionError("ratchet message") from None

    def ad_layout(self, associated_data: bytes, header: bytes) -> bytes:
        return associated_data + header


COMPAT_AEAD = CbcHmacAead()


class TheirRootKdf(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ROOT_KDF_INFO


class TheirChainKdf(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256


class TheirAead(aead_aes_hmac.AEAD):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return COMPAT_AEAD_INFO


def header_bytes(header: Header) -> bytes:
    return HEADER.pack(
        MESSAGE_VERSION, header.ratchet_pub, header.previous_sending_chain_length, header.sending_chain_length
    )


class TheirRatchet(DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        return associated_data + header_bytes(header)


def dh_ratchet_class(rng: Rng) -> type[diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet]:
    """A DH ratchet whose fresh private keys are ``rng(32)``, the way our session draws them."""

    class Deterministic(diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet):
        @staticmethod
        def _generate_priv() -> bytes:
            return rng(32)

    return Deterministic


def _config(rng: Rng) -> dict[str, Any]:
    return {
        "diffie_hellman_ratchet_class": dh_ratchet_class(rng),
        "root_chain_kdf": TheirRootKdf,
        "message_chain_kdf": TheirChainKdf,
        "message_chain_constant": MESSAGE_CHAIN_CONSTANT,
        "dos_protection_threshold": MAX_SKIP,
        "max_num_skipped_message_keys": MAX_SKIPPED_KEYS,
        "aead": TheirAead,
    }


def to_bytes(message: EncryptedMessage) -> bytes:
    return header_bytes(message.header) + message.ciphertext


def from_bytes(data: bytes) -> EncryptedMessage:
    parsed = parse_message(data)
    return EncryptedMessage(header=Header(parsed.dh, parsed.pn, parsed.n), ciphertext=parsed.ciphertext)


class TheirParty:
    """One side on the ``doubleratchet`` package, created lazily by its first send or receive."""

    def __init__(self, shared_secret: bytes, ratchet_key: bytes, ad: bytes, rng: Rng, *, initiator: bool):
        self.shared_secret = shared_secret
        self.ratchet_key = ratchet_key  # Bob's public key for the initiator, own private key for Bob
        self.ad = ad
        self.rng = rng
        self.initiator = initiator
        self.ratchet: TheirRatchet | None = None

    def encrypt(self, plaintext: bytes) -> bytes:
        if self.ratchet is None:
            assert self.initiator
            self.ratchet, msg = asyncio.run(
                TheirRatchet.encrypt_initial_message(
                    **_config(self.rng),
                    shared_secret=self.shared_secret,
                    recipient_ratchet_pub=self.ratchet_key,
                    message=plaintext,
                    associated_data=self.ad,
                )
            )
            return to_bytes(msg)
        return to_bytes(asyncio.run(self.ratchet.encrypt_message(plaintext, self.ad)))

    def decrypt(self, data: bytes) -> bytes:
        message = from_bytes(data)
        if self.ratchet is None:
            assert not self.initiator
            self.ratchet, plaintext = asyncio.run(
                TheirRatchet.decrypt_initial_message(
                    **_config(self.rng),
                    shared_secret=self.shared_secret,
                    own_ratchet_priv=self.ratchet_key,
                    message=message,
                    associated_data=self.ad,
                )
            )
            return bytes(plaintext)
        return bytes(asyncio.run(self.ratchet.decrypt_message(message, self.ad)))
