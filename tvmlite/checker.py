"""The check a pipeline runs after each pass: the model in onnxruntime on the check set, judged per
output against the original (tvmlite.metrics), with per-output metrics and budgets.

Budgets: ``--max-error`` when given (one number, or per output), else with ``--labels`` none (top-1
accuracy is checked instead), else the largest default budget of the passes run so far
(``PASS_BUDGET``; the check always compares with the original, so a lossy pass's budget carries over
to the passes after it). A model onnxruntime cannot load or run, or one onnx.checker refuses (when
it accepted the original), fails the check with the reason, like one that breaks the budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tvmlite.checkset import CheckSet
from tvmlite.errors import InputError, OptionError, TvmliteError
from tvmlite.ir.graph import Model
from tvmlite.runtime.ort import ort_session, time_interleaved, timed_ratio
from tvmlite.metrics import DEFAULT_METRIC, METRICS, OutputCheck, is_classifier, output_check
from tvmlite.export import export_model
from tvmlite.export.onnx_export import EXTERNAL_THRESHOLD, export_lean, proto_bytes

#: default budget of each pass on the ``rel`` metric (max error over the output's spread): 0 for
#: passes that keep outputs bit-identical, 1e-3 for clean-ups that change float rounding, and for
#: lossy passes what they cost on typical models (the lossy presets use the same figures)
PASS_BUDGET = {"remove-identity": 0.0, "dce": 0.0, "fp16": 1e-2, "quantize": 0.1, "quantize-dynamic": 0.1,
               "lowrank": 0.1, "compress-weights": 0.1, "prune": 0.1, "winograd": 1e-3, "choose-conv": 1e-3}
#: float rounding through a deep net on random inputs: fold-bn on PP-OCR det (probabilities of
#: spread 0.005 at the output) measured 6.5e-4 of the spread; a real bug costs orders more
CLEANUP_BUDGET = 1e-3
OTHER_BUDGET = 1e-3  # a pass that is neither a clean-up nor listed above
#: budgets of the other metrics for lossy passes (rel budget above 1e-3): cosine >= 0.99, argmax and
#: top-k agreement >= 99%; passes with a smaller rel budget get 0 (1e-6 for cosine)
LOSSY_METRIC_BUDGET = {"cosine": 0.01, "argmax": 0.01, "topk": 0.01}
#: timing (Checker.timed): runs per session after WARMUP_RUNS, MIN_TIMED_ROUNDS at least, more up to
#: ``repeats`` within TIMING_SECONDS. A speed decision takes DECIDE_ROUNDS rounds (as it always
#: did) where they fit in half of DECIDE_SECONDS, DECIDE_MIN_ROUNDS at least (det 640x640: 10 rounds,
#: 6 s, not 30 rounds, 18 s), and doubles them up to DECIDE_SECONDS while the two medians lie within
#: DECIDE_MARGIN (2-3% separates interleaved medians of one model here; with 5 rounds on a host
#: loaded 9x over, an int8 rec model passed that the result's own timing then showed no faster:
#: 499±61 vs 458±41 ms)
WARMUP_RUNS = 2
MIN_TIMED_ROUNDS = 5
TIMING_SECONDS = 3.0
DECIDE_ROUNDS = 30
DECIDE_MIN_ROUNDS = 10
DECIDE_MARGIN = 0.15
DECIDE_SECONDS = 12.0
#: a speed decision times the two models as one-thread sessions in the CPU time of the calling
#: thread (onnxruntime runs a one-thread session there), which other jobs on the host barely move: a
#: 2-thread wall-clock decision on a loaded 2-core host read PP-OCR det 640x640 688 vs 696 ms with
#: and without affine-as-conv and undid it, where CPU time at one thread put it at 0.92x (interleaved
#: medians of 20 runs, load 3.9). Rounds double while the medians lie within DECIDE_CPU_MARGIN
#: (one model against itself: within 1-2% in CPU time under that load). Three decisions in a row on
#: det with and without subpixel-convtranspose (load 3.4-4.4): 0.965-0.969 in 20 rounds, 7-8 s each,
#: where the 2-thread wall-clock rule read 0.922-0.951 and ran all its 30 rounds, 16-26 s
DECIDE_THREADS = 1
DECIDE_CPU_MARGIN = 0.03


def pass_budget(p, metric: str = DEFAULT_METRIC) -> float:
    rel = getattr(p, "default_budget", None)
    if rel is None:
        rel = PASS_BUDGET.get(p.name, CLEANUP_BUDGET if getattr(p, "cleanup", False) else OTHER_BUDGET)
    if metric == "rel":
        return rel
    if rel > 1e-3:
        return LOSSY_METRIC_BUDGET[metric]
    return 1e-6 if metric == "cosine" and rel > 0 else 0.0


@dataclass
class Measurement:
    outputs: list[OutputCheck] = field(default_factory=list)
    errors: dict = field(default_factory=dict)  # checked output -> error on its metric
    accuracy: float | None = None
    failure: str = ""  # why the model could not be checked (onnxruntime refused it, ...)
    #: the onnxruntime session that ran the measured model, for timing that same model without a
    #: second session (5 s each on a 100,000-node graph); not part of the figures
    session: object = field(default=None, repr=False, compare=False)
    #: the size of the measured model as one file (from its lean export: `onnx_export.Exported`)
    file_bytes: int | None = field(default=None, repr=False, compare=False)

    @property
    def worst(self) -> tuple[str | None, float]:
        if not self.errors:
            return None, (float("inf") if self.failure else 0.0)
        name = max(self.errors, key=self.errors.get)
        return name, self.errors[name]


def per_output_option(items, what, convert):
    """``("0.1", "boxes=0.01")`` -> 0.1 for every output, overridden per named output."""
    if not items:
        return None
    default, per = None, {}
    for item in items:
        name, eq, value = item.rpartition("=")
        try:
            v = convert(value)
        except ValueError:
            raise OptionError(f"{what} {item!r}: {value!r} is not valid") from None
        if eq:
            per[name] = v
        else:
            default = v
    if not per:
        return default
    return {"*": default, **per} if default is not None else per


def _per_output(value, names, what):
    """One value for every output, or a dict per output name ("*": the value of the others)."""
    if isinstance(value, dict):
        value = dict(value)
        default = value.pop("*", None)
        unknown = [k for k in value if k not in names]
        if unknown:
            raise OptionError(f"{what} {unknown[0]}=...: no checked output {unknown[0]!r} (checked: {names})")
        return {**({n: default for n in names} if default is not None else {}), **value}
    return {n: value for n in names} if value is not None else {}


class Checker:
    """Runs models in onnxruntime on fixed check batches and judges them against the original."""

    def __init__(self, original: Model, checkset: CheckSet, *, labels=None, metric=None, max_error=None,
                 check_outputs=None, max_accuracy_drop=None, repeats: int = 50, speed_check: bool = False,
                 custom_ops=()):
        self.cs = checkset
        self.custom_ops = tuple(custom_ops or ())
        self.repeats = repeats
        self.speed_check = speed_check
        self.labels = None if labels is None else np.asarray(labels).reshape(-1)
        self.max_accuracy_drop = max_accuracy_drop
        self.latency_feeds = _first_example(original, checkset.batches[0])

        exported = export_lean(original)  # the original's arrays, shared, not copied
        self.original_bytes = exported.nbytes
        self.checker_ok = self._onnx_check(exported) == ""
        sess = self.reference_session = self._session(exported)
        del exported
        self.names = [o.name for o in sess.get_outputs()]
        try:
            with np.errstate(all="ignore"):
                self.reference = self._run(sess, checkset.batches)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise InputError(f"onnxruntime cannot run the original model on the check inputs ({checkset.source}): "
                             f"{msg}; give --inputs, or --shape with sizes the model takes") from None
        self._refuse_nonfinite()
        checked = list(check_outputs or self.names)
        bad = [n for n in checked if n not in self.names]
        if bad:
            raise OptionError(f"--check-output {bad[0]}: the model has no output {bad[0]!r} (outputs: {self.names})")
        self.checked = checked
        self.metric = {n: DEFAULT_METRIC for n in checked}
        self.metric.update(_per_output(metric, checked, "--metric"))
        for n, mt in self.metric.items():
            if mt not in METRICS:
                raise OptionError(f"--metric {mt}: unknown metric (metrics: {', '.join(METRICS)})")
            ref = np.asarray(self.reference[self.names.index(n)][0])
            if mt in ("argmax", "topk") and not is_classifier(ref):
                raise OptionError(f"--metric {mt}: output {n!r} of shape {ref.shape} is not a classifier "
                                  "output ([N, C] or [N, T, C] scores)")
        self.explicit = _per_output(max_error, checked, "--max-error")
        self.running = {n: 0.0 for n in checked}
        self.reference_accuracy = self._accuracy(self.reference)

    # -------------------------------------------------------------------------------- running
    def _session(self, model, threads: int = 2):
        return ort_session(model, threads, self.custom_ops)

    @staticmethod
    def _run(sess, batches) -> list[list]:
        """Per output, its arrays over the batches."""
        per_batch = [sess.run(None, b) for b in batches]
        return [list(x) for x in zip(*per_batch)]

    def _refuse_nonfinite(self) -> None:
        for name, arrs in zip(self.names, self.reference):
            for a in arrs:
                a = np.asarray(a)
                if a.dtype.kind in "fc" and not np.isfinite(a).all():
                    raise InputError(f"the original model outputs NaN/Inf in {name!r} on the check inputs "
                                     f"({self.cs.source}): give real inputs with --inputs")

    @staticmethod
    def _onnx_check(exported) -> str:
        if proto_bytes(exported.proto) > EXTERNAL_THRESHOLD:
            return ""
        try:
            exported.check()
        except Exception as e:  # noqa: BLE001 - ValidationError and protobuf errors alike
            return f"onnx.checker refuses the model: {str(e).strip().splitlines()[0][:200]}"
        return ""

    def admit(self, p) -> None:
        """The budgets now include pass ``p``'s default."""
        for n in self.checked:
            self.running[n] = max(self.running[n], pass_budget(p, self.metric[n]))

    def budget(self, name: str) -> float:
        if name in self.explicit:
            return self.explicit[name]
        if self.labels is not None:
            return float("inf")
        return self.running[name]

    def _accuracy(self, outs, labels=None):
        labels = self.labels if labels is None else labels
        if labels is None:
            return None
        scores = np.concatenate([np.asarray(a) for a in outs[self.names.index(self.checked[0])]], axis=0)
        if scores.shape[0] != len(labels):
            raise InputError(f"{len(labels)} labels for output {self.checked[0]!r} of shape {scores.shape}")
        return float(np.mean(scores.reshape(len(labels), -1).argmax(1) == labels))

    def reference_measurement(self) -> Measurement:
        """The original's own figures (error 0), from the reference outputs and session: no run."""
        return self._judge(self.reference, self.reference_session, self.original_bytes)

    def measure(self, model: Model) -> Measurement:
        exported = export_lean(model)  # once, for onnx.checker, the session and the reported size
        size = exported.nbytes
        if self.checker_ok:
            why = self._onnx_check(exported)
            if why:
                return Measurement(failure=why)
        try:
            sess = self._session(exported)
        except TvmliteError as e:
            return Measurement(failure=str(e))
        del exported
        try:
            with np.errstate(all="ignore"):
                outs = self._run(sess, self.cs.batches)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
            return Measurement(failure=f"onnxruntime fails to run the model: {str(e).strip().splitlines()[0][:200]}"
                               if str(e).strip() else type(e).__name__)
        if len(outs) != len(self.names):
            return Measurement(failure=f"{len(outs)} outputs instead of {len(self.names)}")
        return self._judge(outs, sess, size)

    def _judge(self, outs, sess, file_bytes) -> Measurement:
        masks = self.cs.masks()
        meas = Measurement(session=sess, file_bytes=file_bytes)
        for name, r, c in zip(self.names, self.reference, outs):
            oc = output_check(name, r, c, masks)
            meas.outputs.append(oc)
            if name in self.metric:
                meas.errors[name] = oc.error(self.metric[name])
            elif oc.nonfinite or oc.note:  # damage fails the check on every output, checked or not
                meas.errors[name] = float("inf")
        meas.accuracy = self._accuracy(outs)
        return meas

    def within(self, meas: Measurement) -> bool:
        if meas.failure:
            return False
        if any(not e <= (self.budget(n) if n in self.metric else 0.0) for n, e in meas.errors.items()):
            return False
        if self.max_accuracy_drop is not None and meas.accuracy is not None:
            return 100 * (self.reference_accuracy - meas.accuracy) <= self.max_accuracy_drop + 1e-9
        return True

    def why(self, meas: Measurement) -> str:
        """What broke the budget, in one phrase."""
        if meas.failure:
            return meas.failure
        for oc in meas.outputs:
            if oc.nonfinite:
                return f"{oc.nonfinite} NaN/Inf values in output {oc.name!r} where the original is finite"
            if oc.note and oc.name in meas.errors:
                return f"output {oc.name!r}: {oc.note}"
        for n, e in sorted(meas.errors.items(), key=lambda x: -x[1]):
            if not e <= self.budget(n):
                return f"output {n!r}: {self.metric[n]} error {e:.3g} > budget {self.budget(n):.3g}"
        return (f"accuracy {100 * meas.accuracy:.2f}% vs {100 * self.reference_accuracy:.2f}% "
                f"(drop budget {self.max_accuracy_drop} pt)")

    def score(self, meas: Measurement) -> float:
        """How far over budget (for ranking layers): the worst error/budget ratio plus accuracy loss."""
        if meas.failure:
            return float("inf")
        worst = 0.0
        for n, e in meas.errors.items():
            b = self.budget(n) if n in self.metric else 0.0
            worst = max(worst, e / b if 0 < b < float("inf") else (e if b == float("inf") else e * 1e12))
        if meas.accuracy is not None:
            worst += self.reference_accuracy - meas.accuracy
        return worst

    # -------------------------------------------------------------------------------- timing
    def latency(self, model: Model, session=None) -> tuple[float, float] | None:
        """Median onnxruntime ms at batch 1 and half the interquartile range (the noise).
        ``session``: one already made for ``model`` as it is now (from its Measurement)."""
        try:
            sess = session if session is not None else self._session(model)
            return self.timed([sess])[0]
        except Exception:  # noqa: BLE001 - a model that cannot run has no latency
            return None

    def side_by_side_ms(self, new: Model, old: Model) -> tuple[float, float]:
        """Median onnxruntime milliseconds of ``new`` and ``old`` at batch 1 for a speed decision: CPU
        time of one-thread sessions (DECIDE_THREADS), run alternately, with more rounds only while the
        two are close (DECIDE_CPU_MARGIN)."""
        a, b = (self._session(x, DECIDE_THREADS) for x in (new, old))
        (t_new, _), (t_old, _) = self.timed([a, b], decide=True, clock=time.thread_time,
                                            margin=DECIDE_CPU_MARGIN)
        return t_new, t_old

    def timed(self, sessions: list, decide: bool = False, *, clock=time.perf_counter,
              margin: float = DECIDE_MARGIN) -> list[tuple[float, float]]:
        """(median ms, half the interquartile range) per session at batch 1, run in turn round by
        round (runtime.ort's interleaved timing: every other round reversed, so load changes hit all
        alike). A figure: MIN_TIMED_ROUNDS rounds, more up to ``repeats`` while they take less than
        TIMING_SECONDS (a report row of det 640x640, 0.3 s a run, took 50 runs, 15 s). A decision
        (``decide``, two sessions): see DECIDE_ROUNDS; the same rounds as before wherever they fit in
        6 s; ``clock`` and ``margin`` as runtime.ort's timed_ratio takes them."""
        feeds = self.latency_feeds
        fns = [lambda s=s: s.run(None, feeds) for s in sessions]
        t0 = time.perf_counter()
        for f in fns:  # the first runs allocate and are slower
            for _ in range(WARMUP_RUNS):
                f()
        per_round = max((time.perf_counter() - t0) / WARMUP_RUNS, 1e-6)
        if decide and len(fns) == 2:
            limit = max(self.repeats, DECIDE_ROUNDS)
            rounds = max(DECIDE_MIN_ROUNDS, min(DECIDE_ROUNDS, int(DECIDE_SECONDS / 2 / per_round)))
            cap = rounds  # doubling goes on while rounds are left and they fit in DECIDE_SECONDS
            while cap < limit and cap * per_round < DECIDE_SECONDS:
                cap = min(limit, 2 * cap)
            a, b, _ = timed_ratio(fns[0], fns[1], 1.0, max_rounds=cap, min_rounds=rounds,
                                  margin=margin, warmup=0, clock=clock)
            return [(a, 0.0), (b, 0.0)]
        limit = max(self.repeats, 1)
        rounds = min(limit, max(MIN_TIMED_ROUNDS, int(TIMING_SECONDS / per_round)))
        timing = time_interleaved(fns, rounds, warmup=0)
        return list(zip(timing.medians_ms, timing.spreads_ms))

    def held_out_accuracy(self, original: Model, model: Model) -> tuple[float, float] | None:
        """(original, optimized) top-1 on the held-out split, which no check or choice saw."""
        if not self.cs.test_batches or self.cs.test_labels is None:
            return None
        ref = self._run(self._session(original), self.cs.test_batches)
        out = self._run(self._session(model), self.cs.test_batches)
        return self._accuracy(ref, self.cs.test_labels), self._accuracy(out, self.cs.test_labels)


def _first_example(model: Model, feeds: dict) -> dict:
    """Latency is reported at batch 1: the first example of the check inputs, where every input
    has a symbolic leading (batch) dim; else the check inputs as they are."""
    g = model.graph
    for name, arr in feeds.items():
        shape = g.values[name].shape
        if not shape or isinstance(shape[0], int) and shape[0] > 0 or np.ndim(arr) == 0:
            return feeds
    return {n: a[:1] for n, a in feeds.items()}
