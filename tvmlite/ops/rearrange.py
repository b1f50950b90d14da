"""Pad (constant, reflect, edge, wrap; pads and axes as inputs or attributes) and the block
rearrangements DepthToSpace / SpaceToDepth (DCR and CRD).
"""
from __future__ import annotations

import numpy as np

from tvmlite import limits
from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.registry import kernel
from tvmlite.ops.tensor import _axis, _ints


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
