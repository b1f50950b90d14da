"""Per-layer int8 choice: keep a layer in float32 when int8 costs accuracy beyond a budget or, when
measured, runs slower in onnxruntime than the float layer.

Speed (``measure``): each int8 region (tvmlite.quant.regions: a connected chain of int8 layers,
which pays its Q/DQ once at its edges) is timed first as one piece in onnxruntime, float vs QDQ;
its layers stay int8 when it wins. The layers outside a winning region are timed alone, including
the Q of their inputs and the DQ of their output (so a layer kept int8 alone is never slower even
next to float neighbours). A layer that computes what an already timed one computes (same op,
attributes, input and output shapes and types; weights of the same shape) takes that one's timing.
Timings are interleaved and the medians compared; on a model whose float run takes over
BIG_MODEL_MS, with fewer rounds (a 640x640 detector's fragments are slow and rarely close).

Accuracy: when the model's relative L2 output error against the float model is over the budget,
layers go back to float from the edges of the int8 regions (tvmlite.quant.regions.cut_for_error:
the fewest, found by bisection on the whole model's error), or most sensitive first: for a few
layers each one's error alone (a whole-model run per layer), for more, blocks of consecutive layers
(SENSITIVITY_BLOCKS runs), so layers carrying the error inside a region can go back too. The
regions left are timed again.

Last, the whole int8 model is timed against the float model; while it is not faster by
WHOLE_MODEL_MARGIN, the half of the int8 layers with the smallest measured gain goes back to float
(a region as a whole; down to none: then only the weights are stored in int8, which onnxruntime
folds at load).
"""
from __future__ import annotations

import time

import numpy as np

from tvmlite.ir.graph import Model
from tvmlite.quant import qdq
from tvmlite.quant.regions import cut_for_error, edge_orders, sensitive_blocks, winning_regions
from tvmlite.quant.timing import time_int8_layer as _time_layer, time_int8_nodes, timed_ratio
from tvmlite.calibration import fixed_batch
from tvmlite.quant.calibrate import _progress
from tvmlite.export.shapes import static_shapes
from tvmlite.backends.numpy.capture import capture_values
from tvmlite.runtime.ort import ort_session, timing_key
from tvmlite.export.onnx_export import export_lean


#: the int8 model must beat float by this share of its latency, not a tie within timing noise
#: (2-3% between interleaved medians here): int8 that is not clearly faster is not kept
WHOLE_MODEL_MARGIN = 0.03
#: examples each layer's error alone is measured on (it only ranks the layers)
RANKING_SAMPLES = 2
#: at most this many int8 layers get their error alone measured to rank them for the error step
#: (a whole-model run each); more go back to float from the regions' edges
SENSITIVITY_LAYERS = 32
#: more int8 layers are ranked in this many blocks of consecutive layers (a whole-model run each)
SENSITIVITY_BLOCKS = 16
#: a model whose float run takes longer (ms, per example) is timed with at most BIG_MODEL_REPEATS
#: rounds per comparison: PP-OCR det at 640x640 takes 100-250 ms a run
BIG_MODEL_MS, BIG_MODEL_REPEATS = 50.0, 20


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
    start = time.perf_counter()
    ref = float_sess.run(None, feeds)
    if (time.perf_counter() - start) * 1e3 / max(calib.count(feeds), 1) > BIG_MODEL_MS:
        repeats = min(repeats, BIG_MODEL_REPEATS)
    ref_few = float_sess.run(None, few)
    decisions = {u: {"node": u} for u in units}

    errors: dict = {}  # (int8 set, ranking) -> model error: the steps below ask for some sets again

    def error_of(chosen: set, ranking: bool = False) -> float:
        if not chosen:
            return 0.0
        key = (frozenset(chosen), ranking)
        if key not in errors:
            sess = ort_session(build_variant(model, chosen, spec, excluded), threads)
            errors[key] = (relative_error(ref_few, sess.run(None, few)) if ranking
                           else relative_error(ref, sess.run(None, feeds)))
        return errors[key]

    chosen = set(units)
    if measure:
        seen: dict = {}  # one NumPy run of the example serves the shapes and the fragments' values
        shapes = _static_shapes(model, calib.take(feeds, 1), seen)
        timer = _Timer(model, spec, shapes, threads, repeats, decisions, progress, calib.take(feeds, 1), seen)
        regions_timed: dict = {}

        def timed_set(keys):
            for u in keys:  # a layer whose region a cut changed gets its new region's figures
                for k in ("region", "region_layers", "region_float_ms", "region_int8_ms", "gain_ms"):
                    decisions[u].pop(k, None)
            won = winning_regions(model, keys, spec, timer.region, decisions, excluded, regions_timed)
            return won | timer.alone([u for u in keys if u not in won])  # the rest: alone

        chosen = timed_set(units)
    err = error_of(chosen)
    order_used = block_order = None
    while err > budget and chosen:
        # the sensitivity order first: it usually needs the fewest layers back, and the edge orders'
        # searches then stop once they would need more (cut_for_error's cap)
        orders = {}
        if len(chosen) <= SENSITIVITY_LAYERS:
            orders["most sensitive first"] = _by_sensitivity(chosen, decisions, error_of, progress)
        else:
            if block_order is None:  # ranked once: a later pass takes what is still int8 in that order
                block_order, block_err = sensitive_blocks(model, chosen, lambda s: error_of(s, ranking=True),
                                                          SENSITIVITY_BLOCKS)
                for u, e in block_err.items():
                    decisions[u]["block_error_alone"] = e
            orders["most sensitive blocks first"] = [u for u in block_order if u in chosen]
        orders.update(edge_orders(model, chosen))
        # the first search runs on the ranking examples (a det run is ~1 s an example); the result
        # is checked on all of them below, and cut again on all of them if it misses there
        first = order_used is None
        order_used, back, _ = cut_for_error(orders, lambda int8: error_of(int8, ranking=first), budget)
        for u in back:
            chosen.discard(u)
            decisions[u].pop("gain_ms", None)  # its region's timing stays on record, not a gain
            decisions[u]["reason"] = (f"back to float ({order_used}): model error over budget {budget:g} "
                                      f"with it in int8")
        if measure and chosen:
            # what is left int8 is timed again: a cut region pays its Q/DQ at the new edge
            chosen = timed_set(sorted(chosen))
        err = error_of(chosen)
    edges = edge_orders(model, chosen)
    for i, u in enumerate(edges.get(order_used, edges["from the inputs"])):
        # what optimize's per-layer undo takes back first: the measured error alone, else, on a
        # model too large to measure each layer (optimize would: a model run per layer), the order
        # the error step cut in (a rank, not an error)
        if "error_alone" in decisions[u] or len(chosen) > SENSITIVITY_LAYERS:
            decisions[u]["undo_cost"] = decisions[u].get("error_alone", 1.0 / (1 + i))
    if measure and chosen:
        chosen = _whole_model_guard(model, chosen, spec, excluded, calib.take(feeds, 1), float_sess,
                                    decisions, threads, repeats)
        err = error_of(chosen)
    for u in units:
        decisions[u]["precision"] = "int8" if u in chosen else "float32"
        decisions[u].setdefault("reason", "int8 within budget" + (" and faster" if measure else ""))
    summary = {"node": "<model>", "output_error": err, "int8_layers": len(chosen), "layers": len(units)}
    return chosen, list(decisions.values()) + [summary]


def _by_sensitivity(chosen: set, decisions: dict, error_of, progress) -> list:
    """``chosen`` most sensitive first: each layer's error alone (a whole-model run each, so only
    for few layers)."""
    sens = {}
    with _progress(len(chosen), "int8 error per layer", progress) as bar:
        task = bar.add_task("int8 error per layer", total=len(chosen))
        for u in sorted(chosen):
            sens[u] = decisions[u]["error_alone"] = error_of({u}, ranking=True)
            bar.advance(task)
    return sorted(chosen, key=lambda k: -sens[k])


class _Timer:
    """Each layer alone, int8 vs float in onnxruntime (a layer computing what an already timed one
    computes takes that timing), and regions as one piece."""

    def __init__(self, model, spec, shapes, threads, repeats, decisions, progress, feeds1, values=None):
        self.model, self.spec, self.shapes, self.threads, self.repeats = model, spec, shapes, threads, repeats
        self.decisions, self.progress, self.feeds1 = decisions, progress, feeds1
        # non-float values fragments read, from one NumPy run of the model (_static_shapes' if it ran)
        self.values: dict = {} if values is None else values
        self.nodes = {qdq.node_key(n): n for n in model.graph.nx.nodes}
        self.timed = {}  # timing signature -> (float ms, int8 ms, the layer timed)

    def region(self, model, nodes, keys):
        return time_int8_nodes(model, nodes, keys, self.spec, self.shapes, self.threads, self.repeats,
                               values=self._values)

    def _values(self, names) -> dict:
        missing = [n for n in names if n not in self.values and n not in self.feeds1]
        if missing:
            try:
                self.values.update(capture_values(self.model, missing, self.feeds1))
            except Exception:  # noqa: BLE001 - a model the NumPy backend cannot run: random feeds stay
                pass
        return {n: self.feeds1[n] if n in self.feeds1 else self.values[n] for n in names
                if n in self.feeds1 or n in self.values}

    def alone(self, keys) -> set:
        """The ``keys`` faster in int8 alone."""
        faster = set()
        todo = [u for u in keys if "int8_ms" not in self.decisions[u]]
        with _progress(len(todo), "timing layers", self.progress) as bar:
            task = bar.add_task("timing layers", total=len(todo))
            for u in todo:
                self._time(u)
                bar.advance(task)
        for u in keys:
            d = self.decisions[u]
            if d["int8_ms"] < d["float_ms"]:
                faster.add(u)
                d["reason"] = "int8 faster alone"
            else:
                d["reason"] = f"int8 slower in onnxruntime ({d['int8_ms']:.4f} vs {d['float_ms']:.4f} ms)"
        return faster

    def _time(self, u) -> None:
        sig = timing_key(self.model, self.nodes[u], self.shapes)
        d = self.decisions[u]
        if sig is not None and sig in self.timed:
            t_f, t_q, first = self.timed[sig]
            d["timed_as"] = first
        else:
            t_f, t_q = _time_layer(self.model, u, self.spec, self.shapes, self.threads, self.repeats)
            if sig is not None:
                self.timed[sig] = (t_f, t_q, self.nodes[u].label)
        d.update(float_ms=t_f, int8_ms=t_q)


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


def _static_shapes(model: Model, feeds: dict, values: dict | None = None) -> dict:
    """Static shape of every value on ``feeds``. Dims onnx's inference leaves unknown (everything
    after an op it has no rule for, such as the com.microsoft QAttention that
    quantize-dynamic(attention=true) writes) are read from a NumPy run instead of being taken as 1: a layer timed
    with such guessed shapes was cut out with inputs that do not fit (MiniLM's attention MatMuls).
    That run also puts every non-float value into ``values`` (what _Timer feeds fragments), so the
    model is not run a second time on the same example."""
    shapes = static_shapes(model, {k: tuple(np.shape(v)) for k, v in feeds.items()}, default_dim=-1)
    g = model.graph
    unknown = [n for n, v in g.values.items()
               if n not in feeds and not v.is_initializer and (n not in shapes or -1 in shapes[n])]
    if unknown:
        exact = [n for n, v in g.values.items() if n not in feeds and not v.is_initializer
                 and v.elem_type != 1] if values is not None else []
        try:
            seen = capture_values(model, list(dict.fromkeys(unknown + exact)), feeds)
        except Exception:  # noqa: BLE001 - a model the NumPy backend cannot run keeps the old guess
            seen = {}
        if values is not None:
            values.update({n: seen[n] for n in exact if n in seen})
        for n in unknown:
            if n in seen:
                shapes[n] = tuple(np.shape(seen[n]))
            elif n in shapes:
                shapes[n] = tuple(1 if d == -1 else d for d in shapes[n])
    return shapes

