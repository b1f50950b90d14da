"""tvmlite's fused QDQ ops (QDQConv, QDQMatMul: made at build time by qdq_fusion.py) as int8 VNNI
kernels (kernels/qgemm.py), with the elementwise ops that follow fused into their epilogue; QMaxPool
(qdq_buffers.py) as an integer pooling kernel (kernels/qpool.py); QConcat (qdq_fusion.py) as one requantizing
concatenation (kernels/qconcat.py)."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.kernels.defs import Epilogue, window_2d
from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.qdq_fused import attr_text, quant_dtype, x_mul_factors


def _check_dtype(low, name: str, want, what: str) -> None:
    dt = low.g.value(name).dtype
    if dt is not None and np.dtype(dt) != want:
        raise UnsupportedError(f"{what} of dtype {np.dtype(dt)} ({np.dtype(want)} expected)")


def _grid(attrs, prefix: str) -> tuple:
    return (float(attrs.get(f"{prefix}_scale", 0.0)), int(attrs.get(f"{prefix}_zero_point", 0)),
            int(attrs.get(f"{prefix}_signed", 0)))


def _same_grid(a, b) -> bool:
    """Whether grids ``a`` (None: no grid) and ``b`` are the same in float32."""
    return a is not None and np.float32(a[0]) == np.float32(b[0]) and tuple(a[1:]) == tuple(b[1:])


def _operands(low, node):
    w_q = low.const_input(node, 1, "int8 weights", required=True)
    w_scale = low.const_input(node, 2, "weight scales", required=True)
    bias = low.const_input(node, 3, "bias")
    if w_q.dtype != np.int8:
        raise UnsupportedError(f"weights of dtype {w_q.dtype} (int8 only)")
    a = node.attrs
    act = attr_text(a.get("activation", ""))
    if act not in ("", "Relu") and not (act == "SiLU" and node.op_type == "QDQConv"):
        raise UnsupportedError(f"activation {act!r}")
    spec = dict(x_scale=a["x_scale"], x_zero_point=a["x_zero_point"], x_signed=a.get("x_signed", 0),
                y_scale=a.get("y_scale", 0.0), y_zero_point=a.get("y_zero_point", 0),
                y_signed=a.get("y_signed", 0), activation=act, x_quantized=int(a.get("x_quantized", 0)),
                y_quantized=int(a.get("y_quantized", 0)), x_nhwc=attr_text(a.get("x_layout")) == "NHWC",
                y_nhwc=attr_text(a.get("y_layout")) == "NHWC",
                silu=tuple(_grid(a, k) for k in ("c", "s")) if act == "SiLU" else None)
    spec["x_on_grid"] = not spec["x_quantized"] and _same_grid(low.grid(node.inputs[0]), _grid(a, "x"))
    if spec["y_quantized"] and not float(spec["y_scale"]) > 0:
        raise UnsupportedError("quantized output without y_scale")
    _check_dtype(low, node.inputs[0], quant_dtype(spec["x_signed"]) if spec["x_quantized"] else np.float32, "input")
    _check_dtype(low, node.outputs[0], quant_dtype(spec["y_signed"]) if spec["y_quantized"] else np.float32,
                 "output")
    return w_q, np.asarray(w_scale, np.float32).reshape(-1), bias, spec


def _epilogue(low, node, spec, tables: bool = False):
    """The fused elementwise tail; none after a quantized output (its readers are int8 kernels).
    ``tables``: the kernel reads a chain on its output grid from a table (qgemm.conv2d_int8)."""
    if spec["y_quantized"]:
        return Epilogue(), node.outputs[0], []
    return low.epilogue(node, tables=tables and float(spec["y_scale"]) > 0)


def _channel_scales(w_scale, n):
    if w_scale.size == 1:
        return np.full(n, w_scale[0], np.float32)
    if w_scale.size != n:
        raise UnsupportedError(f"{w_scale.size} weight scales for {n} output channels")
    return w_scale


@emitter("QDQMatMul", domain="tvmlite", checks_dtype=True)
def emit_qdq_matmul(low, node) -> None:
    w_q, w_scale, bias, spec = _operands(low, node)
    x = node.inputs[0]
    xs = low.shape(x)
    if w_q.ndim != 2 or not xs or xs[-1] != w_q.shape[0]:
        raise UnsupportedError(f"input {list(xs)} and weights {list(w_q.shape)} do not fit")
    n = w_q.shape[1]
    w_scale = _channel_scales(w_scale, n)
    out = node.outputs[0]
    epi, final, labels = _epilogue(low, node, spec)
    name, out_shape = low.kernel_name(node), low.shape(out)

    def make():
        from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, dense_int8

        return dense_int8(name, x, xs, w_q, w_scale, bias, QuantSpec(**spec), out_value=final,
                          out_shape=out_shape, epilogue=epi)
    low.add(make, node, final, labels)


@emitter("QDQConv", domain="tvmlite", checks_dtype=True)
def emit_qdq_conv(low, node) -> None:
    w_q, w_scale, bias, spec = _operands(low, node)
    x = node.inputs[0]
    xs = low.shape(x)
    nchw = tuple(xs[i] for i in (0, 3, 1, 2)) if spec["x_nhwc"] and len(xs) == 4 else tuple(xs)
    group = int(node.attrs.get("group", 1))
    depthwise = len(xs) == 4 and w_q.ndim == 4 and group == nchw[1] == w_q.shape[0] and w_q.shape[1] == 1
    if len(xs) != 4 or w_q.ndim != 4 or (group != 1 and not depthwise) or nchw[1] != w_q.shape[1] * group:
        raise UnsupportedError(f"int8 conv of input {list(xs)} and weights {list(w_q.shape)} (group {group})")
    geom = window_2d(WindowGeometry.conv(node.attrs, nchw, w_q.shape))
    w_scale = _channel_scales(w_scale, w_q.shape[0])
    x_mul = _x_mul(low, node, spec, xs, depthwise)
    out = node.outputs[0]
    epi, final, labels = _epilogue(low, node, spec, tables=not depthwise)
    name, out_shape = low.kernel_name(node), low.shape(out)

    def make():
        from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, conv2d_int8

        if depthwise:
            from tvmlite.backends.tvm.kernels.qdepthwise import depthwise_int8

            return depthwise_int8(name, x, xs, w_q, w_scale, bias, QuantSpec(**spec), geom, out_value=final,
                                  out_shape=out_shape, epilogue=epi)
        return conv2d_int8(name, x, xs, w_q, w_scale, bias, QuantSpec(**spec), geom, out_value=final,
                           out_shape=out_shape, epilogue=epi, x_mul=x_mul)
    low.add(make, node, final, labels)


def _x_mul(low, node, spec, xs, depthwise):
    """(`Lowering.operand` of a QDQConv's ``x_mul`` input (qdq_fusion.fold_channel_scales), its
    [N or 1, C or 1] view), or None; the input it multiplies is no longer on its grid."""
    name = node.inputs[4] if len(node.inputs) > 4 else ""
    if not name:
        return None
    factors = x_mul_factors(tuple(low.shape(name)), tuple(xs))
    if depthwise or spec["x_quantized"] or spec["x_nhwc"] or factors is None:
        raise UnsupportedError(f"x_mul of shape {list(low.shape(name))} on input {list(xs)}")
    operand = low.operand(name)  # refuses a non-float factor
    spec["x_on_grid"] = False
    return operand, factors


@emitter("QMaxPool", domain="tvmlite", checks_dtype=True)
def emit_qmaxpool(low, node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xs, dtype = low.shape(x), low.g.value(x).dtype
    if dtype is None or np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise UnsupportedError(f"QMaxPool of dtype {dtype} (uint8 / int8 only)")
    _check_dtype(low, out, np.dtype(dtype), "output")
    if len(xs) != 4:
        raise UnsupportedError(f"{len(xs) - 2}-D QMaxPool")
    x_nhwc, y_nhwc = (attr_text(node.attrs.get(k)) == "NHWC" for k in ("x_layout", "y_layout"))
    nchw = tuple(xs[i] for i in (0, 3, 1, 2)) if x_nhwc else tuple(xs)
    geom = window_2d(WindowGeometry.pool(node.attrs, nchw))
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.qpool import max_pool_int8

        return max_pool_int8(name, x, xs, np.dtype(dtype).name, geom, x_nhwc=x_nhwc, y_nhwc=y_nhwc,
                             out_value=out)
    low.add(make, node, out)


@emitter("QConcat", domain="tvmlite", checks_dtype=True)
def emit_qconcat(low, node) -> None:
    a = node.attrs
    n = len(node.inputs)
    grids = list(zip((float(s) for s in a["in_scales"]), (int(z) for z in a["in_zero_points"]),
                     (int(s) for s in a["in_signed"])))
    quantized = [int(q) for q in (a.get("in_quantized") or [0] * n)]
    nhwc = [attr_text(t) == "NHWC" for t in (a.get("in_layouts") or ["NCHW"] * n)]
    if len(grids) != n or len(quantized) != n or len(nhwc) != n:
        raise UnsupportedError(f"{len(grids)} input grids for {n} inputs")
    ins = []
    for v, grid, q, t in zip(node.inputs, grids, quantized, nhwc):
        if low.const(v) is not None:
            raise UnsupportedError("a constant input")
        want = quant_dtype(grid[2]) if q else np.dtype(np.float32)
        _check_dtype(low, v, want, "input")
        if t and len(low.shape(v)) != 4:
            raise UnsupportedError(f"a channels-last input of rank {len(low.shape(v))}")
        ins.append((v, low.shape(v), want.name, grid, q, t))
    y_grid, y_q = _grid(a, "y"), int(a.get("y_quantized", 0))
    if not y_grid[0] > 0:
        raise UnsupportedError("QConcat without y_scale")
    out = node.outputs[0]
    _check_dtype(low, out, quant_dtype(y_grid[2]) if y_q else np.float32, "output")
    name, out_shape, axis = low.kernel_name(node), low.shape(out), int(a["axis"])
    y_nhwc = attr_text(a.get("y_layout")) == "NHWC"
    if y_nhwc and len(out_shape) != 4:
        raise UnsupportedError(f"a channels-last output of rank {len(out_shape)}")

    def make():
        from tvmlite.backends.tvm.kernels.qconcat import concat_int8

        return concat_int8(name, ins, axis=axis, y_grid=y_grid, y_quantized=bool(y_q), out_value=out,
                           out_shape=out_shape, lanes=low.lanes, y_nhwc=y_nhwc)
    low.add(make, node, out)
