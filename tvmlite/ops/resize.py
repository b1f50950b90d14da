"""Resize and Upsample kernels: every coordinate transformation, nearest mode, (bi)linear and cubic
interpolation with antialias and exclude_outside, as separable 1-D passes. The TVM lowering reuses
the coordinate helpers (``_x_original``, ``_nearest_index``, ``_taps``, ``_resize_args``).
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite import limits
from tvmlite.errors import UnsupportedError
from tvmlite.ops.dtypes import _acc, _s
from tvmlite.ops.registry import kernel


# --------------------------------------------------------------------------------------------------
# Resize / Upsample
# --------------------------------------------------------------------------------------------------

_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")


def _x_original(mode, out_len, in_len, scale, roi_lo=0.0, roi_hi=1.0, out_w=None):
    """Source coordinate (float64, tiny) of each output index along one axis. ``out_w`` is ONNX's
    "length_resized": ``scale * in_len`` unrounded when scales are given, else the output size."""
    # float32 arithmetic, as onnxruntime does: in float64, ties such as (5 + 0.5) / 1.1f - 0.5 round
    # the other way
    y = np.arange(out_len, dtype=np.float32)
    scale = np.float32(scale)
    if out_w is None:
        out_w = scale * np.float32(in_len)
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / out_w
        offset = in_len / 2 * (1 - adjustment)
        return offset + (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if out_w != 1 else np.full(out_len, -0.5)
    if mode == "align_corners":
        return y * (in_len - 1) / (out_w - 1) if out_w != 1 else np.zeros(out_len)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "tf_crop_and_resize":
        if out_w != 1:
            x = y * (roi_hi - roi_lo) * (in_len - 1) / (out_w - 1)
        else:
            x = np.full(out_len, (roi_hi - roi_lo) * (in_len - 1) / 2)
        return x + roi_lo * (in_len - 1)
    raise UnsupportedError(f"Resize coordinate_transformation_mode={mode!r} is not supported")


def _nearest_index(x, nearest_mode, in_len, downsample):
    if nearest_mode == "round_prefer_floor":
        i = np.where(x - np.floor(x) == 0.5, np.floor(x), np.round(x))
    elif nearest_mode == "round_prefer_ceil":
        i = np.where(x - np.floor(x) == 0.5, np.ceil(x), np.round(x))
    elif nearest_mode == "floor":
        i = np.floor(x)
    elif nearest_mode == "ceil":
        i = np.ceil(x)
    elif nearest_mode == "simple":  # Resize-10 / Upsample (onnxruntime's rule)
        i = np.ceil(x) if downsample else np.floor(x)
    else:
        raise UnsupportedError(f"Resize nearest_mode={nearest_mode!r} is not supported")
    return np.clip(i, 0, in_len - 1).astype(np.intp)


def _cubic(t, A):
    t = np.abs(t)
    t2 = t * t
    t3 = t2 * t
    return np.where(t <= 1, (A + 2) * t3 - (A + 3) * t2 + 1,
                    np.where(t < 2, A * t3 - 5 * A * t2 + 8 * A * t - 4 * A, 0.0))


def _taps(x, mode, scale, in_len, A, antialias, exclude_outside):
    """(indices [out, T], weights [out, T]) of a linear / cubic filter along one axis (float64)."""
    xi = np.floor(x)
    ratio = x - xi
    if mode == "linear":
        if antialias and scale < 1:
            start = int(np.floor(-1 / scale) + 1)
            offs = np.arange(start, 2 - start)
            w = np.clip(1 - np.abs((offs[None, :] - ratio[:, None]) * scale), 0, 1)
        else:
            offs = np.array([0, 1])
            w = np.stack([1 - ratio, ratio], axis=1)
    else:  # cubic
        if antialias and scale < 1:
            start = int(np.floor(-2 / scale) + 1)
            offs = np.arange(start, 2 - start)
            w = _cubic((offs[None, :] - ratio[:, None]) * scale, A)
        else:
            offs = np.array([-1, 0, 1, 2])
            w = _cubic(offs[None, :] - ratio[:, None], A)
    idx = xi.astype(np.int64)[:, None] + offs[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
    s = w.sum(axis=1, keepdims=True)
    w = w / np.where(s == 0, 1.0, s)
    return np.clip(idx, 0, in_len - 1).astype(np.intp), w


def _resize(x, scales_full, sizes_full, roi_full, from_sizes, *, mode, coord, nearest_mode, A,
            exclude_outside, extrapolation_value, antialias):
    x = np.asarray(x)
    dt = x.dtype
    r = x.ndim
    if mode not in ("nearest", "linear", "cubic"):
        raise UnsupportedError(f"Resize mode={mode!r} is not supported")
    if coord not in _COORD_MODES:
        raise UnsupportedError(f"Resize coordinate_transformation_mode={coord!r} is not supported")
    limits.check_tensor([int(v) for v in sizes_full], dt, "Resize output")
    is_float = dt.kind == "f"
    acc = _acc(dt) if mode != "nearest" else dt
    y = x if mode == "nearest" else x.astype(acc, copy=False)
    for ax in range(r):
        scale = float(scales_full[ax])
        out_len = int(sizes_full[ax])
        in_len = x.shape[ax]
        lo, hi = (float(roi_full[ax]), float(roi_full[ax + r])) if roi_full is not None else (0., 1.)
        if out_len == in_len and math.isclose(scale, 1.0) and (
                coord != "tf_crop_and_resize" or (lo == 0.0 and hi == 1.0)):
            continue
        if out_len == 0 or in_len == 0:
            shape = list(y.shape)
            shape[ax] = out_len
            y = np.zeros(shape, dtype=y.dtype)
            continue
        xo = _x_original(coord, out_len, in_len, scale, lo, hi,
                         float(out_len) if from_sizes else None)
        if mode == "nearest":
            idx = _nearest_index(xo, nearest_mode, in_len, scale < 1)
            y = np.take(y, idx, axis=ax)
        else:
            idx, w = _taps(xo, mode, scale, in_len, _s(A, np.float64), antialias, exclude_outside)
            w = w.astype(acc)
            bshape = [1] * r
            bshape[ax] = out_len
            res = None
            for t in range(idx.shape[1]):
                term = np.take(y, idx[:, t], axis=ax)
                term *= w[:, t].reshape(bshape)
                if res is None:
                    res = term
                else:
                    res += term
            y = res
        if coord == "tf_crop_and_resize":
            bad = (xo < 0) | (xo > in_len - 1)
            if bad.any():
                bshape = [1] * r
                bshape[ax] = out_len
                y = np.where(bad.reshape(bshape), _s(extrapolation_value, y.dtype), y)
    if y.dtype != dt:
        if is_float:
            y = y.astype(dt)
        else:
            info = np.iinfo(dt)
            y = np.clip(np.rint(y), info.min, info.max).astype(dt)
    elif y is x:
        y = x.copy()
    return y


def _resize_args(x, roi, scales, sizes, axes, policy):
    x = np.asarray(x)
    r = x.ndim
    axes_l = list(range(r)) if axes is None or len(axes) == 0 else [int(a) % r for a in axes]
    roi_full = None
    if roi is not None and np.asarray(roi).size:
        rv = np.asarray(roi, dtype=np.float64).reshape(-1)
        if len(axes_l) != r:
            full = [0.0] * r + [1.0] * r
            k = len(axes_l)
            for i, d in enumerate(axes_l):
                full[d] = rv[i]
                full[r + d] = rv[k + i]
            rv = np.array(full)
        roi_full = rv
    if sizes is not None and np.asarray(sizes).size:
        sz = [int(v) for v in np.asarray(sizes).reshape(-1)]
        sizes_full = list(x.shape)
        for i, d in enumerate(axes_l):
            sizes_full[d] = sz[i]
        scales_full = [sizes_full[i] / x.shape[i] if x.shape[i] else 1.0 for i in range(r)]
        if policy not in ("stretch", None):
            sc = [scales_full[d] for d in axes_l]
            if policy == "not_larger":
                s = min(sc)
            elif policy == "not_smaller":
                s = max(sc)
            else:
                raise UnsupportedError(f"Resize keep_aspect_ratio_policy={policy!r} is not supported")
            for d in axes_l:
                scales_full[d] = s
                sizes_full[d] = int(s * x.shape[d] + 0.5)
    elif scales is not None and np.asarray(scales).size:
        sc = [float(v) for v in np.asarray(scales).reshape(-1)]
        scales_full = [1.0] * r
        for i, d in enumerate(axes_l):
            scales_full[d] = sc[i]
        # in float32 as onnxruntime does (5 * 1.4f rounds to 7.0f; in float64 it is 6.99... -> 6)
        sizes_full = [int(math.floor(np.float32(scales_full[i]) * np.float32(x.shape[i]))) for i in range(r)]
    else:
        raise UnsupportedError("Resize needs scales or sizes")
    if len(scales_full) != r:
        raise UnsupportedError(f"Resize scales/sizes have {len(scales_full)} values for rank {r}")
    return scales_full, sizes_full, roi_full, sizes is not None and np.asarray(sizes).size > 0


def _resize_common(x, roi, scales, sizes, *, antialias=0, axes=None,
                   coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75,
                   exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy="stretch",
                   mode="nearest", nearest_mode="round_prefer_floor"):
    if int(antialias) and mode == "nearest":
        raise UnsupportedError("Resize antialias=1 with mode=nearest is not defined")
    scales_full, sizes_full, roi_full, from_sizes = _resize_args(x, roi, scales, sizes, axes,
                                                                 keep_aspect_ratio_policy)
    if from_sizes and keep_aspect_ratio_policy not in ("stretch", None):
        from_sizes = False  # the common scale defines length_resized
    return _resize(x, scales_full, sizes_full, roi_full, from_sizes, mode=mode,
                   coord=coordinate_transformation_mode, nearest_mode=nearest_mode,
                   A=float(cubic_coeff_a), exclude_outside=bool(int(exclude_outside)),
                   extrapolation_value=float(extrapolation_value), antialias=bool(int(antialias)))


@kernel("Resize", since=10)
def resize_10(x, scales, *, mode="nearest"):
    if mode not in ("nearest", "linear"):
        raise UnsupportedError(f"Resize-10 mode={mode!r} is not supported")
    return _resize_common(x, None, scales, None, mode=mode,
                          coordinate_transformation_mode="asymmetric", nearest_mode="simple")


@kernel("Resize", since=11)
def resize_11(x, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
              cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
              nearest_mode="round_prefer_floor"):
    return _resize_common(x, roi, scales, sizes,
                          coordinate_transformation_mode=coordinate_transformation_mode,
                          cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                          extrapolation_value=extrapolation_value, mode=mode,
                          nearest_mode=nearest_mode)


@kernel("Resize", since=18)
def resize(x, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    return _resize_common(x, roi, scales, sizes, antialias=antialias, axes=axes,
                          coordinate_transformation_mode=coordinate_transformation_mode,
                          cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                          extrapolation_value=extrapolation_value,
                          keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode,
                          nearest_mode=nearest_mode)


def _upsample(x, scales, mode):
    if mode not in ("nearest", "linear", "bilinear"):
        raise UnsupportedError(f"Upsample mode={mode!r} is not supported")
    mode = "linear" if mode == "bilinear" else mode
    return _resize_common(x, None, np.asarray(scales, dtype=np.float32), None, mode=mode,
                          coordinate_transformation_mode="asymmetric", nearest_mode="simple")


@kernel("Upsample", since=7)
def upsample_7(x, *, mode="nearest", scales=None):
    if scales is None:
        raise UnsupportedError("Upsample-7 needs the scales attribute")
    return _upsample(x, scales, mode)


@kernel("Upsample", since=9)
def upsample(x, scales, *, mode="nearest"):
    return _upsample(x, scales, mode)
