"""Pruning: unstructured (magnitude per layer or global, N:M, blocks) and structured channel pruning.

    prune(mode=magnitude,sparsity=0.8,scope=global)   zeros in the weights (same shapes)
    prune(mode=nm,n=2,m=4)                             2 of every 4 weights along the input axis
    prune(mode=block,block=4x4,sparsity=0.9)           whole blocks of the [in, out] weight matrix
    prune(mode=channel,sparsity=0.5,norm=l1)           whole output channels removed
    prune(mode=channel,sparsity=0.5,budget=0.05,measure=true)  ... one layer group at a time, each
                                                       kept only within the error budget and where
                                                       onnxruntime runs the model faster with it

Unstructured modes only write zeros: the model keeps its shapes, and the sparsify pass turns the
zeros into speed. Channel pruning removes output channels of Conv/Gemm/MatMul layers by the norm of
their weights and fixes every reader: the bias, BatchNormalization parameters, depthwise convs,
elementwise activations and pools in between, Concat offsets, the input channels of the next
Conv/Gemm/MatMul (through a Flatten too), and layers joined by Add/Sub/Mul, which lose the same
channels together. A layer whose channels reach anything else (a graph output, a Reshape, a Softmax
over channels...) is left alone with the reason. The channel machinery is in prune_channels.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.capabilities import Calibrated
from tvmlite.passes.cleanup import is_onnx
from tvmlite.errors import OptionError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.passes.prune_channels import ChannelPruner, prune_within_budget

MODES = ("magnitude", "nm", "block", "channel")

def weight_matrix_view(g: Graph, node: Node):
    """(weight name, array, to_matrix, from_matrix) with the weight seen as [in, out] (MatMul's
    orientation), or None when the node has no constant float weight."""
    if not is_onnx(node, "Gemm", "MatMul", "Conv") or len(node.inputs) < 2:
        return None
    w = g.const_value(node.inputs[1])
    if w is None or w.dtype.kind != "f" or w.ndim < 2:
        return None
    if node.op_type == "Conv":
        shape = w.shape
        return (node.inputs[1], w, lambda a: a.reshape(shape[0], -1).T,
                lambda m: m.T.reshape(shape))
    if node.op_type == "Gemm" and node.attrs.get("transB", 0):
        return node.inputs[1], w, lambda a: a.T, lambda m: m.T
    if w.ndim != 2:
        return None
    return node.inputs[1], w, lambda a: a, lambda m: m


def _block_norms(mat: np.ndarray, br: int, bc: int) -> np.ndarray:
    K, N = mat.shape
    pk, pn = -K % br, -N % bc
    padded = np.pad(np.abs(mat.astype(np.float64)) ** 2, ((0, pk), (0, pn)))
    return np.sqrt(padded.reshape((K + pk) // br, br, (N + pn) // bc, bc).sum(axis=(1, 3)))


@register_pass
class Prune(Calibrated, Pass):
    """Magnitude / N:M / block pruning (zeros), or structured channel pruning (smaller layers)."""

    name = "prune"
    calibration_option = "calib"

    @dataclass
    class Options:
        mode: str = "magnitude"
        #: fraction of weights (or blocks, or channels) to remove
        sparsity: float = 0.5
        #: magnitude: per layer, or one threshold over all layers
        scope: str = "layer"
        n: int = 2
        m: int = 4
        #: block shape "RxC" over the [in, out] weight matrix
        block: str = "4x4"
        #: channel score: l1 or l2 norm of each output channel's weights
        norm: str = "l1"
        #: only these node names ('|'-separated in spec strings); empty: every eligible layer
        layers: list[str] = ()
        #: channel mode: never keep fewer channels than this
        min_channels: int = 1
        #: channel mode: calibration inputs; the readers of pruned channels are then refitted by
        #: least squares to reproduce their original outputs from the channels that are left
        calib: Any = None
        calib_count: int = 64
        ridge: float = 0.01
        #: channel mode: prune one group at a time and keep it only while the model's outputs stay
        #: within this relative L2 error of the unpruned model's on the calibration data
        budget: float | None = None
        #: channel mode: keep a group only where onnxruntime runs the whole model faster with it
        measure: bool = False
        repeats: int = 40
        threads: int = 2

    def validate(self) -> None:
        o = self.options
        if o.mode not in MODES:
            raise OptionError(f"prune: mode={o.mode!r} (choose {', '.join(MODES)})")
        if not 0 <= o.sparsity < 1:
            raise OptionError(f"prune: sparsity={o.sparsity} must be in [0, 1)")
        if o.scope not in ("layer", "global"):
            raise OptionError(f"prune: scope={o.scope!r} (layer or global)")
        if not 0 < o.n < o.m:
            raise OptionError(f"prune: need 0 < n < m (got n={o.n}, m={o.m})")
        if o.norm not in ("l1", "l2"):
            raise OptionError(f"prune: norm={o.norm!r} (l1 or l2)")
        if o.budget is not None and not (o.budget >= 0 and math.isfinite(o.budget)):
            raise OptionError(f"prune: budget={o.budget} must be a finite number >= 0")
        if o.repeats < 1 or o.threads < 1:
            raise OptionError(f"prune: repeats={o.repeats} and threads={o.threads} must be >= 1")
        if (o.budget is not None or o.measure) and o.mode != "channel":
            raise OptionError(f"prune: budget and measure are for mode=channel (got mode={o.mode})")
        self._block()

    def _block(self) -> tuple[int, int]:
        try:
            br, bc = (int(v) for v in self.options.block.lower().split("x"))
            assert br > 0 and bc > 0
        except (ValueError, AssertionError):
            raise OptionError(f"prune: block={self.options.block!r} is not RxC with positive integers") from None
        return br, bc

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        if self.options.mode == "channel" and (self.options.budget is not None or self.options.measure):
            prune_within_budget(model, self.options, result)
        elif self.options.mode == "channel":
            ChannelPruner(model, self.options, result).run()
        else:
            self._unstructured(model, result)
        if result.changed:
            model.graph.remove_unused_values()
        return result

    # ----------------------------------------------------------------------------- zeros
    def _unstructured(self, model: Model, result: PassResult) -> None:
        o = self.options
        g = model.graph
        b = Builder(model)
        layers = []
        for node in g.toposort():
            if o.layers and node.name not in o.layers:
                continue
            view = weight_matrix_view(g, node)
            if view is None:
                if is_onnx(node, "Gemm", "MatMul", "Conv"):
                    result.skip(node, "weight is not a constant float tensor")
                continue
            if node.op_type == "Conv" and int(node.attrs.get("group", 1)) != 1 and o.mode == "nm":
                result.skip(node, "grouped conv: N:M groups would straddle the groups")
                continue
            layers.append((node, view))
        threshold = None
        if o.mode == "magnitude" and o.scope == "global" and layers:
            allw = np.concatenate([np.abs(v[1]).ravel() for _, v in layers])
            k = int(math.floor(o.sparsity * allw.size))
            threshold = np.partition(allw, k - 1)[k - 1] if k > 0 else -1.0
        for node, (name, w, to_m, from_m) in layers:
            mat = to_m(w)
            if o.mode == "magnitude":
                if threshold is None:
                    k = int(math.floor(o.sparsity * mat.size))
                    t = np.partition(np.abs(mat).ravel(), k - 1)[k - 1] if k > 0 else -1.0
                else:
                    t = threshold
                mask = np.abs(mat) > t
            elif o.mode == "nm":
                K = mat.shape[0]
                if K % o.m:
                    result.skip(node, f"input size {K} is not a multiple of m={o.m}")
                    continue
                groups = np.abs(mat).reshape(K // o.m, o.m, -1)
                order = np.argsort(-groups, axis=1, kind="stable")
                mask = np.zeros_like(groups, dtype=bool)
                np.put_along_axis(mask, order[:, :o.n], True, axis=1)
                mask = mask.reshape(mat.shape)
            else:
                br, bc = self._block()
                norms = _block_norms(mat, br, bc)
                k = int(math.floor(o.sparsity * norms.size))
                t = np.partition(norms.ravel(), k - 1)[k - 1] if k > 0 else -1.0
                keep = norms > t
                mask = np.kron(keep, np.ones((br, bc), bool))[:mat.shape[0], :mat.shape[1]]
            new = from_m(np.where(mask, mat, 0).astype(w.dtype))
            new_name = b.const(new, f"{name}_pruned").name
            g.set_input(node, 1, new_name)
            sparsity = float(1 - np.count_nonzero(new) / new.size)
            err = float(np.linalg.norm(new - w) / max(np.linalg.norm(w), 1e-30))
            result.rewrote(node, mode=o.mode, sparsity=round(sparsity, 4), nonzeros=int(np.count_nonzero(new)),
                           weight_error=round(err, 5))
