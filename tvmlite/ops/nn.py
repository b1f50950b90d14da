"""Dense / normalization / resampling kernels: Gemm, MatMul, *Normalization, LRN, Resize, Upsample,
and the recurrent ops RNN / GRU / LSTM.

Float inputs keep their dtype end to end (attributes are Python floats: they are cast to the array
dtype before use so nothing is promoted to float64); half-precision inputs are computed in float32
and cast back.
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite import limits
from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.registry import kernel
from tvmlite.ops.strassen import strassen_matmul, wants_strassen


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


# --------------------------------------------------------------------------------------------------
# Gemm / MatMul
# --------------------------------------------------------------------------------------------------

# Gemm and MatMul results are new arrays (or views of private ones): the NumPy plan may write into them
@kernel("Gemm", since=1, fresh_output=True)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, broadcast=0, transA=0, transB=0):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise UnsupportedError(f"Gemm needs 2-D A and B, got ranks {a.ndim} and {b.ndim}")
    A = a.T if transA else a
    B = b.T if transB else b
    if A.shape[1] != B.shape[0]:
        raise ShapeError(f"Gemm: A{' (transposed)' if transA else ''} is {list(A.shape)}, "
                         f"B{' (transposed)' if transB else ''} is {list(B.shape)}: inner dims differ")
    if c is not None and not _bcast_into(np.shape(c), (A.shape[0], B.shape[1])):
        raise ShapeError(f"Gemm: C of shape {list(np.shape(c))} does not broadcast to "
                         f"{[A.shape[0], B.shape[1]]}")
    dt = np.result_type(a.dtype, b.dtype)
    y = strassen_matmul(A, B) if wants_strassen(A, B) else np.matmul(*_half_up(A, B))
    if y.dtype != dt:
        y = y.astype(dt)
    if float(alpha) != 1.0:
        y *= _s(alpha, dt)
    if c is not None:
        c = np.asarray(c)
        if float(beta) == 1.0:
            y += c.astype(dt, copy=False)
        elif float(beta) != 0.0:
            y += c.astype(dt, copy=False) * _s(beta, dt)
    return y


def _bcast_into(shape, target) -> bool:
    """``shape`` broadcasts to ``target`` without growing it (ONNX's unidirectional broadcast)."""
    if len(shape) > len(target):
        return False
    return all(d == 1 or d == t for d, t in zip(reversed(shape), reversed(target)))


@kernel("MatMul", since=1, fresh_output=True)
def matmul(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    y = strassen_matmul(a, b) if wants_strassen(a, b) else np.matmul(*_half_up(a, b))
    dt = np.result_type(a.dtype, b.dtype)
    return y if y.dtype == dt else y.astype(dt)


# --------------------------------------------------------------------------------------------------
# Normalizations
# --------------------------------------------------------------------------------------------------

def _channel_shape(x, p):
    return (1, -1) + (1,) * (x.ndim - 2) if p.ndim == 1 else (1,) + p.shape


def batch_normalization(x, scale, b, mean, var, *, consumed_inputs=None, epsilon=1e-5, is_test=0,
                        momentum=0.9, spatial=1, training_mode=0):
    """Inference BatchNormalization (all versions). ``training_mode=1`` (opset 14+) is computed as
    ONNX defines it (batch statistics; outputs Y, running_mean, running_var)."""
    x = np.asarray(x)
    _check_bn_params(x, (scale, b, mean, var))
    dt = x.dtype
    acc = _acc(dt)
    if int(training_mode):
        axes = tuple(i for i in range(x.ndim) if i != 1)
        xa = x.astype(acc, copy=False)
        bm = xa.mean(axis=axes)
        bv = xa.var(axis=axes)
        m = _s(momentum, acc)
        run_mean = np.asarray(mean).astype(acc) * m + bm * (_s(1, acc) - m)
        run_var = np.asarray(var).astype(acc) * m + bv * (_s(1, acc) - m)
        y = _batchnorm(xa, scale, b, bm, bv, epsilon, acc)
        return y.astype(dt, copy=False), run_mean.astype(dt), run_var.astype(dt)
    return _batchnorm(x, scale, b, mean, var, epsilon, acc).astype(dt, copy=False)


def _check_bn_params(x, params) -> None:
    """ShapeError unless each parameter is per channel of ``x`` (or, before opset 9 with
    spatial=0, per channel and position: it broadcasts over the batch)."""
    if x.ndim < 2:
        raise ShapeError(f"BatchNormalization input has rank {x.ndim}, needs at least 2")
    for name, p in zip(("scale", "B", "mean", "var"), params):
        shape = np.shape(p)
        ok = shape == (x.shape[1],) if len(shape) == 1 else _bcast_into((1,) + shape, x.shape)
        if not ok:
            raise ShapeError(f"BatchNormalization {name} of shape {list(shape)} does not fit input "
                             f"{list(x.shape)} ({x.shape[1]} channels)")


def _bn_affine(params, attrs):
    """Inference BatchNormalization's per-channel (scale, shift) from constant parameters."""
    scale, b, mean, var = params
    k = scale / np.sqrt(var + _s(attrs.get("epsilon", 1e-5), scale.dtype))
    return k, b - mean * k


def _batchnorm_pointwise(consts, attrs, dt, ndim):
    """The prepared inference BatchNormalization as pointwise steps: ``x * k + off`` per channel."""
    if len(consts) != 5 or any(c is None for c in consts[1:]):
        return None
    if int(attrs.get("training_mode", 0) or 0):
        return None
    params = [np.asarray(c) for c in consts[1:]]
    if ndim < 2 or any(p.dtype != dt or p.ndim != 1 for p in params):
        return None
    k, off = _bn_affine(params, attrs)
    shape = (1, -1) + (1,) * (ndim - 2)
    return [(np.multiply, (0, k.reshape(shape))), (np.add, (None, off.reshape(shape)))]


def _batchnorm_prepare(consts, attrs):
    """Constant parameters (inference): scale and shift computed once, one fused pass per call."""
    if len(consts) != 5 or consts[0] is not None or any(c is None for c in consts[1:]):
        return None
    if int(attrs.get("training_mode", 0) or 0):
        return None
    params = [np.asarray(c) for c in consts[1:]]
    dt = params[0].dtype
    if dt not in (np.float32, np.float64) or any(p.dtype != dt for p in params):
        return None
    k, off = _bn_affine(params, attrs)
    cache = {}

    def run(x, *_):
        x = np.asarray(x)
        if x.ndim < 2 or (k.ndim == 1 and x.shape[1] != k.shape[0]):
            _check_bn_params(x, params)
        if x.dtype != dt:
            return batch_normalization(x, *consts[1:], **attrs)
        shp = cache.get(x.ndim)
        if shp is None:
            _check_bn_params(x, params)
            shape = _channel_shape(x, k)
            shp = cache[x.ndim] = (k.reshape(shape), off.reshape(shape))
        y = np.multiply(x, shp[0])
        y += shp[1]
        return y

    return run


kernel("BatchNormalization", since=1, prepare=_batchnorm_prepare,
       pointwise=_batchnorm_pointwise)(batch_normalization)


def _batchnorm(x, scale, b, mean, var, epsilon, acc):
    scale, b, mean, var = (np.asarray(v).astype(acc, copy=False) for v in (scale, b, mean, var))
    k = scale / np.sqrt(var + _s(epsilon, acc))
    off = b - mean * k
    shape = _channel_shape(x, k)
    y = x * k.reshape(shape)
    y += off.reshape(shape)
    return y


@kernel("InstanceNormalization", since=1)
def instance_normalization(x, scale, b, *, epsilon=1e-5):
    x = np.asarray(x)
    dt = x.dtype
    acc = _acc(dt)
    xa = x.astype(acc, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = xa.mean(axis=axes, keepdims=True)
    d = xa - mean
    var = np.mean(np.square(d), axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    k = np.asarray(scale).astype(acc).reshape(shape) / np.sqrt(var + _s(epsilon, acc))
    d *= k
    d += np.asarray(b).astype(acc).reshape(shape)
    return d.astype(dt, copy=False)


def _stash_dtype(stash_type, x_dtype):
    from onnx.helper import tensor_dtype_to_np_dtype

    st = int(stash_type)
    try:
        sd = np.dtype(tensor_dtype_to_np_dtype(st))
    except Exception as e:  # noqa: BLE001
        raise UnsupportedError(f"stash_type={st} is not supported") from e
    if sd.kind != "f":
        raise UnsupportedError(f"stash_type={st} is not supported")
    return sd if sd.itemsize >= 4 else np.dtype(np.float32)


@kernel("LayerNormalization", since=17)
def layer_normalization(x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    x = np.asarray(x)
    dt = x.dtype
    acc = _stash_dtype(stash_type, dt)
    r = x.ndim
    ax = int(axis) + r if int(axis) < 0 else int(axis)
    axes = tuple(range(ax, r))
    xa = x.astype(acc, copy=False)
    mean = xa.mean(axis=axes, keepdims=True)
    d = xa - mean
    var = np.mean(np.square(d), axis=axes, keepdims=True)
    inv = _s(1, acc) / np.sqrt(var + _s(epsilon, acc))
    d *= inv
    y = d.astype(dt, copy=False)
    y = y * np.asarray(scale).astype(dt, copy=False)
    if b is not None:
        y += np.asarray(b).astype(dt, copy=False)
    return y.astype(dt, copy=False), mean.astype(acc, copy=False), inv


def _group_norm(x, num_groups, scale, bias, epsilon, acc, per_channel):
    x = np.asarray(x)
    dt = x.dtype
    N, C = x.shape[:2]
    G = int(num_groups)
    if G <= 0 or C % G:
        raise UnsupportedError(f"GroupNormalization: {C} channels not divisible by {G} groups")
    xa = x.astype(acc, copy=False).reshape(N, G, -1)
    mean = xa.mean(axis=2, keepdims=True)
    d = xa - mean
    var = np.mean(np.square(d), axis=2, keepdims=True)
    d *= _s(1, acc) / np.sqrt(var + _s(epsilon, acc))
    d = d.reshape(x.shape)
    scale = np.asarray(scale).astype(acc)
    bias = np.asarray(bias).astype(acc)
    if not per_channel:
        scale = np.repeat(scale, C // G)
        bias = np.repeat(bias, C // G)
    shape = (1, C) + (1,) * (x.ndim - 2)
    d *= scale.reshape(shape)
    d += bias.reshape(shape)
    return d.astype(dt, copy=False)


@kernel("GroupNormalization", since=18)
def group_normalization_18(x, scale, bias, *, epsilon=1e-5, num_groups=None):
    if num_groups is None:
        raise UnsupportedError("GroupNormalization needs num_groups")
    return _group_norm(x, num_groups, scale, bias, epsilon, _acc(np.asarray(x).dtype), False)


@kernel("GroupNormalization", since=21)
def group_normalization(x, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1):
    if num_groups is None:
        raise UnsupportedError("GroupNormalization needs num_groups")
    acc = _stash_dtype(stash_type, np.asarray(x).dtype)
    return _group_norm(x, num_groups, scale, bias, epsilon, acc, True)


@kernel("LRN", since=1)
def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size=None):
    if size is None:
        raise UnsupportedError("LRN needs size")
    x = np.asarray(x)
    dt = x.dtype
    acc = _acc(dt)
    xa = x.astype(acc, copy=False)
    size = int(size)
    C = x.shape[1]
    lo = (size - 1) // 2
    hi = size - 1 - lo  # ceil((size-1)/2)
    sq = np.square(xa)
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo, hi)
    sqp = np.pad(sq, pad)
    ss = np.zeros_like(sq)
    for k in range(size):
        ss += sqp[:, k:k + C]
    den = np.power(_s(bias, acc) + _s(alpha / size, acc) * ss, _s(beta, acc))
    return (xa / den).astype(dt, copy=False)


@kernel("MeanVarianceNormalization", since=1)
def mean_variance_normalization(x, *, across_channels=0, axes=None, normalize_variance=1):
    x = np.asarray(x)
    dt = x.dtype
    acc = _acc(dt)
    if axes is None:
        axes = [0, 1, 2, 3] if int(across_channels) else [0, 2, 3]
        axes = [a for a in axes if a < x.ndim]
    axes = tuple(int(a) % x.ndim for a in axes)
    xa = x.astype(acc, copy=False)
    mean = xa.mean(axis=axes, keepdims=True)
    d = xa - mean
    if int(normalize_variance):
        std = np.sqrt(np.mean(np.square(d), axis=axes, keepdims=True))
        d /= std + _s(1e-9, acc)
    return d.astype(dt, copy=False)


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


# --------------------------------------------------------------------------------------------------
# RNN / GRU / LSTM
# --------------------------------------------------------------------------------------------------

def _sigmoid(x):
    # numerically stable, stays in x's dtype
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


#: name -> (function(x, alpha, beta), default alpha, default beta, uses alpha, uses beta)
_ACTS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: _sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0), None, None),
}


def _activations(names, alphas, betas, defaults, num_dir, dt):
    if not names:
        names = defaults * num_dir
    if len(names) == len(defaults) and num_dir == 2:
        names = list(names) * 2
    if len(names) != len(defaults) * num_dir:
        raise UnsupportedError(f"recurrent op: {len(names)} activations for {num_dir} direction(s)")
    alphas = list(alphas or [])
    betas = list(betas or [])
    out = []
    for nm in names:
        key = (nm.decode() if isinstance(nm, bytes) else nm).lower()
        if key not in _ACTS:
            raise UnsupportedError(f"recurrent activation {nm!r} is not supported")
        fn, da, db = _ACTS[key]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        a = None if a is None else dt.type(a)
        b = None if b is None else dt.type(b)
        out.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b).astype(dt, copy=False))
    return [out[i * len(defaults):(i + 1) * len(defaults)] for i in range(num_dir)]


def _rnn_prepare(x, sequence_lens, initial_states, layout, num_dir, hidden_size, direction):
    x = np.asarray(x)
    dt = x.dtype if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else np.dtype(np.float32)
    if int(layout):
        x = x.transpose(1, 0, 2)
        initial_states = [None if s is None else np.asarray(s).transpose(1, 0, 2)
                          for s in initial_states]
    T, Bn = x.shape[:2]
    if sequence_lens is None:
        lens = np.full(Bn, T, dtype=np.int64)
    else:
        lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
    return x.astype(dt, copy=False), dt, T, Bn, lens, initial_states


def _dir_input(x, lens, reverse):
    """Per-direction time-major input (reversed within each sequence's valid length)."""
    T = x.shape[0]
    if not reverse:
        return x
    t = np.arange(T)[:, None]
    src = lens[None, :] - 1 - t  # [T, B]
    src = np.where(src >= 0, src, 0)
    return x[src, np.arange(x.shape[1])[None, :]]


def _dir_output(ys, lens, reverse):
    T = ys.shape[0]
    if not reverse:
        return ys
    t = np.arange(T)[:, None]
    src = lens[None, :] - 1 - t
    valid = src >= 0
    out = np.zeros_like(ys)
    b = np.broadcast_to(np.arange(ys.shape[1])[None, :], src.shape)
    out[src[valid], b[valid]] = ys[valid]
    return out


def _directions(direction):
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction == "forward":
        return [False]
    if direction == "reverse":
        return [True]
    if direction == "bidirectional":
        return [False, True]
    raise UnsupportedError(f"recurrent direction={direction!r} is not supported")


def _finish(ys_dirs, hs_dirs, layout, extra=None):
    Y = np.stack(ys_dirs, axis=1)  # [T, D, B, H]
    Yh = np.stack(hs_dirs, axis=0)  # [D, B, H]
    outs = [Y, Yh] + ([np.stack(extra, axis=0)] if extra is not None else [])
    if int(layout):
        outs = [Y.transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outs[1:]]
    return tuple(np.ascontiguousarray(o) for o in outs)


def _recurrent(kind, x, w, r, b, sequence_lens, init, *, activation_alpha, activation_beta,
               activations, clip, direction, hidden_size, layout, p=None, input_forget=0,
               linear_before_reset=0):
    dirs = _directions(direction)
    D = len(dirs)
    ngates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    w = np.asarray(w)
    H = int(hidden_size) if hidden_size is not None else w.shape[1] // ngates
    x, dt, T, Bn, lens, init = _rnn_prepare(x, sequence_lens, init, layout, D, H, direction)
    defaults = {"rnn": ["Tanh"], "gru": ["Sigmoid", "Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"]}
    acts = _activations(activations, activation_alpha, activation_beta, defaults[kind], D, dt)
    w = w.astype(dt, copy=False)
    r = np.asarray(r).astype(dt, copy=False)
    b = (np.zeros((D, 2 * ngates * H), dtype=dt) if b is None else np.asarray(b).astype(dt))
    cl = None if clip is None else dt.type(clip)
    ys_dirs, hs_dirs, cs_dirs = [], [], []
    tmask = (np.arange(T)[:, None] < lens[None, :])  # [T, B]
    for d, rev in enumerate(dirs):
        xd = _dir_input(x, lens, rev)
        Wb, Rb = b[d, :ngates * H], b[d, ngates * H:]
        xw = np.matmul(xd, w[d].T) + Wb  # [T, B, G*H]
        if kind != "gru" or not int(linear_before_reset):
            xw += Rb
        else:  # the hidden gate's recurrence bias goes inside the reset product
            xw[..., :2 * H] += Rb[:2 * H]
        h = np.zeros((Bn, H), dtype=dt) if init[0] is None else np.asarray(init[0])[d].astype(dt)
        c = None
        if kind == "lstm":
            c = np.zeros((Bn, H), dtype=dt) if init[1] is None else np.asarray(init[1])[d].astype(dt)
            pp = (np.zeros(3 * H, dtype=dt) if p is None else np.asarray(p)[d].astype(dt))
            pi, po, pf = pp[:H], pp[H:2 * H], pp[2 * H:]
        ys = np.zeros((T, Bn, H), dtype=dt)
        rt_ = r[d].T
        f = acts[d]

        def cp(v):
            return v if cl is None else np.clip(v, -cl, cl)

        for t in range(T):
            m = tmask[t][:, None]
            if not m.any():
                continue
            if kind == "rnn":
                hn = f[0](cp(xw[t] + h @ rt_))
            elif kind == "gru":
                rz = h @ rt_[:, :2 * H]
                z = f[0](cp(xw[t, :, :H] + rz[:, :H]))
                rr = f[0](cp(xw[t, :, H:2 * H] + rz[:, H:]))
                if int(linear_before_reset):
                    hh = f[1](cp(xw[t, :, 2 * H:] + rr * (h @ rt_[:, 2 * H:] + Rb[2 * H:])))
                else:
                    hh = f[1](cp(xw[t, :, 2 * H:] + (rr * h) @ rt_[:, 2 * H:]))
                hn = (1 - z) * hh + z * h
            else:
                g = xw[t] + h @ rt_
                i = f[0](cp(g[:, :H] + pi * c))
                if int(input_forget):
                    fg = (1 - i).astype(dt)
                else:
                    fg = f[0](cp(g[:, 2 * H:3 * H] + pf * c))
                cc = f[1](cp(g[:, 3 * H:]))
                cn = fg * c + i * cc
                o = f[0](cp(g[:, H:2 * H] + po * cn))
                hn = o * f[2](cn)
                c = np.where(m, cn, c).astype(dt, copy=False)
            h = np.where(m, hn, h).astype(dt, copy=False)
            ys[t] = np.where(m, h, 0)
        ys_dirs.append(_dir_output(ys, lens, rev))
        hs_dirs.append(h)
        cs_dirs.append(c)
    odt = np.asarray(x).dtype
    res = _finish(ys_dirs, hs_dirs, layout, cs_dirs if kind == "lstm" else None)
    return tuple(o.astype(odt, copy=False) for o in res)


@kernel("RNN", since=1)
def rnn(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
        layout=0, output_sequence=0):
    return _recurrent("rnn", x, w, r, b, sequence_lens, [initial_h],
                      activation_alpha=activation_alpha, activation_beta=activation_beta,
                      activations=activations, clip=clip, direction=direction,
                      hidden_size=hidden_size, layout=layout)


@kernel("GRU", since=1)
def gru(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
        layout=0, linear_before_reset=0, output_sequence=0):
    return _recurrent("gru", x, w, r, b, sequence_lens, [initial_h],
                      activation_alpha=activation_alpha, activation_beta=activation_beta,
                      activations=activations, clip=clip, direction=direction,
                      hidden_size=hidden_size, layout=layout,
                      linear_before_reset=linear_before_reset)


@kernel("LSTM", since=1)
def lstm(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
         activation_alpha=None, activation_beta=None, activations=None, clip=None,
         direction="forward", hidden_size=None, input_forget=0, layout=0, output_sequence=0):
    return _recurrent("lstm", x, w, r, b, sequence_lens, [initial_h, initial_c],
                      activation_alpha=activation_alpha, activation_beta=activation_beta,
                      activations=activations, clip=clip, direction=direction,
                      hidden_size=hidden_size, layout=layout, p=p, input_forget=input_forget)
