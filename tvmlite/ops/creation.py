"""Kernels that make tensors from shapes and scalars: Shape, Size, ConstantOfShape, Range, EyeLike,
Trilu, OneHot, NonZero. Sizes are checked against tvmlite.limits before anything is allocated.
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite import limits
from tvmlite.errors import ShapeError
from tvmlite.ops.registry import kernel
from tvmlite.ops.tensor import _axis, _ints, _np_dtype


# --------------------------------------------------------------------------------------------------
# Shape, Size, ConstantOfShape, Range, EyeLike, Trilu, OneHot, NonZero
# --------------------------------------------------------------------------------------------------

@kernel("Shape", since=1)
def shape_1(data):
    return np.array(np.shape(data), dtype=np.int64)


@kernel("Shape", since=15)
def shape_15(data, *, start=0, end=None):
    s = np.shape(data)
    return np.array(s[start:end], dtype=np.int64)


@kernel("Size", since=1)
def size(data):
    return np.array(np.size(data), dtype=np.int64)


@kernel("ConstantOfShape", since=9)
def constant_of_shape(input, *, value=None):  # noqa: A002
    shape = _ints(input)
    limits.check_tensor(shape, np.float32 if value is None else np.asarray(value).dtype,
                        "ConstantOfShape output")
    if value is None:
        return np.zeros(shape, dtype=np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ShapeError("ConstantOfShape: value must hold exactly one element")
    return np.full(shape, value.reshape(-1)[0], dtype=value.dtype)


@kernel("Range", since=11)
def range_11(start, limit, delta):
    return _range_float(start, limit, delta, stash_float=False)


@kernel("Range", since=27)
def range_27(start, limit, delta, *, stash_type=1):
    return _range_float(start, limit, delta, stash_float=bool(stash_type))


def _range_float(start, limit, delta, stash_float):
    # inputs are scalars, but 1-element tensors are accepted too
    start, limit, delta = (np.asarray(v).reshape(-1)[:1].reshape(()) for v in (start, limit, delta))
    dt = start.dtype
    if dt.kind in "iu":
        s, l, d = int(start), int(limit), int(delta)
        if d == 0:
            raise ShapeError("Range: delta is 0")
        n = max(-((s - l) // d), 0)
        limits.check_tensor([n], dt, "Range output")
        return (s + np.arange(n, dtype=np.int64) * d).astype(dt, copy=False)
    cdt = dt
    if dt.kind == "V" or (stash_float and dt == np.float16):
        cdt = np.dtype(np.float32)
    s, l, d = (v.astype(cdt) for v in (start, limit, delta))
    if float(d) == 0:
        raise ShapeError("Range: delta is 0")
    steps = (float(l) - float(s)) / float(d)
    if not math.isfinite(steps):
        raise ShapeError(f"Range: ({float(l)} - {float(s)}) / {float(d)} is not a finite count")
    n = max(int(math.ceil(steps)), 0)
    limits.check_tensor([n], dt, "Range output")
    out = s + np.arange(n, dtype=cdt) * d
    return out.astype(dt, copy=False)


@kernel("EyeLike", since=9)
def eye_like(x, *, dtype=None, k=0):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ShapeError(f"EyeLike: input must be 2-D, got rank {x.ndim}")
    dt = _np_dtype(dtype) if dtype is not None else x.dtype
    limits.check_tensor(x.shape, dt, "EyeLike output")
    return np.eye(x.shape[0], x.shape[1], k=k, dtype=dt)


@kernel("Trilu", since=14)
def trilu(x, k=None, *, upper=1):
    x = np.asarray(x)
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    if x.ndim < 2:
        raise ShapeError(f"Trilu: input must have rank >= 2, got {x.ndim}")
    return np.triu(x, kk) if upper else np.tril(x, kk)


@kernel("OneHot", since=9)
def one_hot(indices, depth, values, *, axis=-1):
    indices = np.asarray(indices)
    depth = int(np.asarray(depth).reshape(-1)[0])
    values = np.asarray(values).reshape(-1)
    if values.size != 2:
        raise ShapeError("OneHot: values must hold [off_value, on_value]")
    idx = indices.astype(np.int64) if indices.dtype.kind != "f" else np.trunc(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)
    r = idx.ndim + 1
    ax = _axis(axis, r)
    shape = [1] * r
    shape[ax] = depth
    eq = np.expand_dims(idx, ax) == np.arange(depth, dtype=np.int64).reshape(shape)
    return np.where(eq, values[1], values[0]).astype(values.dtype, copy=False)


@kernel("NonZero", since=9)
def nonzero(x):
    x = np.asarray(x)
    if x.ndim == 0:
        x = x.reshape(1)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)
