"""Post-training int8 quantization: static QDQ (``quantize``); weight-only dynamic int8
(``quantize-dynamic``) is in quantize_dynamic.py.

``quantize`` calibrates activation ranges on example inputs, then writes the QuantizeLinear /
DequantizeLinear form onnxruntime fuses into int8 kernels (see tvmlite/quant/qdq.py). Per layer it
can keep float32 where int8 costs too much accuracy (``mode=auto``, ``error_budget``) or, with
``measure=true``, where onnxruntime runs the int8 layer slower than the float one.

``reduce_range`` (off, on, auto; as quantize-dynamic's): weights in -63..63 instead of -127..127.
On x86 without VNNI onnxruntime's QLinearConv/QGemm/QLinearMatMul multiply uint8 activations by
int8 weights with vpmaddubsw, which adds each pair of products in int16 and saturates
(255 * 127 * 2 > 32767): a model with 8-bit weights then runs there far from its own arithmetic
(digits: 113 quantization steps off, rel-L2 error vs float 0.128 instead of 0.010). 7-bit weights
cannot overflow. ``auto`` (default) probes the host once (runtime.ort.u8s8_saturates): 7-bit where
it saturates, 8-bit elsewhere (AVX-512 VNNI). The layer choice (mode=auto) measures the form written.
Layers left in float keep 8-bit weight storage: their compute is float, so no kernel saturates.

A model with no Conv/Gemm/MatMul left in float32 to quantize (a transformer whose MatMuls
quantize-dynamic took) is left as it is, without calibrating or timing its element-wise ops: they
only follow int8 compute ops (the report row says so in a skipped line).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.capabilities import Calibrated, LayerwisePass
from tvmlite.passes.cleanup import DeadCodeElimination, FoldBatchNorm, FoldConstants, RemoveIdentity
from tvmlite.passes.pattern import Const, Match, Op, Rule, apply_rules
from tvmlite.errors import OptionError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node, tensor_type
from tvmlite.export.shapes import drop_new_types, infer_shapes, typed_values
from tvmlite.quant import qdq
from tvmlite.quant.opset import upgrade_opset
from tvmlite.quant.calibrate import METHODS, collect_stats
from tvmlite.quant.params import WEIGHT_MAX, quantize_weight, reduce_range_error, weight_max, weight_scales
from tvmlite.quant.rounding import METHODS as ROUNDING, round_weights
from tvmlite.calibration import load_calibration
from tvmlite.quant.select import choose_layers
from tvmlite.runtime.ort import u8s8_saturates


# ------------------------------------------------------------------------------------ preparation
def _conv_bias_check(g: Graph, m: Match) -> str | None:
    c, w = m.const("c"), m.const("w")
    if c.dtype != np.float32:
        return f"the added constant is {c.dtype}"
    cout, out_rank = w.shape[0], w.ndim
    # the constant must broadcast along the channel axis only
    if c.size != cout or c.ndim > out_rank or (c.ndim >= out_rank - 1 and c.shape[-(out_rank - 1)] != cout
                                               and c.size != 1):
        return f"constant of shape {list(c.shape)} is not per output channel"
    if c.ndim and c.shape[-1] == cout and cout != 1 and c.ndim != 1 and out_rank > 2:
        return "[.., C] broadcasts over width, not channels"
    if c.ndim == 1 and out_rank > 2 and cout != 1:
        return "a 1-D constant broadcasts over the last (spatial) axis"
    conv = m.node("conv")
    if len(conv.inputs) > 2 and conv.inputs[2] and g.const_value(conv.inputs[2]) is None:
        return f"bias of {conv.label!r} is not constant"
    return None


def _conv_bias_rewrite(b: Builder, m: Match) -> dict:
    g, conv, add = b.graph, m.node("conv"), m.root
    old = g.const_value(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
    bias = m.const("c").reshape(-1) + (0 if old is None else old)
    g.set_inputs(conv, list(conv.inputs[:2]) + [b.const(bias.astype(np.float32), f"{conv.name or 'conv'}_bias").name])
    return {add.outputs[0]: conv.outputs[0]}


def _matmul_bias_check(g: Graph, m: Match) -> str | None:
    c, w = m.const("c"), m.const("w")
    a_shape = g.value(m["x"]).shape
    if c.dtype != np.float32:
        return f"the added constant is {c.dtype}"
    if w.ndim != 2 or a_shape is None or len(a_shape) != 2 or c.size != w.shape[1] \
            or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        return "not a 2-D MatMul plus a constant row"
    return None


def _matmul_bias_rewrite(b: Builder, m: Match) -> dict:
    mm = m.node("mm")
    gemm = b.op.Gemm(m["x"], m["w"], b.const(m.const("c").reshape(-1), f"{mm.name or 'gemm'}_C"),
                     name_hint=f"{mm.name or 'gemm'}_gemm")
    b.inherit_name(gemm, mm)  # the layer keeps its name: exclude lists name it
    return {m.root.outputs[0]: gemm}


#: Quantized, a separate Add would be an int8 add of an 8-bit bias instead of an exact int32 bias
#: inside the kernel.
BIAS_ADD_RULES = [
    Rule("conv-bias-add", Op("Add", Op("Conv", "x", Const("w"), ..., name="conv"), Const("c"), commute=True),
         _conv_bias_rewrite, _conv_bias_check),
    Rule("matmul-bias-add", Op("Add", Op("MatMul", "x", Const("w"), name="mm"), Const("c"), commute=True),
         _matmul_bias_rewrite, _matmul_bias_check),
]


def fuse_bias_add(model: Model) -> int:
    """Conv + Add(per-channel constant) -> Conv with bias; MatMul(2-D, constant) + Add(constant row)
    -> Gemm with C (BIAS_ADD_RULES)."""
    fused = apply_rules(model, BIAS_ADD_RULES, PassResult("fuse-bias-add"))
    if fused:
        model.graph.remove_unused_values()
    return fused


def prepare(model: Model) -> dict:
    """Opset >= 13 (per-channel Q/DQ), constants folded, BatchNorm and bias Adds folded into their
    Conv/Gemm, Identity removed: the shape int8 kernels want."""
    stats = {"opset_upgraded": upgrade_opset(model)}
    FoldConstants().run(model)
    stats["bn_folded"] = len(FoldBatchNorm().run(model).rewritten)
    RemoveIdentity().run(model)
    infer_shapes(model)
    stats["bias_adds_fused"] = fuse_bias_add(model)
    DeadCodeElimination().run(model)
    return stats


def int8_weight_storage(g: Graph, keep: set, per_channel: bool = True, rounded: dict | None = None
                        ) -> list[Node]:
    """Store the constant float32 weights of the Conv/Gemm/MatMul nodes not in ``keep`` as int8
    (symmetric, per output channel) followed by Cast and Mul by the scales. ``rounded``: weight name ->
    rounding.RoundedWeight, codes (and a corrected bias) to use instead of nearest rounding, where
    they are on this 8-bit grid (quantize's 7-bit codes are for its int8 kernels; a float layer's
    weights are not multiplied in int8, so they keep the finer grid).

    Compute stays float32: onnxruntime constant-folds Cast and Mul at load, so the layer gets a plain
    float initializer again (prepacked, NCHWc) and runs as fast as before. A DequantizeLinear would
    not do: onnxruntime keeps DQ nodes unfolded for its QDQ fusions, and a Conv whose weights are
    computed at run time loses its prepacked kernels (measured 4x slower on PP-OCR cls)."""
    done = []
    b = Builder(g)
    for node in g.toposort():
        if node.domain not in qdq.ONNX or node.op_type not in qdq.COMPUTE or qdq.node_key(node) in keep:
            continue
        if len(node.inputs) < 2:
            continue
        name = node.inputs[1]
        w = g.const_value(name)
        if w is None or w.dtype != np.float32 or w.ndim < 2 or g.num_uses(name) != 1 or name in g.outputs:
            continue
        if not np.isfinite(w).all():
            continue
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            axis = 0 if node.attrs.get("transB", 0) else 1
        else:
            axis = w.ndim - 1
        if not per_channel:
            axis = None
        channels = 1 if axis is None else w.shape[axis]
        if 3 * w.size <= 4 * channels + 160:
            continue  # the scales and two nodes would cost more than int8 saves
        r = (rounded or {}).get(name)
        scales = weight_scales(w, axis)
        if r is not None and r.axis == axis and np.array_equal(r.scales, scales):
            q = r.q
            if r.bias is not None and _bias_is_constant(g, node):
                g.set_input(node, 2, b.const(r.bias, f"{node.name or node.outputs[0]}_bias").name)
        else:
            q = quantize_weight(w, scales, axis)
        shape = [1] * w.ndim
        if axis is not None:
            shape[axis] = -1
        base = node.name or node.outputs[0]
        here = b.at(before=node)
        cast = here.op.Cast(here.const(q, f"{name}_int8"), to=1, name_hint=f"{base}_weight_Cast",
                            outputs=[f"{name}_float"])
        cast.type = tensor_type(np.float32, w.shape)
        scaled = here.op.Mul(cast, here.const(scales.reshape(shape), f"{name}_scale"),
                             name_hint=f"{base}_weight_Mul", outputs=[f"{name}_dequantized"])
        scaled.type = tensor_type(np.float32, w.shape)
        g.set_input(node, 1, scaled.name)
        done.append(node)
    return done


def _wanted(g: Graph, units, layers) -> set:
    """The ``units`` (node keys) that ``layers`` names, by node key, name or label."""
    wanted = set(layers)
    by_key = {qdq.node_key(n): n for n in g.nx.nodes}
    return {u for u in units if {u, by_key[u].name, by_key[u].label} & wanted}


def _compute_units(g: Graph, units) -> list:
    """The Conv/Gemm/MatMul nodes among ``units`` (node keys)."""
    keys = set(units)
    return [n for n in g.nx.nodes if qdq.node_key(n) in keys and n.op_type in qdq.COMPUTE]


def _bias_is_constant(g: Graph, node: Node) -> bool:
    """No bias input, or a constant one: a corrected bias may replace it."""
    return len(node.inputs) < 3 or not node.inputs[2] or g.const_value(node.inputs[2]) is not None


def candidate_units(g: Graph, op_types, exclude_names, exclude_ops, result: PassResult | None):
    """Node keys of the Conv/Gemm/MatMul (and chosen element-wise) nodes that may run in int8."""
    units = []
    for node in g.toposort():
        if node.subgraphs and result is not None:
            result.skip(node, f"{node.op_type} subgraph not looked into: left intact")
        if node.domain not in qdq.ONNX or node.op_type not in op_types:
            continue
        if (node.op_type in exclude_ops or node.name in exclude_names or node.outputs[0] in exclude_names
                or node.label in exclude_names):
            if result is not None:
                result.skip(node, "excluded by option")
            continue
        if node.op_type in qdq.COMPUTE or node.op_type in qdq.REQUANT:
            why = qdq.why_not_int8(g, node)
            if why:
                if result is not None:
                    result.skip(node, why)
                continue
        units.append(qdq.node_key(node))
    return units


@register_pass
class Quantize(LayerwisePass, Calibrated, Pass):
    """Static post-training int8 quantization in QDQ form."""

    name = "quantize"
    exclude_option = "exclude_names"
    calibration_option = "calibration"

    @dataclass
    class Options:
        #: calibration inputs: .npz / directory of .npy (CLI), or anything load_calibration takes
        calibration: Any = None
        #: activation range: minmax, percentile, entropy (KL) or mse
        method: str = "minmax"
        percentile: float = 99.999
        #: uint8 (asymmetric) or int8 (symmetric, -127..127)
        activation_type: str = "uint8"
        per_channel: bool = True
        #: which compute ops to quantize (element-wise ops follow where their inputs are int8)
        op_types: list[str] = field(default_factory=lambda: ["Conv", "Gemm", "MatMul", "Add", "Mul"])
        exclude_names: list[str] = field(default_factory=list)
        exclude_op_types: list[str] = field(default_factory=list)
        #: all: every quantizable layer; auto: keep layers float that cost accuracy (or speed)
        mode: str = "all"
        #: auto mode: largest relative L2 error of the outputs vs float allowed
        error_budget: float = 0.02
        #: auto mode: time each layer in onnxruntime, int8 vs float, and keep the faster
        measure: bool = False
        #: layers left in float32: int8 (weights stored int8 + Cast + Mul, folded by onnxruntime at
        #: load, float compute) or float32 (untouched)
        float_layer_weights: str = "int8"
        engine: str = "ort"
        batch_size: int = 16
        prepare: bool = True
        threads: int = 2
        progress: Any = None
        #: the layers to run in int8 (node names, labels or first outputs), instead of every
        #: candidate (mode=all) or the ones auto mode picks; the other candidates are float layers
        layers: list[str] | None = None
        #: activation ranges already known (tensor -> (lo, hi)): no calibration run
        ranges: Any = None
        #: int8 weight codes: nearest, or gptq (each input row's rounding error compensated on the
        #: rows not yet rounded, from the calibration inputs' X^T X; tvmlite/quant/rounding.py)
        weight_rounding: str = "nearest"
        #: shift each Conv/Gemm bias by the mean output error its int8 weights cause on the
        #: calibration inputs (a bias is added where there was none)
        bias_correction: bool = False
        #: weight codes already rounded (weight name -> RoundedWeight, what replay passes on): no
        #: second pass over the calibration data
        rounded_weights: Any = None
        #: 7-bit weights (-63..63) for the int8 layers: "off", "on", or "auto" (on where this host's
        #: onnxruntime uint8 x int8 kernels saturate: x86 without VNNI, runtime.ort.u8s8_saturates)
        reduce_range: str = "auto"

    def validate(self) -> None:
        o = self.options
        if o.method not in METHODS:
            raise OptionError(f"pass 'quantize': method {o.method!r} is not one of {', '.join(METHODS)}")
        if o.activation_type not in ("uint8", "int8"):
            raise OptionError(f"pass 'quantize': activation_type {o.activation_type!r} is not uint8 or int8")
        if o.mode not in ("all", "auto"):
            raise OptionError(f"pass 'quantize': mode {o.mode!r} is not all or auto")
        if o.float_layer_weights not in ("int8", "float32"):
            raise OptionError(f"pass 'quantize': float_layer_weights {o.float_layer_weights!r} is not int8 "
                              "or float32")
        if o.error_budget < 0:
            raise OptionError(f"pass 'quantize': error_budget={o.error_budget} must be >= 0")
        if o.batch_size < 1:
            raise OptionError(f"pass 'quantize': batch_size={o.batch_size} must be >= 1")
        if not 0 < o.percentile <= 100:
            raise OptionError(f"pass 'quantize': percentile={o.percentile} must be in (0, 100]")
        if o.rounded_weights is not None and not isinstance(o.rounded_weights, dict):
            raise OptionError("pass 'quantize': rounded_weights is what replay passes on (a dict), not an option "
                              "to set by hand")
        why = reduce_range_error(o.reduce_range)
        if why:
            raise OptionError(f"pass 'quantize': {why}")
        if o.weight_rounding not in ROUNDING:
            raise OptionError(f"pass 'quantize': weight_rounding {o.weight_rounding!r} is not one of "
                              f"{', '.join(ROUNDING)}")

    def run(self, model: Model) -> PassResult:
        o = self.options
        result = PassResult(self.name)
        typed_before = typed_values(model.graph)
        untouched = model.copy()  # what a model with nothing to quantize is given back as
        if o.prepare:
            result.stats.update(prepare(model))
        else:
            result.stats["opset_upgraded"] = upgrade_opset(model)
        g = model.graph
        op_types = set(o.op_types) | set()
        units = candidate_units(g, op_types, set(o.exclude_names), set(o.exclude_op_types), result)
        if op_types & set(qdq.COMPUTE) and not _compute_units(g, units):
            model.restore(untouched)
            result.skipped.insert(0, ("<model>", "no Conv, Gemm or MatMul left in float32 that int8 could take "
                                                 "(element-wise ops only follow those): nothing calibrated or timed"))
            return result
        excluded = qdq.excluded_keys(g, o.exclude_names)
        spec = qdq.QuantSpec(o.activation_type, o.per_channel,
                             weight_max=weight_max(o.reduce_range, u8s8_saturates))
        result.stats["weight_max"] = spec.weight_max
        full = qdq.plan_qdq(g, set(units), spec, excluded=excluded)
        tensors = qdq.activation_tensors(g, full)

        if o.ranges is not None:
            missing = sorted(t for t in tensors if t not in o.ranges)
            if missing:
                raise OptionError(f"pass 'quantize': option ranges has no range for tensor {missing[0]!r}")
            spec.ranges = dict(o.ranges)
        else:
            calib = load_calibration(o.calibration, model)
            stats = collect_stats(model, calib, tensors, histogram=o.method != "minmax",
                                  batch_size=o.batch_size, engine=o.engine, progress=o.progress,
                                  threads=o.threads)
            levels = 256 if o.activation_type == "uint8" else 255
            spec.ranges = {t: s.range(o.method, percentile=o.percentile, levels=levels,
                                      symmetric=o.activation_type == "int8") for t, s in stats.items()}
        if o.rounded_weights is not None:
            spec.weights = dict(o.rounded_weights)
        elif o.weight_rounding != "nearest" or o.bias_correction:
            if o.ranges is not None:
                calib = load_calibration(o.calibration, model)
            keys = {qdq.node_key(n) for n in g.nx.nodes if n.op_type in qdq.COMPUTE} - excluded
            # the layers that may run in int8 are rounded on its grid (7-bit with reduce_range), the
            # others (weight-only layers) on the 8-bit grid their int8 storage uses
            may_be_int8 = set(units) if o.layers is None else _wanted(g, units, o.layers)
            spec.weights = round_weights(model, calib, keys, method=o.weight_rounding,
                                         correct_bias=o.bias_correction, batch_size=o.batch_size,
                                         threads=o.threads,
                                         qmax={k: spec.weight_max if k in may_be_int8 else WEIGHT_MAX
                                               for k in keys})
            result.stats["weights_rounded_from_data"] = len(spec.weights)
        chosen = set(units)
        labels = {qdq.node_key(n): n.label for n in g.nx.nodes}
        if o.layers is not None:
            chosen = _wanted(g, units, o.layers)
        elif o.mode == "auto":
            if o.ranges is not None:
                calib = load_calibration(o.calibration, model)

            chosen, decisions = choose_layers(model, units, spec, calib, budget=o.error_budget,
                                              measure=o.measure, excluded=excluded,
                                              threads=o.threads, progress=o.progress)
            result.decisions.extend({**d, "node": labels.get(d["node"], d["node"])} for d in decisions)
        # what replay() needs to redo this run without calibrating or measuring again
        result.replay = {"chosen": sorted(chosen), "ranges": spec.ranges, "weights": spec.weights,
                         "costs": {labels.get(d["node"], d["node"]): d["undo_cost"]
                                   for d in result.decisions if "undo_cost" in d}}
        plan = qdq.plan_qdq(g, chosen, spec, excluded=excluded)
        for label, what, details in qdq.apply_qdq(model, plan, spec):
            result.rewrote(label, action=what, **details)
        result.stats["int8_nodes"] = len(plan.nodes)
        result.stats["folded_activations"] = len(plan.folded)
        if o.float_layer_weights == "int8":
            keep = set(plan.nodes) | excluded
            stored = int8_weight_storage(g, keep, o.per_channel, spec.weights)
            for node in stored:
                result.rewrote(node.label, action="int8 weight storage", op=node.op_type)
            result.stats["int8_weight_only"] = len(stored)
        DeadCodeElimination().run(model)
        # inferred types were for the pass's own use: as value_info they were 5% of an int8 cls file
        drop_new_types(g, typed_before)
        return result

    def replay(self, result: PassResult, exclude: list[str]) -> Pass:
        """That run's int8 layers and activation ranges, fixed, minus ``exclude`` (left float)."""
        last = result.replay
        if last is None:
            return super().replay(result, exclude)
        return type(self)(**{**self.option_values(), "layers": last["chosen"], "ranges": last["ranges"],
                             "rounded_weights": last.get("weights") or None,
                             "exclude_names": list(self.options.exclude_names) + list(exclude),
                             "mode": "all", "measure": False})

    def layer_costs(self, result: PassResult) -> dict[str, float] | None:
        last = result.replay
        return dict(last["costs"]) if last and last["costs"] else None
