"""The clean-ups every compiler needs: constant folding, dead code, Identity/Dropout removal,
BatchNormalization folding and shape inference. None of them changes what the model computes beyond
float rounding (fold-bn) and each leaves alone what it cannot prove safe, saying why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx import helper

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.constants import FOLD_MAX_BYTES, FOLD_MAX_ELEMENTS, fold_output_bound
from tvmlite.backends.numpy.plan import NONDETERMINISTIC, _resolve
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.export.shapes import infer_shapes
from tvmlite.ops.batchnorm_fold import fold_batchnorms, remove_dead_producers  # noqa: F401 (redundant, shape_fold)
from tvmlite.ops.registry import kernel_attr_name

ONNX = ("", "ai.onnx")


def is_onnx(node: Node, *op_types: str) -> bool:
    return node.domain in ONNX and node.op_type in op_types


def constant_inputs(graph: Graph, node: Node) -> list | None:
    """The arrays of all of ``node``'s inputs when every one is constant, else None."""
    vals = []
    for name in node.inputs:
        if not name:
            vals.append(None)
            continue
        try:
            c = graph.const_value(name)
        except Exception:  # noqa: BLE001 - a malformed Constant: not a value we can use
            return None
        if c is None:
            return None
        vals.append(c)
    return vals


@register_pass
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant and store their outputs as initializers.

    The output size is bounded before the node is evaluated (passes/constants.py); a node that
    cannot be sized, evaluated or stored is left alone with the reason."""

    name = "fold-constants"
    cleanup = True

    @dataclass
    class Options:
        #: do not fold a node whose outputs are this many times larger than its inputs (and > 1 MiB):
        #: ConstantOfShape/Expand/Tile would bloat the file
        max_growth: float = 4.0
        #: never fold into a constant larger than this (elements / bytes); defaults in passes/constants.py
        max_elements: int = FOLD_MAX_ELEMENTS
        max_bytes: int = FOLD_MAX_BYTES

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        fed: set[str] = set()  # inputs of folded nodes: their producers may be dead now
        for node in foldable_nodes(g):
            vals = constant_inputs(g, node)
            if vals is None:
                continue
            why = self._fold(model, node, vals)
            if why:
                result.skip(node, why)
                continue
            fed.update(n for n in node.inputs if n)
            result.rewrote(node)
        result.stats["folded"] = len(result.rewritten)
        result.stats["inputs_removed"] = remove_dead_producers(g, fed)
        return result

    def _fold(self, model: Model, node: Node, vals: list) -> str | None:
        g = model.graph
        try:
            op = _resolve(node, model.opsets)
        except Exception as e:  # noqa: BLE001 - an odd domain or opset: not ours to evaluate
            return f"no kernel to evaluate it ({type(e).__name__})"
        if op is None or op.needs_ctx:
            return "no kernel to evaluate it"
        o = self.options
        _, why = fold_output_bound(node, vals, model.opsets, o.max_elements, o.max_bytes, o.max_growth)
        if why:
            return why
        attrs = {kernel_attr_name(k): v for k, v in node.attrs.items()}
        try:
            with np.errstate(all="ignore"):
                out = op.kernel(*vals, **attrs)
            outs = list(out) if isinstance(out, tuple) else [out]
            if any(not isinstance(x, np.ndarray) and not np.isscalar(x) for x in outs):
                return "output is not a tensor"
            outs = [np.asarray(x) for x in outs]
            for x in outs:
                helper.np_dtype_to_tensor_dtype(x.dtype)  # raises for dtypes ONNX lacks
        except Exception as e:  # noqa: BLE001 - leave the node for the runtime to report
            return f"evaluation failed: {type(e).__name__}: {e}"
        if len(outs) < len([n for n in node.outputs if n]):
            return "the kernel gave fewer outputs than the node has"
        g.remove_node(node, remove_outputs=False)
        for name, arr in zip(node.outputs, outs):
            if name:
                g.add_initializer(name, arr)
        return None


def foldable_nodes(g: Graph):
    """Nodes fold-constants may evaluate, in topological order: deterministic, no subgraphs, not a
    Constant and not producing a graph output (those stay produced by a node)."""
    outputs = set(g.outputs)
    for node in g.toposort():
        if (node.op_type == "Constant" or node.subgraphs or node.op_type in NONDETERMINISTIC
                or not node.inputs or any(o in outputs for o in node.outputs)):
            continue
        yield node


@register_pass
class DeadCodeElimination(Pass):
    """Remove nodes whose outputs nothing reads, and initializers nothing reads."""

    name = "dce"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        removed = 0
        changed = True
        while changed:
            changed = False
            for node in reversed(g.toposort()):
                if all((not o) or g.num_uses(o) == 0 for o in node.outputs):
                    g.remove_node(node)
                    removed += 1
                    changed = True
        before = len(g.initializers)
        g.remove_unused_values()
        result.count("nodes_removed", removed)
        result.count("initializers_removed", before - len(g.initializers))
        return result


@register_pass
class RemoveIdentity(Pass):
    """Drop Identity nodes and inference-mode Dropout (when its mask is unused)."""

    name = "remove-identity"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        for node in g.toposort():
            if is_onnx(node, "Identity"):
                pass
            elif is_onnx(node, "Dropout"):
                if len(node.outputs) > 1 and node.outputs[1] and g.num_uses(node.outputs[1]):
                    result.skip(node, "its mask output is used")
                    continue
                if node.attrs.get("is_test", 1) == 0 and model.opset < 7:
                    result.skip(node, "Dropout in training mode (is_test=0)")
                    continue
                if len(node.inputs) > 2 and node.inputs[2]:
                    mode = g.const_value(node.inputs[2])
                    if mode is None or bool(mode):
                        result.skip(node, "training_mode is not a constant false")
                        continue
            else:
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if not src:
                continue
            if dst in g.outputs and src in g.outputs:
                result.skip(node, "both sides are graph outputs")
                continue
            if dst in g.outputs and (src in g.inputs or g.values.get(src) is None
                                     or g.values[src].producer is None):
                result.skip(node, "it copies a graph input or constant to a graph output")
                continue
            g.remove_node(node, remove_outputs=False)
            g.replace_all_uses(dst, src)
            result.rewrote(node)
        result.stats["removed"] = len(result.rewritten)
        if result.changed:
            g.remove_unused_values()
        return result


@register_pass
class FoldBatchNorm(Pass):
    """BatchNormalization after a Conv, ConvTranspose or Gemm with constant weights -> new weights
    (the arithmetic is tvmlite.ops.batchnorm_fold's, shared with the NumPy backend)."""

    name = "fold-bn"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        for bn, why in fold_batchnorms(model):
            if why:
                result.skip(bn, why)
            else:
                result.rewrote(bn)
        result.stats["folded"] = len(result.rewritten)
        return result


@register_pass
class InferShapes(Pass):
    """Run shape inference and record the types it finds (symbolic dims kept)."""

    name = "infer-shapes"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        result.count("values_typed", infer_shapes(model))
        return result
