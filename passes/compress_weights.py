"""Weight compression: binary, ternary and k-means codebook weights, rebuilt in the graph.

    compress-weights(mode=binary)               W ~ k * sign(W), k = mean|W| per output channel
    compress-weights(mode=ternary,threshold=0.7) W ~ a * T, T in {-1, 0, 1}: |W| > 0.7 mean|W|
    compress-weights(mode=kmeans,bits=4)         W ~ codebook[idx], 2^bits centroids, uint8 indices

Binary (seed 000): for B in {-1, 1}^n, ||W - kB|| is smallest at B = sign(W), k = W.B / n = mean|W|.
Ternary (ternary weight networks): values below the threshold become 0 and the rest share the scale
a = mean of the kept |W|. K-means (seed 003): Lloyd's algorithm in 1-D, one codebook per layer.
The small integer tensors are stored (int8 signs, uint8 indices) and the float weight is rebuilt by
standard ops in front of its reader (Cast and Mul; Cast and Gather), so the file shrinks ~4x and
any runtime can fold the rebuild once at load. Accuracy is not fine-tuned back: the weight error
per layer is reported, and ``tvmlite compare`` measures the output error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import is_onnx
from tvmlite.errors import OptionError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node

MODES = ("binary", "ternary", "kmeans")


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(codebook [k] sorted, index per value) by Lloyd's algorithm on the line, started at the
    quantiles; assignment by the midpoints between sorted centroids (exact in 1-D)."""
    v = values.astype(np.float64).ravel()
    k = max(1, min(k, np.unique(v).size))
    centers = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        centers = np.unique(centers)
        idx = np.searchsorted((centers[1:] + centers[:-1]) / 2, v)
        sums = np.bincount(idx, weights=v, minlength=centers.size)
        counts = np.bincount(idx, minlength=centers.size)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
        if np.allclose(new, centers):
            break
        centers = new
    centers = np.unique(centers)
    idx = np.searchsorted((centers[1:] + centers[:-1]) / 2, v)
    return centers, idx.reshape(values.shape)


def channel_axis(node: Node, ndim: int) -> int:
    """Axis of the output channels in the stored weight."""
    if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attrs.get("transB", 0)):
        return 0
    return ndim - 1


@register_pass
class CompressWeights(Pass):
    """Binary / ternary / k-means codebook weights for Conv, Gemm and MatMul."""

    name = "compress-weights"

    @dataclass
    class Options:
        mode: str = "kmeans"
        #: kmeans: 2^bits centroids (1..8)
        bits: int = 4
        #: ternary: zero the weights with |W| <= threshold * mean|W|
        threshold: float = 0.7
        #: binary/ternary: one scale per output channel (else one per layer)
        per_channel: bool = True
        #: leave weights with fewer elements alone (first/last layers are usually small and sensitive)
        min_size: int = 1024
        layers: list[str] = ()

    def validate(self) -> None:
        o = self.options
        if o.mode not in MODES:
            raise OptionError(f"compress-weights: mode={o.mode!r} (choose {', '.join(MODES)})")
        if not 1 <= o.bits <= 8:
            raise OptionError(f"compress-weights: bits={o.bits} must be 1..8 (uint8 indices)")
        if o.threshold < 0:
            raise OptionError("compress-weights: threshold must be >= 0")

    def run(self, model: Model) -> PassResult:
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        total_before = total_after = 0
        b = Builder(model)  # one name authority for the run
        for node in g.toposort():
            if not is_onnx(node, "Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
                continue
            if o.layers and node.name not in o.layers:
                continue
            w = g.const_value(node.inputs[1])
            if w is None or w.dtype.kind != "f":
                result.skip(node, "weight is not a constant float tensor")
                continue
            if w.size < o.min_size:
                result.skip(node, f"weight has {w.size} elements < min_size {o.min_size}")
                continue
            approx, stored, rebuild = self._compress(w, channel_axis(node, w.ndim))
            name = self._insert(g, node, rebuild, b)
            before = w.nbytes
            after = sum(a.nbytes for a in stored)
            total_before += before
            total_after += after
            err = float(np.linalg.norm(approx - w) / max(np.linalg.norm(w), 1e-30))
            result.rewrote(node, mode=o.mode, bytes_before=int(before), bytes_after=int(after),
                           ratio=round(before / max(after, 1), 2), weight_error=round(err, 5),
                           distinct_values=int(np.unique(approx).size), weight=name)
        result.stats.update(bytes_before=total_before, bytes_after=total_after)
        if result.changed:
            g.remove_unused_values()
        return result

    def _compress(self, w: np.ndarray, axis: int):
        """(approximation, stored arrays, rebuild spec)."""
        o = self.options
        dt = w.dtype
        red = tuple(i for i in range(w.ndim) if i != axis) if o.per_channel else None
        if o.mode == "binary":
            signs = np.where(w >= 0, 1, -1).astype(np.int8)
            k = np.mean(np.abs(w), axis=red, keepdims=o.per_channel).astype(dt)
            approx = signs.astype(dt) * k
            return approx, [signs, np.asarray(k)], ("scale", signs, np.asarray(k))
        if o.mode == "ternary":
            a = np.abs(w)
            delta = o.threshold * np.mean(a, axis=red, keepdims=o.per_channel)
            keep = a > delta
            t = (np.sign(w) * keep).astype(np.int8)
            kept_sum = np.sum(a * keep, axis=red, keepdims=o.per_channel)
            kept_n = np.maximum(np.sum(keep, axis=red, keepdims=o.per_channel), 1)
            alpha = (kept_sum / kept_n).astype(dt)
            approx = t.astype(dt) * alpha
            return approx, [t, np.asarray(alpha)], ("scale", t, np.asarray(alpha))
        codebook, idx = kmeans_1d(w, 2 ** o.bits)
        codebook = codebook.astype(dt)
        idx = idx.astype(np.uint8)
        return codebook[idx], [idx, codebook], ("gather", idx, codebook)

    def _insert(self, g: Graph, node: Node, rebuild, b: Builder | None = None) -> str:
        """Nodes that rebuild the float weight from the stored arrays, feeding ``node``."""
        kind, small, extra = rebuild
        base = node.name or node.op_type.lower()
        dtype = extra.dtype
        from onnx import helper

        elem = helper.np_dtype_to_tensor_dtype(dtype)
        b = b.at(before=node) if b is not None else Builder(g, before=node)  # rebuilt just before its reader
        if kind == "scale":
            f = b.op.Cast(b.const(small, f"{base}_W_sign"), to=elem, name_hint=f"{base}_W_cast")
            out = b.op.Mul(f, b.const(extra, f"{base}_W_scale"), name_hint=f"{base}_W_rebuild")
        else:
            i32 = b.op.Cast(b.const(small, f"{base}_W_index"), to=6, name_hint=f"{base}_W_cast")
            out = b.op.Gather(b.const(extra, f"{base}_W_codebook"), i32, axis=0, name_hint=f"{base}_W_rebuild")
        out = out.name
        g.set_input(node, 1, out)
        return out
