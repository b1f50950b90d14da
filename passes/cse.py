"""cse: common-subexpression elimination.

Two initializers with the same dtype, shape and bytes become one; then two nodes with the same op,
domain, attributes and inputs become one (in topological order, so whole repeated chains merge, as
paddle2onnx's repeated Shape -> Slice chains do). Nodes with subgraphs, random ops and nodes whose
outputs are graph outputs are left alone.
"""
from __future__ import annotations

import hashlib

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.backends.numpy.plan import NONDETERMINISTIC
from tvmlite.ir.graph import Graph, Model


def _freeze(v):
    """A hashable stand-in for an attribute value; raises TypeError for what cannot be compared."""
    if isinstance(v, (str, bytes, int, float, bool)) or v is None:
        return (type(v).__name__, v)
    if isinstance(v, (list, tuple)):
        return ("list", tuple(_freeze(x) for x in v))
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return ("strs", v.shape, tuple(str(x) for x in v.reshape(-1)))
        return ("array", v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
    if isinstance(v, np.generic):
        return (v.dtype.str, v.item())
    raise TypeError(type(v).__name__)


#: initializers above this many elements are not compared
_MAX_COMPARED = 1 << 22


def merge_initializers(g: Graph) -> int:
    """Point readers of duplicate initializers at the first copy; returns how many were merged."""
    by_shape: dict[tuple, list[str]] = {}
    for name in g.initializers:
        v = g.values.get(name)
        if v is None or name in g.inputs or name in g.outputs or v.sparse:
            continue
        if v.shape is not None and np.prod(v.shape, dtype=np.int64) > _MAX_COMPARED:
            continue  # big weights are rarely repeated; decoding and hashing each costs memory and time
        by_shape.setdefault((v.elem_type, v.shape), []).append(name)
    merged = 0
    for names in by_shape.values():
        if len(names) < 2:
            continue
        first: dict[tuple, str] = {}
        for name in names:
            try:
                key = _freeze(g.values[name].const)
            except TypeError:
                continue
            if key in first:
                g.replace_all_uses(name, first[key])
                merged += 1
            else:
                first[key] = name
    if merged:
        g.remove_unused_values()
    return merged


@register_pass
class CommonSubexpressions(Pass):
    """Merge duplicate initializers and nodes that compute the same thing from the same inputs."""

    name = "cse"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        result.count("initializers_merged", merge_initializers(g))
        outputs = set(g.outputs)
        seen: dict[tuple, object] = {}
        for node in g.toposort():
            if (node.subgraphs or node.op_type in NONDETERMINISTIC or not node.outputs
                    or any(o in outputs for o in node.outputs)):
                continue
            try:
                key = (node.domain or "", node.op_type, node.inputs, len(node.outputs),
                       tuple(sorted((k, _freeze(v)) for k, v in node.attrs.items())))
            except TypeError:
                continue
            twin = seen.get(key)
            if twin is None:
                seen[key] = node
                continue
            if any(mine and not theirs for mine, theirs in zip(node.outputs, twin.outputs)):
                continue  # the twin leaves out an output this node's readers need
            g.remove_node(node, remove_outputs=False)
            for mine, theirs in zip(node.outputs, twin.outputs):
                if mine:
                    g.replace_all_uses(mine, theirs)
            result.rewrote(node)
        result.stats["nodes_merged"] = len(result.rewritten)
        if result.changed:
            g.remove_unused_values()
        return result
