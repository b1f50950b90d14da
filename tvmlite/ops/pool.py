"""Pooling kernels: MaxPool, AveragePool, LpPool, their Global forms, MaxUnpool.

Every windowed pool is a vectorised reduction over the kernel taps of strided slices of the padded
input (one pass per tap over the output), never a loop over pixels. Output sizes follow ONNX /
onnxruntime (``ceil_mode`` drops a last window that would start in the end padding).
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.conv_shapes import _norm
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.im2col import check_conv_sizes, pad_spatial
from tvmlite.ops.registry import kernel


def _setup(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    x = np.asarray(x)
    if x.ndim < 3:
        raise UnsupportedError(f"pooling input must have rank >= 3, got {x.ndim}")
    g = WindowGeometry.pool({"kernel_shape": kernel_shape, "strides": strides, "dilations": dilations,
                             "pads": pads, "auto_pad": auto_pad, "ceil_mode": ceil_mode}, x.shape)
    n, kshape, strides, dilations = g.n, list(g.kernel), list(g.strides), list(g.dilations)
    p, out = list(g.pads), list(g.out_spatial)
    check_conv_sizes(x.shape, x.shape[1], kshape, p, out, x.dtype, "pooling")
    # end padding actually needed so every (ceil-mode) window fits in the buffer
    ends = []
    for i in range(n):
        need = (out[i] - 1) * strides[i] + (kshape[i] - 1) * dilations[i] + 1
        ends.append(max(p[n + i], need - x.shape[2 + i] - p[i]))
    return x, n, kshape, strides, dilations, p, out, ends


def _tap_slices(n, kshape, strides, dilations, out):
    for tap in np.ndindex(*kshape):
        yield tap, (slice(None), slice(None)) + tuple(
            slice(tap[i] * dilations[i], tap[i] * dilations[i] + (out[i] - 1) * strides[i] + 1,
                  strides[i]) for i in range(n))


def _lowest(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    raise UnsupportedError(f"MaxPool on dtype {dtype} is not supported")


# --------------------------------------------------------------------------------------------------
# MaxPool
# --------------------------------------------------------------------------------------------------

def _max_values(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    x, n, kshape, strides, dilations, p, out, ends = _setup(
        x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    xp = pad_spatial(x, p[:n], ends, _lowest(x.dtype))
    y = None
    for tap, sl in _tap_slices(n, kshape, strides, dilations, out):
        v = xp[sl]
        if y is None:
            y = np.array(v, copy=True)
        else:
            np.maximum(y, v, out=y)
    return y, (x, xp, n, kshape, strides, dilations, p, out)


def _max_pool_indices(y, x, xp, n, kshape, strides, dilations, p, out, storage_order):
    """Flat indices (into the unpadded input, N and C included) of each window's first maximum;
    ``storage_order=1`` numbers the spatial positions column-major."""
    sp = x.shape[2:]
    N, C = x.shape[:2]
    grids = np.meshgrid(*[np.arange(xp.shape[2 + i]) - p[i] for i in range(n)], indexing="ij")
    flat = np.zeros(xp.shape[2:], dtype=np.int64)
    valid = np.ones(xp.shape[2:], dtype=bool)
    order = reversed(range(n)) if int(storage_order) == 0 else range(n)
    mult = 1
    for i in order:
        flat += grids[i] * mult
        mult *= sp[i]
    for i in range(n):
        valid &= (grids[i] >= 0) & (grids[i] < sp[i])
    flat = np.where(valid, flat, -1)
    idx = np.full(y.shape, -1, dtype=np.int64)
    found = np.zeros(y.shape, dtype=bool)
    for tap, sl in _tap_slices(n, kshape, strides, dilations, out):
        fl = flat[sl[2:]]
        hit = (xp[sl] == y) & ~found & (fl >= 0)
        np.copyto(idx, np.broadcast_to(fl, idx.shape), where=hit)
        found |= hit
    spatial = int(np.prod(sp, dtype=np.int64))
    base = (np.arange(N * C, dtype=np.int64) * spatial).reshape((N, C) + (1,) * n)
    return idx + base


@kernel("MaxPool", since=1)
def max_pool_v1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None):
    return _max_values(x, kernel_shape, strides, None, pads, auto_pad, 0)[0]


def max_pool_values(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None,
                    pads=None, storage_order=0, strides=None):
    """MaxPool-8+ when only output Y is used (skips the Indices computation)."""
    if int(storage_order) not in (0, 1):
        raise UnsupportedError(f"MaxPool storage_order={storage_order} is not supported")
    return _max_values(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)[0]


@kernel("MaxPool", since=8, single_output=max_pool_values)
def max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    """Returns (Y, Indices). Its ``single_output``, :func:`max_pool_values`, computes Y alone (for
    1-output nodes)."""
    if int(storage_order) not in (0, 1):
        raise UnsupportedError(f"MaxPool storage_order={storage_order} is not supported")
    y, ctx = _max_values(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    return y, _max_pool_indices(y, *ctx, storage_order)


# --------------------------------------------------------------------------------------------------
# AveragePool / LpPool
# --------------------------------------------------------------------------------------------------

def _window_counts(in_sp, kshape, strides, dilations, p, out, include_pad):
    """Per-output-position number of taps counted in the average (product over spatial dims)."""
    n = len(in_sp)
    cnt = None
    for i in range(n):
        lo = -p[i] if include_pad else 0
        hi = in_sp[i] + p[n + i] if include_pad else in_sp[i]
        pos = (np.arange(out[i])[:, None] * strides[i] - p[i]
               + np.arange(kshape[i])[None, :] * dilations[i])
        c = ((pos >= lo) & (pos < hi)).sum(axis=1)
        shape = [1] * n
        shape[i] = out[i]
        c = c.reshape(shape)
        cnt = c if cnt is None else cnt * c
    return cnt


def _sum_pool(xp, n, kshape, strides, dilations, out, dt, power=None):
    y = None
    for tap, sl in _tap_slices(n, kshape, strides, dilations, out):
        v = xp[sl]
        if power is not None:
            v = power(v)
        if y is None:
            y = np.array(v, dtype=dt, copy=True)
        else:
            y += v
    return y


def _acc_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise UnsupportedError(f"pooling on dtype {dtype} is not supported")
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


@kernel("AveragePool", since=1)
def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 kernel_shape=None, pads=None, strides=None):
    x, n, kshape, strides, dilations, p, out, ends = _setup(
        x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    acc = _acc_dtype(x.dtype)
    xp = pad_spatial(x, p[:n], ends, 0)
    y = _sum_pool(xp, n, kshape, strides, dilations, out, acc)
    cnt = _window_counts(x.shape[2:], kshape, strides, dilations, p, out, bool(count_include_pad))
    y /= np.maximum(cnt, 1).astype(acc)
    return y.astype(x.dtype, copy=False)


@kernel("LpPool", since=1)
def lp_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2,
            pads=None, strides=None):
    x, n, kshape, strides, dilations, pd, out, ends = _setup(
        x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    acc = _acc_dtype(x.dtype)
    xp = pad_spatial(x, pd[:n], ends, 0).astype(acc, copy=False)
    pv = float(p)
    if pv == 2:
        y = _sum_pool(xp, n, kshape, strides, dilations, out, acc, np.square)
        y = np.sqrt(y)
    elif pv == 1:
        y = _sum_pool(xp, n, kshape, strides, dilations, out, acc, np.abs)
    else:
        pw = acc.type(pv)
        y = _sum_pool(xp, n, kshape, strides, dilations, out, acc,
                      lambda v: np.power(np.abs(v), pw))
        y = np.power(y, acc.type(1.0 / pv))
    return y.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------------------
# Global pools
# --------------------------------------------------------------------------------------------------

def _spatial_axes(x):
    if x.ndim < 3:
        raise UnsupportedError(f"global pooling input must have rank >= 3, got {x.ndim}")
    return tuple(range(2, x.ndim))


@kernel("GlobalAveragePool", since=1)
def global_average_pool(x):
    x = np.asarray(x)
    ax = _spatial_axes(x)
    if x.dtype.kind != "f":
        raise UnsupportedError(f"GlobalAveragePool on dtype {x.dtype} is not supported")
    acc = _acc_dtype(x.dtype)
    if x.flags.c_contiguous:
        # np.mean's own sum and division (a contiguous array's trailing axes are reduced as one
        # axis either way, so the values are the same) without its Python-level overhead
        s = np.add.reduce(x.reshape(x.shape[:2] + (-1,)), axis=2, dtype=acc)
        s = np.true_divide(s, int(np.prod(x.shape[2:], dtype=np.int64)), out=s)
        return s.astype(x.dtype, copy=False).reshape(x.shape[:2] + (1,) * len(ax))
    return np.mean(x, axis=ax, keepdims=True, dtype=acc).astype(x.dtype, copy=False)


@kernel("GlobalMaxPool", since=1)
def global_max_pool(x):
    x = np.asarray(x)
    return np.max(x, axis=_spatial_axes(x), keepdims=True)


@kernel("GlobalLpPool", since=1)
def global_lp_pool(x, *, p=2):
    x = np.asarray(x)
    ax = _spatial_axes(x)
    acc = _acc_dtype(x.dtype)
    xa = x.astype(acc, copy=False)
    pv = float(p)
    if pv == 2:
        y = np.sqrt(np.sum(np.square(xa), axis=ax, keepdims=True))
    else:
        y = np.power(np.sum(np.power(np.abs(xa), acc.type(pv)), axis=ax, keepdims=True),
                     acc.type(1.0 / pv))
    return y.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------------------
# MaxUnpool
# --------------------------------------------------------------------------------------------------

@kernel("MaxUnpool", since=9)
def max_unpool(x, indices, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    x = np.asarray(x)
    n = x.ndim - 2
    if not kernel_shape:
        raise UnsupportedError("MaxUnpool needs kernel_shape")
    kshape = [int(k) for k in kernel_shape]
    strides = _norm(strides, n, 1)
    pads = _norm(pads, 2 * n, 0)
    # indices address the pooled tensor's shape (the inferred one); an explicit output_shape
    # receives that tensor in its leading corner (ONNX reference semantics)
    inferred = x.shape[:2] + tuple(
        (x.shape[2 + i] - 1) * strides[i] + kshape[i] - pads[i] - pads[n + i] for i in range(n))
    y = np.zeros(int(np.prod(inferred, dtype=np.int64)), dtype=x.dtype)
    y[np.asarray(indices).reshape(-1).astype(np.int64)] = x.reshape(-1)
    y = y.reshape(inferred)
    if output_shape is None:
        return y
    shape = tuple(int(v) for v in np.asarray(output_shape).reshape(-1))
    if shape == inferred:
        return y
    res = np.zeros(shape, dtype=x.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, inferred))
    res[sl] = y[sl]
    return res
