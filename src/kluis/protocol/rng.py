"""Randomness is passed in, never taken from a global (STYLE.md §2, "Inject randomness and time").

Production code passes :func:`os.urandom`. Tests and the vector generator pass a
:class:`DeterministicRng`, so every key they make can be reproduced from a seed.

pyca draws its own randomness inside ML-KEM encapsulation and HPKE encryption; those two outputs are
therefore not reproducible from the seed, and the vectors record them instead (vectors/README.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

Rng = Callable[[int], bytes]
"""Returns that many bytes of cryptographically secure randomness."""


class DeterministicRng:
    """Reproducible bytes for tests and vectors: call i returns SHAKE-256(seed || i)[:n].

    Not for production: anyone who knows the seed knows every key.
    """

    __slots__ = ("_calls", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._calls = 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self._seed + self._calls.to_bytes(8, "big")).digest(n)
        self._calls += 1
        return out

    def __repr__(self) -> str:
        return "DeterministicRng(..)"


__all__ = ["DeterministicRng", "Rng"]
