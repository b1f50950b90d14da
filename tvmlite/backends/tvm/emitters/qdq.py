"""tvmlite's fused QDQ ops (QDQConv, QDQMatMul: made at build time by qdq_fusion.py) as int8 VNNI
kernels (kernels/qgemm.py), with the elementwise ops that follow fused into their epilogue."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.kernels.defs import window_2d
from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry


def _operands(low, node):
    w_q = low.const_input(node, 1, "int8 weights", required=True)
    w_scale = low.const_input(node, 2, "weight scales", required=True)
    bias = low.const_input(node, 3, "bias")
    if w_q.dtype != np.int8:
        raise UnsupportedError(f"weights of dtype {w_q.dtype} (int8 only)")
    a = node.attrs
    act = a.get("activation", "")
    act = act.decode() if isinstance(act, bytes) else act
    if act not in ("", "Relu"):
        raise UnsupportedError(f"activation {act!r}")
    spec = dict(x_scale=a["x_scale"], x_zero_point=a["x_zero_point"], x_signed=a.get("x_signed", 0),
                y_scale=a.get("y_scale", 0.0), y_zero_point=a.get("y_zero_point", 0),
                y_signed=a.get("y_signed", 0), activation=act)
    return w_q, np.asarray(w_scale, np.float32).reshape(-1), bias, spec


def _channel_scales(w_scale, n):
    if w_scale.size == 1:
        return np.full(n, w_scale[0], np.float32)
    if w_scale.size != n:
        raise UnsupportedError(f"{w_scale.size} weight scales for {n} output channels")
    return w_scale


@emitter("QDQMatMul", domain="tvmlite")
def emit_qdq_matmul(low, node) -> None:
    w_q, w_scale, bias, spec = _operands(low, node)
    x = node.inputs[0]
    xs = low.shape(x)
    if w_q.ndim != 2 or not xs or xs[-1] != w_q.shape[0]:
        raise UnsupportedError(f"input {list(xs)} and weights {list(w_q.shape)} do not fit")
    n = w_q.shape[1]
    w_scale = _channel_scales(w_scale, n)
    out = node.outputs[0]
    epi, final, labels = low.epilogue(node)
    name, out_shape = low.kernel_name(node), low.shape(out)

    def make():
        from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, dense_int8

        return dense_int8(name, x, xs, w_q, w_scale, bias, QuantSpec(**spec), out_value=final,
                          out_shape=out_shape, epilogue=epi)
    low.add(make, node, final, labels)


@emitter("QDQConv", domain="tvmlite")
def emit_qdq_conv(low, node) -> None:
    w_q, w_scale, bias, spec = _operands(low, node)
    x = node.inputs[0]
    xs = low.shape(x)
    if len(xs) != 4 or w_q.ndim != 4 or int(node.attrs.get("group", 1)) != 1 or xs[1] != w_q.shape[1]:
        raise UnsupportedError(f"int8 conv of input {list(xs)} and weights {list(w_q.shape)} "
                               f"(group {node.attrs.get('group', 1)})")
    geom = window_2d(WindowGeometry.conv(node.attrs, xs, w_q.shape))
    w_scale = _channel_scales(w_scale, w_q.shape[0])
    out = node.outputs[0]
    epi, final, labels = low.epilogue(node)
    name, out_shape = low.kernel_name(node), low.shape(out)

    def make():
        from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, conv2d_int8

        return conv2d_int8(name, x, xs, w_q, w_scale, bias, QuantSpec(**spec), geom, out_value=final,
                           out_shape=out_shape, epilogue=epi)
    low.add(make, node, final, labels)
