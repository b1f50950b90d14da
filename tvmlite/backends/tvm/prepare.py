"""Before lowering: a folded copy of the model with static shapes.

`prepare` copies the model, fixes its input shapes, turns QDQ Conv/MatMul patterns into int8
nodes (qdq_fusion.py), folds everything constant (including Shape
of static tensors, so shape arithmetic disappears), folds BatchNormalization into the
producing conv/GEMM and moves an activation behind a Concat onto its inputs (concat_acts.py),
lowers the 3x3 convs where Winograd pays (winograd_choice.py), then reports the shape of every value (and records the inferred element type
of values the graph left untyped: what decides between a float32 kernel and a host call).
"""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.concat_acts import sink_activations
from tvmlite.backends.tvm.qdq_fusion import fold_channel_scales, fuse_qdq
from tvmlite.backends.tvm.winograd_choice import choose_winograd, enabled as winograd_enabled, qdq_convs
from tvmlite.errors import InputError
from tvmlite.inputs import graph_inputs
from tvmlite.ir.graph import Model, tensor_type, type_elem, type_shape
from tvmlite.passes.cleanup import DeadCodeElimination, FoldBatchNorm, FoldConstants, RemoveIdentity

ONNX = ("", "ai.onnx")


def prepare(model: Model, input_shapes: dict, winograd: list | None = None) -> tuple[Model, dict[str, tuple]]:
    """A folded copy of ``model`` with static shapes, and the shape of every value. ``winograd``:
    a list that receives the Winograd choice's decisions (winograd_choice.choose_winograd)."""
    m = model.copy()
    g = m.graph
    # inputs with an initializer (IR < 4 lists every weight as an input) are built in as constants
    g.inputs = [n for n in g.inputs if n not in g.initializers]
    m.ir_version = max(m.ir_version, 7)  # so shape inference reads initializers that are not inputs
    for name in graph_inputs(g):
        if name not in input_shapes:
            raise InputError(f"no shape for input {name!r}")
        v = g.values[name]
        v.type = tensor_type(v.dtype or np.float32, input_shapes[name])
    quantized = qdq_convs(m) if winograd_enabled() else set()  # before fusion hides which
    if fuse_qdq(m):  # before folding turns the int8 weights back into float
        m.opsets.setdefault("tvmlite", 1)
    for _ in range(8):  # Shape -> constant -> fold, until shape arithmetic is gone
        shapes = _shapes(m)
        changed = fold_static_shapes(m, shapes)
        changed |= FoldConstants(max_growth=float("inf"))(m).changed
        if not changed:
            break
    FoldBatchNorm()(m)
    RemoveIdentity()(m)
    DeadCodeElimination()(m)
    sink_activations(m)  # Concat -> Relu: each input's kernel takes the Relu, the Concat no copy
    decisions = choose_winograd(m, quantized)  # 3x3 stride-1 float convs where it pays ($TVMLITE_WINOGRAD)
    if winograd is not None:
        winograd.extend(decisions)
    shapes = _shapes(m)
    if fold_channel_scales(m.graph, shapes):  # static shapes say which Mul is per channel
        shapes = _shapes(m)
    return m, shapes


def _shapes(m: Model) -> dict[str, tuple]:
    from tvmlite.export.shapes import inferred_types

    # passing the input shapes makes inference drop recorded (possibly symbolic) types first
    types = inferred_types(m, {n: m.graph.values[n].shape for n in m.graph.inputs
                               if m.graph.values[n].shape is not None})
    out = {}
    for name, v in m.graph.values.items():
        t = types.get(name)
        if v.elem_type is None and t is not None and type_elem(t):
            v.type = t  # the element type of an untyped value: what decides float kernel or host call
        s = v.shape if v.is_initializer else type_shape(types.get(name, v.type))
        if s is not None and all(isinstance(d, int) and d >= 0 for d in s):
            out[name] = tuple(int(d) for d in s)
    for name in m.graph.inputs:  # inference may drop what we set
        s = m.graph.values[name].shape
        if s is not None and all(isinstance(d, int) for d in s):
            out[name] = tuple(s)
    return out


def fold_static_shapes(m: Model, shapes: dict) -> bool:
    g = m.graph
    changed = False
    for node in g.toposort():
        if node.domain in ONNX and node.op_type in ("Shape", "Size") and node.inputs[0] in shapes:
            s = np.array(shapes[node.inputs[0]], np.int64)
            if node.op_type == "Size":
                arr = np.array(int(np.prod(s)), np.int64)
            else:
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                arr = s[start:end]
            g.remove_node(node, remove_outputs=False)
            g.add_initializer(node.outputs[0], arr)
            changed = True
    return changed
