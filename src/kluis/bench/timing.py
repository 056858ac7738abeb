"""Interleaved timing of an operation and its reference, so both see the same machine state."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    median_us: float
    floor_us: float

    @property
    def ratio(self) -> float:
        return self.median_us / self.floor_us

    def as_dict(self) -> dict[str, float]:
        return {
            "median_us": round(self.median_us, 2),
            "floor_us": round(self.floor_us, 2),
            "ratio": round(self.ratio, 3),
        }


def _batch_us(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(inner):
        fn()
    return (time.perf_counter_ns() - start) / inner / 1000


def median_us(fn: Callable[[], object], *, samples: int, inner: int) -> float:
    fn()
    return statistics.median(_batch_us(fn, inner) for _ in range(samples))


def compare(op: Callable[[], object], floor: Callable[[], object], *, samples: int, inner: int) -> Figure:
    """Median per-call time of ``op`` and of ``floor``, sampled alternately in batches of ``inner``.

    Alternating the samples spreads frequency changes and other load evenly over both; the median
    drops the samples a garbage collection or a scheduler hiccup landed in.
    """
    op()
    floor()
    gc.collect()
    ops, floors = [], []
    for _ in range(samples):
        ops.append(_batch_us(op, inner))
        floors.append(_batch_us(floor, inner))
    return Figure(statistics.median(ops), statistics.median(floors))
