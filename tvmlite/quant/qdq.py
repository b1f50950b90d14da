"""QDQ insertion: QuantizeLinear/DequantizeLinear pairs in the form onnxruntime fuses into int8
kernels (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...).

Which nodes run in int8 is decided by the caller (``units``: the Conv/Gemm/MatMul and element-wise
nodes chosen). This module then

- folds a Relu / Clip(0, c) that follows a unit into the unit's output quantization (uint8 with zero
  point 0 saturates at 0, and at c when the range ends there), so no float activation is left between
  two int8 kernels;
- extends the int8 region through data-movement ops (MaxPool, Reshape, Transpose, Flatten, ...),
  whose output gets the very scale and zero point of their input, so onnxruntime drops the Q/DQ
  around them and runs them on int8 data;
- quantizes weights per channel (symmetric int8, -127..127, or -63..63: QuantSpec.weight_max), biases to int32 with scale s_x * s_w,
  and every activation that enters or leaves the int8 region per tensor.

A tensor produced inside the region is read by everyone through its DequantizeLinear (the int8
producer no longer writes float); a tensor produced in float keeps its float readers and gets a
Q/DQ pair only for its int8 readers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.quant.insert import Inserter
from tvmlite.quant.params import (affine_params, fit_bias_scales, quantize_bias, quantize_weight,
                                  weight_scales)

ONNX = ("", "ai.onnx")
COMPUTE = ("Conv", "Gemm", "MatMul")
#: ops that only move or select values: int8 in, int8 out with the same scale and zero point
CARRY = ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
         "Resize", "Identity", "DepthToSpace", "SpaceToDepth")
#: ops onnxruntime runs on int8 with their own output scale (QLinearAdd, QLinearConcat, ...)
REQUANT = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu",
           "Softmax")
FOLDABLE = ("Relu", "Clip")
#: Mul/Div by a positive scalar constant: on an int8 tensor it only rescales the grid, so it folds
#: into the DequantizeLinear scale (HardSwish's x * clip(x + 3, 0, 6) / 6 then stays int8 throughout)
RESCALE = ("Mul", "Div")
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis)


def data_inputs(node: Node) -> list[int]:
    """Indices of the float data inputs the int8 version of ``node`` reads through DequantizeLinear."""
    op = node.op_type
    if op in ("Add", "Mul", "Concat"):
        return list(range(len(node.inputs)))
    if op in COMPUTE:
        return [0, 1]
    return [0]


def is_float(graph: Graph, name: str) -> bool:
    if not name:
        return False
    try:
        v = graph.value(name)
    except KeyError:
        return False
    return v.elem_type == 1  # float32 only: float16/double models are left alone


@dataclass
class QuantSpec:
    """How to quantize: activation type, per-channel weights, the range of each tensor."""

    activation_type: str = "uint8"  # uint8 (asymmetric) or int8 (symmetric)
    per_channel: bool = True
    ranges: dict = field(default_factory=dict)  # tensor name -> (lo, hi)
    #: weight tensor name -> rounding.RoundedWeight: codes (and corrected bias) rounded from data
    #: instead of to nearest (quantize's weight_rounding / bias_correction options)
    weights: dict = field(default_factory=dict)
    #: largest weight code: 127, or 63 for 7-bit weights (quantize's reduce_range: onnxruntime's
    #: uint8 x int8 kernels saturate without VNNI, params.REDUCED_WEIGHT_MAX)
    weight_max: int = 127

    @property
    def symmetric(self) -> bool:
        return self.activation_type == "int8"


# ------------------------------------------------------------------------------------ preparation
def _elem_names(graph: Graph, names) -> str:
    from onnx import helper

    out = []
    for n in names:
        t = graph.value(n).elem_type if n and n in graph.values else None
        out.append(helper.tensor_dtype_to_np_dtype(t).name if t else "unknown type")
    return ", ".join(dict.fromkeys(out))


def why_not_int8(graph: Graph, node: Node) -> str | None:
    """Why ``node`` (a Conv/Gemm/MatMul or an element-wise REQUANT op) cannot be quantized, or None
    when it can. Integer and bool arithmetic (shape computations) never is: int8 is for float32."""
    if node.domain not in ONNX or node.op_type not in COMPUTE + REQUANT:
        return "not a Conv, Gemm, MatMul or int8-capable element-wise op"
    if node.op_type in REQUANT:
        ins = [node.inputs[i] for i in data_inputs(node) if i < len(node.inputs) and node.inputs[i]]
        names = ins + list(node.outputs[:1])
        if not ins or not all(is_float(graph, n) for n in names):
            return f"not float32 arithmetic ({_elem_names(graph, names)}): left alone"
        return None
    if not is_float(graph, node.inputs[0]) or not node.outputs or not is_float(graph, node.outputs[0]):
        return "input or output is not float32"
    if node.op_type == "Conv":
        w = graph.const_value(node.inputs[1])
        if w is None:
            return "weights are not constant"
        if w.dtype != np.float32:
            return "weights are not float32"
        if len(node.inputs) > 2 and node.inputs[2] and graph.const_value(node.inputs[2]) is None:
            return "bias is not constant"
    elif node.op_type == "Gemm":
        if graph.const_value(node.inputs[1]) is None:
            return "B is not constant"
        if node.attrs.get("transA", 0):
            return "transA=1 has no int8 kernel"
        if float(node.attrs.get("alpha", 1.0)) != 1.0:
            return "alpha != 1"
        if len(node.inputs) > 2 and node.inputs[2]:
            c = graph.const_value(node.inputs[2])
            if c is None:
                return "C is not constant"
            n = graph.const_value(node.inputs[1]).shape[0 if node.attrs.get("transB", 0) else 1]
            if c.size not in (1, n) or float(node.attrs.get("beta", 1.0)) != 1.0:
                return "C is not a per-column bias with beta=1"
    else:  # MatMul
        if not is_float(graph, node.inputs[1]):
            return "B is not float32"
        for name in node.inputs:
            shape = graph.value(name).shape
            if shape is not None and len(shape) < 2:
                return "1-D operand"
    return None


# -------------------------------------------------------------------------------------- planning
@dataclass
class QdqPlan:
    nodes: set  # names (node keys) that run in int8
    folded: dict  # unit key -> activation node key folded into its output
    same_as: dict  # tensor -> tensor whose quantization it shares (carry ops)
    rescaled: dict = field(default_factory=dict)  # Mul/Div node key -> factor its input grid is scaled by


def node_key(node: Node) -> str:
    """A node's identity across clones of a model: its first output's name."""
    return node.outputs[0]


def excluded_keys(graph: Graph, names) -> set:
    """The node keys of the nodes ``names`` refers to, by node name, label or first output."""
    names = set(names)
    return {node_key(n) for n in graph.nx.nodes if names & {n.name, n.label, node_key(n)}}


def _foldable(graph: Graph, unit: Node, spec: QuantSpec) -> Node | None:
    """The Relu/Clip(0, c) reading ``unit``'s output that its quantization can absorb."""
    if spec.symmetric:
        return None  # a symmetric grid has negative codes: it cannot stand in for max(x, 0)
    out = unit.outputs[0]
    if out in graph.outputs:
        return None
    readers = graph.consumers(out)
    if len(readers) != 1 or graph.num_uses(out) != 1:
        return None
    act = readers[0]
    if act.domain not in ONNX or act.op_type not in FOLDABLE:
        return None
    if act.op_type == "Clip":
        lo = _clip_bound(graph, act, 1, "min")
        if lo is None or lo != 0.0:
            return None
        hi = _clip_bound(graph, act, 2, "max")
        if hi is None:
            return None
    return act


def _clip_bound(graph: Graph, clip: Node, index: int, attr: str) -> float | None:
    """A Clip bound: +-inf when absent, None when not constant."""
    if attr in clip.attrs:
        return float(clip.attrs[attr])
    if len(clip.inputs) > index and clip.inputs[index]:
        c = graph.const_value(clip.inputs[index])
        return None if c is None or c.size != 1 else float(c.reshape(()))
    return float("inf") if attr == "max" else float("-inf")


def plan_qdq(graph: Graph, units: set, spec: QuantSpec, *, extend: bool = True,
             excluded: set = frozenset()) -> QdqPlan:
    """Which nodes run in int8 given the chosen ``units`` (node keys of Conv/Gemm/MatMul and
    element-wise ops), which activations fold, and which tensors share quantization. ``excluded``:
    node keys that stay float (see excluded_keys)."""
    nodes: set = set()
    folded: dict = {}
    same_as: dict = {}
    rescaled: dict = {}
    qtensors: set = set()
    for node in graph.toposort():
        key = node_key(node)
        if key in folded.values():
            qtensors.add(node.outputs[0])
            continue
        if node.domain not in ONNX or key in excluded:
            continue
        op = node.op_type
        factor = _rescale_factor(graph, node, qtensors) if extend else None
        if factor is not None:
            nodes.add(key)
            qtensors.add(node.outputs[0])
            rescaled[key] = factor
            continue
        if key in units and (op in COMPUTE or op in REQUANT):
            if op in REQUANT and not _requant_ok(graph, node, qtensors, require_quantized=False):
                continue
            nodes.add(key)
            qtensors.add(node.outputs[0])
            act = _foldable(graph, node, spec)
            if act is not None and node_key(act) not in excluded:
                folded[key] = node_key(act)
            continue
        if not extend:
            continue
        if op in CARRY and node.inputs and node.inputs[0] in qtensors and is_float(graph, node.outputs[0]):
            if op == "Resize" and node.attrs.get("mode", "nearest") == "cubic":
                continue  # cubic overshoots the input range
            if any(o and graph.num_uses(o) for o in node.outputs[1:]):
                continue  # MaxPool's indices, Split's other parts
            nodes.add(key)
            qtensors.add(node.outputs[0])
            same_as[node.outputs[0]] = node.inputs[0]
        elif op in REQUANT and op not in ("Add", "Mul") and _requant_ok(graph, node, qtensors, True):
            # pools, Concat, Sigmoid, ...: int8 kernels that are cheaper than DQ + float op
            nodes.add(key)
            qtensors.add(node.outputs[0])
    return QdqPlan(nodes, folded, same_as, rescaled)


def _rescale_factor(graph: Graph, node: Node, qtensors: set) -> float | None:
    """The factor of a Mul/Div of an int8 tensor by a positive finite scalar constant, else None."""
    if node.op_type not in RESCALE or len(node.inputs) != 2 or not node.outputs:
        return None
    if not is_float(graph, node.outputs[0]) or node.outputs[0] in graph.outputs:
        return None
    sides = (0, 1) if node.op_type == "Mul" else (0,)
    for k in sides:
        x, c_name = node.inputs[k], node.inputs[1 - k]
        c = graph.const_value(c_name)
        if x not in qtensors or c is None or c.size != 1 or c.dtype != np.float32:
            continue
        shape_x, shape_out = graph.value(x).shape, graph.value(node.outputs[0]).shape
        if shape_x is None or shape_out is None or len(shape_x) != len(shape_out):
            continue  # a constant of higher rank would broadcast the output
        v = float(c.reshape(()))
        if not np.isfinite(v) or v <= 0:
            continue  # a negative factor would flip the grid; zero loses it
        factor = v if node.op_type == "Mul" else 1.0 / v
        if not 1e-30 < factor < 1e30:
            continue
        return factor
    return None


def _requant_ok(graph: Graph, node: Node, qtensors: set, require_quantized: bool) -> bool:
    if not node.outputs or not is_float(graph, node.outputs[0]):
        return False
    if node.op_type == "Softmax" and node.outputs[0] in graph.outputs:
        return False  # probabilities want float precision
    ins = [node.inputs[i] for i in data_inputs(node) if i < len(node.inputs) and node.inputs[i]]
    if not ins or not all(is_float(graph, n) for n in ins):
        return False
    dyn = [n for n in ins if graph.const_value(n) is None]
    if not dyn:
        return False
    if require_quantized:
        return all(n in qtensors for n in dyn)
    return True


def activation_tensors(graph: Graph, plan: QdqPlan) -> list[str]:
    """Every activation the plan quantizes (before folding renames anything)."""
    out: list[str] = []
    by_key = {node_key(n): n for n in graph.nx.nodes}
    for key in plan.nodes:
        node = by_key[key]
        for i in data_inputs(node):
            if i < len(node.inputs) and node.inputs[i] and graph.const_value(node.inputs[i]) is None:
                out.append(node.inputs[i])
        out.append(node.outputs[0])
    for act in plan.folded.values():
        out.append(by_key[act].outputs[0])
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------- insertion
def apply_qdq(model: Model, plan: QdqPlan, spec: QuantSpec) -> list[tuple[str, str, dict]]:
    """Rewrite ``model`` in place per ``plan``; returns (node label, what, details) per change."""
    g = model.graph
    if model.opset < MIN_OPSET:
        raise UnsupportedError(f"QDQ with per-channel weights needs opset >= {MIN_OPSET} "
                               f"(the model has {model.opset}): upgrade it first")
    ins = Inserter(model, spec)
    by_key = {node_key(n): n for n in g.nx.nodes}
    log: list[tuple[str, str, dict]] = []

    # 1. fold Relu/Clip into the producing unit: the unit now writes the activation's output
    int8_nodes = [by_key[k] for k in plan.nodes]
    clip_hi: dict[str, float] = {}
    renamed: dict[str, str] = {}
    for key, act_key in plan.folded.items():
        unit, act = by_key[key], by_key[act_key]
        t, a_out = unit.outputs[0], act.outputs[0]
        hi = _clip_bound(g, act, 2, "max") if act.op_type == "Clip" else float("inf")
        g.remove_node(act, remove_outputs=False)
        g.replace_all_uses(a_out, t)  # when a_out is a graph output, the unit's output takes its name
        final = unit.outputs[0]
        renamed[t] = final
        clip_hi[final] = hi
        ins.ranges[final] = spec.ranges.get(a_out)
        log.append((act.label, "folded", {"into": unit.label}))
    g.remove_unused_values()
    order = {n: i for i, n in enumerate(g.toposort())}
    int8_nodes.sort(key=order.__getitem__)
    int8_set = set(int8_nodes)
    same_as = {renamed.get(k, k): renamed.get(v, v) for k, v in plan.same_as.items()}

    # 2. scale and zero point of every quantized activation (carried tensors share their input's)
    rescaled = {n: plan.rescaled[node_key(n)] for n in int8_nodes if node_key(n) in plan.rescaled}
    for node in int8_nodes:
        if node in rescaled:
            ins.rescaled_params(node.outputs[0], node.inputs[0 if node.inputs[0] in ins.params else 1],
                                rescaled[node])
            continue
        for i in data_inputs(node):
            if i < len(node.inputs) and node.inputs[i] and g.const_value(node.inputs[i]) is None:
                if node.op_type in COMPUTE and i == 1 and node.op_type != "MatMul":
                    continue
                name = node.inputs[i]
                ins.tensor_params(name, same_as.get(name, name))
        out = node.outputs[0]
        src = same_as.get(out, out)
        ins.tensor_params(out, src, clip_hi.get(out))

    # 3. weights, biases and constant operands
    for node in int8_nodes:
        if node not in rescaled:
            _quantize_constants(ins, node, log)

    # 4. Q/DQ on activations: int8-produced tensors are replaced by their DQ for every reader
    for node in int8_nodes:
        if node in rescaled:
            continue
        for i in data_inputs(node):
            if i >= len(node.inputs) or not node.inputs[i]:
                continue
            name = node.inputs[i]
            if name not in ins.params:
                continue
            p = g.producer(name)
            if p is None or p not in int8_set:
                g.set_input(node, i, ins.dequantized(name))
    for node in int8_nodes:
        if node in rescaled:
            continue
        out = node.outputs[0]
        log.append((node.label, "int8", {"op": node.op_type, "output_scale": ins.scale_of(out)}))
        ins.quantize_produced(out)
    # 5. a rescaling Mul/Div goes away: its output is its input's int8 codes read with a scaled grid
    for node, factor in rescaled.items():
        x = next(n for n in node.inputs if n in ins.params and g.const_value(n) is None)
        dq = g.producer(x)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise UnsupportedError(f"internal: int8 tensor {x!r} is not written by a DequantizeLinear")
        out = node.outputs[0]
        declared = g.value(out).type
        s, z = ins.params[out]
        g.remove_node(node, remove_outputs=False)
        ins.b.make_node("DequantizeLinear", [dq.inputs[0], s, z], [out], name_hint=f"{out}_DQ")
        g.value(out).type = declared
        log.append((node.label, "folded", {"into": "DequantizeLinear scale", "factor": factor}))
    # 6. float layers that read an int8 tensor stay float in onnxruntime too
    ours = {s for s, _ in ins.params.values()}
    for node in list(g.toposort()):
        if node not in int8_set:
            keep_float(ins, node, ours, log)
    g.remove_unused_values()
    return log


#: layers onnxruntime's WeightBiasQuantization transformer turns into int8 when their input is DQ'd
WEIGHT_BIAS_QUANTIZED = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(g: Graph, node: Node) -> tuple[int, int | None]:
    """(axis, size) of the reduced axis of input 0 of a Conv/ConvTranspose/Gemm; size None if unknown."""
    axis = 0 if node.op_type == "Gemm" and node.attrs.get("transA", 0) else 1
    w = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is not None and w.ndim >= 2:
        if node.op_type == "Conv":
            return axis, int(w.shape[1]) * int(node.attrs.get("group", 1))
        if node.op_type == "ConvTranspose":
            return axis, int(w.shape[0])
        return axis, int(w.shape[1 if node.attrs.get("transB", 0) else 0])
    shape = g.value(node.inputs[0]).shape
    size = shape[axis] if shape is not None and len(shape) > axis else None
    return axis, size if isinstance(size, int) else None


def keep_float(ins: Inserter, node: Node, ours: set, log: list) -> None:
    """A float Conv/ConvTranspose/Gemm that reads the per-tensor DequantizeLinear of an int8 tensor:
    onnxruntime's WeightBiasQuantization transformer (1.2x) would re-quantize its float weight per
    tensor and fuse the layer into QLinearConv/QGemm, so the layer quantize kept float (for accuracy
    or speed) would run as per-tensor int8 there and drift from the QDQ semantics by up to 10 steps.
    The transformer only takes a per-tensor DQ: the layer reads the same codes through a DQ with the
    scale repeated per channel instead, which computes the same floats and leaves the layer float."""
    g = ins.g
    if node.domain not in ONNX or node.op_type not in WEIGHT_BIAS_QUANTIZED or not node.inputs:
        return
    dq = g.producer(node.inputs[0])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[1] not in ours:
        return
    axis, channels = _input_channels(g, node)
    if channels is None or channels < 2:
        log.append((node.label, "left", {"reason": "onnxruntime re-quantizes this float layer per tensor: "
                                                   "its input channels are unknown or 1"}))
        return
    g.set_input(node, 0, ins.per_axis_dq(node.inputs[0], channels, axis))
    log.append((node.label, "float", {"input": "per-channel DequantizeLinear", "channels": channels}))


def _quantize_constants(ins: Inserter, node: Node, log: list) -> None:
    g = ins.g
    op = node.op_type
    if op in ("Conv", "Gemm") or (op == "MatMul" and g.const_value(node.inputs[1]) is not None):
        w = g.const_value(node.inputs[1])
        if op == "Conv":
            axis = 0
        elif op == "Gemm":
            axis = 0 if node.attrs.get("transB", 0) else 1
        else:
            axis = w.ndim - 1 if w.ndim == 2 else None
        if not ins.spec.per_channel:
            axis = None
        x_scale = ins.scale_of(node.inputs[0])
        b_name = node.inputs[2] if op in ("Conv", "Gemm") and len(node.inputs) > 2 else ""
        b = g.const_value(b_name) if b_name else None
        rounded = ins.spec.weights.get(node.inputs[1])
        if rounded is not None and (rounded.axis != axis or (b_name and b is None)):
            rounded = None  # rounded per channel for another layout, or a bias that is computed
        if rounded is not None and rounded.bias is not None:
            b = rounded.bias
            b_name = b_name or f"{node.outputs[0]}_bias"  # a base name for the new bias's constants
        if b is not None and b.size == 1 and axis is not None:
            b = np.broadcast_to(b.reshape(-1), (w.shape[axis],))
        scales = weight_scales(w, axis, ins.spec.weight_max)
        scales = fit_bias_scales(None if b is None else b.reshape(-1), x_scale, scales)
        if rounded is not None and np.array_equal(scales, rounded.scales):
            wq = rounded.q
        else:  # no data-aware codes, or the bias raised a scale: the codes were for the old grid
            wq = quantize_weight(w, scales, axis, ins.spec.weight_max)
        short = op == "Conv"  # zero points of Conv's weights and bias are 5% of an int8 PP-OCR cls file
        wdq = ins.constant_dq(w, f"{node.inputs[1]}", wq, scales, np.zeros(scales.shape, np.int8), axis, short)
        g.set_input(node, 1, wdq)
        if b is not None:
            bq, bs = quantize_bias(b.reshape(-1), x_scale, scales if axis is not None
                                   else np.broadcast_to(scales, (b.size,)))
            b_axis = 0 if bq.size > 1 else None
            bdq = ins.constant_dq(b, f"{b_name}", bq.reshape(-1) if b_axis is not None else bq.reshape(()),
                                  bs if b_axis is not None else bs.reshape(()),
                                  np.zeros(bs.shape, np.int32), b_axis, short)
            g.set_input(node, 2, bdq)
        return
    # element-wise ops and MatMul with a constant A: constants quantized per tensor like activations
    for i in data_inputs(node):
        if i >= len(node.inputs) or not node.inputs[i]:
            continue
        c = g.const_value(node.inputs[i])
        if c is None:
            continue
        if c.dtype != np.float32:
            continue
        scale, zp = affine_params(float(c.min()), float(c.max()), ins.spec.activation_type)
        q = np.clip(np.rint(c / scale) + int(zp), *(0, 255) if ins.spec.activation_type == "uint8"
                    else (-127, 127)).astype(np.asarray(zp).dtype)
        dq = ins.constant_dq(c, node.inputs[i], q, np.asarray(scale, np.float32), np.asarray(zp), None)
        g.set_input(node, i, dq)
