"""Strassen's matrix product (seed 000): 7 half-size products instead of 8, recursively.

An option of the NumPy MatMul/Gemm kernels for large near-square 2-D products, off by default:
``tvmlite.ops.strassen.STRASSEN_MIN_DIM`` is the smallest dimension from which it is used (0 = never).
bench/bench_strassen.py measures the crossover against BLAS on this machine; with OpenBLAS's
AVX-512 SGEMM it found none up to 2048 (0.89x at 1024, 0.94x at 2048), so it stays off.
"""
from __future__ import annotations

import numpy as np

#: use Strassen when every dimension is >= this (0 disables it)
STRASSEN_MIN_DIM = 0
#: below this size a half-product goes to BLAS
STRASSEN_LEAF = 512
#: "near-square": largest / smallest dimension at most this
STRASSEN_MAX_ASPECT = 2.0


def wants_strassen(a: np.ndarray, b: np.ndarray) -> bool:
    if not STRASSEN_MIN_DIM or a.ndim != 2 or b.ndim != 2 or a.dtype.kind != "f":
        return False
    dims = (a.shape[0], a.shape[1], b.shape[1])
    return min(dims) >= STRASSEN_MIN_DIM and max(dims) <= STRASSEN_MAX_ASPECT * min(dims)


def strassen_matmul(a: np.ndarray, b: np.ndarray, leaf: int | None = None) -> np.ndarray:
    """``a @ b`` for 2-D arrays by Strassen's recursion (odd sizes padded by one zero row/column)."""
    leaf = STRASSEN_LEAF if leaf is None else leaf
    n, k = a.shape
    k2, m = b.shape
    if k != k2:
        raise ValueError(f"matmul: inner dimensions differ ({k} vs {k2})")
    if min(n, k, m) <= leaf:
        return a @ b
    pn, pk, pm = n + n % 2, k + k % 2, m + m % 2
    if (pn, pk, pm) != (n, k, m):
        ap = np.zeros((pn, pk), a.dtype)
        ap[:n, :k] = a
        bp = np.zeros((pk, pm), b.dtype)
        bp[:k, :m] = b
        return strassen_matmul(ap, bp, leaf)[:n, :m]
    h, hk, hm = n // 2, k // 2, m // 2
    A, B, C, D = a[:h, :hk], a[:h, hk:], a[h:, :hk], a[h:, hk:]
    E, F, G, H = b[:hk, :hm], b[:hk, hm:], b[hk:, :hm], b[hk:, hm:]
    s1 = strassen_matmul(B - D, G + H, leaf)
    s2 = strassen_matmul(A + D, E + H, leaf)
    s3 = strassen_matmul(A - C, E + F, leaf)
    s4 = strassen_matmul(A + B, H, leaf)
    s5 = strassen_matmul(A, F - H, leaf)
    s6 = strassen_matmul(D, G - E, leaf)
    s7 = strassen_matmul(C + D, E, leaf)
    out = np.empty((n, m), np.result_type(a.dtype, b.dtype))
    out[:h, :hm] = s1 + s2 - s4 + s6
    out[:h, hm:] = s4 + s5
    out[h:, :hm] = s6 + s7
    out[h:, hm:] = s2 - s3 + s5 - s7
    return out
