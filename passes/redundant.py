"""remove-redundant: Cast/Transpose/Reshape/Squeeze/Unsqueeze that undo or repeat each other.

- Cast to the type its input already has; Cast(Cast(x, t1), t2) -> Cast(x, t2) when x -> t1 is exact
  (every value of x's type is a value of t1), so both routes convert the same number.
- Transpose(Transpose(x, p), q) -> Transpose(x, p[q]) (nothing when that is the identity).
- Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) when s2 copies no dim (no 0, or allowzero=1).
- Unsqueeze(Squeeze(x, a), a) and Squeeze(Unsqueeze(x, a), a) -> x (axes non-negative, equal).
- Reshape/Squeeze/Unsqueeze/Flatten whose input already has the static output shape.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto as T

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import is_onnx, remove_dead_producers
from tvmlite.ir.graph import Graph, Model, Node, type_elem, type_shape
from tvmlite.export.shapes import inferred_types

#: elem type -> the types that hold each of its values exactly
_EXACT = {
    T.BOOL: {T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.FLOAT,
             T.DOUBLE, T.BFLOAT16},
    T.INT8: {T.INT16, T.INT32, T.INT64, T.FLOAT16, T.FLOAT, T.DOUBLE},
    T.UINT8: {T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.FLOAT, T.DOUBLE},
    T.INT16: {T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
    T.UINT16: {T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT, T.DOUBLE},
    T.INT32: {T.INT64, T.DOUBLE},
    T.UINT32: {T.INT64, T.UINT64, T.DOUBLE},
    T.FLOAT16: {T.FLOAT, T.DOUBLE},
    T.BFLOAT16: {T.FLOAT, T.DOUBLE},
    T.FLOAT: {T.DOUBLE},
}


class _Types:
    def __init__(self, model: Model):
        self.g, self._types = model.graph, None
        self.model = model

    def _get(self, name: str):
        if self._types is None:
            self._types = inferred_types(self.model)
        v = self.g.values.get(name)
        if v is not None and v.is_initializer:
            return v.elem_type, v.shape
        tp = self._types.get(name, v.type if v is not None else None)
        return type_elem(tp), type_shape(tp)

    def elem(self, name: str):
        return self._get(name)[0]

    def static_shape(self, name: str):
        s = self._get(name)[1]
        return s if s is not None and all(isinstance(d, int) and d >= 0 for d in s) else None


def _axes(g: Graph, node: Node):
    if "axes" in node.attrs:
        return sorted(int(a) for a in node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1]:
        c = g.const_value(node.inputs[1])
        return None if c is None else sorted(int(a) for a in np.asarray(c).reshape(-1))
    return None


@register_pass
class RemoveRedundant(Pass):
    """Drop or shorten layout/type ops that undo or repeat each other (see the module docstring)."""

    name = "remove-redundant"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        types = _Types(model)
        for node in g.toposort():
            if node.graph is None or not is_onnx(node, "Cast", "Transpose", "Reshape", "Squeeze",
                                                 "Unsqueeze", "Flatten"):
                continue
            why = self._simplify(g, types, node)
            if why is True:
                result.rewrote(node)
            elif why:
                result.skip(node, why)
        if result.changed:
            g.remove_unused_values()
        result.stats["simplified"] = len(result.rewritten)
        return result

    def _simplify(self, g: Graph, types: _Types, node: Node):
        x = node.inputs[0] if node.inputs else ""
        if not x:
            return None
        prod = g.producer(x)
        op = node.op_type
        if op == "Cast":
            to = int(node.attrs.get("to", 0))
            if types.elem(x) == to:
                return _bypass(g, node, x)
            if prod is not None and is_onnx(prod, "Cast"):
                src = prod.inputs[0]
                if int(prod.attrs.get("to", 0)) in _EXACT.get(types.elem(src), ()):
                    if types.elem(src) == to:
                        return _bypass(g, node, src)
                    return _reroute(g, node, src)
            return None
        if op == "Transpose":
            perm = node.attrs.get("perm")
            if perm is not None and list(perm) == list(range(len(perm))):
                return _bypass(g, node, x)
            if prod is not None and is_onnx(prod, "Transpose") and perm is not None and prod.attrs.get("perm") is not None:
                p = list(prod.attrs["perm"])
                if len(p) != len(perm):
                    return None
                q = [p[i] for i in perm]
                if q == list(range(len(q))):
                    return _bypass(g, node, prod.inputs[0])
                node.attrs["perm"] = q
                return _reroute(g, node, prod.inputs[0])
            return None
        out_shape = types.static_shape(node.outputs[0])
        if out_shape is not None and types.static_shape(x) == out_shape:
            return _bypass(g, node, x)
        if op == "Reshape" and prod is not None and is_onnx(prod, "Reshape") and len(node.inputs) > 1:
            s2 = g.const_value(node.inputs[1])
            if s2 is not None and (int(node.attrs.get("allowzero", 0)) or not np.any(s2 == 0)):
                return _reroute(g, node, prod.inputs[0])
            return None
        pair = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}.get(op)
        if pair and prod is not None and is_onnx(prod, pair):
            a, b = _axes(g, node), _axes(g, prod)
            if a is not None and a == b and all(v >= 0 for v in a):
                return _bypass(g, node, prod.inputs[0])
        return None


def _bypass(g: Graph, node: Node, src: str):
    """Make ``node``'s readers read ``src`` and drop it; refuses (returns why) where the graph output
    would have to be copied through an Identity."""
    out = node.outputs[0]
    if out in g.outputs and (src in g.inputs or src in g.outputs or g.producer(src) is None):
        return "its output is a graph output and its input cannot take that name"
    x = node.inputs[0]
    g.remove_node(node, remove_outputs=False)
    g.replace_all_uses(out, src)
    remove_dead_producers(g, [x])
    return True


def _reroute(g: Graph, node: Node, src: str):
    """Make ``node`` read ``src`` instead of its first input (whose producer may die)."""
    x = node.inputs[0]
    g.set_input(node, 0, src)
    remove_dead_producers(g, [x])
    return True
