"""Weight-only block quantization (int4 / int8) of MatMul, Gemm and Gather (embedding) weights.

    quantize-weights                                   int4, blocks of 32, symmetric, min-max
    quantize-weights(bits=8,block=128,symmetric=false,method=mse,form=dq)

Each constant float32 weight (an initializer or a Constant node) is cut into blocks of ``block``
weights along its input axis (K of a MatMul/Gemm, the hidden axis of an embedding table), each block
with its own scale (and zero point when ``symmetric=false``): see tvmlite/quant/blockwise.py for the
formulas and the MSE clipping search. Activations stay float: only the stored weights shrink.

Two forms (``form=``):
- ``dq``: ONNX standard, opset 21: the weight stored int4/uint4 (int8/uint8) and a DequantizeLinear
  with ``block_size`` in front of the MatMul/Gemm/Gather reader; any ONNX runtime runs it.
- ``nbits``: onnxruntime's com.microsoft ops: MatMulNBits (Gemm's bias goes in as its bias input) and
  GatherBlockQuantized for embedding tables.
- ``auto`` writes ``nbits`` for MatMul/Gemm and Gather. Measured on all-MiniLM-L6 at sequence 128
  (bench/bench_quantize_weights.py, onnxruntime 1.32, 2 threads, batch 1, interleaved medians on a
  2-core host at load average ~20, so +-10%): MatMuls only, MatMulNBits 0.99x of float's latency vs
  DequantizeLinear -> MatMul 1.20x (onnxruntime rewrites the latter into MatMulNBits itself, but with
  accuracy_level 4); with the embedding table too, GatherBlockQuantized 1.13x vs DQ -> Gather 1.46x:
  onnxruntime never folds a DequantizeLinear, so ``dq`` dequantizes all 30522x384 entries every run
  where GatherBlockQuantized dequantizes only the gathered rows. ``accuracy_level=4`` (int8
  activations inside MatMulNBits) ran 0.90x at the same cosine (0.9543 vs 0.9545); the default 0
  keeps float compute, which the NumPy backend reproduces to 2e-7.

Integer MatMuls (shape arithmetic, MatMulInteger-like graphs) are never touched: only float32
weights with float32 activations. A weight whose K is not a multiple of ``block`` gets a ragged last
block (both forms allow it: DequantizeLinear's scale has ceil(K / block) entries, MatMulNBits pads
the packed blob); an embedding table whose hidden size is not a multiple of ``block`` is skipped
with a reason under ``nbits`` (GatherBlockQuantized wants whole blocks). ``gptq=true`` compensates
each MatMul/Gemm weight's rounding error on calibration activations (tvmlite/quant/gptq.py); not
AWQ-style activation-aware scaling. Passes compose: a second ``quantize-weights`` sees only what the
first left float (e.g. MatMuls in blocks of 16 with gather=false, then the table in blocks of 32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmlite.errors import OptionError
from tvmlite.export.shapes import drop_new_types, infer_shapes, typed_values
from tvmlite.ir.builder import MS_DOMAIN, Builder
from tvmlite.ir.graph import Model, Node
from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import DeadCodeElimination, is_onnx
from tvmlite.quant import qdq
from tvmlite.quant.opset import upgrade_opset
from tvmlite.quant.blockwise import METHODS, BlockQuant, quantize_blocks
from tvmlite.calibration import load_calibration
from tvmlite.passes.lowrank_math import capture_values
from tvmlite.quant.gptq import gptq_blocks
from tvmlite.ops.quant_block import pack_low_first

FORMS = ("auto", "dq", "nbits")
BITS = (4, 8)
BLOCKS = (16, 32, 64, 128, 256)
DQ_OPSET = 21  # DequantizeLinear's block_size and int4 types


def _storage_dtype(bits: int, signed: bool):
    import ml_dtypes

    if bits == 4:
        return np.dtype(ml_dtypes.int4 if signed else ml_dtypes.uint4)
    return np.dtype(np.int8 if signed else np.uint8)


@register_pass
class QuantizeWeights(Pass):
    """Block-wise weight-only int4/int8 for MatMul/Gemm (and Gather embedding tables)."""

    name = "quantize-weights"
    exclude_option = "exclude_names"
    calibration_option = "calibration"

    @dataclass
    class Options:
        bits: int = 4
        #: weights per scale along K (a power of two: MatMulNBits and GatherBlockQuantized need it)
        block: int = 32
        #: int4/int8 codes around zero (no zero point stored) or uint4/uint8 with a zero point per block
        symmetric: bool = True
        #: minmax: each block's own range; mse: the clipping ratio with the smallest squared error
        method: str = "minmax"
        #: dq (standard DequantizeLinear, opset 21), nbits (MatMulNBits/GatherBlockQuantized), auto
        form: str = "auto"
        #: quantize embedding tables read by Gather too
        gather: bool = True
        #: data-aware: GPTQ error compensation on calibration activations (MatMul/Gemm weights)
        gptq: bool = False
        #: gptq's calibration inputs: .npz / directory of .npy (CLI), or anything load_calibration takes
        calibration: Any = None
        #: MatMulNBits accuracy_level: 0 = float compute; 4 = onnxruntime quantizes A to int8
        accuracy_level: int = 0
        exclude_names: list[str] = field(default_factory=list)

    def __init__(self, **options):
        super().__init__(**options)
        self._check()  # refused when the spec is read (the CLI exits 2), not undone at run time

    def _check(self) -> str:
        o = self.options
        if o.bits not in BITS:
            raise OptionError(f"quantize-weights: bits={o.bits} (choose 4 or 8)")
        if o.block not in BLOCKS:
            raise OptionError(f"quantize-weights: block={o.block} (choose one of {', '.join(map(str, BLOCKS))}: "
                              "a power of two >= 16)")
        if o.method not in METHODS:
            raise OptionError(f"quantize-weights: method={o.method!r} (choose {', '.join(METHODS)})")
        if o.form not in FORMS:
            raise OptionError(f"quantize-weights: form={o.form!r} (choose {', '.join(FORMS)})")
        if o.accuracy_level not in (0, 1, 2, 3, 4):
            raise OptionError(f"quantize-weights: accuracy_level={o.accuracy_level} (choose 0..4)")
        return "nbits" if o.form == "auto" else o.form

    def run(self, model: Model) -> PassResult:
        form = self._check()
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        work = [(n, kind) for n in g.toposort() for kind in [_kind(n)] if kind]
        if not work:
            return result
        if form == "dq":
            upgrade_opset(model, DQ_OPSET)
            g = model.graph
            work = [(n, kind) for n in g.toposort() for kind in [_kind(n)] if kind]
        before = typed_values(g)
        infer_shapes(model)  # operand dtypes: only float activations are rewritten
        writer = _Writer(model, o, form, result)
        if o.gptq:
            writer.hessians = _hessians(model, [n for n, kind in work if kind == "matmul"], o.calibration)
        for node, kind in work:
            if node.name in o.exclude_names or node.outputs[0] in o.exclude_names:
                continue
            reason = writer.rewrite(node, kind)
            if reason:
                result.skip(node, reason)
        if writer.used_ms:
            model.opsets.setdefault(MS_DOMAIN, 1)
        if writer.used_int4:
            model.ir_version = max(model.ir_version or 0, 10)  # int4/uint4 tensors need IR 10
        result.stats.update(rewritten=len(result.rewritten), weight_bytes_before=writer.bytes_before,
                            weight_bytes_after=writer.bytes_after)
        DeadCodeElimination().run(model)
        drop_new_types(g, before)
        return result


def _kind(node: Node) -> str | None:
    if is_onnx(node, "MatMul", "Gemm"):
        return "matmul"
    if is_onnx(node, "Gather"):
        return "gather"
    return None


class _Writer:
    """Rewrites one node at a time; a weight read by several nodes is quantized and stored once."""

    def __init__(self, model: Model, options, form: str, result: PassResult):
        self.model, self.g, self.o, self.form, self.result = model, model.graph, options, form, result
        self.cache: dict = {}
        self.names: dict = {}  # cache key -> the names of what was stored for that weight
        self.bytes_before = self.bytes_after = 0
        self.used_ms = self.used_int4 = False
        self.hessians: dict = {}  # activation name -> X^T X, for gptq
        self.b = Builder(model)  # one name authority for the run

    # ------------------------------------------------------------------ shared
    def _quant(self, key, w: np.ndarray, axis: int, x: str | None = None) -> tuple[BlockQuant, bool, tuple]:
        """``w`` quantized along ``axis`` (GPTQ when the activation ``x`` that multiplies it has a
        Hessian), from the cache when this weight was already quantized the same way; and the
        cache key, under which the caller files the names of what it stored."""
        key = key + (x if x in self.hessians else None,)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, True, key
        o = self.o
        if x in self.hessians and w.ndim == 2:
            bq = gptq_blocks(w if axis == 0 else w.T, self.hessians[x], block=o.block, bits=o.bits,
                             symmetric=o.symmetric, method=o.method)
            if axis == 1:
                bq = BlockQuant(bq.q.T, bq.scale.T, None if bq.zero_point is None else bq.zero_point.T,
                                1, bq.block, bq.bits)
        else:
            bq = quantize_blocks(w, axis=axis, block=o.block, bits=o.bits, symmetric=o.symmetric,
                                 method=o.method)
        self.cache[key] = bq
        self.bytes_before += w.nbytes
        return bq, False, key

    def _record(self, node: Node, bq: BlockQuant, w: np.ndarray, form: str, stored: int, reused: bool):
        if not reused:
            self.bytes_after += stored
        err = float(np.sqrt(np.mean((bq.dequantize() - w) ** 2)) / (np.sqrt(np.mean(w ** 2)) + 1e-30))
        self.result.rewrote(node, form=form, bits=bq.bits, block=bq.block, shape=list(w.shape),
                            weight_rel_rms_error=round(err, 5), shared=reused)

    def _float_input(self, name: str) -> bool:
        return qdq.is_float(self.g, name)

    def _dequantize(self, node: Node, bq: BlockQuant, base: str, axis: int) -> str:
        """DequantizeLinear(codes, scales[, zero points]) of ``bq`` along ``axis``, made before ``node``."""
        o = self.o
        dt = _storage_dtype(o.bits, bq.zero_point is None)
        b = self.b.at(before=node)
        ins = [b.const(bq.q.astype(dt), f"{base}_q{o.bits}"), b.const(bq.scale, f"{base}_scale")]
        if bq.zero_point is not None:
            ins.append(b.const(bq.zero_point.astype(dt), f"{base}_zero_point"))
        self.used_int4 |= o.bits == 4
        return b.op.DequantizeLinear(*ins, axis=axis, block_size=o.block, outputs=[f"{base}_dequantized"],
                                     name_hint=f"{base}_DequantizeLinear").name

    # ------------------------------------------------------------------ dispatch
    def rewrite(self, node: Node, kind: str) -> str | None:
        return self._matmul(node) if kind == "matmul" else self._gather(node)

    def _matmul(self, node: Node) -> str | None:
        g = self.g
        w = g.const_value(node.inputs[1])
        if w is None:
            return "B is not a constant"
        if w.dtype != np.float32:
            return f"B is {w.dtype}, not float32 (integer and shape arithmetic is left alone)"
        if w.ndim != 2:
            return f"B has rank {w.ndim}, not 2"
        if not self._float_input(node.inputs[0]):
            return "A is not float32"
        trans_b = bool(node.attrs.get("transB", 0)) if node.op_type == "Gemm" else False
        if node.op_type == "Gemm" and node.attrs.get("transA", 0):
            return "transA=1"
        k_axis = 1 if trans_b else 0
        if self.form == "dq":
            return self._matmul_dq(node, w, k_axis)
        return self._matmul_nbits(node, w, trans_b)

    def _matmul_dq(self, node: Node, w: np.ndarray, k_axis: int) -> str | None:
        """Keep the MatMul/Gemm; its B becomes DequantizeLinear(int4 B, scales, zp, axis=K)."""
        g = self.g
        key = ("dq", node.inputs[1], k_axis)
        bq, reused, key = self._quant(key, w, k_axis, node.inputs[0])
        if reused:
            out = self.names[key]
        else:
            out = self.names[key] = self._dequantize(node, bq, node.inputs[1], k_axis)
        g.set_input(node, 1, out)
        self._record(node, bq, w, "dq", _nbytes(bq, self.o.bits), reused)
        return None

    def _matmul_nbits(self, node: Node, w: np.ndarray, trans_b: bool) -> str | None:
        """MatMul/Gemm -> MatMulNBits (Gemm's alpha folded into the weight, beta * C as the bias)."""
        g, o = self.g, self.o
        wkn = w.T if trans_b else w
        bias = None
        if node.op_type == "Gemm":
            alpha = float(node.attrs.get("alpha", 1.0))
            if alpha != 1.0:
                wkn = wkn * np.float32(alpha)
            if len(node.inputs) > 2 and node.inputs[2]:
                c = g.const_value(node.inputs[2])
                beta = float(node.attrs.get("beta", 1.0))
                if c is None and beta != 1.0:
                    return "C is computed at run time and beta != 1"
                bias = (node.inputs[2], None) if c is None else (None, (c * np.float32(beta)).astype(np.float32))
        K, N = wkn.shape
        key = ("nbits", node.inputs[1], trans_b, float(node.attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0)
        bq, reused, key = self._quant(key, wkn, 0, node.inputs[0])
        if not reused:
            base = node.inputs[1]
            bs, bits = o.block, o.bits
            kb = -(-K // bs)
            codes = bq.unsigned_codes().T  # [N, K]
            if kb * bs != K:
                codes = np.concatenate([codes, np.zeros((N, kb * bs - K), np.uint8)], axis=1)

            packed = pack_low_first(codes.reshape(N, kb, bs), bits)
            ins = [self.b.const(packed, f"{base}_nbits").name,
                   self.b.const(np.ascontiguousarray(bq.scale.T), f"{base}_scale").name]
            if bq.zero_point is not None:
                ins.append(self.b.const(pack_low_first(bq.zero_point.T.astype(np.uint8), bits), f"{base}_zero_point").name)
            self.names[key] = ins
        ins = list(self.names[key])
        attrs = {"K": int(K), "N": int(N), "bits": o.bits, "block_size": o.block}
        if o.accuracy_level:
            attrs["accuracy_level"] = o.accuracy_level
        out = node.outputs[0]
        b = self.b.at(before=node)
        extra_add = None
        if bias is not None:
            name, arr = bias
            if arr is not None and arr.size == N and arr.ndim <= 2 and arr.shape[-1] == N:
                ins += [""] * (4 - len(ins)) + [b.const(arr.reshape(N), f"{node.inputs[1]}_bias")]
            else:
                extra_add = name if name else b.const(arr, f"{node.inputs[1]}_bias")
        y = b.ms.MatMulNBits(node.inputs[0], *ins, attrs=attrs, outputs=[f"{out}_nbits"], name_hint=node.name or None)
        final = y if extra_add is None else b.op.Add(y, extra_add, outputs=[f"{out}_biased"])
        b.replace(node, {out: final}, heir=y)
        self.used_ms = True
        self._record(node, bq, wkn, "nbits", _nbytes(bq, o.bits), reused)
        return None

    # ------------------------------------------------------------------ embedding tables
    def _gather(self, node: Node) -> str | None:
        g, o = self.g, self.o
        if not o.gather:
            return None
        table = g.const_value(node.inputs[0])
        if table is None:
            return None  # a Gather on run-time data is no weight (shape arithmetic, slicing)
        if table.dtype != np.float32 or table.ndim != 2:
            return f"table is {table.dtype} of rank {table.ndim}, not a float32 matrix"
        if int(node.attrs.get("axis", 0)) % 2 != 0:
            return "gathers along the hidden axis, not rows"
        if table.size < 16 * o.block:
            return f"table of {table.size} values is too small to pay for block scales"
        if self.form == "nbits" and table.shape[1] % o.block:
            return (f"hidden size {table.shape[1]} is not a multiple of block={o.block} "
                    "(GatherBlockQuantized needs whole blocks)")
        key = ("gather", node.inputs[0], self.form)
        bq, reused, key = self._quant(key, table, 1)
        base = node.inputs[0]
        signed = bq.zero_point is None
        if self.form == "dq":
            if not reused:
                self.names[key] = self._dequantize(node, bq, base, 1)
            g.set_input(node, 0, self.names[key])
            self._record(node, bq, table, "dq", _nbytes(bq, o.bits), reused)
            return None
        if not reused:
            if o.bits == 4:
                data = bq.q.astype(_storage_dtype(4, signed))
                zp = None if signed else bq.zero_point.astype(_storage_dtype(4, False))
                self.used_int4 = True
            else:  # uint8 data: symmetric codes offset by 128, GatherBlockQuantized's default zero point
                data = bq.unsigned_codes()
                zp = None if signed else bq.zero_point.astype(np.uint8)
            ins = [self.b.const(data, f"{base}_q{o.bits}").name, None, self.b.const(bq.scale, f"{base}_scale").name]
            if zp is not None:
                ins.append(self.b.const(zp, f"{base}_zero_point").name)
            self.names[key] = ins
        ins = list(self.names[key])
        ins[1] = node.inputs[1]
        attrs = {"gather_axis": 0, "quantize_axis": 1, "block_size": o.block, "bits": o.bits}
        b = self.b.at(before=node)
        out = b.ms.GatherBlockQuantized(*ins, attrs=attrs, outputs=[f"{node.outputs[0]}_gbq"],
                                        name_hint=node.name or None)
        b.replace(node, {node.outputs[0]: out}, heir=out)
        self.used_ms = True
        self._record(node, bq, table, "nbits", _nbytes(bq, o.bits), reused)
        return None


def _hessians(model: Model, nodes: list[Node], calibration) -> dict:
    """X^T X of each float activation that multiplies a constant weight, over the calibration data
    run through the float model on the NumPy backend (one batch of merged samples at a time)."""
    g = model.graph
    names = sorted({n.inputs[0] for n in nodes if qdq.is_float(g, n.inputs[0]) and g.const_value(n.inputs[0]) is None})
    if not names:
        return {}
    calib = load_calibration(calibration, model)
    groups = list(calib._groups()) if hasattr(calib, "_groups") else list(calib)
    hess: dict = {}
    for feeds in groups:
        got = capture_values(model, names, feeds)
        for n in names:
            x = np.asarray(got[n], np.float64)
            x = x.reshape(-1, x.shape[-1])
            hess[n] = hess.get(n, 0) + x.T @ x
    return hess


def _nbytes(bq: BlockQuant, bits: int) -> int:
    """Stored bytes: packed codes, float32 scales, packed zero points."""
    n = -(-bq.q.size * bits // 8) + bq.scale.nbytes
    if bq.zero_point is not None:
        n += -(-bq.zero_point.size * bits // 8)
    return n
