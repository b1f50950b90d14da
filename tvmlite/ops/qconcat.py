"""QConcat (domain "tvmlite"): a QDQ Concat as one node, made by the TVM backend's build-time QDQ
fusion (backends/tvm/qdq_fusion.py) where onnxruntime runs QLinearConcat:

    x_i -> QuantizeLinear -> DequantizeLinear (each input on its own grid) -> Concat
        -> QuantizeLinear -> DequantizeLinear -> y

Each input ``x_i`` is quantized and dequantized with ``in_scales[i]`` / ``in_zero_points[i]`` (int8
when ``in_signed[i]``, else uint8), or, with ``in_quantized[i]``, is already that QuantizeLinear's
integer output and is only dequantized; the float values are concatenated along ``axis`` and
quantized with ``y_scale`` / ``y_zero_point`` / ``y_signed``: the integers themselves with
``y_quantized``, else dequantized again. So the NumPy kernel and the ONNX function body are the
unfused graph, and an input on the output's grid passes through unchanged. ``in_layouts[i]`` /
``y_layout`` "NHWC": a 4-D integer input / output stored channels-last (the buffers between int8
convs, backends/tvm/qdq_buffers.py); ``axis`` always counts in NCHW.
"""
from __future__ import annotations

import numpy as np

from tvmlite.ops.qdq_fused import _TO_NCHW, _TO_NHWC, _zp, attr_text, fake_quant, quant_dtype
from tvmlite.ops.quant import _dequantize, _quantize
from tvmlite.ops.registry import tvmlite_op


def _ints(v) -> list[int]:
    return [int(i) for i in (v or ())]


def _nhwc(layouts, n: int) -> list[bool]:
    return [attr_text(v) == "NHWC" for v in layouts] if layouts else [False] * n


def _qconcat_shape(types, *, axis, y_signed=0, y_quantized=0, in_layouts=None, y_layout="NCHW", **_):
    shapes = [[s[i] for i in _TO_NCHW] if t else list(s)
              for (_, s), t in zip(types, _nhwc(in_layouts, len(types)))]
    ax = int(axis) % len(shapes[0])
    out = list(shapes[0])
    dims = [s[ax] for s in shapes]
    out[ax] = sum(dims) if all(isinstance(d, int) for d in dims) else None
    if attr_text(y_layout) == "NHWC":
        out = [out[i] for i in _TO_NHWC]
    return [(quant_dtype(y_signed) if int(y_quantized) else np.dtype(np.float32), tuple(out))]


def _qconcat_body(fb, *, axis, in_scales, in_zero_points, in_signed, in_quantized=None, y_scale,
                  y_zero_point, y_signed=0, y_quantized=0, in_layouts=None, y_layout="NCHW"):
    xq = _ints(in_quantized) or [0] * len(fb.inputs)
    parts = []
    for x, s, z, sg, q, t in zip(fb.inputs, in_scales, _ints(in_zero_points), _ints(in_signed), xq,
                                 _nhwc(in_layouts, len(fb.inputs))):
        sc, zp = fb.const(np.array(s, np.float32)), fb.const(_zp(z, sg))
        x = fb.node("Transpose", [x], {"perm": list(_TO_NCHW)}) if t else x
        parts.append(fb.node("DequantizeLinear", [x if q else fb.node("QuantizeLinear", [x, sc, zp]), sc, zp]))
    y = fb.node("Concat", parts, {"axis": int(axis)})
    sc, zp = fb.const(np.array(y_scale, np.float32)), fb.const(_zp(y_zero_point, y_signed))
    y = fb.node("QuantizeLinear", [y, sc, zp])
    if not int(y_quantized):
        y = fb.node("DequantizeLinear", [y, sc, zp])
    elif attr_text(y_layout) == "NHWC":
        y = fb.node("Transpose", [y], {"perm": list(_TO_NHWC)})
    fb.node("Identity", [y], output=fb.outputs[0])


@tvmlite_op("QConcat", shape=_qconcat_shape, body=_qconcat_body)
def q_concat(*inputs, axis, in_scales, in_zero_points, in_signed, in_quantized=None, y_scale, y_zero_point,
             y_signed=0, y_quantized=0, in_layouts=None, y_layout="NCHW"):
    xq = _ints(in_quantized) or [0] * len(inputs)
    parts = []
    for x, s, z, sg, q, t in zip(inputs, in_scales, _ints(in_zero_points), _ints(in_signed), xq,
                                 _nhwc(in_layouts, len(inputs))):
        x = np.asarray(x).transpose(_TO_NCHW) if t else x
        if q:
            parts.append(_dequantize(np.asarray(x, quant_dtype(sg)), np.float32(s), _zp(z, sg)).astype(np.float32))
        else:
            parts.append(fake_quant(x, s, z, sg))
    y = np.concatenate(parts, axis=int(axis))
    q = _quantize(y, np.float32(y_scale), _zp(y_zero_point, y_signed))
    if int(y_quantized):
        return np.ascontiguousarray(q.transpose(_TO_NHWC)) if attr_text(y_layout) == "NHWC" else q
    return _dequantize(q, np.float32(y_scale), _zp(y_zero_point, y_signed)).astype(np.float32, copy=False)
