"""A QDQ-quantized Conv or MatMul as one node (domain "tvmlite"), made by the TVM backend's build-time
QDQ fusion (backends/tvm/qdq_fusion.py) so its int8 kernel sees the whole pattern:

    x -> QuantizeLinear -> DequantizeLinear -> Conv / MatMul (weights DequantizeLinear(int8), bias)
      [-> Relu] [-> QuantizeLinear -> DequantizeLinear] -> y

QDQConv(x, w_q, w_scale[, bias][, x_mul]) and QDQMatMul(x, w_q, w_scale[, bias]) take the float input ``x``
and compute exactly what that pattern computes: ``x`` quantized with ``x_scale`` / ``x_zero_point``
(int8 when ``x_signed``, else uint8) and dequantized, the weights ``w_q * w_scale`` (int8, one scale
per output channel or one for all), the float Conv / MatMul plus ``bias``, ``activation`` ("Relu",
"", or for QDQConv "SiLU" in onnxruntime's QDQ form: c = fq(y, c_*), then c * fq(Sigmoid(c), s_*)),
then, when ``y_scale`` > 0, the output quantized and dequantized the same way. So the NumPy
kernel (used where the TVM emitter declines) and the ONNX function body are the unfused graph.
QDQConv's optional ``x_mul`` (float, broadcast to ``x``: a squeeze-and-excitation block's one factor
per image and channel) multiplies the float input before it is quantized: Mul(x, x_mul) -> QDQConv,
the same float32 product, so the int8 kernel reads ``x`` once instead of a Mul writing it again.

Between int8 kernels the values stay quantized (backends/tvm/qdq_buffers.py): with ``x_quantized``
the input is already QuantizeLinear's output (uint8, or int8 when ``x_signed``) and is only
dequantized; with ``y_quantized`` the node ends in QuantizeLinear (its output is the integer
tensor). ``x_layout`` / ``y_layout`` "NHWC" store a conv's quantized input / output channels-last
(shape [N, H, W, C]), so the int8 kernels read and write whole pixels. QMaxPool is MaxPool on such a
quantized tensor (max commutes with the monotone quantization), in either layout.
"""
from __future__ import annotations

import numpy as np

from tvmlite.ops.conv import conv_nd
from tvmlite.ops.conv_shapes import conv_output_shape, kernel_geometry, resolve_pads
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.pool import max_pool_values
from tvmlite.ops.quant import _dequantize, _quantize
from tvmlite.ops.registry import tvmlite_op


def _zp(value: int, signed: int) -> np.ndarray:
    return np.array(int(value), np.int8 if int(signed) else np.uint8)


def fake_quant(x, scale: float, zero_point: int, signed: int) -> np.ndarray:
    """DequantizeLinear(QuantizeLinear(x)) with a per-tensor scale, in float32 as onnxruntime does."""
    s, zp = np.float32(scale), _zp(zero_point, signed)
    return _dequantize(_quantize(np.asarray(x, np.float32), s, zp), s, zp).astype(np.float32, copy=False)


def _weights(w_q, w_scale, axis: int) -> np.ndarray:
    s = np.asarray(w_scale, np.float32)
    if s.size > 1:
        shape = [1] * np.ndim(w_q)
        shape[axis] = s.size
        s = s.reshape(shape)
    return np.asarray(w_q).astype(np.float32) * s


_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def quant_dtype(signed) -> np.dtype:
    return np.dtype(np.int8 if int(signed) else np.uint8)


def _input(x, x_scale, x_zero_point, x_signed, x_quantized=0, x_layout="NCHW"):
    """The dequantized float input (NCHW when it is stored NHWC)."""
    if int(x_quantized):
        s, zp = np.float32(x_scale), _zp(x_zero_point, x_signed)
        x = _dequantize(np.asarray(x, quant_dtype(x_signed)), s, zp).astype(np.float32, copy=False)
        return x.transpose(_TO_NCHW) if attr_text(x_layout) == "NHWC" else x
    return fake_quant(x, x_scale, x_zero_point, x_signed)


def _finish(y, bias, bias_shape, activation, y_scale, y_zero_point, y_signed, y_quantized=0, y_layout="NCHW",
            silu=None):
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(bias_shape)
    if activation == "Relu":
        y = np.maximum(y, np.float32(0))
    elif activation == "SiLU":  # onnxruntime's QDQ SiLU: each of its values on its own grid
        y = fake_quant(y, *silu[0])
        y = y * fake_quant(np.float32(1) / (np.float32(1) + np.exp(-y)), *silu[1])
    elif activation:
        raise ValueError(f"activation {activation!r}")
    if int(y_quantized):
        q = _quantize(np.asarray(y, np.float32), np.float32(y_scale), _zp(y_zero_point, y_signed))
        return q.transpose(_TO_NHWC) if attr_text(y_layout) == "NHWC" else q
    if float(y_scale) > 0:
        y = fake_quant(y, y_scale, y_zero_point, y_signed)
    return np.asarray(y, np.float32)


def x_mul_factors(m_shape, x_shape) -> tuple[int, int] | None:
    """(N or 1, C or 1) of a QDQConv ``x_mul`` of ``m_shape`` broadcast to the 4-D ``x_shape`` when
    it is one factor per image and channel (what the fold writes and the int8 kernel takes); else None."""
    if m_shape is None or x_shape is None or len(x_shape) != 4 or len(m_shape) > 4:
        return None
    m4 = (1,) * (4 - len(m_shape)) + tuple(m_shape)
    ok = m4[0] in (1, x_shape[0]) and m4[1] in (1, x_shape[1]) and m4[2:] == (1, 1)
    return (m4[0], m4[1]) if ok else None


def attr_text(value) -> str:
    """A string attribute as imported (bytes or str), or the empty string when absent."""
    return value.decode() if isinstance(value, bytes) else (value or "")


# ------------------------------------------------------------------------------------------- Conv
def _conv_out(x_shape, w_shape, auto_pad, kernel_shape, pads, strides, dilations):
    n = len(x_shape) - 2
    kernel, strides, dilations = kernel_geometry(w_shape, n, kernel_shape, strides, dilations)
    spatial = x_shape[2:]
    if any(not isinstance(d, int) for d in spatial):
        return [None] * n
    p = resolve_pads(auto_pad, spatial, kernel, strides, dilations, pads)
    return conv_output_shape(spatial, kernel, strides, dilations, p)


def _out_dtype(y_signed, y_quantized):
    return quant_dtype(y_signed) if int(y_quantized) else np.dtype(np.float32)


def _qconv_shape(types, *, x_scale, x_zero_point, x_signed=0, y_scale=0.0, y_zero_point=0, y_signed=0,
                 activation="", auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None, dilations=None,
                 group=1, x_quantized=0, y_quantized=0, x_layout="NCHW", y_layout="NCHW", **_silu):
    dtype, xs = types[0]
    ws = types[1][1]
    if attr_text(x_layout) == "NHWC":
        xs = [xs[i] for i in _TO_NCHW]
    out = (xs[0], ws[0], *_conv_out(list(xs), list(ws), auto_pad, kernel_shape, pads, strides, dilations))
    if attr_text(y_layout) == "NHWC":
        out = tuple(out[i] for i in _TO_NHWC)
    return [(_out_dtype(y_signed, y_quantized), out)]


def _conv_attrs(auto_pad, kernel_shape, pads, strides, dilations, group) -> dict:
    a = {"group": int(group)}
    if auto_pad and attr_text(auto_pad) != "NOTSET":
        a["auto_pad"] = attr_text(auto_pad)
    for k, v in (("kernel_shape", kernel_shape), ("pads", pads), ("strides", strides), ("dilations", dilations)):
        if v is not None:
            a[k] = [int(i) for i in v]
    return a


def _q_params(fb, scale, zero_point, signed):
    return fb.const(np.array(scale, np.float32)), fb.const(_zp(zero_point, signed))


def _fq_body(fb, x, scale, zero_point, signed):
    s, zp = _q_params(fb, scale, zero_point, signed)
    return fb.node("DequantizeLinear", [fb.node("QuantizeLinear", [x, s, zp]), s, zp])


def _x_body(fb, x_scale, x_zero_point, x_signed, x_quantized=0, x_layout="NCHW"):
    if not int(x_quantized):
        return _fq_body(fb, fb.inputs[0], x_scale, x_zero_point, x_signed)
    x = fb.node("DequantizeLinear", [fb.inputs[0], *_q_params(fb, x_scale, x_zero_point, x_signed)])
    return fb.node("Transpose", [x], {"perm": list(_TO_NCHW)}) if attr_text(x_layout) == "NHWC" else x


def _tail_body(fb, y, activation, y_scale, y_zero_point, y_signed, y_quantized=0, y_layout="NCHW", silu=None):
    if attr_text(activation) == "Relu":
        y = fb.node("Relu", [y])
    elif attr_text(activation) == "SiLU":
        y = _fq_body(fb, y, *silu[0])
        y = fb.node("Mul", [y, _fq_body(fb, fb.node("Sigmoid", [y]), *silu[1])])
    if int(y_quantized):
        y = fb.node("QuantizeLinear", [y, *_q_params(fb, y_scale, y_zero_point, y_signed)])
        if attr_text(y_layout) == "NHWC":
            y = fb.node("Transpose", [y], {"perm": list(_TO_NHWC)})
    elif float(y_scale) > 0:
        y = _fq_body(fb, y, y_scale, y_zero_point, y_signed)
    fb.node("Identity", [y], output=fb.outputs[0])


def _w_body(fb, axis):
    """DequantizeLinear of the int8 weights: per-channel along ``axis``, or per-tensor."""
    if any(not isinstance(d, int) or d > 1 for d in fb.input_types[2][1] or ()):  # one scale per channel
        return fb.node("DequantizeLinear", [fb.inputs[1], fb.inputs[2]], {"axis": axis})
    s = fb.node("Reshape", [fb.inputs[2], fb.const(np.array([], np.int64))])
    return fb.node("DequantizeLinear", [fb.inputs[1], s])


def _qconv_body(fb, *, x_scale, x_zero_point, x_signed=0, y_scale=0.0, y_zero_point=0, y_signed=0,
                activation="", auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None, dilations=None,
                group=1, x_quantized=0, y_quantized=0, x_layout="NCHW", y_layout="NCHW", c_scale=0.0,
                c_zero_point=0, c_signed=0, s_scale=0.0, s_zero_point=0, s_signed=0):
    if len(fb.inputs) > 4 and fb.inputs[4]:  # x_mul: Mul(x, x_mul) is the float input
        x = _fq_body(fb, fb.node("Mul", [fb.inputs[0], fb.inputs[4]]), x_scale, x_zero_point, x_signed)
    else:
        x = _x_body(fb, x_scale, x_zero_point, x_signed, x_quantized, x_layout)
    ins = [x, _w_body(fb, 0)] + ([fb.inputs[3]] if len(fb.inputs) > 3 and fb.inputs[3] else [])
    y = fb.node("Conv", ins, _conv_attrs(auto_pad, kernel_shape, pads, strides, dilations, group))
    _tail_body(fb, y, activation, y_scale, y_zero_point, y_signed, y_quantized, y_layout,
               ((c_scale, c_zero_point, c_signed), (s_scale, s_zero_point, s_signed)))


@tvmlite_op("QDQConv", shape=_qconv_shape, body=_qconv_body)
def qdq_conv(x, w_q, w_scale, bias=None, x_mul=None, *, x_scale, x_zero_point, x_signed=0, y_scale=0.0, y_zero_point=0,
             y_signed=0, activation="", auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None,
             dilations=None, group=1, x_quantized=0, y_quantized=0, x_layout="NCHW", y_layout="NCHW", c_scale=0.0,
             c_zero_point=0, c_signed=0, s_scale=0.0, s_zero_point=0, s_signed=0):
    if x_mul is not None:
        if int(x_quantized):
            raise ValueError("QDQConv: x_mul multiplies a float input (x_quantized is set)")
        x = np.asarray(x, np.float32) * np.asarray(x_mul, np.float32)
    xq = _input(x, x_scale, x_zero_point, x_signed, x_quantized, x_layout)
    w = _weights(w_q, w_scale, 0)
    y = conv_nd(xq, w, None, auto_pad=attr_text(auto_pad), kernel_shape=kernel_shape, pads=pads,
                strides=strides, dilations=dilations, group=group)
    return _finish(y, bias, (1, -1) + (1,) * (y.ndim - 2), attr_text(activation), y_scale, y_zero_point,
                   y_signed, y_quantized, y_layout,
                   ((c_scale, c_zero_point, c_signed), (s_scale, s_zero_point, s_signed)))


# ----------------------------------------------------------------------------------------- MatMul
def _qmatmul_shape(types, *, y_signed=0, y_quantized=0, **_):
    dtype, xs = types[0]
    ws = types[1][1]
    return [(_out_dtype(y_signed, y_quantized), (*xs[:-1], ws[1]))]


def _qmatmul_body(fb, *, x_scale, x_zero_point, x_signed=0, y_scale=0.0, y_zero_point=0, y_signed=0,
                  activation="", x_quantized=0, y_quantized=0):
    x = _x_body(fb, x_scale, x_zero_point, x_signed, x_quantized)
    y = fb.node("MatMul", [x, _w_body(fb, 1)])
    if len(fb.inputs) > 3 and fb.inputs[3]:
        y = fb.node("Add", [y, fb.inputs[3]])
    _tail_body(fb, y, activation, y_scale, y_zero_point, y_signed, y_quantized)


@tvmlite_op("QDQMatMul", shape=_qmatmul_shape, body=_qmatmul_body)
def qdq_matmul(x, w_q, w_scale, bias=None, *, x_scale, x_zero_point, x_signed=0, y_scale=0.0, y_zero_point=0,
               y_signed=0, activation="", x_quantized=0, y_quantized=0):
    xq = _input(x, x_scale, x_zero_point, x_signed, x_quantized)
    y = np.matmul(xq, _weights(w_q, w_scale, 1))
    return _finish(y, bias, (-1,), attr_text(activation), y_scale, y_zero_point, y_signed, y_quantized)


# ---------------------------------------------------------------------------------------- MaxPool
POOL_ATTRS = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")  # QMaxPool's MaxPool ones


def _pool_attrs(**a) -> dict:
    out = {k: (attr_text(v) if k == "auto_pad" else v) for k, v in a.items() if v is not None}
    if out.get("auto_pad") in ("", "NOTSET"):
        out.pop("auto_pad", None)
    return out


def _qpool_shape(types, *, x_layout="NCHW", y_layout="NCHW", **a):
    dtype, xs = types[0]
    xs = [xs[i] for i in _TO_NCHW] if attr_text(x_layout) == "NHWC" else list(xs)
    out = (xs[0], xs[1], *WindowGeometry.pool(_pool_attrs(**a), xs).out_spatial)
    return [(dtype, tuple(out[i] for i in _TO_NHWC) if attr_text(y_layout) == "NHWC" else out)]


def _qpool_body(fb, *, x_layout="NCHW", y_layout="NCHW", **a):
    x = fb.inputs[0]
    if attr_text(x_layout) == "NHWC":
        x = fb.node("Transpose", [x], {"perm": list(_TO_NCHW)})
    y = fb.node("MaxPool", [x], _pool_attrs(**a))
    if attr_text(y_layout) == "NHWC":
        y = fb.node("Transpose", [y], {"perm": list(_TO_NHWC)})
    fb.node("Identity", [y], output=fb.outputs[0])


@tvmlite_op("QMaxPool", shape=_qpool_shape, body=_qpool_body)
def q_max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, strides=None,
               x_layout="NCHW", y_layout="NCHW"):
    x = np.asarray(x)
    if attr_text(x_layout) == "NHWC":
        x = x.transpose(_TO_NCHW)
    y = max_pool_values(x, auto_pad=attr_text(auto_pad), ceil_mode=ceil_mode, dilations=dilations,
                        kernel_shape=kernel_shape, pads=pads, strides=strides)
    return np.ascontiguousarray(y.transpose(_TO_NHWC)) if attr_text(y_layout) == "NHWC" else y

