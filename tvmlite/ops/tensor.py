"""Tensor-manipulation kernels: shape ops, slicing, gather/scatter, padding, index generators.

Shape-only ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Slice, Expand, Identity-like)
return views of their input where NumPy can; the backend never writes into its inputs.
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite import limits
from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.registry import kernel

def _ints(v) -> list[int]:
    """A shape/axes/pads input or attribute as a list of Python ints."""
    if v is None:
        return []
    return [int(i) for i in np.asarray(v).reshape(-1).tolist()]


def _axis(a: int, rank: int, what: str = "axis") -> int:
    if not -rank <= a < max(rank, 1) and not (rank == 0 and a in (0, -1)):
        raise ShapeError(f"{what} {a} out of range for rank {rank}")
    return a + rank if a < 0 else a


def _np_dtype(onnx_type: int):
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


# --------------------------------------------------------------------------------------------------
# Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Expand, Tile
# --------------------------------------------------------------------------------------------------

def _reshape(data, shape, allowzero=0):
    data = np.asarray(data)
    shape = _ints(shape)
    if not allowzero:
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    elif 0 in shape and -1 in shape:
        raise ShapeError("Reshape: allowzero=1 with both 0 and -1 in the shape")
    try:
        return data.reshape(shape)
    except ValueError as e:
        raise ShapeError(f"Reshape: cannot reshape {list(data.shape)} into {shape}") from e


@kernel("Reshape", since=1)
def reshape_1(data, *, shape=None, consumed_inputs=None):
    return _reshape(data, shape)


@kernel("Reshape", since=5)
def reshape_5(data, shape):
    return _reshape(data, shape)


@kernel("Reshape", since=14)
def reshape_14(data, shape, *, allowzero=0):
    return _reshape(data, shape, allowzero)


@kernel("Transpose", since=1)
def transpose(data, *, perm=None):
    data = np.asarray(data)
    return np.transpose(data, perm if perm else None)


def _squeeze(data, axes):
    data = np.asarray(data)
    axes = _ints(axes)
    if not axes:
        return np.squeeze(data)
    ax = tuple(_axis(a, data.ndim) for a in axes)
    for a in ax:
        if data.shape[a] != 1:
            raise ShapeError(f"Squeeze: dimension {a} has size {data.shape[a]}, not 1")
    return np.squeeze(data, axis=ax)


@kernel("Squeeze", since=1)
def squeeze_1(data, *, axes=None):
    return _squeeze(data, axes)


@kernel("Squeeze", since=13)
def squeeze_13(data, axes=None):
    return _squeeze(data, axes)


def _unsqueeze(data, axes):
    data = np.asarray(data)
    axes = _ints(axes)
    r = data.ndim + len(axes)
    ax = sorted(_axis(a, r) for a in axes)
    if len(set(ax)) != len(ax):
        raise ShapeError("Unsqueeze: repeated axes")
    shape = list(data.shape)
    for a in ax:
        shape.insert(a, 1)
    return data.reshape(shape)


@kernel("Unsqueeze", since=1)
def unsqueeze_1(data, *, axes):
    return _unsqueeze(data, axes)


@kernel("Unsqueeze", since=13)
def unsqueeze_13(data, axes):
    return _unsqueeze(data, axes)


@kernel("Flatten", since=1)
def flatten(x, *, axis=1):
    x = np.asarray(x)
    r = x.ndim
    a = axis + r if axis < 0 else axis
    if not 0 <= a <= r:
        raise ShapeError(f"Flatten: axis {axis} out of range for rank {r}")
    outer = math.prod(x.shape[:a])
    inner = math.prod(x.shape[a:])
    return x.reshape(outer, inner)


@kernel("Expand", since=8)
def expand(x, shape):
    x = np.asarray(x)
    try:
        out_shape = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    except ValueError as e:
        raise ShapeError(f"Expand: shape {_ints(shape)} incompatible with {list(x.shape)}") from e
    limits.check_tensor(out_shape, x.dtype, "Expand output")
    return np.broadcast_to(x, out_shape)


@kernel("Tile", since=1)
def tile_1(x, tiles, axis):
    x = np.asarray(x)
    reps = [1] * x.ndim
    reps[_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)] = int(np.asarray(tiles).reshape(-1)[0])
    limits.check_tensor([d * r for d, r in zip(x.shape, reps)], x.dtype, "Tile output")
    return np.tile(x, reps)


@kernel("Tile", since=6)
def tile(x, repeats):
    x = np.asarray(x)
    reps = _ints(repeats)
    if len(reps) != x.ndim:
        raise ShapeError(f"Tile: repeats has {len(reps)} entries for rank {x.ndim}")
    limits.check_tensor([d * r for d, r in zip(x.shape, reps)], x.dtype, "Tile output")
    return np.tile(x, reps)


# --------------------------------------------------------------------------------------------------
# Concat, Split
# --------------------------------------------------------------------------------------------------

def _concat(inputs, axis):
    arrs = [np.asarray(a) for a in inputs if a is not None]
    if not arrs:
        raise ShapeError("Concat: no inputs")
    r = arrs[0].ndim
    ax = _axis(axis, r)
    dt = arrs[0].dtype
    arrs = [a if a.dtype == dt else a.astype(dt) for a in arrs]
    return np.concatenate(arrs, axis=ax)


@kernel("Concat", since=1)
def concat_1(*inputs, axis=1):
    return _concat(inputs, axis)


@kernel("Concat", since=4)
def concat_4(*inputs, axis):
    return _concat(inputs, axis)


def _split(x, axis, split, num_outputs, equal_only):
    x = np.asarray(x)
    ax = _axis(axis, x.ndim)
    n = x.shape[ax]
    sizes = _ints(split) if split is not None else []
    if sizes:
        if sum(sizes) != n:
            raise ShapeError(f"Split: split sizes {sizes} do not sum to {n}")
    else:
        if not num_outputs:
            raise UnsupportedError("Split: the number of outputs is unknown (no 'split' and no "
                                   "num_outputs given)")
        k = int(num_outputs)
        if equal_only:
            if n % k:
                raise ShapeError(f"Split: axis of size {n} cannot be split into {k} equal parts")
            sizes = [n // k] * k
        else:
            c = -(-n // k)
            sizes = [c] * (k - 1) + [n - c * (k - 1)]
            if sizes[-1] < 0:
                raise ShapeError(f"Split: axis of size {n} cannot be split into {k} outputs")
    bounds = np.cumsum([0] + sizes).tolist()
    idx = [slice(None)] * x.ndim
    outs = []
    for b, e in zip(bounds[:-1], bounds[1:]):
        idx[ax] = slice(b, e)
        outs.append(x[tuple(idx)])
    return tuple(outs)


# Before opset 18, a Split with no `split` makes as many equal parts as the node has outputs: the
# backend passes that count as `n_outputs_` (``num_outputs_param`` of the OpDef), a keyword that
# is no ONNX attribute, so a stray `num_outputs` attribute on an old Split is still reported.

@kernel("Split", since=1, num_outputs_param="n_outputs_")
def split_1(x, *split_input, axis=0, split=None, n_outputs_=None):
    # Split-1 takes `split` either as an optional second input or as an attribute
    if split_input and split_input[0] is not None:
        split = split_input[0]
    return _split(x, axis, split, n_outputs_, True)


@kernel("Split", since=2, num_outputs_param="n_outputs_")
def split_2(x, *, axis=0, split=None, n_outputs_=None):
    return _split(x, axis, split, n_outputs_, True)


@kernel("Split", since=13, num_outputs_param="n_outputs_")
def split_13(x, split=None, *, axis=0, n_outputs_=None):
    return _split(x, axis, split, n_outputs_, True)


@kernel("Split", since=18)
def split_18(x, split=None, *, axis=0, num_outputs=None):
    return _split(x, axis, split, num_outputs, False)


# --------------------------------------------------------------------------------------------------
# Slice
# --------------------------------------------------------------------------------------------------

def _slice(data, starts, ends, axes, steps):
    data = np.asarray(data)
    starts, ends = _ints(starts), _ints(ends)
    r = data.ndim
    axes = _ints(axes) if axes is not None and np.asarray(axes).size else list(range(len(starts)))
    steps = _ints(steps) if steps is not None and np.asarray(steps).size else [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        raise ShapeError("Slice: starts, ends, axes and steps differ in length")
    idx = [slice(None)] * r
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, r)
        dim = data.shape[a]
        if st == 0:
            raise ShapeError("Slice: step 0")
        if s < 0:
            s += dim
        if e < 0:
            e += dim
        if st > 0:
            s = min(max(s, 0), dim)
            e = min(max(e, 0), dim)
            idx[a] = slice(s, e, st)
        else:
            s = min(max(s, 0), dim - 1)
            e = min(max(e, -1), dim - 1)
            idx[a] = slice(s, e if e >= 0 else None, st)
    return data[tuple(idx)]


@kernel("Slice", since=1)
def slice_1(data, *, starts, ends, axes=None):
    return _slice(data, starts, ends, axes, None)


@kernel("Slice", since=10)
def slice_10(data, starts, ends, axes=None, steps=None):
    return _slice(data, starts, ends, axes, steps)


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


# --------------------------------------------------------------------------------------------------
# Pad
# --------------------------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(data, pads, mode, value, axes=None):
    data = np.asarray(data)
    r = data.ndim
    pads = _ints(pads)
    if axes is None or np.asarray(axes).size == 0:
        axes = list(range(r))
    else:
        axes = [_axis(a, r) for a in _ints(axes)]
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    if mode not in _PAD_MODES:
        raise UnsupportedError(f"Pad: mode {mode!r} is not supported")
    before = [0] * r
    after = [0] * r
    n = len(axes)
    for i, a in enumerate(axes):
        before[a] = pads[i]
        after[a] = pads[i + n]
    # negative pads crop
    if any(p < 0 for p in before + after):
        sl = tuple(slice(-b if b < 0 else 0, data.shape[i] + a if a < 0 else None)
                   for i, (b, a) in enumerate(zip(before, after)))
        data = data[sl]
        before = [max(b, 0) for b in before]
        after = [max(a, 0) for a in after]
    if not any(before) and not any(after):
        return data
    limits.check_tensor([d + b + a for d, b, a in zip(data.shape, before, after)], data.dtype, "Pad output")
    if mode == "constant":
        v = 0 if value is None else np.asarray(value).reshape(-1)
        if not np.isscalar(v):
            v = v[0] if v.size else 0
        out_shape = tuple(s + b + a for s, b, a in zip(data.shape, before, after))
        out = np.full(out_shape, v, dtype=data.dtype) if data.dtype.kind != "O" else \
            np.full(out_shape, v, dtype=object)
        out[tuple(slice(b, b + s) for b, s in zip(before, data.shape))] = data
        return out
    if data.size == 0:
        raise ShapeError(f"Pad: mode {mode!r} needs a non-empty input")
    return np.pad(data, list(zip(before, after)), mode=_PAD_MODES[mode])


@kernel("Pad", since=1)
def pad_1(data, *, mode="constant", paddings, value=0.0):
    return _pad(data, paddings, mode, value)


@kernel("Pad", since=2)
def pad_2(data, *, mode="constant", pads, value=0.0):
    return _pad(data, pads, mode, value)


@kernel("Pad", since=11)
def pad_11(data, pads, constant_value=None, axes=None, *, mode="constant"):
    return _pad(data, pads, mode, constant_value, axes)


# --------------------------------------------------------------------------------------------------
# DepthToSpace, SpaceToDepth
# --------------------------------------------------------------------------------------------------

def _depth_to_space(x, blocksize, mode):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ShapeError("DepthToSpace: input must be 4-D")
    b, c, h, w = x.shape
    bs = int(blocksize)
    if c % (bs * bs):
        raise ShapeError(f"DepthToSpace: channels {c} not divisible by blocksize^2")
    co = c // (bs * bs)
    if mode == "DCR":
        t = x.reshape(b, bs, bs, co, h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        t = x.reshape(b, co, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise UnsupportedError(f"DepthToSpace: mode {mode!r}")
    return t.reshape(b, co, h * bs, w * bs)


@kernel("DepthToSpace", since=1)
def depth_to_space_1(x, *, blocksize):
    return _depth_to_space(x, blocksize, "DCR")


@kernel("DepthToSpace", since=11)
def depth_to_space(x, *, blocksize, mode="DCR"):
    return _depth_to_space(x, blocksize, mode)


def _space_to_depth(x, blocksize, mode):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ShapeError("SpaceToDepth: input must be 4-D")
    b, c, h, w = x.shape
    bs = int(blocksize)
    if h % bs or w % bs:
        raise ShapeError(f"SpaceToDepth: spatial dims {h}x{w} not divisible by {bs}")
    t = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if mode == "DCR":
        t = t.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        t = t.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise UnsupportedError(f"SpaceToDepth: mode {mode!r}")
    return t.reshape(b, c * bs * bs, h // bs, w // bs)


@kernel("SpaceToDepth", since=1)
def space_to_depth_1(x, *, blocksize):
    return _space_to_depth(x, blocksize, "DCR")


@kernel("SpaceToDepth", since=28)
def space_to_depth(x, *, blocksize, mode="DCR"):
    return _space_to_depth(x, blocksize, mode)


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
