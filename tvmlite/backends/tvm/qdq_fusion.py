"""Build-time QDQ fusion: each Conv / MatMul / Gemm of a QDQ model (tvmlite's `quantize` output,
onnxruntime's quantize_static output) whose input is QuantizeLinear -> DequantizeLinear and whose
weights are DequantizeLinear of constant int8 becomes one tvmlite QDQConv / QDQMatMul node
(ops/qdq_fused.py), so the TVM emitter can run it as an int8 kernel (VNNI dot products with int32
accumulation) instead of a float Conv between host-run QuantizeLinear / DequantizeLinear calls.

A following Relu and QuantizeLinear -> DequantizeLinear pair are taken into the node when the
Conv's output has no other reader, and so is onnxruntime's QDQ SiLU after a conv (its Sigmoid and
Mul, each with its own Q -> DQ pair). A Concat of such values read only on one grid becomes QConcat
(onnxruntime's QLinearConcat). Runs on the prepared copy before constant folding (which would
turn the int8 weights back into float). What does not fit (grouped convs other than depthwise, non-2-D convs, weights with a
zero point or blocks, a scale that is not one number per tensor or per output channel, Gemm with
alpha/beta/transA) is left as it was. Then the values between int8 kernels become integer buffers
(qdq_buffers.py).
"""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.qdq_buffers import ONNX, grid_of, quantize_buffers
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.ops.qdq_fused import attr_text, x_mul_factors
from tvmlite.ops.quant import _dequantize

_CONV_ATTRS = ("auto_pad", "kernel_shape", "pads", "strides", "dilations", "group")


def fuse_qdq(model: Model) -> int:
    """Rewrite every fusable pattern of ``model`` in place; returns how many nodes were fused."""
    g = model.graph
    fused = 0
    for node in g.toposort():
        if node.graph is None or node.domain not in ONNX or node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        if _fuse(g, node):
            fused += 1
    for node in g.toposort():
        if node.graph is not None and node.domain in ONNX and node.op_type == "Concat":
            fused += _fuse_concat(g, node)
    if fused:
        fused += quantize_buffers(g, _scalar_params, _only_reader)
    for node in g.toposort():
        if node.graph is not None and node.domain in ONNX and node.op_type == "QuantizeLinear":
            fused += _fake_quant(g, node)
    return fused


def _fuse_concat(g: Graph, cat: Node) -> int:
    """Concat of values on known grids (each DequantizeLinear(QuantizeLinear(x)), or a fused node's
    output) whose readers all quantize it on one grid (QuantizeLinear -> DequantizeLinear, or fused
    nodes that took it as their input) becomes QConcat (ops/qconcat.py), as onnxruntime's
    QLinearConcat: each input is requantized to the output's grid (a copy when the grids agree)
    instead of a float Concat between fake quantizations."""
    c = cat.outputs[0]
    ins = [_input_params(g, v) if v else None for v in cat.inputs]
    grid = _readers_grid(g, c)
    if grid is None or not ins or any(i is None or g.const_value(i[0]) is not None for i in ins):
        return 0  # a constant input is folded by the float path (the kernel takes buffers only)
    ys, yz, ysg = grid
    attrs = {"axis": int(cat.attrs.get("axis", 0)), "in_scales": [p[0] for _, p in ins],
             "in_zero_points": [p[1] for _, p in ins], "in_signed": [p[2] for _, p in ins],
             "in_quantized": [0] * len(ins), "y_scale": ys, "y_zero_point": yz, "y_signed": ysg}
    for q in [r for r in g.consumers(c) if r.op_type == "QuantizeLinear"]:
        dq = _only_reader(g, q.outputs[0], "DequantizeLinear")
        for r in list(g.consumers(dq.outputs[0])):
            for i, name in enumerate(r.inputs):
                if name == dq.outputs[0]:
                    g.set_input(r, i, c)
        g.remove_node(dq)
        g.remove_node(q)
    name, order = cat.name, cat.order
    g.remove_node(cat, remove_outputs=False)
    g.add_node("QConcat", [x for x, _ in ins], [c], attrs, domain="tvmlite", name=name, order=order)
    return 1


def _readers_grid(g: Graph, c: str):
    """The one grid every reader of ``c`` quantizes it on, else None."""
    grids = set()
    readers = g.consumers(c)
    if c in g.outputs or not readers:
        return None
    for r in readers:
        if r.domain == "tvmlite" and r.op_type in ("QDQConv", "QDQMatMul") and r.inputs[0] == c \
                and c not in r.inputs[1:] and not r.attrs.get("x_quantized"):
            grids.add((float(r.attrs["x_scale"]), int(r.attrs["x_zero_point"]), int(r.attrs.get("x_signed", 0))))
        elif r.domain in ONNX and r.op_type == "QuantizeLinear" and r.inputs[0] == c:
            dq = _only_reader(g, r.outputs[0], "DequantizeLinear")
            if dq is None or dq.outputs[0] in g.outputs or _scalar_params(g, dq) != _scalar_params(g, r):
                return None
            grids.add(_scalar_params(g, r))
        else:
            return None
    return grids.pop() if len(grids) == 1 and None not in grids else None


def _fake_quant(g: Graph, q: Node) -> int:
    """A QuantizeLinear -> DequantizeLinear pair left between float ops (around a MaxPool, say)
    becomes its float arithmetic, which the backend fuses into the producer's kernel:
    (clip(round(x / s) + z, lo, hi) - z) * s', with ONNX Round's half-to-even rounding. The
    DequantizeLinear's scale s' may differ (tvmlite's `quantize` folds a following constant
    factor, HardSwish's 1/6, into it)."""
    params = _scalar_params(g, q)
    dq = _only_reader(g, q.outputs[0], "DequantizeLinear")
    dq_params = _scalar_params(g, dq) if dq is not None else None
    if params is None or dq_params is None or dq_params[1:] != params[1:]:
        return 0
    s, z, signed = params
    lo, hi = (-128, 127) if signed else (0, 255)
    c = {k: g.add_constant(np.array(v, np.float32), f"{q.outputs[0]}_{k}")
         for k, v in (("s", s), ("z", z), ("lo", lo), ("hi", hi), ("s2", dq_params[0]))}
    x, out, order = q.inputs[0], dq.outputs[0], q.order
    g.remove_node(dq, remove_outputs=False)
    g.remove_node(q)
    v = x
    for i, (op, ins) in enumerate((("Div", ["s"]), ("Round", []), ("Add", ["z"]), ("Clip", ["lo", "hi"]),
                                   ("Sub", ["z"]))):
        v = g.add_node(op, [v] + [c[k] for k in ins], 1, name=g.fresh_node_name(f"{out}_{op.lower()}"),
                       order=order + i * 1e-3).outputs[0]
    g.add_node("Mul", [v, c["s2"]], [out], name=g.fresh_node_name(f"{out}_mul"), order=order + 0.01)
    return 1


def _producer(g: Graph, name: str, op: str) -> Node | None:
    p = g.producer(name) if name else None
    return p if p is not None and p.op_type == op and p.domain in ONNX else None


def _scalar_params(g: Graph, node: Node):
    """(scale, zero point, signed) of a per-tensor Q/DQ node with constant parameters, else None."""
    if node.attrs.get("block_size", 0):
        return None
    s = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    zname = node.inputs[2] if len(node.inputs) > 2 else ""
    z = g.const_value(zname) if zname else np.array(0, np.uint8)
    if s is None or z is None or s.size != 1 or z.size != 1 or s.dtype != np.float32 \
            or z.dtype not in (np.uint8, np.int8) or not float(s.reshape(-1)[0]) > 0:
        return None
    return float(s.reshape(-1)[0]), int(z.reshape(-1)[0]), int(z.dtype == np.int8)


def _input_params(g: Graph, x_dq: str):
    """(float input, params) when ``x_dq`` is DequantizeLinear(QuantizeLinear(x)) with equal
    per-tensor parameters, or a value on a fused node's output grid (its output when it ends in
    such a pair, or MaxPool / Flatten / Reshape of that): quantizing it again with the same
    parameters changes nothing."""
    on_grid = grid_of(g, x_dq)  # a fused node's output, or MaxPool / a view of one
    if on_grid is not None:
        return x_dq, on_grid
    dq = _producer(g, x_dq, "DequantizeLinear")
    q = _producer(g, dq.inputs[0], "QuantizeLinear") if dq is not None else None
    if q is None:
        return None
    pd, pq = _scalar_params(g, dq), _scalar_params(g, q)
    if pd is None or pd != pq:
        return None
    return q.inputs[0], pd


def _weights(g: Graph, name: str, channel_axis: int):
    """(int8 weights, float32 scales: one or one per channel along ``channel_axis``) of a constant
    DequantizeLinear without zero point (or an all-zero one), else None."""
    dq = _producer(g, name, "DequantizeLinear")
    if dq is None or dq.attrs.get("block_size", 0):
        return None
    w = g.const_value(dq.inputs[0])
    s = g.const_value(dq.inputs[1]) if len(dq.inputs) > 1 else None
    z = g.const_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
    if w is None or s is None or w.dtype != np.int8 or s.dtype != np.float32 or w.ndim < 2:
        return None
    if len(dq.inputs) > 2 and dq.inputs[2] and (z is None or np.any(z != 0)):
        return None
    if s.size != 1:
        axis = int(dq.attrs.get("axis", 1))
        axis = axis + w.ndim if axis < 0 else axis
        if s.ndim != 1 or axis != channel_axis or s.size != w.shape[channel_axis]:
            return None
    return w, s.reshape(-1).astype(np.float32)


def _bias(g: Graph, name: str, n: int):
    """Float32 bias of ``n`` values: a constant, or DequantizeLinear of constants; False when not."""
    if not name:
        return None
    c = g.const_value(name)
    if c is None:
        dq = _producer(g, name, "DequantizeLinear")
        if dq is None or any(g.const_value(i) is None for i in dq.inputs if i):
            return False
        c = _dequantize(*[g.const_value(i) for i in dq.inputs if i], axis=int(dq.attrs.get("axis", 1)))
    c = np.asarray(c, np.float32)
    if c.size == n and c.ndim <= 2:
        return c.reshape(-1)
    if c.size == 1:
        return np.full(n, c.reshape(-1)[0], np.float32)
    return False


def _only_reader(g: Graph, name: str, op: str) -> Node | None:
    if name in g.outputs:
        return None
    readers = g.consumers(name)
    if len(readers) != 1 or readers[0].op_type != op or readers[0].domain not in ONNX:
        return None
    return readers[0]


def _fake_quant_pair(g: Graph, y: str):
    """(Q, DQ, params) when ``y``'s only reader is QuantizeLinear -> DequantizeLinear with equal
    per-tensor parameters, else None."""
    q = _only_reader(g, y, "QuantizeLinear")
    dq = _only_reader(g, q.outputs[0], "DequantizeLinear") if q is not None else None
    params = _scalar_params(g, q) if dq is not None else None
    return (q, dq, params) if params is not None and _scalar_params(g, dq) == params else None


def _silu(g: Graph, c: str):
    """onnxruntime's QDQ SiLU after a fake-quantized value ``c``: Sigmoid(c) -> Q -> DQ, Mul with
    ``c``, -> Q -> DQ. (nodes, final value, sigmoid params, output params) or None."""
    readers = g.consumers(c)
    if c in g.outputs or len(readers) != 2:
        return None
    sg = next((r for r in readers if r.op_type == "Sigmoid" and r.domain in ONNX), None)
    m = next((r for r in readers if r.op_type == "Mul" and r.domain in ONNX), None)
    s = _fake_quant_pair(g, sg.outputs[0]) if sg is not None and m is not None else None
    if s is None or _only_reader(g, s[1].outputs[0], "Mul") is not m \
            or sorted(m.inputs) != sorted([c, s[1].outputs[0]]):
        return None
    y = _fake_quant_pair(g, m.outputs[0])
    if y is None:
        return None
    return [sg, s[0], s[1], m, y[0], y[1]], y[1].outputs[0], s[2], y[2]


def _tail(g: Graph, y: str, conv: bool):
    """(nodes absorbed after the anchor, final value, activation, output params or None, extra
    attributes)."""
    absorbed, activation = [], ""
    relu = _only_reader(g, y, "Relu")
    if relu is not None:
        absorbed.append(relu)
        activation, y = "Relu", relu.outputs[0]
    pair = _fake_quant_pair(g, y)
    if pair is None:
        return absorbed, y, activation, None, {}
    q, dq, params = pair
    silu = _silu(g, dq.outputs[0]) if conv and not activation else None
    if silu is not None:
        nodes, out, sp, yp = silu
        extra = dict(zip(("c_scale", "c_zero_point", "c_signed", "s_scale", "s_zero_point", "s_signed"),
                         params + sp))
        return [q, dq] + nodes, out, "SiLU", yp, extra
    return absorbed + [q, dq], dq.outputs[0], activation, params, {}


def _fuse(g: Graph, node: Node) -> bool:
    inp = _input_params(g, node.inputs[0])
    if inp is None:
        return False
    x, (xs, xz, xsg) = inp
    a = node.attrs
    if node.op_type == "Conv":
        wt = _weights(g, node.inputs[1], 0)
        group = int(a.get("group", 1))
        # depthwise (one input channel per group, one output per input channel): kernels/qdepthwise.py
        if wt is None or wt[0].ndim != 4 or (group != 1 and (wt[0].shape[0] != group or wt[0].shape[1] != 1)):
            return False
        n_out, op, extra = wt[0].shape[0], "QDQConv", {k: a[k] for k in _CONV_ATTRS if k in a}
    elif node.op_type == "Gemm":
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
            return False
        wt = _weights(g, node.inputs[1], 0 if a.get("transB", 0) else 1)
        if wt is None or wt[0].ndim != 2:
            return False
        if a.get("transB", 0):
            wt = (np.ascontiguousarray(wt[0].T), wt[1])
        n_out, op, extra = wt[0].shape[1], "QDQMatMul", {}
    else:
        wt = _weights(g, node.inputs[1], 1)
        if wt is None or wt[0].ndim != 2:
            return False
        n_out, op, extra = wt[0].shape[1], "QDQMatMul", {}
    bias = _bias(g, node.inputs[2] if len(node.inputs) > 2 else "", n_out)
    if bias is False:
        return False
    absorbed, out, activation, yp, silu = _tail(g, node.outputs[0], op == "QDQConv")
    attrs = {"x_scale": xs, "x_zero_point": xz, "x_signed": xsg, "activation": activation, **extra, **silu}
    if yp is not None:
        attrs.update(y_scale=yp[0], y_zero_point=yp[1], y_signed=yp[2])
    base = node.name or node.outputs[0]
    ins = [x, g.add_constant(wt[0], f"{base}_wq"), g.add_constant(wt[1], f"{base}_wscale")]
    if bias is not None:
        ins.append(g.add_constant(bias, f"{base}_bias"))
    name, order = node.name, node.order
    for n in list(reversed(absorbed)) + [node]:  # readers first: the values between them go too
        g.remove_node(n, remove_outputs=out not in n.outputs)
    g.add_node(op, ins, [out], attrs, domain="tvmlite", name=name, order=order)
    return True


def fold_channel_scales(g: Graph, shapes: dict) -> int:
    """A squeeze-and-excitation block's Mul(x, s), s one factor per image and channel ([N or 1,
    C or 1, 1, 1]), read only by a QDQConv that quantizes its float input (group 1, NCHW): the
    conv takes ``s`` as its ``x_mul`` input and reads ``x`` itself (ops/qdq_fused.py), multiplying
    each element by its factor right before it quantizes it: the same float32 product, with no
    kernel of its own writing the scaled copy. Needs static ``shapes``; returns how many it folded."""
    folded = 0
    for conv in g.toposort():
        a = conv.attrs
        if conv.graph is None or conv.domain != "tvmlite" or conv.op_type != "QDQConv" or len(conv.inputs) > 4 \
                or int(a.get("group", 1)) != 1 or int(a.get("x_quantized", 0)) \
                or attr_text(a.get("x_layout", "NCHW")) != "NCHW":
            continue
        mul = _producer(g, conv.inputs[0], "Mul")
        if mul is None or mul.outputs[0] in g.outputs or g.consumers(mul.outputs[0]) != [conv]:
            continue
        x_shape = shapes.get(mul.outputs[0])
        pick = [i for i in (0, 1) if shapes.get(mul.inputs[i]) == x_shape
                and x_mul_factors(shapes.get(mul.inputs[1 - i]), x_shape) is not None]
        if not pick:
            continue
        x, s = mul.inputs[pick[0]], mul.inputs[1 - pick[0]]
        g.set_inputs(conv, list(conv.inputs[:3]) + [conv.inputs[3] if len(conv.inputs) > 3 else "", s])
        g.set_input(conv, 0, x)
        g.remove_node(mul)
        folded += 1
    return folded

