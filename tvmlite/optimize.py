"""`tvmlite.optimize`: run passes with checks, undo what breaks the budget, and report.

After each pass the current model runs in onnxruntime on the check inputs and is compared with the
original model's outputs. A pass that breaks the error budget (``max_error``, relative to each
output's magnitude, or ``max_accuracy_drop`` in points on labeled data) is undone; a pass that
decides per layer (it names an ``exclude_option``) is first retried without the layers that cost the
most, one at a time, so only the offending layers are undone.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import numpy as np

from tvmlite.errors import OptionError
from tvmlite.ir.graph import Model

CLEANUPS = "fold-constants,remove-identity,fold-bn,dce"
PRESETS = {
    # clean-ups only: the outputs are those of the input model (bit-identical in onnxruntime)
    "exact": "remove-identity,dce",
    # clean-ups that change float rounding only
    "clean": CLEANUPS + ",infer-shapes",
    # clean-ups, low rank under an error budget and int8, each kept per layer only where measured
    # faster in onnxruntime
    "fast": CLEANUPS + ",lowrank(budget=0.25,measure=true),quantize(mode=auto,measure=true),dce",
    # clean-ups, low rank, int8 wherever it fits the budget, then weight compression of what is left
    "small": CLEANUPS + ",lowrank(budget=0.25),quantize(mode=auto),compress-weights,dce",
}
#: the error budget each preset is checked against when neither --max-error nor --labels is given
#: (max abs error over max|output| of the original); lossy presets are best checked with --labels
#: presets whose passes are kept only when measured faster in onnxruntime (optimize(speed_check=))
SPEED_PRESETS = {"fast"}
PRESET_MAX_ERROR = {"exact": 0.0, "clean": 1e-4, "fast": 0.2, "small": 0.2}
DEFAULT_PRESET = "fast"
DEFAULT_MAX_ERROR = 1e-3  # for explicit --passes
DEFAULT_ACCURACY_DROP = 0.5  # points, when labels are given


@dataclass
class PassReport:
    name: str
    spec: str
    kept: bool
    note: str
    nodes: int
    params: int
    macs: int
    file_bytes: int
    max_error: float  # max over outputs of max_abs / max|reference|
    accuracy: float | None
    latency_ms: float | None
    seconds: float
    decisions: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    excluded: list = field(default_factory=list)


@dataclass
class OptimizeReport:
    model: str
    rows: list[PassReport] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        hdr = (f"{'pass':<22} {'kept':<5} {'nodes':>6} {'params':>11} {'MACs':>14} {'size':>10} "
               f"{'max err':>9} {'acc':>7} {'ORT ms':>8} {'time':>7}")
        note = "ORT ms: median onnxruntime latency at batch 1 (2 threads); acc: top-1 on the check inputs"
        lines = [note, hdr, "-" * len(hdr)]
        for r in self.rows:
            acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}"
            lat = "-" if r.latency_ms is None else f"{r.latency_ms:.3f}"
            lines.append(f"{r.name[:22]:<22} {'yes' if r.kept else 'NO':<5} {r.nodes:>6} {r.params:>11,} "
                         f"{r.macs:>14,} {_size(r.file_bytes):>10} {r.max_error:>9.2e} {acc:>7} {lat:>8} "
                         f"{r.seconds:>6.2f}s")
            if r.note:
                lines.append(f"    {r.note}")
            for d in r.decisions[:40]:
                lines.append("    " + ", ".join(f"{k}={v}" for k, v in d.items()))
            if len(r.decisions) > 40:
                lines.append(f"    ... {len(r.decisions) - 40} more layer decisions")
            for node, why in r.skipped[:10]:
                lines.append(f"    skipped {node}: {why}")
            if len(r.skipped) > 10:
                lines.append(f"    ... {len(r.skipped) - 10} more skipped")
        return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def _first_example(model: Model, feeds: dict) -> dict:
    """Latency is reported at batch 1: the first example of the check inputs, where every input
    has a symbolic leading (batch) dim; else the check inputs as they are."""
    g = model.graph
    for name, arr in feeds.items():
        shape = g.values[name].shape
        if not shape or isinstance(shape[0], int) and shape[0] > 0 or np.ndim(arr) == 0:
            return feeds
    return {n: a[:1] for n, a in feeds.items()}


class _Checker:
    """Runs a model in onnxruntime on fixed inputs and measures it against the original."""

    def __init__(self, original: Model, feeds: dict, labels, max_error: float, max_accuracy_drop: float | None,
                 repeats: int, speed_check: bool = False):
        from tvmlite.compare import ort_session

        self.feeds = feeds
        self.latency_feeds = _first_example(original, feeds)
        self.labels = None if labels is None else np.asarray(labels).reshape(-1)
        self.max_error = max_error
        self.max_accuracy_drop = max_accuracy_drop
        self.repeats = repeats
        self.speed_check = speed_check
        sess = ort_session(original)
        self.reference = sess.run(None, feeds)
        self.scales = [float(np.max(np.abs(r))) if np.asarray(r).size and np.asarray(r).dtype.kind == "f"
                       else 0.0 for r in self.reference]
        self.reference_accuracy = self._accuracy(self.reference)

    def _accuracy(self, outs):
        if self.labels is None:
            return None
        return float(np.mean(np.asarray(outs[0]).reshape(len(self.labels), -1).argmax(1) == self.labels))

    def measure(self, model: Model, timed: bool):
        from tvmlite.compare import median_ms, ort_session

        sess = ort_session(model)
        outs = sess.run(None, self.feeds)
        err = 0.0
        for r, c, s in zip(self.reference, outs, self.scales):
            r, c = np.asarray(r), np.asarray(c)
            if r.shape != c.shape:
                return float("inf"), None, None
            if r.dtype.kind == "f":
                e = float(np.max(np.abs(r.astype(np.float64) - c.astype(np.float64)))) if r.size else 0.0
                err = max(err, e / s if s > 0 else e)
            elif not np.array_equal(r, c):
                err = float("inf")
        acc = self._accuracy(outs)
        lat = median_ms(lambda: sess.run(None, self.latency_feeds), self.repeats) if timed else None
        return err, acc, lat

    def side_by_side_ms(self, new: Model, old: Model) -> tuple[float, float]:
        """Median onnxruntime latency of ``new`` and ``old`` at batch 1, timed alternately."""
        from tvmlite.compare import interleaved_ms, ort_session

        a, b = ort_session(new), ort_session(old)
        feeds = self.latency_feeds
        return tuple(interleaved_ms([lambda: a.run(None, feeds), lambda: b.run(None, feeds)],
                                    max(self.repeats, 30), warmup=3))

    def within(self, err: float, acc) -> bool:
        if not err <= self.max_error:
            return False
        if self.max_accuracy_drop is not None and acc is not None:
            return 100 * (self.reference_accuracy - acc) <= self.max_accuracy_drop + 1e-9
        return True


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
             labels=None, calib=None, max_error: float | None = None, max_accuracy_drop: float | None = None,
             check: bool = True, speed_check: bool | None = None, repeats: int = 50,
             progress: bool | None = None) -> tuple[Model, OptimizeReport]:
    """Optimize ``model`` (path, ModelProto or Model; a Model is changed in place).

    Returns the optimized model and a report with a row per pass. With ``check`` (default), each
    pass is measured in onnxruntime against the original on ``inputs`` (an .npz, a feed dict or
    random inputs from the input types and ``shapes``) and undone, whole or per layer, when it
    breaks the budget: with ``labels``, ``max_accuracy_drop`` points of top-1 accuracy (default 0.5)
    and ``max_error`` only when given; without, ``max_error`` (default: the preset's, see
    PRESET_MAX_ERROR, or 1e-3 for explicit passes). ``calib`` (anything
    tvmlite.calibration.load_calibration takes) goes to the passes that need calibration data and
    were not given any in the spec. ``speed_check`` (default: on for the presets that promise
    speed, see SPEED_PRESETS): a pass is kept only when the model after it runs faster in
    onnxruntime than before it, timed side by side at batch 1."""
    from passes import parse_spec
    from tvmlite.analysis import summarize
    from tvmlite.compare import prepare_inputs
    from tvmlite.export import export_model
    from tvmlite.export.onnx_export import proto_bytes
    from tvmlite.frontend import load

    spec = resolve_passes(preset, passes)
    pipeline = parse_spec(spec)
    if labels is not None:
        max_accuracy_drop = DEFAULT_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
        max_error = float("inf") if max_error is None else max_error
    elif max_error is None:
        max_error = DEFAULT_MAX_ERROR if passes else PRESET_MAX_ERROR[preset or DEFAULT_PRESET]
    if speed_check is None:
        speed_check = not passes and (preset or DEFAULT_PRESET) in SPEED_PRESETS
    source = model if isinstance(model, str) else "<model>"
    m = model if isinstance(model, Model) else load(model)
    if shapes:
        from tvmlite.ir.shapes import check_input_shapes, fix_input_shapes

        check_input_shapes(m, shapes)
        if any(p.needs_static_shapes for p in pipeline):
            fix_input_shapes(m, shapes)
    needs_calib = [p for p in pipeline
                   if p.calibration_option and getattr(p.options, p.calibration_option) is None]
    if calib is None and shapes and needs_calib:
        # The passes' own random fallback knows nothing of --shape; symbolic dims need it.
        from tvmlite.calibration import load_calibration

        calib = load_calibration(None, m, shapes=shapes)
    if calib is not None:
        for p in needs_calib:
            setattr(p.options, p.calibration_option, calib)
    report = OptimizeReport(str(source))
    checker = None
    if check:
        feeds = prepare_inputs(m, inputs, shapes)
        checker = _Checker(m.copy(), feeds, labels, max_error, max_accuracy_drop, repeats, speed_check)

    def row(name, spec_, kept, note, result=None, seconds=0.0, excluded=()):
        s = summarize(m, shapes)
        if checker and report.rows and (result is not None and (not result.changed or not kept)):
            last = report.rows[-1]  # the model is the previous row's: its figures hold (50 timed runs saved)
            err, acc, lat = last.max_error, last.accuracy, last.latency_ms
        else:
            err, acc, lat = checker.measure(m, timed=True) if checker else (0.0, None, None)
        report.rows.append(PassReport(
            name, spec_, kept, note, s["nodes"], s["params"], s["macs"], proto_bytes(export_model(m)), err, acc, lat,
            seconds, list(result.decisions) if result else [], list(result.skipped) if result else [],
            list(excluded)))

    row("(input)", "", True, "")
    show = sys.stderr.isatty() if progress is None else progress
    prog = None
    if show:
        from rich.progress import Progress

        prog = Progress(transient=True, console=None)
        prog.start()
        task = prog.add_task("optimizing", total=len(pipeline))
    try:
        for p in pipeline:
            if prog:
                prog.update(task, description=f"pass {p.name}")
            _run_checked(p, m, checker, row)
            if prog:
                prog.advance(task)
    finally:
        if prog:
            prog.stop()
    return m, report


def _run_checked(p, m: Model, checker, row) -> None:
    backup = m.copy() if checker else None
    result = p(m)
    seconds = result.seconds
    if checker is None or not result.changed:
        row(p.name, repr(p), True, "" if result.changed else "no change", result, seconds)
        return
    err, acc, _ = checker.measure(m, timed=False)
    if checker.within(err, acc):
        kept_model, excluded, note = m, [], ""
    else:
        kept_model, excluded, note = _undo_layers(p, backup, result, checker, err, acc)
    if checker.speed_check and not p.cleanup and kept_model is not backup:
        t_new, t_old = checker.side_by_side_ms(kept_model, backup)
        if t_new < t_old:
            note = "; ".join(x for x in (note, f"faster in onnxruntime: {t_new:.3f} vs {t_old:.3f} ms side by side") if x)
        else:
            kept_model, excluded = backup, []
            note = f"undone: not faster in onnxruntime ({t_new:.3f} vs {t_old:.3f} ms side by side)"
    if kept_model is not m:
        m.__dict__.update(kept_model.__dict__)
    row(p.name, repr(p), kept_model is not backup, note, result, seconds, excluded)


def _undo_layers(p, backup: Model, result, checker: _Checker, err: float, acc):
    """Redo a per-layer pass without its worst layers (fewest that meet the budget); else undo it."""
    budget = f"max error {err:.2e} > {checker.max_error:.0e}" if err > checker.max_error else \
        f"accuracy {100 * acc:.2f}% vs {100 * checker.reference_accuracy:.2f}% (drop budget {checker.max_accuracy_drop} pt)"
    layers = list(dict.fromkeys(result.rewritten))
    if p.exclude_option is None or len(layers) < 2:
        return backup, [], f"undone: {budget}"

    def trial(exclude):
        m = backup.copy()
        p.replay(result, list(exclude))(m)
        e, a, _ = checker.measure(m, timed=False)
        return m, e, a

    costs = p.layer_costs(result)
    if costs is None:  # measure each layer alone: the pass redone with every other layer excluded
        costs = {}
        for layer in layers:
            _, e, a = trial([x for x in layers if x != layer])
            costs[layer] = e if a is None else e + (checker.reference_accuracy - a)
    ranked = sorted(layers, key=lambda x: -costs.get(x, 0.0))
    # the k worst layers excluded: grow k by doubling until the budget holds, then bisect down
    good, lo, k = None, 0, 1
    while True:
        m, e, a = trial(ranked[:k])
        if checker.within(e, a):
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
        m, e, a = trial(ranked[:mid])
        if checker.within(e, a):
            hi, good = mid, (mid, m)
        else:
            lo = mid
    k, m = good
    return m, ranked[:k], f"kept without {k} layer(s) that broke the budget ({budget})"
