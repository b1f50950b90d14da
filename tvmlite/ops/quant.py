"""Quantization kernels: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearConv,
QLinearMatMul, ConvInteger, MatMulInteger.

Integer results are bit-exact with onnxruntime: scales are applied in float32 in onnxruntime's
order (``x / scale``; requantization multiplier ``(a_scale * b_scale) / y_scale``), rounding is half
to even (``np.rint``) and results saturate to the output type. Integer products are accumulated
exactly: in float32 BLAS when the accumulation bound fits float32's 24-bit mantissa, otherwise in
float64 BLAS (both exact for integers in range), then cast to int32.
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.im2col import im2col
from tvmlite.ops.registry import kernel

_INT_RANGES = {
    "uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
    "int32": (-2 ** 31, 2 ** 31 - 1), "uint4": (0, 15), "int4": (-8, 7), "uint2": (0, 3),
    "int2": (-2, 1),
}
_FLOAT8 = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
_FLOAT_SMALL = ("float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn")


def _np_dtype(tensor_type: int):
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        return np.dtype(tensor_dtype_to_np_dtype(int(tensor_type)))
    except Exception as e:  # noqa: BLE001
        raise UnsupportedError(f"unknown tensor type {tensor_type}") from e


def bcast_param(v, shape, axis, block_size=0):
    """Scale / zero point broadcastable to ``shape`` (per-tensor, per-axis or blocked)."""
    v = np.asarray(v)
    if v.ndim == 0:
        return v
    if v.size == 1 and not block_size:
        return v.reshape(())
    r = len(shape)
    axis = int(axis) % r if r else 0
    if not block_size:
        if v.ndim != 1 or v.shape[0] != shape[axis]:
            raise UnsupportedError(
                f"per-axis quantization parameter of shape {list(v.shape)} does not fit axis "
                f"{axis} of {list(shape)}")
        dims = [1] * r
        dims[axis] = v.size
        return v.reshape(dims)
    bs = int(block_size)
    if bs < 0 or v.ndim != r:
        raise UnsupportedError(f"blocked quantization parameter of shape {list(v.shape)} does not "
                               f"fit input {list(shape)}")
    rep = np.repeat(v, bs, axis=axis)
    sl = [slice(None)] * r
    sl[axis] = slice(0, shape[axis])
    rep = rep[tuple(sl)]
    if rep.shape != tuple(shape):
        raise UnsupportedError(f"blocked quantization parameter of shape {list(v.shape)} does not "
                               f"cover input {list(shape)} with block_size {bs}")
    return rep


def _saturate_int(v_f, dtype):
    """Round half to even, clip to ``dtype``'s range, cast (v_f is float32/float64)."""
    lo, hi = _INT_RANGES[np.dtype(dtype).name]
    r = np.rint(v_f)
    np.clip(r, lo, hi, out=r)
    return r.astype(dtype)


# --------------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear
# --------------------------------------------------------------------------------------------------

def _quantize(x, y_scale, y_zero_point=None, axis=1, saturate=1, block_size=0, output_dtype=0,
              precision=0):
    x = np.asarray(x)
    scale = np.asarray(y_scale)
    if y_zero_point is not None:
        zp = np.asarray(y_zero_point)
        out_dt = zp.dtype
        if output_dtype and _np_dtype(output_dtype) != out_dt:
            raise UnsupportedError("QuantizeLinear: output_dtype does not match the zero point type")
    else:
        zp = None
        out_dt = _np_dtype(output_dtype) if output_dtype else np.dtype(np.uint8)
    if precision:
        cdt = _np_dtype(precision)
    else:
        cdt = np.result_type(x.dtype, scale.dtype)
        if cdt.kind != "f" or cdt.itemsize < 4:
            cdt = np.dtype(np.float32)
    s = bcast_param(scale, x.shape, axis, block_size).astype(cdt, copy=False)
    v = np.divide(x.astype(cdt, copy=False), s)
    name = out_dt.name
    if name in _INT_RANGES:
        v = np.rint(v)
        if zp is not None:
            v += bcast_param(zp, x.shape, axis, block_size).astype(cdt)
        lo, hi = _INT_RANGES[name]
        np.clip(v, lo, hi, out=v)
        return v.astype(out_dt)
    if name in _FLOAT8:
        import ml_dtypes

        if int(saturate):
            fi = ml_dtypes.finfo(out_dt)
            v = np.clip(v, float(fi.min), float(fi.max))
        return v.astype(out_dt)
    if name in _FLOAT_SMALL:
        if zp is not None:
            v = v + bcast_param(zp, x.shape, axis, block_size).astype(cdt)
        return v.astype(out_dt)
    raise UnsupportedError(f"QuantizeLinear to {name} is not supported")


@kernel("QuantizeLinear", since=10)
def quantize_linear_10(x, y_scale, y_zero_point=None, *, axis=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis)


@kernel("QuantizeLinear", since=19)
def quantize_linear_19(x, y_scale, y_zero_point=None, *, axis=1, saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate)


@kernel("QuantizeLinear", since=21)
def quantize_linear_21(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0,
                       saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate,
                     block_size=block_size, output_dtype=output_dtype)


@kernel("QuantizeLinear", since=23)
def quantize_linear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0,
                    precision=0, saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate,
                     block_size=block_size, output_dtype=output_dtype, precision=precision)


def _dequantize(x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0):
    x = np.asarray(x)
    scale = np.asarray(x_scale)
    name = x.dtype.name
    xf = x.astype(np.float32)
    if x_zero_point is not None and name not in _FLOAT8 and name not in _FLOAT_SMALL:
        zp = bcast_param(np.asarray(x_zero_point), x.shape, axis, block_size)
        if name in ("int32",):
            # exact integer subtraction, then to float (matches onnxruntime)
            xf = (x.astype(np.int64) - zp.astype(np.int64)).astype(np.float32)
        else:
            xf -= zp.astype(np.float32)
    s = bcast_param(scale, x.shape, axis, block_size).astype(np.float32, copy=False)
    y = xf * s
    out_dt = _np_dtype(output_dtype) if output_dtype else scale.dtype
    return y.astype(out_dt, copy=False)


@kernel("DequantizeLinear", since=10)
def dequantize_linear_10(x, x_scale, x_zero_point=None, *, axis=1):
    return _dequantize(x, x_scale, x_zero_point, axis=axis)


@kernel("DequantizeLinear", since=21)
def dequantize_linear_21(x, x_scale, x_zero_point=None, *, axis=1, block_size=0):
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size)


@kernel("DequantizeLinear", since=23)
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size,
                       output_dtype=output_dtype)


@kernel("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(x):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise UnsupportedError(f"DynamicQuantizeLinear on {x.dtype} is not supported")
    f = np.float32
    maxx = f(max(f(0), x.max())) if x.size else f(0)
    minx = f(min(f(0), x.min())) if x.size else f(0)
    scale = f(1.0) if maxx == minx else f(maxx - minx)
    scale = f(scale / f(255))
    zp = np.rint(f(np.clip(f(0) - minx / scale, f(0), f(255))))
    y = np.rint(np.divide(x, scale))
    y += zp
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8), np.array(scale, dtype=np.float32), np.array(zp, dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Integer GEMM helpers
# --------------------------------------------------------------------------------------------------

def _shifted(x, zp, axis=None):
    """``x - zp`` as int32 (zp per-tensor, or per ``axis`` channel)."""
    xi = np.asarray(x).astype(np.int32)
    if zp is None:
        return xi
    zp = np.asarray(zp).astype(np.int32)
    if zp.size == 1:
        z = int(zp.reshape(-1)[0])
        if z:
            xi -= z
        return xi
    if axis is None:
        return xi - zp
    shape = [1] * xi.ndim
    shape[axis] = zp.size
    return xi - zp.reshape(shape)


def _maxabs(a):
    return int(np.abs(a).max()) if a.size else 0


def _int_matmul(a, b, k):
    """Exact int32 ``a @ b`` of int32 arrays (numpy matmul broadcasting), contraction length k."""
    bound = k * _maxabs(a) * _maxabs(b)
    if bound < 2 ** 24:
        r = np.matmul(a.astype(np.float32), b.astype(np.float32))
    elif bound < 2 ** 53:
        r = np.matmul(a.astype(np.float64), b.astype(np.float64))
    else:  # pragma: no cover - impossible for 8/16-bit inputs
        r = np.matmul(a.astype(np.int64), b.astype(np.int64))
    # onnxruntime's int32 accumulators wrap; values here are exact
    return r.astype(np.int64).astype(np.int32)


def _requant(acc, multiplier, y_zero_point, out_dtype):
    """``saturate(rint(acc * multiplier) + zp)`` in float32 (onnxruntime's requantization)."""
    v = acc.astype(np.float32)
    v *= multiplier
    v = np.rint(v)
    if y_zero_point is not None:
        v += np.float32(np.asarray(y_zero_point).reshape(-1)[0])
    lo, hi = _INT_RANGES[np.dtype(out_dtype).name]
    np.clip(v, lo, hi, out=v)
    return v.astype(out_dtype)


def _scale32(s):
    return np.asarray(s).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# MatMulInteger / QLinearMatMul
# --------------------------------------------------------------------------------------------------

def _matmul_int(a, b, a_zero_point, b_zero_point):
    a = np.asarray(a)
    b = np.asarray(b)
    a_nd, b_nd = a.ndim, b.ndim
    # A's zero point may be per-row (along A's second-to-last axis), B's per-column (last axis)
    azp = None if a_zero_point is None else np.asarray(a_zero_point)
    bzp = None if b_zero_point is None else np.asarray(b_zero_point)
    ai = _shifted(a, azp if azp is None or azp.size == 1 else None)
    if azp is not None and azp.size > 1:
        ai = a.astype(np.int32) - azp.astype(np.int32).reshape(-1, 1)
    bi = _shifted(b, bzp if bzp is None or bzp.size == 1 else None)
    if bzp is not None and bzp.size > 1:
        bi = b.astype(np.int32) - bzp.astype(np.int32).reshape(bzp.shape if bzp.ndim > 1 else (-1,))
    k = a.shape[-1] if a_nd else 1
    if a_nd == 1 or b_nd == 1:
        return _int_matmul(ai, bi, k)
    return _int_matmul(ai, bi, k)


@kernel("MatMulInteger", since=10)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    return _matmul_int(a, b, a_zero_point, b_zero_point)


@kernel("QLinearMatMul", since=10)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    acc = _matmul_int(a, b, a_zero_point, b_zero_point)
    a_s = _scale32(a_scale).reshape(-1)
    b_s = _scale32(b_scale)
    y_s = _scale32(y_scale).reshape(-1)
    if a_s.size != 1 or y_s.size != 1:
        raise UnsupportedError("QLinearMatMul: per-row a_scale / y_scale is not supported")
    if b_s.size == 1:
        mult = np.float32(np.float32(a_s[0] * b_s.reshape(-1)[0]) / y_s[0])
    else:
        mult = ((a_s[0] * b_s) / y_s[0]).astype(np.float32)
        mult = mult.reshape(b_s.shape if b_s.ndim > 1 else (-1,))
    if y_zero_point is None:
        out_dt = np.asarray(a).dtype
        return _requant(acc, mult, None, out_dt)
    zp = np.asarray(y_zero_point)
    return _requant(acc, mult, zp, zp.dtype)


# --------------------------------------------------------------------------------------------------
# ConvInteger / QLinearConv
# --------------------------------------------------------------------------------------------------

def _conv_int(x, w, x_zero_point, w_zero_point, attrs):
    """Exact int32 convolution of (x - x_zp) and (w - w_zp) via im2col + exact GEMM (``attrs``:
    the node's Conv attributes, defaults applied by :meth:`WindowGeometry.conv`)."""
    x = np.asarray(x)
    w = np.asarray(w)
    N, C = x.shape[:2]
    M = w.shape[0]
    g = WindowGeometry.conv(attrs, x.shape, w.shape)
    group, kshape, out_shape = g.group, g.kernel, g.out_spatial
    if C != w.shape[1] * group or M % group:
        raise UnsupportedError(
            f"conv channels do not fit: input C={C}, weight {list(w.shape)}, group={group}")
    # shift x first so padding contributes (x_zp - x_zp) = 0
    xi = _shifted(x, x_zero_point)
    wzp = None if w_zero_point is None else np.asarray(w_zero_point)
    if wzp is not None and wzp.size > 1:
        wi = w.astype(np.int32) - wzp.astype(np.int32).reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        wi = _shifted(w, wzp)
    K = int(np.prod(kshape, dtype=np.int64))
    P = int(np.prod(out_shape, dtype=np.int64))
    cols = im2col(xi, kshape, g.strides, g.dilations, g.pads)  # [N, C*K, P] int32
    Cg, Mg = C // group, M // group
    cols = cols.reshape(N, group, Cg * K, P)
    w3 = wi.reshape(group, Mg, Cg * K)
    y = _int_matmul(w3, cols, Cg * K)  # [N, G, Mg, P]
    return y.reshape((N, M) + tuple(out_shape))


# the Conv attributes' defaults are WindowGeometry.conv's: None here means absent
@kernel("ConvInteger", since=10)
def conv_integer(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad=None, dilations=None,
                 group=None, kernel_shape=None, pads=None, strides=None):
    return _conv_int(x, w, x_zero_point, w_zero_point, dict(
        auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
        strides=strides))


@kernel("QLinearConv", since=10)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point,
                 b=None, *, auto_pad=None, dilations=None, group=None, kernel_shape=None,
                 pads=None, strides=None):
    acc = _conv_int(x, w, x_zero_point, w_zero_point, dict(
        auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
        strides=strides))
    n = acc.ndim - 2
    M = acc.shape[1]
    if b is not None:
        acc += np.asarray(b).astype(np.int32).reshape((1, M) + (1,) * n)
    xs = _scale32(x_scale).reshape(-1)[0]
    ys = _scale32(y_scale).reshape(-1)[0]
    ws = _scale32(w_scale).reshape(-1)
    if ws.size == 1:
        mult = np.float32(np.float32(xs * ws[0]) / ys)
    else:
        mult = ((xs * ws) / ys).astype(np.float32).reshape((1, M) + (1,) * n)
    zp = np.asarray(y_zero_point) if y_zero_point is not None else None
    out_dt = zp.dtype if zp is not None else np.asarray(x).dtype
    return _requant(acc, mult, zp, out_dt)
