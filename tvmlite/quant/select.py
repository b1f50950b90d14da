"""Per-layer int8 choice: keep a layer in float32 when int8 costs accuracy beyond a budget or, when
measured, runs slower in onnxruntime than the float layer.

Accuracy: starting from all layers in int8, when the model's relative L2 output error against the
float model is over the budget, each layer is quantized alone (its sensitivity) and the most
sensitive layers go back to float until the whole model's error is within the budget. Within the
budget at once, no layer is measured alone (that is a whole-model session per layer).

Speed (``measure``): each layer is timed alone in onnxruntime, float vs its QDQ form including the
Q of its inputs and the DQ of its output (so a layer must pay for its own boundary conversions: a
layer kept int8 is never slower even next to float neighbours). Timings are interleaved and the
medians compared. A layer that computes what an already timed one computes (same op, attributes,
input and output shapes and types; weights of the same shape) takes that one's timing: on PP-OCR
det at 640x640 that is 92 timings for 237 candidate layers (rec: 64 for the 209 with static
shapes), the same decisions from 40% of the sessions. Layers that lose alone get a second
chance in their region (tvmlite.quant.regions): the connected chain timed as one piece. Last, the
whole int8 model is timed against
the float model; while it is not faster by WHOLE_MODEL_MARGIN, the half of the int8 layers with the
smallest measured gain goes back to float (down to none: then only the weights are stored in int8,
which onnxruntime folds at load).
"""
from __future__ import annotations

import numpy as np

from tvmlite.ir.graph import Model
from tvmlite.quant import qdq
from tvmlite.quant.regions import rescue_by_region
from tvmlite.quant.timing import time_int8_layer as _time_layer, time_int8_nodes, timed_ratio
from tvmlite.export import export_model
from tvmlite.calibration import fixed_batch
from tvmlite.quant.calibrate import _progress
from tvmlite.export.shapes import static_shapes
from tvmlite.backends.numpy.capture import capture_values
from tvmlite.runtime.ort import ort_session
from tvmlite.export.onnx_export import export_lean


#: the int8 model must beat float by this share of its latency, not a tie within timing noise
#: (2-3% between interleaved medians here): int8 that is not clearly faster is not kept
WHOLE_MODEL_MARGIN = 0.03
#: examples each layer's error alone is measured on (it only ranks the layers)
RANKING_SAMPLES = 2


def relative_error(ref: list, got: list) -> float:
    num = sum(float(np.sum((r.astype(np.float64) - g.astype(np.float64)) ** 2)) for r, g in zip(ref, got)
              if r.dtype.kind == "f")
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref if r.dtype.kind == "f")
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def build_variant(model: Model, units: set, spec: qdq.QuantSpec, excluded=frozenset()):
    """The model with ``units`` in int8, exported lean (its float weights shared with ``model``)."""
    m = model.copy()
    plan = qdq.plan_qdq(m.graph, set(units), spec, excluded=excluded)
    qdq.apply_qdq(m, plan, spec)
    return export_lean(m)


def choose_layers(model: Model, units: list, spec: qdq.QuantSpec, calib, *, budget: float = 0.02,
                  measure: bool = False, excluded=frozenset(), threads: int = 2, progress=None,
                  eval_samples: int = 8, repeats: int = 60) -> tuple[set, list[dict]]:
    """The units to keep in int8 and one decision record per unit."""
    feeds = calib.first(min(eval_samples, len(calib)))
    fixed = fixed_batch(model)
    if fixed:
        feeds = calib.take(feeds, fixed)
    # each layer's error alone only ranks the layers: on a quarter of the examples (running them
    # was 2/3 of quantize's time on PP-OCR rec)
    few = calib.take(feeds, max(fixed or 1, min(RANKING_SAMPLES, calib.count(feeds))))
    float_sess = ort_session(model, threads)  # the weights shared, not serialized
    ref = float_sess.run(None, feeds)
    ref_few = float_sess.run(None, few)
    decisions = {u: {"node": u} for u in units}

    def error_of(chosen: set, ranking: bool = False) -> float:
        sess = ort_session(build_variant(model, chosen, spec, excluded), threads)
        if ranking:
            return relative_error(ref_few, sess.run(None, few))
        return relative_error(ref, sess.run(None, feeds))

    chosen = set(units)
    if measure:
        shapes = _static_shapes(model, calib.take(feeds, 1))
        with _progress(len(units), "timing layers", progress) as bar:
            task = bar.add_task("timing layers", total=len(units))
            timed = {}  # timing signature -> (float ms, int8 ms, the layer timed)
            nodes = {qdq.node_key(n): n for n in model.graph.nx.nodes}
            for u in units:
                sig = _timing_signature(model, nodes[u], shapes)
                if sig is not None and sig in timed:
                    t_f, t_q, first = timed[sig]
                    decisions[u]["timed_as"] = first
                else:
                    t_f, t_q = _time_layer(model, u, spec, shapes, threads, repeats)
                    if sig is not None:
                        timed[sig] = (t_f, t_q, nodes[u].label)
                decisions[u].update(float_ms=t_f, int8_ms=t_q)
                if t_q >= t_f:
                    chosen.discard(u)
                    decisions[u]["reason"] = f"int8 slower in onnxruntime ({t_q:.4f} vs {t_f:.4f} ms)"
                bar.advance(task)
        # layers that lose alone may win as a chain: their Q/DQ is paid once at the region's edges
        chosen = rescue_by_region(
            model, units, chosen, spec,
            lambda m, nodes, keys: time_int8_nodes(m, nodes, keys, spec, shapes, threads, repeats),
            decisions, excluded)
    err = error_of(chosen) if chosen else 0.0
    if err > budget:
        # only now each layer's error alone (a whole-model variant each: 107 sessions on PP-OCR
        # rec) ranks which layers go back to float
        sens = {}
        with _progress(len(chosen), "int8 error per layer", progress) as bar:
            task = bar.add_task("int8 error per layer", total=len(chosen))
            for u in sorted(chosen):
                sens[u] = decisions[u]["error_alone"] = error_of({u}, ranking=True)
                bar.advance(task)
        ranked = sorted(chosen, key=lambda k: -sens[k])
        k, err = _fewest_back_to_float(ranked, lambda k: error_of(set(ranked[k:])) if k < len(ranked) else 0.0,
                                       budget)
        for u in ranked[:k]:
            chosen.discard(u)
            decisions[u]["reason"] = f"int8 error {sens[u]:.3g} alone; model error over budget {budget:g}"
    if measure and chosen:
        chosen = _whole_model_guard(model, chosen, spec, excluded, calib.take(feeds, 1), float_sess,
                                    decisions, threads, repeats)
        err = error_of(chosen) if chosen else 0.0
    for u in units:
        decisions[u]["precision"] = "int8" if u in chosen else "float32"
        decisions[u].setdefault("reason", "int8 within budget" + (" and faster" if measure else ""))
    summary = {"node": "<model>", "output_error": err, "int8_layers": len(chosen), "layers": len(units)}
    return chosen, list(decisions.values()) + [summary]


def _fewest_back_to_float(ranked: list, error_without, budget: float) -> tuple[int, float]:
    """The fewest most sensitive layers (k, and the model's error without them) to put back in float
    for the error to meet ``budget``: k doubles until it does, then bisects down, O(log n) whole-model
    runs where one run per layer put back took 50 on PP-OCR rec (the error falls as layers go back,
    which the ranking by error alone assumes too)."""
    n = len(ranked)
    errs = {}
    lo, k = 0, 1
    while True:
        errs[k] = error_without(k)
        if errs[k] <= budget or k >= n:
            break
        lo, k = k, min(2 * k, n)
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        errs[mid] = error_without(mid)
        if errs[mid] <= budget:
            hi = mid
        else:
            lo = mid
    return hi, errs[hi]


def _whole_model_guard(model, chosen, spec, excluded, feeds1, float_sess, decisions, threads, repeats):
    while chosen:  # halve the int8 set until the whole model is faster; none at all is the floor
        sess = ort_session(build_variant(model, chosen, spec, excluded), threads)
        # decided at t_q / t_f = 1 - margin: more rounds (up to 40) only when close to it
        t_q, t_f, _ = timed_ratio(lambda: sess.run(None, feeds1), lambda: float_sess.run(None, feeds1),
                                  1 - WHOLE_MODEL_MARGIN, max_rounds=max(repeats, 40), min_rounds=8,
                                  margin=0.08, warmup=2)
        if t_q < t_f * (1 - WHOLE_MODEL_MARGIN):
            return chosen
        # a region kept as a whole goes back as a whole: half of it would pay Q/DQ at the cut
        groups: dict = {}
        for u in chosen:
            groups.setdefault(("region", decisions[u]["region"]) if "gain_ms" in decisions[u] else u, []).append(u)

        def gain(members):
            return sum(decisions[u].get("gain_ms", decisions[u].get("float_ms", 0) - decisions[u].get("int8_ms", 0))
                       for u in members)
        ranked = sorted(groups.values(), key=lambda ms: -gain(ms))
        drop = [u for ms in (ranked[len(ranked) // 2:] if len(ranked) > 1 else ranked) for u in ms]
        for u in drop:
            chosen.discard(u)
            decisions[u]["reason"] = f"whole int8 model not faster ({t_q:.3f} vs {t_f:.3f} ms): smallest gain"
    return chosen


def _static_shapes(model: Model, feeds: dict) -> dict:
    """Static shape of every value on ``feeds``. Dims onnx's inference leaves unknown (everything
    after an op it has no rule for, such as the GatherBlockQuantized embedding lookup that
    quantize-dynamic writes) are read from a NumPy run instead of being taken as 1: a layer timed
    with such guessed shapes was cut out with inputs that do not fit (MiniLM's attention MatMuls)."""
    shapes = static_shapes(model, {k: tuple(np.shape(v)) for k, v in feeds.items()}, default_dim=-1)
    g = model.graph
    unknown = [n for n, v in g.values.items()
               if n not in feeds and not v.is_initializer and (n not in shapes or -1 in shapes[n])]
    if unknown:
        try:
            seen = capture_values(model, unknown, feeds)
        except Exception:  # noqa: BLE001 - a model the NumPy backend cannot run keeps the old guess
            seen = {}
        for n in unknown:
            if n in seen:
                shapes[n] = tuple(np.shape(seen[n]))
            elif n in shapes:
                shapes[n] = tuple(1 if d == -1 else d for d in shapes[n])
    return shapes


def _timing_signature(model: Model, node, shapes: dict):
    """What a layer's timing depends on: op, attributes, and per input its static shape and type
    (constants: shape and dtype, not values); None when a shape is unknown (the layer is timed)."""
    g = model.graph
    parts = [node.domain, node.op_type, repr(sorted(node.attrs.items()))]
    for name in node.inputs:
        if not name:
            parts.append(None)
            continue
        c = g.const_value(name)
        if c is not None:
            parts.append(("const", np.asarray(c).dtype.str, np.shape(c)))
        elif name in shapes:
            parts.append(("value", g.value(name).elem_type, tuple(shapes[name])))
        else:
            return None
    out = node.outputs[0]
    if out not in shapes:
        return None
    parts.append(tuple(shapes[out]))
    return tuple(parts)

