"""Quantized buffers between int8 kernels, after the build-time QDQ fusion (qdq_fusion.py).

A fused QDQConv / QDQMatMul whose output ends in QuantizeLinear -> DequantizeLinear makes a float
value that lies on its output grid; when every reader only quantizes it again with the same
parameters (a fused node, through MaxPool / Flatten / Reshape, or a lone Q -> DQ pair), the value
can travel as QuantizeLinear's integer output instead: the producer writes uint8 (int8) with the
requantization in its epilogue, the readers take it as it is (no division per element), MaxPool
runs on the integers (max commutes with the monotone quantization: QMaxPool), the views and Split
share or slice the integer buffer, a QConcat takes the integers of each input on its grid. Between
convs (and pools, QConcats, channel Splits) the quantized value is stored channels-last, so the int8
GEMM writes whole pixels and the next conv reads 4 consecutive channels per byte group.

Exact: DequantizeLinear of the integers is the float value the unfused graph computed, and
quantizing a value already on the grid with the same parameters gives the integers back.
"""
from __future__ import annotations

import numpy as np

from tvmlite.ir.graph import Graph, Node
from tvmlite.ir.types import tensor_type
from tvmlite.ops.qdq_fused import POOL_ATTRS

ONNX = ("", "ai.onnx")
FUSED = ("QDQConv", "QDQMatMul")
_VIEWS = ("Flatten", "Reshape")


def quantize_buffers(g: Graph, scalar_params, only_reader) -> int:
    """Rewrite ``g`` in place (after the fusion); returns how many fused outputs became integer.
    ``scalar_params`` / ``only_reader`` are the fusion's Q/DQ parameter and single-reader helpers."""
    for q in [n for n in g.toposort() if n.domain in ONNX and n.op_type == "QuantizeLinear"]:
        _drop_identity_pair(g, q, scalar_params, only_reader)
    count = 0
    for node in g.toposort():
        p = y_params(node)
        if p is None or node.attrs.get("y_quantized") or node.outputs[0] in g.outputs:
            continue
        plan: list = []
        if not _plan(g, node.outputs[0], p, plan):
            continue
        _apply(g, node, p, plan)
        count += 1
    _channels_last(g)
    return count


def y_params(node: Node):
    """(scale, zero point, signed) of a fused node's output grid, else None."""
    if node.domain != "tvmlite" or node.op_type not in FUSED + ("QConcat",) \
            or not float(node.attrs.get("y_scale", 0.0)) > 0:
        return None
    a = node.attrs
    return float(a["y_scale"]), int(a["y_zero_point"]), int(a.get("y_signed", 0))


def _x_params(node: Node):
    a = node.attrs
    return float(a["x_scale"]), int(a["x_zero_point"]), int(a.get("x_signed", 0))


def grid_of(g: Graph, name: str):
    """The grid a value lies on: a fused node's output, or MaxPool / a view / a Split part of such
    a value."""
    p = g.producer(name) if name else None
    while p is not None and p.domain in ONNX and p.op_type in ("MaxPool", "Split") + _VIEWS:
        p = g.producer(p.inputs[0])
    return y_params(p) if p is not None else None


def value_grid(g: Graph, name: str):
    """(scale, zero point, signed) of the grid the float value ``name`` lies on (it is
    fl((k - zero point) * scale) for an integer k of the grid), else None: ``grid_of``'s, or
    a fake-quant pair's that qdq_fusion._fake_quant made float arithmetic."""
    grid = grid_of(g, name)
    if grid is not None:
        return grid
    return _fake_quant_grid(g, name)


def _fake_quant_grid(g: Graph, name: str):
    """The grid of Mul(Sub(Clip(Add(Round(Div(x, s)), z), lo, hi), z), s2): (s2, z, signed)."""
    chain = []
    v = name
    for op in ("Mul", "Sub", "Clip", "Add", "Round", "Div"):
        p = g.producer(v)
        if p is None or p.domain not in ONNX or p.op_type != op:
            return None
        consts = [g.const_value(x) for x in p.inputs[1:]]
        if any(c is None or c.size != 1 for c in consts):
            return None
        chain.append([float(c.reshape(-1)[0]) for c in consts])
        v = p.inputs[0]
    if [len(c) for c in chain] != [1, 1, 2, 1, 0, 1]:
        return None
    (s2,), (z,), (lo, hi), (z2,), _, _ = chain
    if z != z2 or z != int(z) or (lo, hi) not in ((0.0, 255.0), (-128.0, 127.0)) or not s2 > 0:
        return None
    return s2, int(z), int(lo < 0)


def _drop_identity_pair(g: Graph, q: Node, scalar_params, only_reader) -> None:
    """Q -> DQ with the parameters of the grid its input already lies on changes nothing: gone."""
    if q.graph is None:
        return
    params = scalar_params(g, q)
    dq = only_reader(g, q.outputs[0], "DequantizeLinear")
    if params is None or dq is None or scalar_params(g, dq) != params or dq.outputs[0] in g.outputs \
            or grid_of(g, q.inputs[0]) != params:
        return
    x, out = q.inputs[0], dq.outputs[0]
    for r in list(g.consumers(out)):
        for i, name in enumerate(r.inputs):
            if name == out:
                g.set_input(r, i, x)
    g.remove_node(dq)
    g.remove_node(q)


def _plan(g: Graph, v: str, p, plan: list) -> bool:
    """Whether every reader of ``v`` (through pools and views) takes it quantized on grid ``p``;
    collects (kind, node) in ``plan``."""
    if v in g.outputs or not g.consumers(v):
        return False
    for r in g.consumers(v):
        if r.domain == "tvmlite" and r.op_type in FUSED and r.inputs[0] == v and v not in r.inputs[1:] \
                and not r.attrs.get("x_quantized") and _x_params(r) == p:
            plan.append(("x", r))
        elif r.domain in ONNX and r.op_type == "MaxPool" and r.inputs[0] == v \
                and len([o for o in r.outputs if o]) == 1 and len(r.attrs.get("kernel_shape") or ()) == 2:
            if not _plan(g, r.outputs[0], p, plan):
                return False
            plan.append(("pool", r))
        elif r.domain in ONNX and r.op_type in _VIEWS + ("Split",) and r.inputs[0] == v and v not in r.inputs[1:]:
            if not all(_plan(g, o, p, plan) for o in r.outputs if o):
                return False
            plan.append(("view", r))
        elif r.domain == "tvmlite" and r.op_type == "QConcat" and all(
                _in_params(r, i) == p and not r.attrs["in_quantized"][i] for i, x in enumerate(r.inputs) if x == v):
            plan.append(("cat", r, v))
        else:
            return False
    return True


def _in_params(node: Node, i: int):
    a = node.attrs
    return float(a["in_scales"][i]), int(a["in_zero_points"][i]), int(a["in_signed"][i])


def _retype(g: Graph, name: str, dtype) -> None:
    g.value(name).type = tensor_type(dtype, None)  # the shape is inferred again (layouts change it)


def _apply(g: Graph, node: Node, p, plan: list) -> None:
    dtype = np.int8 if p[2] else np.uint8
    node.attrs["y_quantized"] = 1
    _retype(g, node.outputs[0], dtype)
    for kind, r, *v in plan:
        if kind == "x":
            r.attrs["x_quantized"] = 1
        elif kind == "cat":
            r.attrs["in_quantized"] = [int(q or x == v[0]) for x, q in zip(r.inputs, r.attrs["in_quantized"])]
        elif kind == "view":
            for o in r.outputs:
                if o:
                    _retype(g, o, dtype)
        elif r.graph is not None:  # a MaxPool reached twice is replaced once
            attrs = {k: v for k, v in r.attrs.items() if k in POOL_ATTRS}
            ins, out, name, order = [r.inputs[0]], r.outputs[0], r.name, r.order
            g.remove_node(r, remove_outputs=False)
            g.add_node("QMaxPool", ins, [out], attrs, domain="tvmlite", name=name, order=order)
            _retype(g, out, dtype)


def _channels_last(g: Graph) -> None:
    """Store NHWC each quantized value that a conv, QMaxPool or QConcat makes and only convs (as
    their input), QMaxPools and (after a conv or pool) QConcats read, directly or through a
    channel Split (which then splits the stored last axis); depthwise convs stay NCHW."""
    for node in g.toposort():
        if node.domain != "tvmlite" or not (node.op_type == "QMaxPool" or (
                node.op_type in ("QDQConv", "QConcat") and node.attrs.get("y_quantized"))) or _depthwise(node):
            continue
        v = node.outputs[0]
        reads = _nhwc_reads(g, v, node.op_type != "QConcat")
        if not reads:
            continue
        node.attrs["y_layout"] = "NHWC"
        for r, x in reads:
            if r.op_type == "QConcat":
                r.attrs["in_layouts"] = ["NHWC" if i == x else t
                                         for i, t in zip(r.inputs, r.attrs.get("in_layouts") or ["NCHW"] * len(r.inputs))]
            elif r.op_type == "Split":
                r.attrs["axis"] = 3
                for o in r.outputs:
                    if o:
                        _retype(g, o, g.value(o).dtype)
            else:
                r.attrs["x_layout"] = "NHWC"
        _retype(g, v, g.value(v).dtype)


def _nhwc_reads(g: Graph, v: str, spatial: bool) -> list | None:
    """(reader, value read) for every reader of ``v``, through channel Splits of a 4-D ``v``, when
    all of them can read it channels-last, else None."""
    readers = g.consumers(v)
    if v in g.outputs or not readers:
        return None
    out = []
    for r in readers:
        if _takes_nhwc(r, v, spatial):
            out.append((r, v))
        elif spatial and r.domain in ONNX and r.op_type == "Split" and r.inputs[0] == v and v not in r.inputs[1:] \
                and int(r.attrs.get("axis", 0)) in (1, -3):
            for o in r.outputs:
                sub = _nhwc_reads(g, o, spatial) if o else []
                if sub is None:
                    return None
                out += sub
            out.append((r, v))
        else:
            return None
    return out


def _takes_nhwc(r: Node, v: str, spatial: bool) -> bool:
    """Whether ``r`` can read ``v`` channels-last; ``spatial``: ``v`` is a conv's or pool's 4-D output."""
    if r.domain != "tvmlite":
        return False
    if r.op_type == "QConcat":
        return spatial and all(q for x, q in zip(r.inputs, r.attrs["in_quantized"]) if x == v)
    return r.inputs[0] == v and v not in r.inputs[1:] and (r.op_type == "QMaxPool" or (
        r.op_type == "QDQConv" and bool(r.attrs.get("x_quantized")) and not _depthwise(r)))


def _depthwise(node: Node) -> bool:
    """A depthwise QDQConv: it reads and writes NCHW, its columns as the vector lanes (a few
    channels, e.g. 24, make short channel vectors)."""
    return node.op_type == "QDQConv" and int(node.attrs.get("group", 1)) != 1
