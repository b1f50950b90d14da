"""Constants: lifting Constant nodes to initializers, and the size bound fold-constants checks before
it evaluates a node.

A folded node's output size is known from its inputs before anything is allocated: ConstantOfShape,
Expand, Tile and Range from their values, elementwise ops by broadcasting, everything else through
onnx's per-node shape inference (given the small integer inputs as data). A 147-byte model whose
ConstantOfShape makes 5e8 floats used to be evaluated first and measured after (2 GB RSS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.export.onnx_export import export_node
from tvmlite.ops.control import constant_value
from tvmlite.ops.registry import rule_outputs

#: the largest constant fold-constants writes, in elements and in bytes (fold-constants' options
#: max_elements/max_bytes override them per run). tvmlite.limits (branch `limits`) holds the
#: project-wide tensor limits; these stay far below them because a folded constant is also written
#: into the model file.
FOLD_MAX_ELEMENTS = 1 << 27  # 134 M elements
FOLD_MAX_BYTES = 1 << 29  # 512 MiB

_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal", "Less",
                 "LessOrEqual", "Greater", "GreaterOrEqual", "Where", "Max", "Min", "Sum", "Mean",
                 "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu"}
_UNARY = {"Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Floor",
          "Ceil", "Round", "Sign", "Not", "Identity", "Cast", "Erf", "Sin", "Cos", "Clip",
          "LeakyRelu", "HardSigmoid", "Softmax", "Elu", "Selu", "IsNaN", "IsInf"}
#: data passed to onnx's inference only for inputs this small (shape vectors, axes, pads)
_DATA_ELEMENTS = 4096


def _shape_vector(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(d) for d in np.asarray(a).reshape(-1))


def _own_rule(node: Node, vals: list) -> list[tuple] | None:
    """(dtype or None, shape) per output for the ops whose output size comes from input values."""
    op = node.op_type
    x = vals[0] if vals else None
    if op == "ConstantOfShape":
        fill = node.attrs.get("value")
        dtype = np.asarray(fill).dtype if fill is not None else np.dtype(np.float32)
        return [(dtype, _shape_vector(x))]
    if op == "Expand":
        return [(x.dtype, tuple(np.broadcast_shapes(x.shape, _shape_vector(vals[1]))))]
    if op == "Tile":
        reps = _shape_vector(vals[1])
        if len(reps) != x.ndim:
            raise ValueError(f"Tile repeats {list(reps)} do not match rank {x.ndim}")
        return [(x.dtype, tuple(d * r for d, r in zip(x.shape, reps)))]
    if op == "Range":
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in vals[:3])
        if delta == 0:
            raise ValueError("Range with delta 0")
        return [(x.dtype, (max(math.ceil((limit - start) / delta), 0),))]
    if op in _BROADCASTING and all(v is not None for v in vals):
        shape = tuple(np.broadcast_shapes(*(np.shape(v) for v in vals)))
        return [(None, shape)]
    if op == "Cast":
        return [(helper.tensor_dtype_to_np_dtype(int(node.attrs.get("to", 0))), x.shape)]
    if op in _UNARY and len(node.outputs) == 1:
        return [(None, x.shape)]
    return None


def _registered_rule(node: Node, vals: list) -> list[tuple] | None:
    """Output (dtype, shape) of an op outside the ONNX domain from its registered shape rule
    (tvmlite's own ops: the TVM backend's QConcat of folded shape arithmetic), which onnx cannot
    infer; None without a rule or where it leaves a dim unknown."""
    if node.domain in ("", "ai.onnx") or any(v is None for v in vals):
        return None
    outs = rule_outputs(node.op_type, node.domain, [(np.asarray(v).dtype, np.shape(v)) for v in vals], node.attrs)
    if outs is None or any(not isinstance(d, (int, np.integer)) for _, shape in outs for d in shape):
        return None
    return [(dtype, tuple(int(d) for d in shape)) for dtype, shape in outs]


def _inferred(node: Node, vals: list, opsets: dict) -> list[tuple] | None:
    """Output (dtype, shape) from onnx's shape inference for this node alone; None if it cannot tell."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    version = opsets.get(domain, opsets.get("ai.onnx", 1) if domain == "" else 1)
    try:
        schema = onnx.defs.get_schema(node.op_type, version, domain)
        proto = export_node(node)
        types, data = {}, {}
        for name, v in zip(node.inputs, vals):
            if not name:
                continue
            arr = np.asarray(v)
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            types[name] = helper.make_tensor_type_proto(elem, list(arr.shape))
            if arr.size <= _DATA_ELEMENTS and arr.dtype.kind in "iub":
                data[name] = numpy_helper.from_array(arr, name)
        opset_imports = [helper.make_opsetid(d, v) for d, v in opsets.items()]
        out = onnx.shape_inference.infer_node_outputs(schema, proto, types, data, opset_imports=opset_imports,
                                                       ir_version=9)
    except Exception:  # noqa: BLE001 - no schema, or inference refuses: the size stays unknown
        return None
    res = []
    for name in node.outputs:
        if not name:
            continue
        tp = out.get(name)
        if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in tp.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                return None
            dims.append(int(d.dim_value))
        elem = tp.tensor_type.elem_type
        res.append((helper.tensor_dtype_to_np_dtype(elem) if elem else None, tuple(dims)))
    return res


def fold_output_bound(node: Node, vals: list, opsets: dict, max_elements: int, max_bytes: int,
                      max_growth: float) -> tuple[int, str | None]:
    """(bytes of the outputs, why not to fold or None), decided before evaluating ``node``."""
    try:
        outs = _own_rule(node, vals)
    except Exception as e:  # noqa: BLE001 - bad shapes: the kernel would fail the same way
        return 0, f"cannot size its output: {type(e).__name__}: {e}"
    if outs is None:
        outs = _inferred(node, vals, opsets)
    if outs is None:
        outs = _registered_rule(node, vals)
    if outs is None:
        return 0, "output size unknown before evaluation"
    in_bytes = sum(np.asarray(v).nbytes for v in vals if v is not None)
    in_item = max((np.asarray(v).itemsize for v in vals if v is not None), default=8)
    total = 0
    for dtype, shape in outs:
        if any(d < 0 for d in shape):
            return 0, f"negative output dimension in {list(shape)}"
        n = math.prod(shape)
        nbytes = n * (np.dtype(dtype).itemsize if dtype is not None else in_item)
        if n > max_elements or nbytes > max_bytes:
            return 0, (f"folding would make a constant of {n:,} elements ({nbytes:,} bytes), above the "
                       f"limit of {max_elements:,} elements / {max_bytes:,} bytes")
        total += nbytes
    if total > 2**20 and total > max_growth * max(in_bytes, 1):
        return total, f"folding would store {total} bytes from {in_bytes}"
    return total, None


@register_pass
class LiftConstants(Pass):
    """Constant nodes of the main graph -> initializers of the same name (what onnxslim and onnxsim
    do): weights become visible to every pass as initializers and the file lists them once."""

    name = "lift-constants"
    cleanup = True

    @dataclass
    class Options:
        pass

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        for node in [n for n in g.nx.nodes if n.op_type == "Constant" and n.domain in ("", "ai.onnx")]:
            out = node.outputs[0] if node.outputs else ""
            if not out or out in g.outputs:
                continue  # an initializer cannot stand for a graph output in every runtime
            if "sparse_value" in node.attrs:
                result.skip(node, "sparse constant")
                continue
            try:
                arr = np.asarray(constant_value(node.attrs))
                helper.np_dtype_to_tensor_dtype(arr.dtype)  # raises for dtypes ONNX lacks
            except Exception as e:  # noqa: BLE001 - a malformed Constant stays for the runtime to report
                result.skip(node, f"cannot read its value: {type(e).__name__}: {e}")
                continue
            lift(g, node, arr)
            result.rewrote(node)
        result.stats["lifted"] = len(result.rewritten)
        return result


def lift(g: Graph, node: Node, arr: np.ndarray) -> None:
    """Replace the single-output ``node`` by an initializer holding ``arr`` under its output's name."""
    g.remove_node(node, remove_outputs=False)
    g.add_initializer(node.outputs[0], arr)


def constants_as_nodes(model: Model) -> int:
    """IR < 4: write initializers that are not graph inputs as Constant nodes. There an initializer
    must also be a graph input (onnx.checker refuses it otherwise), and an input can be overridden
    by the caller, which would make the folded values overridable; returns how many moved."""
    g = model.graph
    if model.ir_version >= 4:
        return 0
    moved = 0
    b = Builder(model)
    for name in [n for n in g.initializers if n not in g.inputs]:
        v = g.values[name]
        arr = v.const
        g.initializers.remove(name)
        v.const = None
        b.make_node("Constant", [], [name], {"value": arr}, name_hint=f"{name}_constant")
        moved += 1
    return moved
