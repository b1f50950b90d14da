"""Dtype helpers the float kernels share: Python scalars as NumPy scalars of the array's dtype (no
float64 promotion), the accumulation dtype of a half-precision or ml_dtypes float, and half
precision operands promoted to float32 for matmuls."""
from __future__ import annotations

import numpy as np


def _s(v, dtype):
    """A Python scalar as a numpy scalar of ``dtype`` (no float64 promotion)."""
    return np.dtype(dtype).type(v)


def _acc(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize < 4:
        return np.dtype(np.float32)
    if dtype.kind != "f":
        # bfloat16 (ml_dtypes) and friends report kind 'V'; compute those in float32 too
        return np.dtype(np.float32)
    return dtype


def _half_up(a, b):
    """Half-precision operands go to float32 (exact products, float32 accumulation)."""
    if a.dtype.kind == "f" and a.dtype.itemsize < 4 or b.dtype.kind == "f" and b.dtype.itemsize < 4:
        return a.astype(np.float32), b.astype(np.float32)
    return a, b
