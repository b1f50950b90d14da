"""Timing two variants of a layer against each other, measuring only as long as the choice is close.

Per-layer choices (int8 or float, factorized or not) compare two onnxruntime sessions on one layer.
Most comparisons are not close (a 3x3 conv in int8 is 2-4x faster, a tiny element-wise op 2x
slower): a few interleaved rounds decide them. Only a ratio within ``margin`` of the threshold gets
more rounds, doubling up to ``max_rounds``. The median stays the statistic (robust on a loaded host).
"""
from __future__ import annotations

import time

import numpy as np


def timed_ratio(fa, fb, threshold: float = 1.0, *, max_rounds: int = 30, min_rounds: int = 6,
                margin: float = 0.15, warmup: int = 2) -> tuple[float, float, int]:
    """Median milliseconds of ``fa`` and ``fb`` run alternately (every other round in reverse
    order), and the rounds taken: at least ``min_rounds``, more while ``ms_a / ms_b`` lies within
    ``margin`` of ``threshold`` (the ratio the caller decides at)."""
    for _ in range(warmup):
        fa()
        fb()
    ta: list[float] = []
    tb: list[float] = []
    target = max(1, min(min_rounds, max_rounds))
    while True:
        while len(ta) < target:
            pair = ((fa, ta), (fb, tb)) if len(ta) % 2 == 0 else ((fb, tb), (fa, ta))
            for f, acc in pair:
                t0 = time.perf_counter()
                f()
                acc.append((time.perf_counter() - t0) * 1e3)
        ma, mb = float(np.median(ta)), float(np.median(tb))
        ratio = ma / max(mb, 1e-12)
        if target >= max_rounds or threshold <= 0 or abs(ratio / threshold - 1.0) > margin:
            return ma, mb, len(ta)
        target = min(2 * target, max_rounds)
