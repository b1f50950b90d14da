"""Weight compression: binary, ternary and k-means codebook weights, rebuilt in the graph.

    compress-weights(mode=binary)               W ~ k * sign(W), k = mean|W| per output channel
    compress-weights(mode=ternary,threshold=0.7) W ~ a * T, T in {-1, 0, 1}: |W| > 0.7 mean|W|
    compress-weights(mode=kmeans,bits=4)         W ~ codebook[idx], 2^bits centroids, uint8 indices

Binary (seed 000): for B in {-1, 1}^n, ||W - kB|| is smallest at B = sign(W), k = W.B / n = mean|W|.
Ternary (ternary weight networks): values below the threshold become 0 and the rest share the scale
a = mean of the kept |W|. K-means (seed 003): Lloyd's algorithm in 1-D, one codebook per layer.
The small integer tensors are stored (int8 signs, k-means indices) and the float weight is rebuilt
by standard ops in front of its reader (Cast and Mul; Cast and Gather), so any runtime can fold the
rebuild once at load. K-means indices of at most 4 bits go two to a byte: the first half of the
indices in the high nibbles, the second half in the low ones, unpacked by Cast -> Div/Mod 16 ->
Concat (opset 13 ops, no int4 tensor type needed), so a 4-bit palette is 8x smaller than float32.
Accuracy is not fine-tuned back: the weight error per layer is reported, and ``tvmlite compare``
(or optimize's checked pipeline, per layer) measures the output error.

Weights that ``quantize`` / ``quantize-dynamic`` already store as int8 (or uint8): a constant int8
tensor read by DequantizeLinear, MatMulInteger or ConvInteger, or by the Cast of quantize's
``Cast(int8) * scales`` storage of the layers it left in float, gets an integer palette of 2^bits
codes (k-means on the codes, centroids rounded to the storage type), rebuilt to the same int8
tensor in front of that reader. The int8 kernels onnxruntime fuses (QLinearConv, QGemm, ...) are
kept: the rebuild is constant and folded at load. ``weight_error`` is then measured in float (codes
times the DequantizeLinear scales) against the int8 weight, the only weight left to compare with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.capabilities import LayerwisePass
from tvmlite.passes.cleanup import is_onnx
from tvmlite.errors import OptionError, UnsupportedError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.ops.quant import bcast_param

MODES = ("binary", "ternary", "kmeans")
#: readers of an int8 weight stored as a constant: op -> (weight input, zero point input)
INT_READERS = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3), "ConvInteger": (1, 3), "Cast": (0, 9)}
INT32, INT64 = 6, 7  # onnx TensorProto element types
#: what the packed rebuild (6 nodes, 4 small constants, their names) adds to the file, at most: an
#: int8 weight whose palette saves less is left alone (measured: ~490 bytes a layer with short names)
REBUILD_BYTES = 640


def pack_nibbles(idx: np.ndarray) -> np.ndarray | None:
    """Indices < 16, two per byte (first half high nibbles, second half low); None for an odd count."""
    flat = idx.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        return None
    half = flat.size // 2
    return ((flat[:half] << 4) | flat[half:]).astype(np.uint8)


def int_palette(codes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(palette in the codes' integer type, index per code): k-means on the codes, centroids
    rounded and clipped to the type, each code sent to its nearest rounded centroid."""
    info = np.iinfo(codes.dtype)
    centers, _ = kmeans_1d(codes.astype(np.float64), 2 ** bits)
    book = np.unique(np.clip(np.rint(centers), info.min, info.max))
    idx = np.searchsorted((book[1:] + book[:-1]) / 2, codes.astype(np.float64).ravel())
    return book.astype(codes.dtype), idx.reshape(codes.shape)


def _cast_scale(g: Graph, mul: Node) -> np.ndarray | None:
    """The constant scales of ``Mul(Cast(int8 constant), scales)`` (quantize's int8 storage of the
    weights of layers it left in float), or None when ``mul`` is not that."""
    cast = g.producer(mul.inputs[0])
    if cast is None or not is_onnx(cast, "Cast") or g.num_uses(cast.outputs[0]) != 1:
        return None
    codes, scale = g.const_value(cast.inputs[0]), g.const_value(mul.inputs[1])
    if codes is None or codes.dtype not in (np.int8, np.uint8) or scale is None or scale.dtype.kind != "f":
        return None
    try:
        np.broadcast_shapes(scale.shape, codes.shape)
    except ValueError:
        return None
    return scale


def dq_scale_full(scale: np.ndarray, shape, axis: int, block: int) -> np.ndarray:
    """DequantizeLinear's scale or zero point (per tensor, per axis or blocked along ``axis``) as a
    float64 array of ``shape``: the DequantizeLinear kernel's broadcast (one element is per tensor,
    whatever the block size)."""
    s = np.asarray(scale, np.float64)
    return np.broadcast_to(bcast_param(s, shape, axis, block if s.size > 1 else 0), shape)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(codebook [k] sorted, index per value) by Lloyd's algorithm on the line, started at half the
    centroids on the quantiles and half evenly over the range; assignment by the midpoints between
    sorted centroids (exact in 1-D). Quantiles alone leave the tails of heavy-tailed weights (PP-OCR
    rec after fold-bn: max |w| up to 24 standard deviations) one shared centroid, and Lloyd's steps
    do not move enough centroids out there: relative weight error 0.07-0.11 at 8 bits, 0.01-0.02
    with the even half (0.18-0.23 -> 0.14-0.18 at 4 bits)."""
    v = values.astype(np.float64).ravel()
    k = max(1, min(k, np.unique(v).size))
    even = k // 2
    centers = np.concatenate([np.quantile(v, (np.arange(k - even) + 0.5) / (k - even)),
                              np.linspace(v.min(), v.max(), even)])
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
class CompressWeights(LayerwisePass, Pass):
    """Binary / ternary / k-means codebook weights for Conv, Gemm and MatMul (float or int8 stored)."""

    name = "compress-weights"
    exclude_option = "exclude_names"

    @dataclass
    class Options:
        mode: str = "kmeans"
        #: kmeans: 2^bits centroids (1..8); at most 4 bits: two indices per byte
        bits: int = 4
        #: ternary: zero the weights with |W| <= threshold * mean|W|
        threshold: float = 0.7
        #: binary/ternary: one scale per output channel (else one per layer)
        per_channel: bool = True
        #: leave weights with fewer elements alone (first/last layers are usually small and sensitive)
        min_size: int = 1024
        layers: list[str] = ()
        #: also give int8 weights (behind DequantizeLinear / MatMulInteger / ConvInteger) a palette
        int8: bool = True
        exclude_names: list[str] = field(default_factory=list)

    def validate(self) -> None:
        o = self.options
        if o.mode not in MODES:
            raise OptionError(f"compress-weights: mode={o.mode!r} (choose {', '.join(MODES)})")
        if not 1 <= o.bits <= 8:
            raise OptionError(f"compress-weights: bits={o.bits} must be 1..8 (uint8 indices)")
        if o.threshold < 0:
            raise OptionError("compress-weights: threshold must be >= 0")
        if o.min_size < 0:
            raise OptionError("compress-weights: min_size must be >= 0")

    def run(self, model: Model) -> PassResult:
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        self._totals = [0, 0]
        b = Builder(model)  # one name authority for the run
        done: set[str] = set()  # int8 weights already given a palette (a DequantizeLinear may be shared)
        for node in g.toposort():
            if not is_onnx(node, "Conv", "Gemm", "MatMul", "MatMulInteger", "ConvInteger") or len(node.inputs) < 2:
                continue
            if (o.layers and node.name not in o.layers) or node.name in o.exclude_names:
                continue
            w = g.const_value(node.inputs[1])
            if w is not None and w.dtype.kind == "f" and node.op_type in ("Conv", "Gemm", "MatMul"):
                self._float_weight(g, node, w, b, result)
                continue
            if o.int8:
                reader, pos = self._int8_source(g, node)
                if reader is not None:
                    if reader.name not in done:
                        done.add(reader.name)
                        self._int8_weight(g, node, reader, pos, b, result)
                    continue
            result.skip(node, "weight is not a constant float tensor nor a constant int8 tensor "
                              "read by DequantizeLinear/MatMulInteger/ConvInteger")
        result.stats.update(bytes_before=self._totals[0], bytes_after=self._totals[1])
        if result.changed:
            g.remove_unused_values()
        return result

    def _int8_source(self, g: Graph, node: Node) -> tuple[Node | None, int]:
        """(the node reading ``node``'s int8 weight as a constant, that input's index) or (None, 0)."""
        reader = node
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            reader = g.producer(node.inputs[1])
            if reader is not None and is_onnx(reader, "Mul") and _cast_scale(g, reader) is not None:
                reader = g.producer(reader.inputs[0])  # quantize's float layers: Cast(int8) * scales
            elif reader is None or not is_onnx(reader, "DequantizeLinear"):
                return None, 0
        pos = INT_READERS[reader.op_type][0]
        c = g.const_value(reader.inputs[pos]) if len(reader.inputs) > pos else None
        if c is None or c.dtype not in (np.int8, np.uint8):
            return None, 0
        return reader, pos

    def _account(self, result, node, before, after, err, distinct, name, **extra) -> None:
        self._totals[0] += before
        self._totals[1] += after
        result.rewrote(node, mode=self.options.mode, bytes_before=int(before), bytes_after=int(after),
                       ratio=round(before / max(after, 1), 2), weight_error=round(err, 5),
                       distinct_values=int(distinct), weight=name, **extra)

    def _float_weight(self, g: Graph, node: Node, w: np.ndarray, b: Builder, result: PassResult) -> None:
        if w.size < self.options.min_size:
            result.skip(node, f"weight has {w.size} elements < min_size {self.options.min_size}")
            return
        approx, stored, rebuild = self._compress(w, channel_axis(node, w.ndim))
        name = self._insert(g, node, 1, rebuild, w.shape, b)
        err = float(np.linalg.norm(approx - w) / max(np.linalg.norm(w), 1e-30))
        self._account(result, node, w.nbytes, sum(a.nbytes for a in stored), err, np.unique(approx).size, name)

    def _int8_weight(self, g: Graph, node: Node, reader: Node, pos: int, b: Builder, result: PassResult) -> None:
        o = self.options
        codes = g.const_value(reader.inputs[pos])
        if o.mode != "kmeans" or o.bits > 4:
            result.skip(node, f"int8 weight: only a k-means palette of <= 4 bits (mode={o.mode}, bits={o.bits}) "
                              "makes it smaller")
            return
        if codes.size < o.min_size:
            result.skip(node, f"weight has {codes.size} elements < min_size {o.min_size}")
            return
        book, idx = int_palette(codes, o.bits)
        packed = pack_nibbles(idx)
        stored = [book, idx.astype(np.uint8) if packed is None else packed]
        saved = codes.nbytes - sum(a.nbytes for a in stored)
        if saved <= REBUILD_BYTES:
            result.skip(node, f"int8 weight: a palette saves {saved} bytes, not more than its rebuild "
                              f"nodes (~{REBUILD_BYTES})")
            return
        approx = book[idx]
        zp_at = INT_READERS[reader.op_type][1]
        zp = g.const_value(reader.inputs[zp_at]) if len(reader.inputs) > zp_at and reader.inputs[zp_at] else None
        zp = np.zeros(1) if zp is None else zp.astype(np.float64)
        try:
            if reader.op_type == "Cast":
                full = np.broadcast_to(_cast_scale(g, g.producer(node.inputs[1])).astype(np.float64), codes.shape)
                zfull = 0.0
            elif reader.op_type == "DequantizeLinear":
                scale = g.const_value(reader.inputs[1])
                axis, block = reader.attrs.get("axis", 1), reader.attrs.get("block_size", 0)
                full = np.ones(codes.shape) if scale is None else dq_scale_full(scale, codes.shape, axis, block)
                zfull = dq_scale_full(zp, codes.shape, axis, block)
            else:  # MatMulInteger/ConvInteger: a zero point per output channel (last axis / first axis)
                full = np.ones(codes.shape)
                zfull = dq_scale_full(zp, codes.shape, 0 if reader.op_type == "ConvInteger" else -1, 0)
        except UnsupportedError as e:  # parameters the reader itself could not apply
            result.skip(node, f"int8 weight: {e}")
            return
        ref = (codes.astype(np.float64) - zfull) * full
        err = float(np.linalg.norm((approx.astype(np.float64) - codes) * full) / max(np.linalg.norm(ref), 1e-30))
        name = self._insert(g, reader, pos, ("gather", stored[1], book, packed is not None), codes.shape, b,
                            base=node.name or node.op_type.lower())
        self._account(result, node, codes.nbytes, sum(a.nbytes for a in stored), err, book.size, name,
                      stored_as=str(codes.dtype))

    def _compress(self, w: np.ndarray, axis: int):
        """(approximation, stored arrays, rebuild spec)."""
        o = self.options
        dt = w.dtype
        red = tuple(i for i in range(w.ndim) if i != axis) if o.per_channel else None
        if o.mode == "binary":
            signs = np.where(w >= 0, 1, -1).astype(np.int8)
            k = np.mean(np.abs(w), axis=red, keepdims=o.per_channel).astype(dt)
            approx = signs.astype(dt) * k
            return approx, [signs, np.asarray(k)], ("scale", signs, np.asarray(k), False)
        if o.mode == "ternary":
            a = np.abs(w)
            delta = o.threshold * np.mean(a, axis=red, keepdims=o.per_channel)
            keep = a > delta
            t = (np.sign(w) * keep).astype(np.int8)
            kept_sum = np.sum(a * keep, axis=red, keepdims=o.per_channel)
            kept_n = np.maximum(np.sum(keep, axis=red, keepdims=o.per_channel), 1)
            alpha = (kept_sum / kept_n).astype(dt)
            approx = t.astype(dt) * alpha
            return approx, [t, np.asarray(alpha)], ("scale", t, np.asarray(alpha), False)
        codebook, idx = kmeans_1d(w, 2 ** o.bits)
        codebook = codebook.astype(dt)
        packed = pack_nibbles(idx) if o.bits <= 4 else None
        small = idx.astype(np.uint8) if packed is None else packed
        return codebook[idx], [small, codebook], ("gather", small, codebook, packed is not None)

    def _insert(self, g: Graph, node: Node, pos: int, rebuild, shape, b: Builder, base: str | None = None) -> str:
        """Nodes that rebuild the weight from the stored arrays, feeding input ``pos`` of ``node``."""
        kind, small, extra, packed = rebuild
        base = base or node.name or node.op_type.lower()
        from onnx import helper

        b = b.at(before=node)  # rebuilt just before its reader
        if kind == "scale":
            elem = helper.np_dtype_to_tensor_dtype(extra.dtype)
            f = b.op.Cast(b.const(small, f"{base}_W_sign"), to=elem, name_hint=f"{base}_W_cast")
            out = b.op.Mul(f, b.const(extra, f"{base}_W_scale"), name_hint=f"{base}_W_rebuild")
        elif not packed:
            i32 = b.op.Cast(b.const(small, f"{base}_W_index"), to=INT32, name_hint=f"{base}_W_cast")
            out = b.op.Gather(b.const(extra, f"{base}_W_codebook"), i32, axis=0, name_hint=f"{base}_W_rebuild")
        else:
            p32 = b.op.Cast(b.const(small, f"{base}_W_nibbles"), to=INT32, name_hint=f"{base}_W_cast")
            sixteen = b.const(np.array(16, np.int32), f"{base}_W_16")
            hi = b.op.Div(p32, sixteen, name_hint=f"{base}_W_high")
            lo = b.op.Mod(p32, sixteen, name_hint=f"{base}_W_low")
            i32 = b.op.Concat(hi, lo, axis=0, name_hint=f"{base}_W_index")
            flat = b.op.Gather(b.const(extra, f"{base}_W_codebook"), i32, axis=0, name_hint=f"{base}_W_values")
            out = b.op.Reshape(flat, b.const(np.array(shape, np.int64), f"{base}_W_shape"),
                               name_hint=f"{base}_W_rebuild")
        if kind != "scale" and not packed and small.shape != tuple(shape):
            out = b.op.Reshape(out, b.const(np.array(shape, np.int64), f"{base}_W_shape"),
                               name_hint=f"{base}_W_rebuild")
        out = out.name
        g.set_input(node, pos, out)
        return out
