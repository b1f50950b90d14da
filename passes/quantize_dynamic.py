"""Weight-only dynamic int8 (``quantize-dynamic``): MatMul/Gemm weights stored int8, activations
quantized at run time (DynamicQuantizeLinear -> MatMulInteger, which onnxruntime fuses).

Moved out of quantize.py (static ``quantize``) so that each pass has its own module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.counts import node_macs
from tvmlite.passes.quantize_weights import QuantizeWeights
from tvmlite.passes.cleanup import DeadCodeElimination, is_onnx
from tvmlite.errors import OptionError, TvmliteError
from tvmlite.ir.builder import MS_DOMAIN, Builder
from tvmlite.ir.graph import Model
from tvmlite.export.shapes import drop_new_types, infer_shapes, static_shapes, typed_values
from tvmlite.quant import qdq
from tvmlite.quant.opset import upgrade_opset
from tvmlite.quant.params import WEIGHT_MAX, quantize_weight, reduce_range_error, weight_max, weight_scales
from tvmlite.quant.dynamic_attention import attention_operands, write_qattention
from tvmlite.quant.smooth import ALPHAS, capture_samples, choose_alpha
from tvmlite.passes.transformer_fusion import FuseTransformer
from tvmlite.passes.quantize_dynamic_timing import example_shapes, time_layer
from tvmlite.runtime.ort import timing_key, u8s8_saturates


@register_pass
class QuantizeDynamic(Pass):
    """Weight-only int8 for MatMul/Gemm with constant weights; activations quantized at run time.

    ``form=integer`` (default): DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q) -> Cast -> Mul by
    x_scale * w_scale (per column) [-> Add bias], which onnxruntime fuses into DynamicQuantizeMatMul.
    ``form=dq``: W stored int8 with a DequantizeLinear in front (float compute; onnxruntime does not
    fold the DQ, it dequantizes every run).

    Measured (bench/bench_quant.py --models dynamic, round-robin medians, loaded 2-core host): a
    4-block 384/1536 MLP on 40 tokens ran float 24-36 ms, integer 1.5-9.6 ms, dq 52-85 ms; PP-OCR
    rec (9 MatMuls, conv-dominated) float 119-173, integer 111-169, dq 116-182 ms. Hence the default.

    ``min_matmul_share``: leave the model unchanged (and say why) unless MatMul/Gemm nodes with a
    constant weight hold at least this share of its multiply-accumulates (symbolic dims counted as
    1): the default preset uses 0.5 to try dynamic int8 on transformer encoders, decoders and MLPs
    and not on conv nets, whose fc layers static int8 handles. all-MiniLM-L6 (seq 128): 0.52x of
    float's onnxruntime latency at rel error 0.062, where static int8 per layer gained nothing.

    ``gather=true``: embedding tables (constant float32 Gather data) stored int8 too, by
    quantize-weights (bits=8, blocks of ``gather_block`` along the hidden axis, form nbits:
    GatherBlockQuantized, which dequantizes only the gathered rows). all-MiniLM-L6 at seq 128
    (32 sentences, interleaved medians, 2-core host at load ~10): file 58.6 -> 24.9 MB (float
    90.3), cosine vs float min 0.9821 -> 0.9857, latency 0.568x -> 0.566x of float; the standard
    DequantizeLinear -> Gather form ran 1.065x (onnxruntime dequantizes the whole 30522x384 table
    every run), hence nbits. Only when the MatMul share gate passed: conv nets keep their tables.

    ``smooth``: SmoothQuant (tvmlite/quant/smooth.py) for ``form=integer``, from ``calibration``
    (optimize fills it in): each quantized activation is multiplied by a constant 1/s (one Mul in
    front of its shared DynamicQuantizeLinear) and its readers' weight rows by s. all-MiniLM-L6 at
    seq 128 (32 real sentences, embedding cosine vs float, min / mean): off 0.9846 / 0.9937,
    smooth=0.7 0.9966 / 0.9982, smooth=auto 0.9937 / 0.9978; onnxruntime's quantize_dynamic
    0.9874 / 0.9933. Each Mul costs a pass over its activation: in onnxruntime CPU time (1 thread,
    medians of 30, loaded host) quantize-dynamic ran 0.490-0.506x of float, smooth=0.7 0.508-0.516x,
    onnxruntime's quantizer 0.493-0.494x. ``smooth_min_gain=3`` keeps the Muls where the simulated
    error falls 3x or more (MiniLM: the 12 LayerNorm outputs that feed MatMuls and 2 of 6 Gelu
    outputs; not the attention contexts, 1.5-2x): cosine 0.9956 / 0.9975 at 0.509-0.514x, 1-2.5%
    more CPU time than onnxruntime's file in paired runs of 80 (smooth_min_gain=6: 9 Muls, 0.9924,
    -2% to +1%). MatMulNBits (bits 8 or 4, accuracy_level 4, blocks 32-128) ran 0.70-0.91x: slower.

    ``attention=true`` (form integer): fuse-transformer's attention fusion first, then each
    com.microsoft Attention becomes QAttention (quant/dynamic_attention.py): Q/K/V projection in int8
    fused with the attention, which onnxruntime cannot fuse itself once the projections are
    MatMulInteger. all-MiniLM-L6 seq 128, fast preset's options, onnxruntime one-thread CPU time
    (interleaved medians of 40, 2-core host at load 15): 0.504x of float vs 0.509x without (mins
    0.489x vs 0.493x; another run 0.515x vs 0.536x), cosine min 0.9958 vs 0.9956. Only the attention:
    SkipLayerNormalization and BiasGelu fused as well ran 0.493x against 0.479x for attention alone
    (onnxruntime fuses those two itself around int8 MatMuls). Q.K^T and P.V as DynamicQuantizeLinear
    + MatMulInteger (per tensor) instead: cosine min 0.9953 but 0.524-0.539x, slower: not written.

    ``reduce_range`` (form integer): weights in -63..63 instead of -127..127, as onnxruntime's own
    quantize_dynamic(reduce_range=True). On x86 without VNNI onnxruntime multiplies uint8 by int8
    with vpmaddubsw, which adds each pair of products in int16 and saturates (255 * 127 * 2 > 32767);
    with 7-bit weights it cannot. ``auto`` probes the host once (runtime.ort.u8s8_saturates). On an
    AVX2-only EPYC, all-MiniLM-L6 seq 128 with the fast preset's options: embedding cosine vs float
    min / mean 0.9843 / 0.9938 with 8-bit weights, 0.9940 / 0.9962 with reduce_range (onnxruntime's
    quantize_dynamic file, 8-bit: 0.9794 / 0.9910); a host with VNNI gave 0.9958 min with 8 bits.

    ``measure=true`` (the default preset): each layer timed alone in onnxruntime, float against int8,
    and rewritten only where ``min_speedup`` times faster (passes/quantize_dynamic_timing.py). On an
    AVX2-only Zen 1 EPYC no MiniLM layer is on a quiet host (0.96-1.03x in one thread's CPU time,
    QAttention included): the model stays float there, where int8 only cost accuracy (cosine min
    0.9931); under load some layers read faster and are kept, for the speed check to judge.
    """

    name = "quantize-dynamic"
    calibration_option = "calibration"

    @dataclass
    class Options:
        form: str = "integer"
        per_channel: bool = True
        exclude_names: list[str] = field(default_factory=list)
        min_matmul_share: float = 0.0
        #: embedding tables (Gather) stored int8 by quantize-weights, GatherBlockQuantized form
        gather: bool = False
        gather_block: int = 32
        #: SmoothQuant (tvmlite/quant/smooth.py): "off"; "auto" (alpha per activation, measured on
        #: calibration) or an alpha in (0, 1]: each quantized activation's channels scaled by 1/s (one
        #: Mul in front of its DynamicQuantizeLinear) and its weights' rows by s
        smooth: str = "off"
        #: smooth an activation only where its simulated int8 product error (calibration data) falls
        #: at least this many times: each smoothed activation costs one Mul over it at run time
        smooth_min_gain: float = 1.0
        #: smooth's calibration inputs: .npz / directory of .npy (CLI), or anything load_calibration takes
        calibration: Any = None
        #: run fuse-transformer first and write each fused com.microsoft Attention as QAttention (int8
        #: packed Q/K/V projection fused with the attention itself): onnxruntime cannot fuse attention
        #: once the projections are MatMulInteger, so without this the int8 file runs it unfused
        attention: bool = False
        #: 7-bit weights (-63..63, as onnxruntime's quantize_dynamic(reduce_range=True)) for form
        #: integer: "off", "on", or "auto" (on where this host's onnxruntime int8 MatMul saturates:
        #: x86 without VNNI, runtime.ort.u8s8_saturates; there 8-bit weights give onnxruntime
        #: results far from the exact integer product the file means)
        reduce_range: str = "auto"
        #: time each layer alone in onnxruntime, float against the form this pass writes (one
        #: calibration example's shapes, 1 thread; passes/quantize_dynamic_timing.py), and rewrite
        #: only those at least ``min_speedup`` times faster in int8: on AVX2 without VNNI the int8 GEMM
        #: is no faster than float's, so there the weights stay float
        measure: bool = False
        min_speedup: float = 1.1

    def validate(self) -> None:
        if self.options.form not in ("integer", "dq"):
            raise OptionError(f"pass 'quantize-dynamic': form {self.options.form!r} is not integer or dq")
        if not 0.0 <= self.options.min_matmul_share <= 1.0:
            raise OptionError(f"pass 'quantize-dynamic': min_matmul_share {self.options.min_matmul_share!r} "
                              "is not between 0 and 1")
        self._alphas()  # refuses a bad smooth when the spec is read
        if not self.options.smooth_min_gain >= 1.0:  # NaN too
            raise OptionError(f"pass 'quantize-dynamic': smooth_min_gain={self.options.smooth_min_gain!r} "
                              "(choose a factor >= 1)")
        if self.options.gather:
            self._tables()  # refuses a bad gather_block when the spec is read
        if not self.options.min_speedup > 0.0:  # NaN too
            raise OptionError(f"pass 'quantize-dynamic': min_speedup={self.options.min_speedup!r} (choose a factor > 0)")
        why = reduce_range_error(self.options.reduce_range)
        if why:
            raise OptionError(f"pass 'quantize-dynamic': {why}")

    def _qmax(self) -> int:
        """The largest weight magnitude: 63 with reduce_range (form integer only), else 127."""
        if self.options.form != "integer":
            return WEIGHT_MAX
        return weight_max(self.options.reduce_range, u8s8_saturates)

    def _alphas(self) -> tuple:
        """The alphas the smooth option lets choose_alpha try (() when off)."""
        v = str(self.options.smooth).strip().lower()
        if v in ("off", "0", "0.0", "false", "none"):
            return ()
        if v == "auto":
            return ALPHAS
        try:
            a = float(v)
        except ValueError:
            a = -1.0
        if not 0.0 < a <= 1.0:
            raise OptionError(f"pass 'quantize-dynamic': smooth={self.options.smooth!r} (choose off, auto, "
                              "or an alpha in (0, 1])")
        return (a,)

    def _tables(self) -> QuantizeWeights:
        try:
            return QuantizeWeights(bits=8, block=self.options.gather_block, form="nbits",
                                   exclude_names=list(self.options.exclude_names))
        except OptionError as e:
            raise OptionError(f"pass 'quantize-dynamic': gather_block: {e}") from None

    def run(self, model: Model) -> PassResult:
        o = self.options
        result = PassResult(self.name)
        if o.min_matmul_share > 0:
            share = matmul_share(model)
            result.stats["matmul_share"] = round(share, 4)
            if share < o.min_matmul_share:
                result.skip("(model)", f"MatMul/Gemm with constant weights hold {share:.0%} of the MACs, "
                                       f"under min_matmul_share={o.min_matmul_share:g}: left to static int8")
                return result
        typed_before = typed_values(model.graph)
        upgrade_opset(model, 11 if not o.per_channel else 13)
        fuse = o.attention and o.form == "integer"
        unfused = model.copy() if fuse and o.measure else None
        # shapes before fusion: tvmlite infers none past a com.microsoft Attention
        shapes = example_shapes(model, o.calibration) if o.measure else {}
        if fuse:
            # attention only: onnxruntime fuses SkipLayerNorm and Gelu itself around int8 MatMuls
            fused = FuseTransformer(skip_layernorm=False, gelu=False).run(model)
            result.stats["fused"] = len(fused.rewritten)
            for where, why in fused.skipped:
                result.skip(where, why)
        work = self._work(model, result, fuse)
        if o.measure and work:
            timed: dict = {}
            work = self._faster(model, work, result, timed, shapes)
            if unfused is not None and result.stats.get("fused") and not any(n.op_type == "Attention" for n, *_ in work):
                # no QAttention pays: the float attention stays as it was, its projections timed as MatMuls
                model.restore(unfused)
                result.stats["fused"] = 0
                work = self._faster(model, self._work(model, result, False), result, timed, shapes)
        b = None  # made on the first rewrite: one name authority for the run
        quantized_x: dict = {}  # activation -> its DynamicQuantizeLinear outputs
        smooth = self._smooth_scales(model, work, result) if self._alphas() and o.form == "integer" else {}
        qmax = self._qmax() if work else 127
        if work:
            result.stats["weight_max"] = qmax
        for node, w, bias in work:
            s = smooth.get(node.inputs[0])
            if s is not None:
                w = w * s[:, None]
            axis = 1 if o.per_channel else None
            scales = weight_scales(w, axis, qmax)
            wq = quantize_weight(w, scales, axis, qmax)
            out = node.outputs[0]
            x = node.inputs[0]
            base = node.name or out
            b = Builder(model, before=node) if b is None else b.at(before=node)
            wq_name = b.const(wq, f"{base}_W_quantized")
            zero = b.const(np.zeros(scales.shape if axis is not None else (), np.int8), f"{base}_W_zero_point")
            if o.form == "dq":
                s_name = b.const(scales if axis is not None else scales.reshape(()), f"{base}_W_scale")
                wd = b.op.DequantizeLinear(wq_name, s_name, zero, attrs={"axis": 1} if axis is not None else {},
                                           outputs=[f"{base}_W_dequantized"])
                final = b.op.MatMul(x, wd, outputs=[f"{base}_matmul"])
            else:
                if x not in quantized_x:  # one per activation: Q, K and V projections share theirs
                    xin = x if s is None else b.op.Mul(x, b.const((1.0 / s).astype(np.float32), f"{base}_smooth"),
                                                       outputs=[f"{base}_x_smoothed"])
                    quantized_x[x] = b.op.DynamicQuantizeLinear(xin, outputs=[
                        f"{base}_{k}" for k in ("x_quantized", "x_scale", "x_zero_point")])
                xq, xs, xz = quantized_x[x]
                if node.op_type == "Attention":
                    b.replace(node, {out: write_qattention(b, node, wq_name, zero, scales, bias, (xq, xs, xz), base)})
                    result.rewrote(base, form="QAttention")
                    continue
                s_name = b.const(scales.reshape(-1) if axis is not None else scales.reshape(()), f"{base}_W_scale")
                acc = b.op.MatMulInteger(xq, wq_name, xz, zero, outputs=[f"{base}_int32"])
                accf = b.op.Cast(acc, to=1, outputs=[f"{base}_float"])
                sc = b.op.Mul(xs, s_name, outputs=[f"{base}_scale"])
                final = b.op.Mul(accf, sc, outputs=[f"{base}_matmul"])
            if bias is not None:
                final = b.op.Add(final, b.const(bias.astype(np.float32), f"{base}_bias"), outputs=[f"{base}_biased"])
            b.replace(node, {out: final})
            result.rewrote(base, form=o.form)
        result.stats["rewritten"] = len(result.rewritten)
        DeadCodeElimination().run(model)
        if o.gather and o.measure and not result.rewritten:
            result.skip("(tables)", "no layer runs faster in int8 here: embedding tables left float too")
        elif o.gather:
            self._quantize_tables(model, result)
        if not result.rewritten:
            # the types inferred to decide, exported, would be value_info that lets onnxruntime fuse
            # SkipLayerNormalization, which ran slower here: all-MiniLM-L6 written back unchanged but
            # with them ran 1.044x of the file without (1 thread, CPU time, medians of 40, load 8)
            drop_new_types(model.graph, typed_before)
        return result

    def _work(self, model: Model, result: PassResult, attention: bool) -> list:
        """(node, weight [K, N], bias or None) of each layer to rewrite, in graph order; the others
        skipped with the reason."""
        o = self.options
        infer_shapes(model)  # operand dtypes and ranks decide what can be rewritten
        g = model.graph
        work = []
        for node in g.toposort():
            if node.name in o.exclude_names or node.outputs[0] in o.exclude_names:
                continue
            if attention and node.domain == MS_DOMAIN and node.op_type == "Attention":
                got = attention_operands(g, node)
            elif is_onnx(node, "MatMul", "Gemm"):
                got = _operands(g, node)
            else:
                continue
            if isinstance(got, str):
                result.skip(node, got)
            else:
                work.append((node, *got))
        return work

    def _faster(self, model: Model, work: list, result: PassResult, timed: dict, shapes: dict) -> list:
        """The layers of ``work`` onnxruntime runs at least min_speedup times faster in int8, each
        timed alone at ``shapes`` (those of values the fusion added inferred here; one timing per
        shape: ``timed`` caches the figures); the others skipped with theirs."""
        o = self.options
        shapes = {**example_shapes(model, o.calibration), **shapes}
        fragment_pass = QuantizeDynamic(form=o.form, per_channel=o.per_channel, reduce_range=o.reduce_range,
                                        attention=o.attention)
        kept = []
        for item in work:
            node = item[0]
            key = timing_key(model, node, shapes)
            if key is None:
                got = "cannot be timed alone: an input's shape is unknown"
            else:
                if key not in timed:
                    timed[key] = time_layer(model, node, shapes, fragment_pass.run, threshold=o.min_speedup)
                got = timed[key]
            label = node.name or node.outputs[0]
            if isinstance(got, str):
                result.skip(node, f"int8 speed {got}: left float")
                continue
            t_float, t_int8 = got
            speedup = t_float / max(t_int8, 1e-12)
            faster = speedup >= o.min_speedup
            result.decisions.append(dict(layer=label, float_ms=round(t_float, 4), int8_ms=round(t_int8, 4),
                                         speedup=round(speedup, 3), int8=faster))
            if faster:
                kept.append(item)
            else:
                result.skip(node, f"int8 not faster in onnxruntime on this host: {t_int8:.3f} vs {t_float:.3f} ms "
                                  f"float alone ({speedup:.2f}x < min_speedup={o.min_speedup:g})")
        result.stats["measured_int8"] = len(kept)
        return kept

    def _smooth_scales(self, model: Model, work: list, result: PassResult) -> dict:
        """Per quantized activation, SmoothQuant's ``s`` over the weights of all its readers (none
        where the search found no smoothing better); each choice recorded in ``result.decisions``."""
        readers: dict = {}
        for node, w, _ in work:
            readers.setdefault(node.inputs[0], []).append((node, w))
        try:
            xs = capture_samples(model, sorted(readers), self.options.calibration)
        except TvmliteError as e:  # e.g. random token ids past a vocabulary: quantize without smoothing
            result.skip("(smooth)", f"calibration run failed, no smoothing: {str(e).splitlines()[0]}")
            return {}
        out = {}
        alphas, gain = self._alphas(), self.options.smooth_min_gain
        if gain > 1.0 and 0.0 not in alphas:
            alphas = (0.0,) + alphas  # the gain is measured against plain dynamic int8
        for x, group in readers.items():
            alpha, s, errs = choose_alpha(xs[x], np.concatenate([w for _, w in group], axis=1), alphas)
            plain = errs.get(0.0)
            if plain is not None and alpha == 0.0:
                why = "no alpha beat plain dynamic int8"
            elif plain is not None and plain < gain * errs[alpha]:
                why = (f"alpha {alpha:g} lowers the error only {plain / max(errs[alpha], 1e-30):.2f}x "
                       f"(< smooth_min_gain={gain:g}): not worth its Mul")
            else:
                out[x] = s
                why = f"alpha {alpha:g}" + (f": error {errs[alpha]:.3g} vs {plain:.3g} unsmoothed" if plain else "")
            result.decisions.append(dict(activation=x, layers=[n.name or n.outputs[0] for n, _ in group],
                                         smooth_alpha=alpha if x in out else 0.0, why=why,
                                         errors={f"{a:g}": round(e, 6) for a, e in errs.items()}))
        result.stats["smoothed"] = len(out)
        return out

    def _quantize_tables(self, model: Model, result: PassResult) -> None:
        """Gather tables to int8 via quantize-weights; float MatMuls this pass left alone stay float."""
        g = model.graph
        left = [n.name or n.outputs[0] for n in g.nx.nodes if is_onnx(n, "MatMul", "Gemm")]
        tables = self._tables()
        tables.options.exclude_names = list(tables.options.exclude_names) + left
        sub = tables.run(model)
        for name in dict.fromkeys(sub.rewritten):
            result.rewrote(name, form="int8 table (GatherBlockQuantized)")
        for where, why in sub.skipped:
            if where not in left:
                result.skip(where, f"table: {why}")
        result.stats["tables"] = len(set(sub.rewritten))


def _operands(g, node) -> tuple | str:
    """(W as [K, N] with Gemm's alpha and transB applied, beta * C or None), or why not."""
    w = g.const_value(node.inputs[1])
    if w is None or w.dtype != np.float32 or w.ndim != 2 or not qdq.is_float(g, node.inputs[0]):
        return "B is not a constant 2-D float32 matrix"
    bias = None
    if node.op_type == "Gemm":
        if node.attrs.get("transA", 0):
            return "transA=1"
        if node.attrs.get("transB", 0):
            w = w.T
        w = w * float(node.attrs.get("alpha", 1.0))
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = g.const_value(node.inputs[2])
            if bias is None:
                return "C is not constant"
            bias = bias * float(node.attrs.get("beta", 1.0))
        shape = g.value(node.inputs[0]).shape
        if shape is not None and len(shape) != 2:
            return "A is not 2-D"
    return w, bias


def matmul_share(model: Model) -> float:
    """Share of the model's multiply-accumulates in MatMul/Gemm nodes whose weight (B) is constant
    (symbolic dims counted as 1); 0 for a model without MACs."""
    g = model.graph
    shapes = static_shapes(model)
    total = weighted = 0
    for node in g.nx.nodes:
        macs = node_macs(model, node, shapes)
        total += macs
        if is_onnx(node, "MatMul", "Gemm") and len(node.inputs) > 1 and g.const_value(node.inputs[1]) is not None:
            weighted += macs
    return weighted / total if total else 0.0
