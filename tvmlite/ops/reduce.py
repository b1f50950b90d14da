"""Reduction kernels: Reduce*, ArgMax/ArgMin, CumSum, TopK, LpNormalization."""
from __future__ import annotations

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.registry import kernel


def _ml_float(dt) -> bool:
    dt = np.dtype(dt)
    return dt.kind == "V" and "float" in dt.name


def _norm_axes(axes, ndim):
    """Normalised tuple of axes, or None for 'all axes'."""
    if axes is None:
        return None
    axes = np.asarray(axes, dtype=np.int64).reshape(-1).tolist()
    if len(axes) == 0:
        return None
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise UnsupportedError(f"reduce axis {a} out of range for rank {ndim}")
        out.append(a + ndim if a < 0 else a)
    return tuple(sorted(set(out)))


def _empty_fill(dt, kind):
    """Identity of max/min reductions over an empty set."""
    dt = np.dtype(dt)
    if dt.kind == "f":
        return -np.inf if kind == "max" else np.inf
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return info.min if kind == "max" else info.max
    if dt.kind == "b":
        return False if kind == "max" else True
    raise UnsupportedError(f"reduce {kind} over an empty set for dtype {dt}")


def _compute_dtype(dt):
    dt = np.dtype(dt)
    if dt == np.float16 or _ml_float(dt):
        return np.dtype(np.float32)
    return dt


def keeps_dims(keepdims) -> bool:
    """A reduction's ``keepdims`` as onnxruntime and onnx's shape inference read it: only 1 keeps
    the reduced axes (7 or -1, invalid, drop them like 0)."""
    return int(keepdims) == 1


def _reduce(x, axes, keepdims, noop_with_empty_axes, op):
    x = np.asarray(x)
    ax = _norm_axes(axes, x.ndim)
    if ax is None and noop_with_empty_axes:
        return x
    dt = x.dtype
    cdt = _compute_dtype(dt)
    xc = x if cdt == dt else x.astype(cdt)
    with np.errstate(all="ignore"):
        r = op(xc, ax, keeps_dims(keepdims))
    r = np.asarray(r)
    return r if r.dtype == dt else r.astype(dt)


def _sum(x, ax, kd):
    return np.sum(x, axis=ax, keepdims=kd, dtype=x.dtype)


def _mean(x, ax, kd):
    if x.dtype.kind in "iu":
        return np.mean(x, axis=ax, keepdims=kd, dtype=np.float64)
    return np.mean(x, axis=ax, keepdims=kd, dtype=x.dtype)


def _max(x, ax, kd):
    return np.max(x, axis=ax, keepdims=kd, initial=_empty_fill(x.dtype, "max")) if x.size == 0 \
        else np.max(x, axis=ax, keepdims=kd)


def _min(x, ax, kd):
    return np.min(x, axis=ax, keepdims=kd, initial=_empty_fill(x.dtype, "min")) if x.size == 0 \
        else np.min(x, axis=ax, keepdims=kd)


def _prod(x, ax, kd):
    return np.prod(x, axis=ax, keepdims=kd, dtype=x.dtype)


def _l1(x, ax, kd):
    return np.sum(np.abs(x), axis=ax, keepdims=kd, dtype=x.dtype)


def _l2(x, ax, kd):
    if x.dtype.kind in "iu":
        return np.sqrt(np.sum(np.square(x.astype(np.float64)), axis=ax, keepdims=kd))
    return np.sqrt(np.sum(np.square(x), axis=ax, keepdims=kd, dtype=x.dtype))


def _sumsquare(x, ax, kd):
    return np.sum(np.square(x), axis=ax, keepdims=kd, dtype=x.dtype)


def _logsum(x, ax, kd):
    xf = x if x.dtype.kind == "f" else x.astype(np.float64)
    return np.log(np.sum(xf, axis=ax, keepdims=kd))


def _logsumexp(x, ax, kd):
    xf = x if x.dtype.kind == "f" else x.astype(np.float64)
    if xf.size == 0:
        return np.log(np.sum(np.exp(xf), axis=ax, keepdims=kd))
    m = np.max(xf, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(xf.dtype, copy=False)
    s = np.log(np.sum(np.exp(xf - m), axis=ax, keepdims=True)) + m
    if not kd:
        s = np.squeeze(s, axis=ax if ax is not None else tuple(range(xf.ndim)))
    return s


_REDUCERS = {
    "ReduceSum": (_sum, 13),
    "ReduceMean": (_mean, 18),
    "ReduceMax": (_max, 18),
    "ReduceMin": (_min, 18),
    "ReduceProd": (_prod, 18),
    "ReduceL1": (_l1, 18),
    "ReduceL2": (_l2, 18),
    "ReduceLogSum": (_logsum, 18),
    "ReduceLogSumExp": (_logsumexp, 18),
    "ReduceSumSquare": (_sumsquare, 18),
}


def _register_reduce(name, op, input_axes_since):
    def k_attr(data, *, axes=None, keepdims=1):
        return _reduce(data, axes, keepdims, 0, op)

    def k_input(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(data, axes, keepdims, noop_with_empty_axes, op)

    k_attr.__name__ = k_input.__name__ = name.lower()
    kernel(name, since=1)(k_attr)
    kernel(name, since=input_axes_since)(k_input)


for _n, (_op, _since) in _REDUCERS.items():
    _register_reduce(_n, _op, _since)


# --------------------------------------------------------------------------------------------------
# ArgMax / ArgMin
# --------------------------------------------------------------------------------------------------

def _arg(x, axis, keepdims, select_last_index, fn):
    x = np.asarray(x)
    if _ml_float(x.dtype):
        x = x.astype(np.float32)
    if x.ndim == 0:
        return np.zeros((), np.int64)
    axis = axis + x.ndim if axis < 0 else axis
    if select_last_index:
        n = x.shape[axis]
        idx = n - 1 - fn(np.flip(x, axis=axis), axis=axis)
    else:
        idx = fn(x, axis=axis)
    idx = idx.astype(np.int64, copy=False)
    if keeps_dims(keepdims):
        idx = np.expand_dims(idx, axis)
    return idx


@kernel("ArgMax", since=1)
def argmax_1(data, *, axis=0, keepdims=1):
    return _arg(data, axis, keepdims, 0, np.argmax)


@kernel("ArgMax", since=12)
def argmax_12(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(data, axis, keepdims, select_last_index, np.argmax)


@kernel("ArgMin", since=1)
def argmin_1(data, *, axis=0, keepdims=1):
    return _arg(data, axis, keepdims, 0, np.argmin)


@kernel("ArgMin", since=12)
def argmin_12(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(data, axis, keepdims, select_last_index, np.argmin)


# --------------------------------------------------------------------------------------------------
# CumSum
# --------------------------------------------------------------------------------------------------

@kernel("CumSum", since=11)
def cumsum(x, axis, *, exclusive=0, reverse=0):
    x = np.asarray(x)
    ax = int(np.asarray(axis).reshape(-1)[0])
    if x.ndim == 0:
        return x.copy()
    ax = ax + x.ndim if ax < 0 else ax
    cdt = _compute_dtype(x.dtype)
    xc = x if cdt == x.dtype else x.astype(cdt)
    if reverse:
        xc = np.flip(xc, axis=ax)
    r = np.cumsum(xc, axis=ax, dtype=cdt)
    if exclusive:
        shifted = np.zeros_like(r)
        src = [slice(None)] * r.ndim
        dst = [slice(None)] * r.ndim
        src[ax] = slice(0, -1)
        dst[ax] = slice(1, None)
        shifted[tuple(dst)] = r[tuple(src)]
        r = shifted
    if reverse:
        r = np.flip(r, axis=ax)
    return r.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------------------
# TopK
# --------------------------------------------------------------------------------------------------

def _smallest_k_stable(key, k, axis):
    """Indices of the k smallest keys along ``axis``, ascending, ties by lower index: the same as
    a stable argsort cut at k, in O(n) plus a sort of k elements per row."""
    kk = np.moveaxis(key, axis, -1)
    lead = kk.shape[:-1]
    n = kk.shape[-1]
    k2 = kk.reshape(-1, n)
    m = k2.shape[0]
    kth = np.partition(k2, k - 1, axis=1)[:, k - 1:k]
    sel = k2 <= kth
    over = np.nonzero(np.count_nonzero(sel, axis=1) > k)[0]
    if over.size:  # ties at the k-th value: keep the lowest-index ones
        sub = k2[over]
        lt = sub < kth[over]
        eq = sub == kth[over]
        need = k - np.count_nonzero(lt, axis=1)[:, None]
        sel[over] = lt | (eq & (np.cumsum(eq, axis=1, dtype=np.int32) <= need))
    cand = np.nonzero(sel)[1].reshape(m, k)  # row-major: each row's picks in index order
    order = np.argsort(np.take_along_axis(k2, cand, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(cand, order, axis=1).reshape(lead + (k,))
    return np.moveaxis(idx, -1, axis)


def _topk(x, k, axis, largest, sorted_):
    x = np.asarray(x)
    k = int(np.asarray(k).reshape(-1)[0])
    axis = axis + x.ndim if axis < 0 else axis
    n = x.shape[axis]
    if k < 0 or k > n:
        raise UnsupportedError(f"TopK: k={k} out of range for axis of size {n}")
    key = x.astype(np.float32) if _ml_float(x.dtype) else x
    if largest:
        if key.dtype.kind == "u":
            key = ~key
        elif key.dtype.kind == "b":
            key = ~key
        else:
            key = -key
    # equal values keep the lower index first (ONNX's tie rule)
    if 0 < k and 4 * k < n and n >= 64 and not (key.dtype.kind == "f" and np.isnan(key).any()):
        idx = _smallest_k_stable(key, k, axis)
    else:
        idx = np.argsort(key, axis=axis, kind="stable")
        idx = np.take(idx, np.arange(k), axis=axis)
    vals = np.take_along_axis(x, idx, axis=axis)
    return vals, idx.astype(np.int64, copy=False)


@kernel("TopK", since=1)
def topk_1(x, *, axis=-1, k):
    return _topk(x, k, axis, 1, 1)


@kernel("TopK", since=10)
def topk_10(x, k, *, axis=-1):
    return _topk(x, k, axis, 1, 1)


@kernel("TopK", since=11)
def topk_11(x, k, *, axis=-1, largest=1, sorted=1):  # noqa: A002
    # sorted=0 leaves the order unspecified: sorted order is a valid answer.
    return _topk(x, k, axis, largest, sorted)


# --------------------------------------------------------------------------------------------------
# LpNormalization
# --------------------------------------------------------------------------------------------------

@kernel("LpNormalization", since=1)
def lp_normalization(x, *, axis=-1, p=2):
    x = np.asarray(x)
    dt = x.dtype
    xc = x.astype(np.float32) if (dt == np.float16 or _ml_float(dt)) else x
    if p == 1:
        norm = np.sum(np.abs(xc), axis=axis, keepdims=True)
    elif p == 2:
        norm = np.sqrt(np.sum(np.square(xc), axis=axis, keepdims=True))
    else:
        raise UnsupportedError(f"LpNormalization: p={p} (only 1 and 2 are defined)")
    with np.errstate(all="ignore"):
        r = np.where(norm == 0, 0, xc / np.where(norm == 0, 1, norm))
    return r.astype(dt, copy=False)
