"""Index-driven kernels: the Gather / Scatter families, Compress, Unique, ReverseSequence, and
Einsum. Indices are checked against their dims first (a wrong index is a clear error, never a
silent wrap or an out-of-bounds read).
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.registry import kernel
from tvmlite.ops.tensor import _axis


# --------------------------------------------------------------------------------------------------
# Einsum, Compress, Unique, ReverseSequence
# --------------------------------------------------------------------------------------------------

@kernel("Einsum", since=12)
def einsum(*inputs, equation):
    arrs = [np.asarray(a) for a in inputs]
    dt = arrs[0].dtype
    if dt.kind == "V" or dt == np.float16:  # bfloat16 / float16: accumulate in float32
        arrs = [a.astype(np.float32) for a in arrs]
    eq = equation.replace(" ", "")
    r = np.asarray(np.einsum(eq, *arrs, optimize=len(arrs) > 1))
    return r if r.dtype == dt else r.astype(dt)


@kernel("Compress", since=9)
def compress(x, condition, *, axis=None):
    x = np.asarray(x)
    cond = np.asarray(condition).astype(bool, copy=False).reshape(-1)
    if axis is None:
        return np.compress(cond, x.reshape(-1))
    ax = _axis(axis, x.ndim)
    if cond.size > x.shape[ax]:
        raise ShapeError("Compress: condition longer than the axis")
    return np.compress(cond, x, axis=ax)


@kernel("Unique", since=11)
def unique(x, *, axis=None, sorted=1):  # noqa: A002
    x = np.asarray(x)
    if axis is not None:
        ax = _axis(axis, x.ndim)
        y, idx, inv, cnt = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                     axis=ax)
    else:
        ax = None
        y, idx, inv, cnt = np.unique(x.reshape(-1), return_index=True, return_inverse=True,
                                     return_counts=True)
    inv = inv.reshape(-1)
    if not sorted:
        order = np.argsort(idx, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=0 if ax is None else ax)
        idx = idx[order]
        cnt = cnt[order]
        inv = rank[inv]
    i64 = np.int64
    return y, idx.astype(i64), inv.astype(i64), cnt.astype(i64)


@kernel("ReverseSequence", since=10)
def reverse_sequence(x, sequence_lens, *, batch_axis=1, time_axis=0):
    x = np.asarray(x)
    lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
    ba, ta = _axis(batch_axis, x.ndim), _axis(time_axis, x.ndim)
    T = x.shape[ta]
    t = np.arange(T)[:, None]  # (T, B)
    src = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)
    shape = [1] * x.ndim
    shape[ta], shape[ba] = T, lens.size
    src = src if ta < ba else src.T
    src = src.reshape(shape)
    return np.take_along_axis(x, np.broadcast_to(src, x.shape), axis=ta)


# --------------------------------------------------------------------------------------------------
# Gather / Scatter
# --------------------------------------------------------------------------------------------------

def _check_idx(idx, dim, what):
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise ShapeError(f"{what}: index out of range for axis of size {dim}")


@kernel("Gather", since=1)
def gather(data, indices, *, axis=0):
    data = np.asarray(data)
    indices = np.asarray(indices)
    ax = _axis(axis, data.ndim)
    _check_idx(indices, data.shape[ax], "Gather")
    if data.ndim == 1 and indices.ndim <= 1:
        return data[indices]
    return np.take(data, indices.astype(np.intp, copy=False), axis=ax)


def _norm_idx(indices, dim):
    indices = np.asarray(indices).astype(np.int64, copy=False)
    return np.where(indices < 0, indices + dim, indices)


@kernel("GatherElements", since=11)
def gather_elements(data, indices, *, axis=0):
    data = np.asarray(data)
    ax = _axis(axis, data.ndim)
    indices = np.asarray(indices)
    _check_idx(indices, data.shape[ax], "GatherElements")
    return np.take_along_axis(data, _norm_idx(indices, data.shape[ax]), axis=ax)


def _gather_nd(data, indices, batch_dims):
    data = np.asarray(data)
    indices = np.asarray(indices).astype(np.int64, copy=False)
    b = int(batch_dims)
    k = indices.shape[-1]
    bshape = data.shape[:b]
    if indices.shape[:b] != bshape:
        raise ShapeError("GatherND: batch dimensions of data and indices differ")
    B = math.prod(bshape)
    d = data.reshape((B,) + data.shape[b:])
    q_shape = indices.shape[b:-1]
    Q = math.prod(q_shape)
    idx = indices.reshape(B, Q, k)
    index = [np.broadcast_to(np.arange(B)[:, None], (B, Q))]
    for i in range(k):
        dim = d.shape[1 + i]
        ii = idx[..., i]
        _check_idx(ii, dim, "GatherND")
        index.append(ii)
    out = d[tuple(index)]
    return out.reshape(indices.shape[:-1] + data.shape[b + k:])


@kernel("GatherND", since=11)
def gather_nd_11(data, indices):
    return _gather_nd(data, indices, 0)


@kernel("GatherND", since=12)
def gather_nd(data, indices, *, batch_dims=0):
    return _gather_nd(data, indices, batch_dims)


_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_apply(out, index, updates, reduction):
    if reduction in (None, "", "none"):
        out[index] = updates
    elif reduction in _REDUCTIONS:
        _REDUCTIONS[reduction].at(out, index, updates)
    else:
        raise UnsupportedError(f"scatter reduction {reduction!r} is not supported")
    return out


def _scatter_elements(data, indices, updates, axis, reduction):
    data = np.asarray(data)
    updates = np.asarray(updates)
    ax = _axis(axis, data.ndim)
    indices = np.asarray(indices)
    _check_idx(indices, data.shape[ax], "ScatterElements")
    idx = _norm_idx(indices, data.shape[ax])
    grids = list(np.indices(idx.shape, sparse=True)) if idx.ndim else []
    if idx.ndim:
        grids[ax] = idx
    out = data.copy()
    return _scatter_apply(out, tuple(grids), updates.astype(data.dtype, copy=False), reduction)


@kernel("Scatter", since=9)
def scatter(data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none")


@kernel("ScatterElements", since=11)
def scatter_elements_11(data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none")


@kernel("ScatterElements", since=16)
def scatter_elements(data, indices, updates, *, axis=0, reduction="none"):
    return _scatter_elements(data, indices, updates, axis, reduction)


def _scatter_nd(data, indices, updates, reduction):
    data = np.asarray(data)
    indices = np.asarray(indices).astype(np.int64, copy=False)
    updates = np.asarray(updates)
    k = indices.shape[-1]
    idx = indices.reshape(-1, k)
    upd = updates.reshape((idx.shape[0],) + data.shape[k:]).astype(data.dtype, copy=False)
    for i in range(k):
        _check_idx(idx[:, i], data.shape[i], "ScatterND")
    out = data.copy()
    return _scatter_apply(out, tuple(idx.T), upd, reduction)


@kernel("ScatterND", since=11)
def scatter_nd_11(data, indices, updates):
    return _scatter_nd(data, indices, updates, "none")


@kernel("ScatterND", since=16)
def scatter_nd(data, indices, updates, *, reduction="none"):
    return _scatter_nd(data, indices, updates, reduction)
