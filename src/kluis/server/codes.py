"""Activation codes: random bearer codes that pay for days of subscription.

A code is 160 random bits from ``os.urandom``, written for humans as ``KLUIS-`` and eight groups of
four RFC 4648 base32 characters. The database stores only SHA-256 of the decoded bits, so a seized
database yields no usable code (160 bits cannot be guessed from a hash), and a code is never linked
to the account it paid for.

Typing mistakes are forgiven on redemption: case, dashes, spaces, the ``KLUIS`` prefix, and the
digits 0, 1 and 8 read as the letters O, I and B (base32 has no 0, 1, 8 or 9).
"""

from __future__ import annotations

import base64
import hashlib
import os

CODE_BYTES = 20
"""160 bits: exactly 32 base32 characters, no padding."""
CODE_PREFIX = "KLUIS"
_GROUP = 4
_HASH_LABEL = b"Kluis activation code v1\x00"
_CONFUSABLE = str.maketrans({"0": "O", "1": "I", "8": "B"})


_MALFORMED_LABEL = b"Kluis malformed code v1\x00"


def new_code() -> str:
    """A fresh random code, e.g. ``KLUIS-ABCD-EFGH-...`` (8 groups)."""
    text = base64.b32encode(os.urandom(CODE_BYTES)).decode("ascii")
    groups = [text[i : i + _GROUP] for i in range(0, len(text), _GROUP)]
    return "-".join([CODE_PREFIX, *groups])


def _decode(code: str) -> bytes | None:
    text = "".join(code.split()).replace("-", "").upper().translate(_CONFUSABLE)
    if text.startswith(CODE_PREFIX) and len(text) == len(CODE_PREFIX) + 32:
        text = text[len(CODE_PREFIX) :]
    if len(text) != 32:
        return None
    try:
        return base64.b32decode(text)  # 32 valid characters always decode to 20 bytes
    except ValueError:
        return None


def is_well_formed(code: str) -> bool:
    """Whether ``code`` has the shape of a code (after normalisation); says nothing of its validity."""
    return _decode(code) is not None


def hash_code(code: str) -> bytes:
    """The 32-byte value stored for ``code``, after normalising what a person may have typed.

    Never raises: text that cannot be a code hashes under a different label, so it matches no stored
    code and the caller answers exactly as for an unknown or used code (one opaque failure).
    """
    raw = _decode(code)
    if raw is None:
        return hashlib.sha256(_MALFORMED_LABEL + code.encode("utf-8", "surrogatepass")).digest()
    return hashlib.sha256(_HASH_LABEL + raw).digest()
