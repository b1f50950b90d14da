"""fold-shapes: Shape -> Cast/Slice/Gather/Squeeze/Unsqueeze/Concat chains evaluated on the shapes the
model allows, keeping symbolic dims symbolic.

Each element of a shape vector is tracked as a known int or as "dim ``axis`` of value ``name``".
A vector whose elements are all known becomes a constant. One that still holds symbolic dims and
feeds a Reshape is rewritten there as a constant shape: an element that is the Reshape input's own dim
at the same position becomes 0 (copy, when allowzero is 0), and a single remaining unknown becomes
-1. PP-OCR exporters (paddle2onnx) write every flatten and head split this way: the chains are
Shape -> Cast(int32) -> Slice -> Cast(int64) -> Concat -> Reshape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import ONNX, remove_dead_producers
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node, type_shape
from tvmlite.export.shapes import inferred_types

_INT_TYPES = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}


@dataclass(frozen=True)
class Dim:
    """A symbolic element: dim ``axis`` of value ``value``."""
    value: str
    axis: int


@dataclass
class Vec:
    """A tracked integer tensor of rank 0 or 1."""
    elems: list  # int | Dim
    scalar: bool
    dtype: type = np.int64

    @property
    def known(self) -> bool:
        return all(isinstance(e, int) for e in self.elems)

    def array(self) -> np.ndarray:
        a = np.array(self.elems, dtype=self.dtype)
        return a.reshape(()) if self.scalar else a


def _attr_or_input(g: Graph, node: Node, attr: str, index: int):
    if attr in node.attrs:
        return node.attrs[attr]
    if len(node.inputs) > index and node.inputs[index]:
        c = g.const_value(node.inputs[index])
        return None if c is None else [int(x) for x in np.asarray(c).reshape(-1)]
    return None


def _slice_indices(n: int, start: int, end: int, step: int) -> list[int]:
    """The positions ONNX Slice takes from a length-``n`` axis (its clamping, not Python's)."""
    if step == 0:
        raise ValueError("step 0")
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return list(range(start, end, step))


class _Tracker:
    def __init__(self, g: Graph, types: dict):
        self.g, self.types = g, types
        self.vecs: dict[str, Vec] = {}

    def shape_of(self, name: str):
        v = self.g.values.get(name)
        if v is not None and v.is_initializer:
            return v.shape
        tp = self.types.get(name, v.type if v is not None else None)
        return type_shape(tp)

    def get(self, name: str) -> Vec | None:
        if name in self.vecs:
            return self.vecs[name]
        c = self.g.const_value(name)
        if c is not None and c.dtype in (np.int64, np.int32) and c.ndim <= 1 and c.size <= 64:
            return Vec([int(x) for x in c.reshape(-1)], c.ndim == 0, c.dtype.type)
        return None

    def visit(self, node: Node) -> Vec | None:
        """The tracked output of ``node``, or None when it is not a shape computation we follow."""
        op, g = node.op_type, self.g
        if node.domain not in ONNX or len(node.outputs) != 1:
            return None
        if op == "Shape":
            shape = self.shape_of(node.inputs[0])
            if shape is None:
                return None
            elems = [d if isinstance(d, int) and d >= 0 else Dim(node.inputs[0], i) for i, d in enumerate(shape)]
            start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
            return Vec(_take(elems, start, len(elems) if end is None else int(end)), False)
        ins = [self.get(n) if n else None for n in node.inputs]
        x = ins[0] if ins else None
        if x is None:
            return None
        if op in ("Identity",):
            return x
        if op == "Cast":
            to = int(node.attrs.get("to", 0))
            return Vec(x.elems, x.scalar, _INT_TYPES[to]) if to in _INT_TYPES else None
        if op == "Slice" and not x.scalar:
            starts, ends = _attr_or_input(g, node, "starts", 1), _attr_or_input(g, node, "ends", 2)
            axes, steps = _attr_or_input(g, node, "axes", 3), _attr_or_input(g, node, "steps", 4)
            if starts is None or ends is None or len(starts) != 1 or (axes not in (None, [0], [-1])):
                return None
            step = (steps or [1])[0]
            return Vec([x.elems[i] for i in _slice_indices(len(x.elems), starts[0], ends[0], step)], False, x.dtype)
        if op == "Gather" and not x.scalar and int(node.attrs.get("axis", 0)) in (0, -1):
            idx = ins[1] if len(ins) > 1 else None
            if idx is None or not idx.known or any(not -len(x.elems) <= i < len(x.elems) for i in idx.elems):
                return None
            return Vec([x.elems[i] for i in idx.elems], idx.scalar, x.dtype)
        if op == "Unsqueeze" and x.scalar:
            axes = _attr_or_input(g, node, "axes", 1)
            return Vec(x.elems, False, x.dtype) if axes in ([0], [-1]) else None
        if op == "Squeeze" and not x.scalar and len(x.elems) == 1:
            axes = _attr_or_input(g, node, "axes", 1)
            return Vec(x.elems, True, x.dtype) if axes in (None, [0], [-1]) else None
        if op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
            if any(v is None or v.scalar or v.dtype != x.dtype for v in ins):
                return None
            return Vec([e for v in ins for e in v.elems], False, x.dtype)
        if op in ("Add", "Sub", "Mul") and len(ins) == 2 and ins[1] is not None:
            return _arith(op, x, ins[1])
        return None


def _take(elems: list, start: int, end: int) -> list:
    n = len(elems)
    start = min(max(start + n if start < 0 else start, 0), n)
    end = min(max(end + n if end < 0 else end, 0), n)
    return elems[start:end]


def _arith(op: str, a: Vec, b: Vec) -> Vec | None:
    if not (a.known and b.known) or a.dtype != b.dtype:
        return None
    try:
        r = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a.array(), b.array())
    except ValueError:
        return None
    return Vec([int(v) for v in r.reshape(-1)], r.ndim == 0, a.dtype)


def reshape_target(tracker: _Tracker, node: Node, vec: Vec) -> list[int] | str:
    """A constant shape for Reshape ``node`` equal to ``vec`` on every input the model allows, or why not."""
    if vec.scalar:
        return "shape is a scalar"
    allowzero = int(node.attrs.get("allowzero", 0))
    out, unknown = [], []
    for i, e in enumerate(vec.elems):
        if isinstance(e, int):
            out.append(e)
        elif not allowzero and e == Dim(node.inputs[0], i):
            out.append(0)  # copy the input's own dim i
        else:
            out.append(None)
            unknown.append(i)
    if not unknown:
        return out
    if len(unknown) > 1 or -1 in out:
        return f"{len(unknown)} symbolic dims that are not the input's own at the same position"
    if allowzero and 0 in out:
        return "allowzero=1 with a zero dim next to a symbolic one"
    out[unknown[0]] = -1
    return out


@register_pass
class FoldShapes(Pass):
    """Evaluate Shape-rooted integer computations on the model's known dims (see the module docstring)."""

    name = "fold-shapes"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        order = g.toposort()
        if not any(n.op_type == "Shape" for n in order):
            return result
        tracker = _Tracker(g, inferred_types(model))
        b = Builder(model)
        fed: set[str] = set()
        for node in order:
            vec = tracker.visit(node)
            out = node.outputs[0] if node.outputs else ""
            if vec is not None:
                tracker.vecs[out] = vec
                if vec.known and node.op_type != "Identity" and out not in g.outputs:
                    fed.update(n for n in node.inputs if n)
                    g.remove_node(node, remove_outputs=False)
                    g.add_initializer(out, vec.array())
                    result.rewrote(node)
                continue
            if node.op_type == "Reshape" and node.domain in ONNX and len(node.inputs) > 1:
                shape = tracker.vecs.get(node.inputs[1])
                if shape is None or g.const_value(node.inputs[1]) is not None:
                    continue
                target = reshape_target(tracker, node, shape)
                if isinstance(target, str):
                    result.skip(node, target)
                    continue
                fed.add(node.inputs[1])
                shape_const = b.const(np.array(target, np.int64), f"{node.name or 'reshape'}_shape")
                g.set_input(node, 1, shape_const.name)
                result.rewrote(node)
        result.stats["folded"] = len(result.rewritten)
        result.stats["inputs_removed"] = remove_dead_producers(g, fed)
        return result
