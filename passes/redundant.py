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
from tvmlite.passes.pattern import Const, Op, Rule
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.export.shapes import TypeLookup

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


def _axes(g: Graph, node: Node):
    if "axes" in node.attrs:
        return sorted(int(a) for a in node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1]:
        c = g.const_value(node.inputs[1])
        return None if c is None else sorted(int(a) for a in np.asarray(c).reshape(-1))
    return None


def _bypass_refusal(g: Graph, node: Node, src: str) -> str | None:
    """Why ``node``'s readers cannot read ``src`` instead: a graph output would have to be copied
    through an Identity."""
    out = node.outputs[0]
    if out in g.outputs and (src in g.inputs or src in g.outputs or g.producer(src) is None):
        return "its output is a graph output and its input cannot take that name"
    return None


def _pair_rules(types: TypeLookup) -> list[Rule]:
    """The pairs that undo or repeat each other (the inner node stays where others read it)."""

    def cast_check(g, m):
        src, to = m["src"], int(m.root.attrs.get("to", 0))
        if int(m.node("inner").attrs.get("to", 0)) not in _EXACT.get(types.elem(src), ()):
            return False  # the first Cast rounds: the pair is not redundant
        return _bypass_refusal(g, m.root, src) if types.elem(src) == to else None

    def cast_rewrite(b, m):
        if types.elem(m["src"]) == int(m.root.attrs.get("to", 0)):
            return {m.root.outputs[0]: m["src"]}
        b.graph.set_input(m.root, 0, m["src"])  # Cast(Cast(x, t1), t2) -> Cast(x, t2)
        return None

    def transpose_perm(m):
        p, perm = m.node("inner").attrs.get("perm"), m.root.attrs.get("perm")
        if p is None or perm is None or len(p) != len(perm):
            return None
        return [list(p)[i] for i in perm]

    def transpose_check(g, m):
        q = transpose_perm(m)
        if q is None:
            return False
        return _bypass_refusal(g, m.root, m["src"]) if q == list(range(len(q))) else None

    def transpose_rewrite(b, m):
        q = transpose_perm(m)
        if q == list(range(len(q))):
            return {m.root.outputs[0]: m["src"]}
        m.root.attrs["perm"] = q
        b.graph.set_input(m.root, 0, m["src"])
        return None

    def reshape_check(g, m):
        s2 = m.const("shape")
        return None if int(m.root.attrs.get("allowzero", 0)) or not np.any(s2 == 0) else False

    def reshape_rewrite(b, m):
        b.graph.set_input(m.root, 0, m["src"])
        return None

    def squeeze_check(g, m):
        a, b = _axes(g, m.root), _axes(g, m.node("inner"))
        if a is None or a != b or any(v < 0 for v in a):
            return False
        return _bypass_refusal(g, m.root, m["src"])

    def squeeze_rewrite(b, m):
        return {m.root.outputs[0]: m["src"]}

    def inner(op):
        return Op(op, "src", ..., name="inner", shared=True)

    return [
        Rule("cast-cast", Op("Cast", inner("Cast")), cast_rewrite, cast_check),
        Rule("transpose-transpose", Op("Transpose", inner("Transpose")), transpose_rewrite, transpose_check),
        Rule("reshape-reshape", Op("Reshape", inner("Reshape"), Const("shape")), reshape_rewrite, reshape_check),
        Rule("unsqueeze-squeeze", Op("Unsqueeze", inner("Squeeze"), ...), squeeze_rewrite, squeeze_check),
        Rule("squeeze-unsqueeze", Op("Squeeze", inner("Unsqueeze"), ...), squeeze_rewrite, squeeze_check),
    ]


@register_pass
class RemoveRedundant(Pass):
    """Drop or shorten layout/type ops that undo or repeat each other (see the module docstring)."""

    name = "remove-redundant"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        types = TypeLookup(model)
        b, rules = Builder(model), _pair_rules(types)
        for node in g.toposort():
            if node.graph is None or not is_onnx(node, "Cast", "Transpose", "Reshape", "Squeeze",
                                                 "Unsqueeze", "Flatten"):
                continue
            label = node.label
            why = self._simplify(g, types, node)
            for rule in rules if why is None else ():
                why = rule.try_node(b, node)
                if why is not False:
                    break
            if why is True:
                result.rewrote(label)
            elif why:
                result.skip(node, why)
        if result.changed:
            g.remove_unused_values()
        result.stats["simplified"] = len(result.rewritten)
        return result

    def _simplify(self, g: Graph, types: TypeLookup, node: Node):
        """The single-node cases: a node whose output is already its input."""
        x = node.inputs[0] if node.inputs else ""
        if not x:
            return False  # nothing to read through; no pair either
        op = node.op_type
        if op == "Cast":
            return _bypass(g, node, x) if types.elem(x) == int(node.attrs.get("to", 0)) else None
        if op == "Transpose":
            perm = node.attrs.get("perm")
            return _bypass(g, node, x) if perm is not None and list(perm) == list(range(len(perm))) else None
        out_shape = types.static_shape(node.outputs[0])
        if out_shape is not None and types.static_shape(x) == out_shape:
            return _bypass(g, node, x)
        return None


def _bypass(g: Graph, node: Node, src: str):
    """Make ``node``'s readers read ``src`` and drop it; refuses (returns why) where the graph output
    would have to be copied through an Identity."""
    why = _bypass_refusal(g, node, src)
    if why:
        return why
    out, x = node.outputs[0], node.inputs[0]
    g.remove_node(node, remove_outputs=False)
    g.replace_all_uses(out, src)
    remove_dead_producers(g, [x])
    return True
