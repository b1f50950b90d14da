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
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
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


def remove_dead_producers(g: Graph, names) -> int:
    """Remove the producers of ``names`` (and theirs, transitively) that nothing reads any more, and
    initializers among ``names`` left unread; other dead code is left to `dce`."""
    removed = 0
    todo = list(names)
    while todo:
        name = todo.pop()
        v = g.values.get(name)
        if v is None or g.num_uses(name):
            continue
        node = v.producer
        if node is None:
            if v.is_initializer and name not in g.inputs:
                del g.values[name]
                g.initializers.remove(name)
            continue
        if all((not o) or g.num_uses(o) == 0 for o in node.outputs):
            g.remove_node(node)
            removed += 1
            todo.extend(n for n in node.inputs if n)
    return removed


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
    """BatchNormalization after a Conv, ConvTranspose or Gemm with constant weights -> new weights.

    y = (conv(x, W) + b - mean) * s + beta with s = scale / sqrt(var + eps), so
    W' = W * s (per output channel) and b' = (b - mean) * s + beta.
    """

    name = "fold-bn"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        replaced: list[str] = []  # BN parameters and old weights: dead once folded
        bld = Builder(model)
        for bn in g.toposort():
            if not is_onnx(bn, "BatchNormalization"):
                continue
            prod = g.producer(bn.inputs[0])
            old = list(bn.inputs[1:5]) + (list(prod.inputs[1:3]) if prod is not None else [])
            # onnxruntime folds Conv+BN itself only where the weights are constant: from IR 4 on
            # (before, initializers are graph inputs a caller may override)
            why = self._fold(g, bn, ort_arithmetic=model.ir_version >= 4, bld=bld)
            if why:
                result.skip(bn, why)
            else:
                result.rewrote(bn)
                replaced.extend(old)
        result.stats["folded"] = len(result.rewritten)
        if result.changed:
            remove_dead_producers(g, replaced)
            g.remove_unused_values()
        return result

    def _fold(self, g: Graph, bn: Node, ort_arithmetic: bool = True, bld: Builder | None = None) -> str | None:
        if len([o for o in bn.outputs if o]) > 1 or bn.attrs.get("training_mode", 0):
            return "training-mode BatchNormalization"
        params = [g.const_value(n) for n in bn.inputs[1:5]]
        if any(p is None for p in params):
            return "scale/bias/mean/var are not constant"
        prod = g.producer(bn.inputs[0])
        if prod is None or not is_onnx(prod, "Conv", "ConvTranspose", "Gemm"):
            return "input is not produced by a Conv, ConvTranspose or Gemm"
        if g.num_uses(prod.outputs[0]) != 1:
            return f"the output of {prod.label!r} has other readers"
        w = g.const_value(prod.inputs[1])
        if w is None:
            return f"weights of {prod.label!r} are not constant"
        if w.dtype.kind != "f":
            return f"weights of {prod.label!r} are not floating point"
        b_name = prod.inputs[2] if len(prod.inputs) > 2 else ""
        b = g.const_value(b_name) if b_name else None
        if b_name and b is None:
            return f"bias of {prod.label!r} is not constant"
        if any(p.ndim != 1 or p.size != params[0].size for p in params):
            return "scale/bias/mean/var are not per-channel vectors of one length"
        eps = float(bn.attrs.get("epsilon", 1e-5))
        if (ort_arithmetic and prod.op_type == "Conv" and all(p.dtype == w.dtype for p in params)
                and (b is None or b.dtype == w.dtype)):
            if w.shape[0] != params[0].size:
                return "channel count of BatchNormalization and Conv differ"
            if b is not None and b.shape != (w.shape[0],):
                return f"bias of {prod.label!r} has {b.size} values for {w.shape[0]} channels"
            w_new, b_new = ort_conv_bn(w, b, params, eps)
        else:
            folded = self._fold_float64(g, bn, prod, w, b, params, eps)
            if isinstance(folded, str):
                return folded
            w_new, b_new = folded
        dtype = w.dtype
        bld = bld or Builder(g)
        w_name = bld.const(w_new.astype(dtype), f"{prod.name or 'w'}_bnfolded_W").name
        b_name_new = bld.const(b_new.astype(dtype), f"{prod.name or 'b'}_bnfolded_B").name
        inputs = list(prod.inputs) + [""] * (3 - len(prod.inputs))
        inputs[1], inputs[2] = w_name, b_name_new
        g.set_inputs(prod, inputs)
        if prod.op_type == "Gemm":
            prod.attrs["beta"] = 1.0
        # the BN's output now comes straight from the producer
        g.remove_node(bn, remove_outputs=False)
        g.replace_all_uses(bn.outputs[0], prod.outputs[0])
        return None

    @staticmethod
    def _fold_float64(g: Graph, bn: Node, prod: Node, w, b, params, eps):
        """New (W, b) computed in float64, or why not."""
        scale, beta, mean, var = (p.astype(np.float64) for p in params)
        s = scale / np.sqrt(var + eps)
        wd = w.astype(np.float64)
        if prod.op_type == "Conv":
            if w.shape[0] != s.size:
                return "channel count of BatchNormalization and Conv differ"
            w_new = wd * s.reshape((-1,) + (1,) * (w.ndim - 1))
            n_out = w.shape[0]
        elif prod.op_type == "ConvTranspose":
            group = int(prod.attrs.get("group", 1))
            cin, cout_g = w.shape[0], w.shape[1]
            if cout_g * group != s.size:
                return "channel count of BatchNormalization and ConvTranspose differ"
            w_new = (wd.reshape((group, cin // group, cout_g) + w.shape[2:])
                     * s.reshape((group, 1, cout_g) + (1,) * (w.ndim - 2))).reshape(w.shape)
            n_out = s.size
        else:  # Gemm: Y = alpha * A' B' + beta_c * C, BN over the columns of Y
            if g.value(bn.inputs[0]).shape is not None and len(g.value(bn.inputs[0]).shape) != 2:
                return "Gemm output is not 2-D"
            trans_b = int(prod.attrs.get("transB", 0))
            if (w.shape[0] if trans_b else w.shape[1]) != s.size:
                return "channel count of BatchNormalization and Gemm differ"
            w_new = wd * (s.reshape(-1, 1) if trans_b else s.reshape(1, -1))
            n_out = s.size
            beta_c = float(prod.attrs.get("beta", 1.0))
            if b is not None:
                b = np.broadcast_to(b.astype(np.float64) * beta_c, (n_out,)) if b.size in (1, n_out) else None
                if b is None:
                    return "Gemm's C is not per-column"
        b_old = np.zeros(n_out) if b is None else b.astype(np.float64).reshape(-1)
        if b_old.size != n_out:
            return f"bias of {prod.label!r} has {b_old.size} values for {n_out} channels"
        return w_new, (b_old - mean) * s + beta


def ort_conv_bn(w: np.ndarray, b: np.ndarray | None, params: list, eps: float):
    """Conv+BatchNormalization folded the way onnxruntime's ConvBNFusion does it at load (in the
    weights' own float type, same order of operations), so the folded model runs bit-identically to
    the original in onnxruntime: folding in float64 instead moved PP-OCR det's outputs by 2.4e-4 of
    their magnitude, above --preset clean's 1e-4 budget. Where onnxruntime does not fold (IR < 4),
    float64 is closer: float32 moved light_densenet121 by 1.4e-4 relative against its unfolded BNs."""
    scale, beta, mean, var = params
    s = scale / np.sqrt(var + w.dtype.type(eps))
    w_new = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    b_new = (b - mean) * s + beta if b is not None else beta - mean * s
    return w_new, b_new


@register_pass
class InferShapes(Pass):
    """Run shape inference and record the types it finds (symbolic dims kept)."""

    name = "infer-shapes"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        from tvmlite.ir.shapes import infer_shapes

        result = PassResult(self.name)
        result.count("values_typed", infer_shapes(model))
        return result
