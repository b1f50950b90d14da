"""Dense and normalization kernels: Gemm, MatMul, *Normalization, LRN (Resize / Upsample are in
resize.py, RNN / GRU / LSTM in recurrent.py).

Float inputs keep their dtype end to end (attributes are Python floats: they are cast to the array
dtype before use so nothing is promoted to float64); half-precision inputs are computed in float32
and cast back.
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.dtypes import _acc, _half_up, _s
from tvmlite.ops.registry import kernel
# the TVM lowering reads the Resize coordinate helpers through this module
from tvmlite.ops.resize import _nearest_index, _resize_args, _taps, _x_original  # noqa: F401
from tvmlite.ops.strassen import strassen_matmul, wants_strassen


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
    _check_bn_params(x, (scale, b, mean, var), spatial)
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


def _check_bn_params(x, params, spatial=1) -> None:
    """ShapeError unless each parameter is per channel of ``x`` (or, before opset 9 with
    spatial=0, per channel and position: it broadcasts over the batch). A [C, 1] scale with the
    default spatial=1 is refused, as onnxruntime does ('NumDimensions() != 1')."""
    if x.ndim < 2:
        raise ShapeError(f"BatchNormalization input has rank {x.ndim}, needs at least 2")
    for name, p in zip(("scale", "B", "mean", "var"), params):
        shape = np.shape(p)
        ok = (shape == (x.shape[1],) if len(shape) == 1 or int(spatial)
              else _bcast_into((1,) + shape, x.shape))
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
    spatial = attrs.get("spatial", 1)
    cache = {}

    def run(x, *_):
        x = np.asarray(x)
        if x.ndim < 2 or (k.ndim == 1 and x.shape[1] != k.shape[0]):
            _check_bn_params(x, params, spatial)
        if x.dtype != dt:
            return batch_normalization(x, *consts[1:], **attrs)
        shp = cache.get(x.ndim)
        if shp is None:
            _check_bn_params(x, params, spatial)
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
