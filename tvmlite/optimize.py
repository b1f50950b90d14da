"""`tvmlite.optimize`: run passes with checks, undo what breaks the budget, and report.

After each pass the current model runs in onnxruntime on the check set (tvmlite.checkset) and is
compared per output with the original (tvmlite.checker, tvmlite.metrics). A pass that breaks a
budget, raises, or writes a model onnxruntime or onnx.checker refuses is undone with the reason; a
pass that decides per layer (it declares the LayerwisePass protocol, tvmlite.passes.capabilities) is
first redone without the layers that cost the most, fewest first, so only the offending layers are
undone. A non-clean-up pass undone on every layer (or, when asked for by name, one that changed
nothing) gets a warning line.
"""
from __future__ import annotations

import sys

from tvmlite.checker import Checker as _Checker
from tvmlite.errors import OptionError
from tvmlite.ir.graph import Model
from tvmlite.optimize_report import KEPT, NO_CHANGE, PARTIAL, UNCHECKED, UNDONE, OptimizeReport, PassReport
from tvmlite.passes import parse_spec
from tvmlite.passes.capabilities import calibration_option, is_cleanup, layerwise
from tvmlite.frontend import load
from tvmlite.export.shapes import check_input_shapes, fix_input_shapes
from tvmlite.checkset import build_checkset
from tvmlite.calibration import load_calibration
from tvmlite.analysis import summarize
from tvmlite.export import export_model
from tvmlite.export.onnx_export import export_lean, proto_bytes

CLEANUPS = "fold-constants,remove-identity,fold-bn,dce"
#: clean-ups that change float rounding only, before the presets' measured passes: per-channel
#: Mul/Add folded into the Conv before or after them (a shift before one only where it reads no
#: padding), written-out hardswish as one activation. On PP-OCRv4 det 640x640 (56 + 10 affine folds,
#: 24 hardswish) onnxruntime ran the model in 0.78x of the input's time (2 threads, interleaved
#: medians, loaded host), max probability error 2e-6; the int8 layers chosen after them are timed
#: against this faster float; last, squeeze-and-excitation residuals x + x*s as x*(s+1) (8 in det:
#: 0.96x at one thread)
FLOAT_FUSIONS = "fuse-conv-affine,fuse-hardswish,fuse-affine-conv,fuse-residual-scale"
PRESETS = {
    # clean-ups only: the outputs are those of the input model (bit-identical in onnxruntime)
    "exact": "remove-identity,dce",
    # clean-ups that change float rounding only: one pass of the exact ones (passes/simplify.py:
    # constants lifted and folded, shape chains folded, redundant casts/layout ops, BN folded,
    # MatMul+Add -> Gemm, CSE, dead code, types recorded), then per-channel Mul/Add folded into Conv,
    # the one that moves rounding, checked on its own
    "clean": "simplify(affine=false),fuse-conv-affine",
    # clean-ups and float fusions; dynamic int8 where MatMul/Gemm weights hold most of the work
    # (transformers, MLPs), on the layers onnxruntime runs faster in int8 on this host (none on AVX2
    # without VNNI: see passes/quantize_dynamic_timing.py), their embedding tables int8 too
    # (GatherBlockQuantized); low rank under an error budget and static int8, each kept per layer
    # only where measured faster in onnxruntime
    # (lowrank's time_budget: planning every layer of PP-OCR det at 640x640 took 190-320 s);
    # last, chains of stride-2 ConvTransposes as 1x1 convs and one DepthToSpace (DBNet's head: 0.97x
    # at one thread) and affines left before convs as 1x1 depthwise convs, each kept only when
    # measured faster (PP-OCR det 640x640: 0.78x -> 0.65x of the input model's time); and convs over
    # nearest upsamplings by 4x or more as ConvTransposes at the low resolution (det's head: 0.95x
    # at one thread)
    "fast": CLEANUPS + "," + FLOAT_FUSIONS + ",quantize-dynamic(min_matmul_share=0.5,gather=true,smooth=0.7,"
                       "smooth_min_gain=3,attention=true,measure=true),"
                       "lowrank(budget=0.25,measure=true,time_budget=45),"
                       "quantize(mode=auto,measure=true),subpixel-convtranspose,affine-as-conv,upsample-conv,dce",
    # clean-ups, low rank, int8 wherever it fits the budget, then weight compression of what is left:
    # int4 blocks for the MatMul/Gemm weights and embedding tables still float, 4-bit palettes for the
    # rest (float conv weights and the int8 weights quantize stored), each checked against the budget
    "small": CLEANUPS + "," + FLOAT_FUSIONS + ",lowrank(budget=0.25),quantize(mode=auto),quantize-weights,compress-weights,dce",
}
#: presets whose passes are kept only when measured faster in onnxruntime (optimize(speed_check=))
SPEED_PRESETS = {"fast"}
#: which report rows get an onnxruntime latency (optimize(latency=)): "none"; "ends", the input and
#: the result timed side by side once (and the speed check's side-by-side figures in the notes);
#: "rows", every row that changed the model, each timed on its own. Default: "none" when every pass
#: is a clean-up (the figure is not what they are for: 50 runs a row were 2/3 of `--preset clean` on
#: PP-OCR det 640x640), else "ends"
LATENCY_MODES = ("none", "ends", "rows")
DEFAULT_PRESET = "fast"
DEFAULT_ACCURACY_DROP = 0.5  # points, when labels are given


def resolve_passes(preset: str | None, passes: str | None) -> str:
    if passes and preset:
        raise OptionError("give either a preset or a pass list, not both")
    if passes:
        return passes
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise OptionError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]



def optimize(model, *, passes: str | None = None, preset: str | None = None, inputs=None, shapes=None,
             labels=None, calib=None, max_error=None, max_accuracy_drop: float | None = None,
             check: bool = True, speed_check: bool | None = None, repeats: int = 50,
             progress=None, metric=None, check_outputs=None, custom_ops=(),
             latency: str | None = None) -> tuple[Model, OptimizeReport]:
    """Optimize ``model`` (path, ModelProto or Model; a Model is changed in place).

    Returns the optimized model and a report with a row per pass. With ``check`` (default), each
    pass is measured in onnxruntime against the original on the check set (``inputs``, else a
    held-out part of ``calib``, else random inputs: see tvmlite.checkset) and undone, whole or per
    layer, when it breaks the budget. Budgets apply per checked output (``check_outputs``, default
    all) to its ``metric`` ('rel', the default, 'cosine', 'argmax' or 'topk'; one name or a dict
    per output): ``max_error`` (a number or a dict per output) when given; else with ``labels``
    only ``max_accuracy_drop`` points of top-1 (default 0.5, measured on a third of ``inputs``,
    the rest held out for the final accuracy); else the passes' own defaults
    (tvmlite.checker.PASS_BUDGET). ``calib`` goes to the passes that need calibration data and were
    not given any in the spec. ``speed_check`` (default: on for SPEED_PRESETS): a pass is kept only
    when the model runs faster after it in onnxruntime, timed side by side at batch 1 (in CPU time
    at one thread: Checker.side_by_side_ms).
    ``progress``: True prints a line per pass and long step on stdout, a callable gets the lines,
    None prints them when stdout is a terminal. ``custom_ops``: custom-op libraries for onnxruntime.
    ``latency``: which rows report an onnxruntime latency (LATENCY_MODES; needs ``check``)."""
    spec = resolve_passes(preset, passes)
    pipeline = parse_spec(spec)
    if labels is not None:
        if inputs is None:
            raise OptionError("labels need inputs: the labels are those of the given inputs")
        max_accuracy_drop = DEFAULT_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
    if speed_check is None:
        speed_check = not passes and (preset or DEFAULT_PRESET) in SPEED_PRESETS
    if latency is None:
        latency = "none" if all(is_cleanup(p) for p in pipeline) and not speed_check else "ends"
    if latency not in LATENCY_MODES:
        raise OptionError(f"latency {latency!r}: one of {', '.join(LATENCY_MODES)}")
    log = _logger(progress)
    source = model if isinstance(model, str) else "<model>"
    m = model if isinstance(model, Model) else load(model)
    if shapes:
        check_input_shapes(m, shapes)
        if any(p.needs_static_shapes for p in pipeline):
            fix_input_shapes(m, shapes)
    needs_calib = [p for p in pipeline
                   if calibration_option(p) and getattr(p.options, calibration_option(p)) is None]
    report = OptimizeReport(str(source), latency=latency if check else "none")
    checker = original = None
    if check:
        cs, calib = build_checkset(m, inputs=inputs, labels=labels, calib=calib, shapes=shapes,
                                   hold_out_calib=bool(needs_calib))
        original = m.copy()
        checker = _Checker(original, cs, labels=cs.labels if labels is not None else None, metric=metric,
                           max_error=max_error, check_outputs=check_outputs, max_accuracy_drop=max_accuracy_drop,
                           repeats=repeats, speed_check=speed_check, custom_ops=custom_ops)
        report.check_inputs, report.check_notes = cs.source, list(cs.notes)
        log(f"checking each pass against the original on {cs.source}")
        if cs.mask_input:
            report.check_notes.append(f"positions where {cs.mask_input!r} is 0 (padding) are left out of the "
                                      "metrics of outputs shaped like it")
        report.metrics = dict(checker.metric)
    if calib is None and shapes and needs_calib:
        # The passes' own random fallback knows nothing of --shape; symbolic dims need it.
        calib = load_calibration(None, m, shapes=shapes)
    if calib is not None:
        for p in needs_calib:
            setattr(p.options, calibration_option(p), calib)
    if checker is not None and not shapes:  # MACs of symbolic dims: count those of one check example
        shapes = {n: tuple(a.shape) for n, a in checker.latency_feeds.items() if hasattr(a, "shape")}
    rows = _Rows(m, shapes, checker, report, latency)
    rows.add("(input)", "", "", "", measure=True, meas=checker.reference_measurement() if checker else None)
    if checker is not None and not rows.hold_sessions:
        checker.reference_session = None  # its outputs are kept; nothing will time it
    for i, p in enumerate(pipeline, 1):
        log(f"[{i}/{len(pipeline)}] {p.name}")
        if checker:
            checker.admit(p)
        _run_checked(p, m, checker, rows, log)
        r = report.rows[-1]
        log(f"[{i}/{len(pipeline)}] {p.name}: {r.status}" + (f" ({r.note})" if r.note else "")
            + f", {r.seconds:.1f} s")
    if latency == "ends" and checker is not None:
        log("timing the input and the result side by side")
        rows.time_ends()
    _finish(report, pipeline, passes is not None, checker, original, m, max_accuracy_drop)
    return m, report


def _logger(progress):
    if callable(progress):
        return progress
    if progress is None:
        progress = sys.stdout.isatty()
    if not progress:
        return lambda line: None
    # stdout, like the report: stderr carries only the one line of an error, so a failed run's
    # stderr is still that one line, and a log of stdout shows how far the run got
    return lambda line: print(f"tvmlite: {line}", file=sys.stdout, flush=True)


class _Rows:
    """Adds report rows; a row whose pass changed nothing repeats the figures above it rather than
    timing the same model again (a second timing would show noise as a result). ``session``: an
    onnxruntime session of the model as it now is (None: none made yet), for the timing of the
    result, so it does not make one again; held only when it will run (a session holds
    onnxruntime's prepacked copy of the weights)."""

    def __init__(self, m, shapes, checker, report, latency="rows"):
        self.m, self.shapes, self.checker, self.report, self.latency = m, shapes, checker, report, latency
        self.session = None
        self.hold_sessions = checker is not None and latency == "ends"
        self.changed = False  # a row kept a change: the result differs from the input

    def time_ends(self) -> None:
        """The input and the result timed side by side into the first and last rows."""
        first, last = self.report.rows[0], self.report.rows[-1]
        ck = self.checker
        if not self.changed:
            first.latency_ms, first.latency_spread_ms = ck.timed([ck.reference_session])[0]
            return
        try:
            sess = self.session if self.session is not None else ck._session(self.m)
            (a, sa), (b, sb) = ck.timed([ck.reference_session, sess])
        except Exception:  # noqa: BLE001 - a model that cannot run has no latency
            return
        first.latency_ms, first.latency_spread_ms = a, sa
        last.latency_ms, last.latency_spread_ms = b, sb

    def add(self, name, spec, status, note, result=None, seconds=0.0, excluded=(), measure=True, meas=None):
        prev = self.report.rows[-1] if self.report.rows else None
        decisions = list(result.decisions) if result else []
        skipped = list(result.skipped) if result else []
        if status in (KEPT, PARTIAL, UNCHECKED):
            self.changed = True
        if prev is not None and not measure:
            budget = _budgets(self.checker) if self.checker else {}
            row = PassReport(name, spec, status in (KEPT, PARTIAL), status, note, prev.nodes, prev.params, prev.macs,
                             prev.file_bytes, prev.max_error, prev.worst_output, prev.accuracy, prev.latency_ms,
                             prev.latency_spread_ms, seconds, budget, list(prev.outputs), decisions,
                             skipped, list(excluded))
            self.report.rows.append(row)
            return
        s = summarize(self.m, self.shapes)
        err = worst = acc = lat = spread = None
        budget, outputs = {}, []
        ck = self.checker
        size = None
        if ck is not None:
            meas = meas or ck.measure(self.m)
            size = meas.file_bytes
            self.session = meas.session if self.hold_sessions else None
            worst, err = meas.worst
            acc = meas.accuracy
            budget = _budgets(ck)
            outputs = [{"name": o.name, "error": meas.errors.get(o.name), "rel": o.rel, "rms": o.rms,
                        "cosine": o.cosine, "argmax": o.argmax, "topk": o.topk, "nonfinite": o.nonfinite,
                        "masked": o.masked} for o in meas.outputs]
            if self.latency == "rows":
                timed = ck.latency(self.m, meas.session)  # meas is of self.m as it is now
                lat, spread = timed if timed else (None, None)
            meas.session = None
        if status == UNCHECKED:
            err = None
        self.report.rows.append(PassReport(
            name, spec, status in (KEPT, PARTIAL, ""), status, note, s["nodes"], s["params"], s["macs"],
            size if size is not None else export_lean(self.m).nbytes, err, worst, acc, lat, spread,
            seconds, budget, outputs, decisions, skipped, list(excluded)))


def _budgets(checker) -> dict:
    """Per checked output its budget; None where only accuracy is checked (--labels)."""
    return {n: (b if b != float("inf") else None) for n, b in ((n, checker.budget(n)) for n in checker.checked)}


def _run_checked(p, m: Model, checker, rows: _Rows, log) -> None:
    backup = m.copy()
    try:
        result = p(m)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a failing pass is undone, the run goes on
        m.restore(backup)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        rows.add(p.name, repr(p), UNDONE, f"undone: the pass failed: {type(e).__name__}: {msg}", measure=False)
        return
    seconds = result.seconds
    if not result.changed:
        rows.add(p.name, repr(p), NO_CHANGE, "", result, seconds, measure=False)
        return
    if checker is None:
        rows.add(p.name, repr(p), UNCHECKED, "", result, seconds)
        return
    meas = checker.measure(m)
    if checker.within(meas):
        kept_model, excluded, note = m, [], ""
    else:
        log(f"{p.name}: {checker.why(meas)}; trying without single layers" if layerwise(p) else
            f"{p.name}: {checker.why(meas)}")
        kept_model, excluded, note = _undo_layers(p, backup, result, checker, meas, log)
    if checker.speed_check and not is_cleanup(p) and kept_model is not backup:
        log(f"{p.name}: timing the model with and without it side by side")
        # one-thread sessions timed in CPU time (Checker.side_by_side_ms), not the checks' own
        t_new, t_old = checker.side_by_side_ms(kept_model, backup)
        timed = f"{t_new:.3f} vs {t_old:.3f} ms CPU time at one thread, side by side"
        if t_new < t_old:
            note = "; ".join(x for x in (note, f"faster in onnxruntime: {timed}") if x)
        else:
            kept_model, excluded = backup, []
            note = f"undone: not faster in onnxruntime ({timed})"
    measured_now = kept_model is m  # meas (and its session) describe m as it now is
    if kept_model is not m:
        m.restore(kept_model)  # the caller (and rows) hold m: it becomes the kept copy
    status = UNDONE if kept_model is backup else PARTIAL if excluded else KEPT
    rows.add(p.name, repr(p), status, note, result, seconds, excluded, measure=status != UNDONE,
             meas=meas if status == KEPT and measured_now else None)


def _undo_layers(p, backup: Model, result, checker, meas, log=lambda line: None):
    """Redo a per-layer pass without its worst layers (fewest that meet the budget); else undo it."""
    budget = checker.why(meas)
    lw = layerwise(p)
    layers = lw.layers(result) if lw is not None else []
    if lw is None or len(layers) < 2:
        return backup, [], f"undone: {budget}"

    tried = {}

    def trial(exclude):
        # measured once per set (the k = n-1 trial keeps the one layer a cost trial kept alone);
        # the models are not kept, only their measurements: a repeat replays without measuring
        key = frozenset(exclude)
        if key not in tried:
            log(f"{p.name}: trial without {len(exclude)} of {len(layers)} layer(s)")
        m = backup.copy()
        try:
            lw.replay(result, list(exclude))(m)
        except Exception:  # noqa: BLE001 - a replay that fails counts as over budget
            tried[key] = None
            return m, None
        if key not in tried:
            tried[key] = checker.measure(m)
            tried[key].session = None  # not held through the search
        return m, tried[key]

    def ok(tm):
        return tm is not None and checker.within(tm)

    costs = lw.layer_costs(result)
    if costs is None:  # measure each layer alone: the pass redone with every other layer excluded
        costs = {}
        for layer in layers:
            _, tm = trial([x for x in layers if x != layer])
            costs[layer] = float("inf") if tm is None else checker.score(tm)
    ranked = sorted(layers, key=lambda x: -costs.get(x, 0.0))
    alone = frozenset(ranked[:-1])
    if alone in tried and not ok(tried[alone]):
        # the cheapest layer alone breaks the budget: every set the search below tries holds it, and
        # it assumes (as its bisection does) that more layers never cost less
        return backup, [], f"undone: {budget}, even layer by layer"
    # the k worst layers excluded: grow k by doubling until the budget holds, then bisect down
    good, lo, k = None, 0, 1
    while True:
        m, tm = trial(ranked[:k])
        if ok(tm):
            good = (k, m)
            break
        if k >= len(layers) - 1:
            break
        lo, k = k, min(2 * k, len(layers) - 1)
    if good is None:
        return backup, [], f"undone: {budget}, even layer by layer"
    hi = good[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m, tm = trial(ranked[:mid])
        if ok(tm):
            hi, good = mid, (mid, m)
        else:
            lo = mid
    k, m = good
    return m, ranked[:k], f"kept without {k} layer(s) of {len(layers)} that broke the budget ({budget})"


def _finish(report: OptimizeReport, pipeline, named: bool, checker, original, m, max_accuracy_drop) -> None:
    """Warnings for passes undone everywhere or (asked for by name) changing nothing; the held-out
    accuracy."""
    for p, row in zip(pipeline, report.rows[1:]):
        if is_cleanup(p):
            continue
        if row.status == UNDONE:
            report.warnings.append(f"pass {p.name} was undone on every layer: {row.note.removeprefix('undone: ')}")
        elif row.status == NO_CHANGE and named:
            report.warnings.append(f"pass {p.name} changed nothing" + (
                f" ({len(row.skipped)} node(s) skipped: {row.skipped[0][1]})" if row.skipped else ""))
    if checker is None:
        return
    acc = checker.held_out_accuracy(original, m)
    if acc is not None:
        ref, opt = acc
        drop = 100 * (ref - opt)
        report.held_out = {"examples": len(checker.cs.test_labels), "reference": ref, "optimized": opt,
                           "drop_pt": drop}
        if max_accuracy_drop is not None and drop > max_accuracy_drop + 1e-9:
            report.warnings.append(f"held-out accuracy dropped {drop:.2f} pt, more than the {max_accuracy_drop} pt "
                                   "budget the check inputs met")
