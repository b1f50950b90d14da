"""Tensor-layout kernels: Reshape, Transpose, Squeeze/Unsqueeze, Flatten, Expand, Tile, Concat, Split,
Slice, and the small helpers the other tensor modules share (gather/scatter and friends are in
indexing.py, Shape/Range/OneHot ... in creation.py, Pad and DepthToSpace in rearrange.py).

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
