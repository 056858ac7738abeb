"""The two KDF chains of spec §5.2 (Recommended cryptographic algorithms), from pyca primitives.

KDF_RK(rk, dh_out): HKDF-SHA256 with salt = rk, input key material = dh_out, info = ROOT_KDF_INFO,
64 bytes of output: the first 32 are the new root key, the last 32 the new chain key.

KDF_CK(ck): HMAC-SHA256(ck, 0x01) is the message key, HMAC-SHA256(ck, 0x02) the next chain key.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kluis.protocol.ratchet.constants import CHAIN_MESSAGE_CONSTANT, CHAIN_NEXT_CONSTANT, ROOT_KDF_INFO

# One hash-algorithm object for every call: constructing SHA256() each time is measurable per message.
_SHA256 = hashes.SHA256()


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """§2.3/§5.2 KDF_RK: returns (new root key, new chain key)."""
    out = HKDF(algorithm=_SHA256, length=64, salt=rk, info=ROOT_KDF_INFO).derive(dh_out)
    return out[:32], out[32:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """§2.2/§5.2 KDF_CK: returns (message key, next chain key).

    The keyed HMAC state is copied rather than keyed twice: same outputs, one key schedule fewer.
    """
    mac = hmac.HMAC(ck, _SHA256)
    nxt = mac.copy()
    mac.update(CHAIN_MESSAGE_CONSTANT)
    nxt.update(CHAIN_NEXT_CONSTANT)
    return mac.finalize(), nxt.finalize()


def derive_chain(ck: bytes, start: int, stop: int) -> tuple[list[tuple[int, bytes]], bytes]:
    """Message keys for counters ``start..stop-1`` of a chain whose key at ``start`` is ``ck``.

    Returns the (counter, message key) pairs and the chain key at ``stop``. Pure: nothing is stored, so a
    caller can discard the result when the message fails to authenticate (spec §3.5 skipped keys).
    """
    keys: list[tuple[int, bytes]] = []
    for n in range(start, stop):
        mk, ck = kdf_ck(ck)
        keys.append((n, mk))
    return keys, ck
