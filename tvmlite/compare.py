"""Compare a candidate (another model, or the same model on a tvmlite backend) with onnxruntime.

Per output: max abs error, max rel error, cosine similarity, argmax agreement for classifier-like
outputs; median latency of each side. An output is within tolerance when
``max_abs <= atol + rtol * max|reference|``: the error is judged against the output's magnitude.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tvmlite.errors import InputError, TvmliteError
from tvmlite.export import onnx_export
from tvmlite.ir.graph import Model
from tvmlite.inputs import check_feeds, random_inputs, read_feeds


def ort_session(model, threads: int = 2, custom_ops=()):
    """An onnxruntime CPU session for a path, a ModelProto or a tvmlite Model; ``custom_ops``:
    paths of custom-op libraries to register first."""
    import onnxruntime as ort

    from tvmlite.export import export_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors come back as exceptions, folded into one tvmlite line
    ort.set_default_logger_severity(4)
    for lib in custom_ops or ():
        try:
            so.register_custom_ops_library(os.fspath(lib))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
            raise TvmliteError(f"--custom-ops {lib}: onnxruntime cannot load it: {str(e).strip()[:200]}") from None
    if isinstance(model, Model):
        model = export_model(model)
    if isinstance(model, (str, os.PathLike)):
        src = os.fspath(model)
    elif onnx_export.proto_bytes(model) > onnx_export.EXTERNAL_THRESHOLD:
        return _ort_session_via_file(model, so)
    else:
        src = model.SerializeToString()
    try:
        return _run_errors_as_ours(ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TvmliteError(f"onnxruntime cannot load the model: {msg}") from None


def _run_errors_as_ours(sess):
    """A model that loads can still fail when run (a Reshape to a size that does not fit, say):
    that is one TvmliteError line, not an internal error."""
    run = sess.run

    def checked_run(*args, **kw):
        try:
            return run(*args, **kw)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
            msg = " ".join(str(e).split()) or type(e).__name__
            raise TvmliteError(f"onnxruntime failed to run the model: {msg[:500]}") from None

    sess.run = checked_run
    return sess


def _ort_session_via_file(proto, so):
    """Models over protobuf's 2 GiB limit go through a temporary file with external data."""
    import tempfile

    import onnxruntime as ort

    from tvmlite.export import save

    with tempfile.TemporaryDirectory(prefix="tvmlite-ort-") as d:
        path = os.path.join(d, "model.onnx")
        save(proto, path)
        try:
            return _run_errors_as_ours(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TvmliteError(f"onnxruntime cannot load the model: {msg}") from None


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def interleaved_ms(fns: list, repeats: int, warmup: int = 2) -> list[float]:
    """Median milliseconds of each callable, run in turn round by round (every other round in
    reverse order), so load changes and cache effects hit all of them alike."""
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(max(repeats, 1)):
        for i in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


@dataclass
class OutputReport:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    cosine: float
    ref_scale: float
    argmax_agreement: float | None
    ok: bool


@dataclass
class CompareReport:
    reference: str
    candidate: str
    rtol: float
    atol: float
    outputs: list[OutputReport] = field(default_factory=list)
    reference_ms: float | None = None
    candidate_ms: float | None = None
    reference_accuracy: float | None = None  # top-1 of the first output against --labels
    candidate_accuracy: float | None = None

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def speedup(self) -> float | None:
        if self.reference_ms and self.candidate_ms:
            return self.reference_ms / self.candidate_ms
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["speedup"] = self.speedup
        return d

    def format(self) -> str:
        lines = [f"reference: {self.reference}", f"candidate: {self.candidate}",
                 f"tolerance: max_abs <= {self.atol:g} + {self.rtol:g} * max|ref|", ""]
        hdr = f"{'output':<28} {'shape':<18} {'max_abs':>10} {'max_rel':>10} {'cosine':>10} {'argmax':>7}  ok"
        lines.append(hdr)
        for o in self.outputs:
            am = "-" if o.argmax_agreement is None else f"{o.argmax_agreement:.3f}"
            lines.append(f"{o.name[:28]:<28} {str(tuple(o.shape))[:18]:<18} {o.max_abs:>10.3g} "
                         f"{o.max_rel:>10.3g} {o.cosine:>10.6f} {am:>7}  {'yes' if o.ok else 'NO'}")
        if self.reference_accuracy is not None:
            lines.append("")
            lines.append(f"accuracy (top-1 of the first output vs labels): reference {self.reference_accuracy:.4f}, "
                         f"candidate {self.candidate_accuracy:.4f}, change "
                         f"{100 * (self.candidate_accuracy - self.reference_accuracy):+.2f} pt")
        if self.reference_ms is not None:
            lines.append("")
            lines.append(f"latency (median): reference {self.reference_ms:.3f} ms, candidate "
                         f"{self.candidate_ms:.3f} ms, candidate/reference {self.candidate_ms / self.reference_ms:.2f}x")
        lines.append("")
        lines.append("within tolerance" if self.ok else "OUTSIDE tolerance")
        return "\n".join(lines)


def output_report(name: str, ref, cand, rtol: float, atol: float, significant: float = 1e-3) -> OutputReport:
    """Errors of one output. ``max_rel`` is taken over elements whose magnitude is at least
    ``significant`` times the output's largest: relative error of near-zero values says nothing."""
    ref = np.asarray(ref)
    cand = np.asarray(cand)
    if ref.shape != cand.shape:
        raise TvmliteError(f"output {name!r}: shapes differ, reference {ref.shape} vs candidate {cand.shape}")
    if ref.dtype.kind not in "fiub":
        same = bool(np.array_equal(ref, cand))
        return OutputReport(name, ref.shape, 0.0 if same else float("inf"), 0.0 if same else float("inf"),
                            1.0 if same else 0.0, 0.0, None, same)
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    diff = np.abs(r - c)
    finite = np.isfinite(r) & np.isfinite(c)
    same_nonfinite = ~finite & ((r == c) | (np.isnan(r) & np.isnan(c)))
    diff = np.where(finite, diff, np.where(same_nonfinite, 0.0, np.inf))
    scale = float(np.max(np.abs(r[finite]))) if finite.any() else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    significant = np.abs(r) >= significant * scale if scale > 0 else np.zeros_like(r, dtype=bool)
    max_rel = float((diff[significant] / np.abs(r[significant])).max()) if significant.any() else 0.0
    rf, cf = r[finite].ravel(), c[finite].ravel()
    denom = np.linalg.norm(rf) * np.linalg.norm(cf)
    cosine = float(rf @ cf / denom) if denom > 0 else (1.0 if np.array_equal(rf, cf) else 0.0)
    if np.isinf(max_abs):  # NaN/Inf where the reference has none: no figure may look fine
        max_rel, cosine = float("inf"), float("nan")
    argmax = None
    if ref.dtype.kind == "f" and ref.ndim in (2, 3) and ref.shape[-1] > 1:  # [N, C] or [N, T, C] scores
        argmax = float(np.mean(np.argmax(r, axis=-1) == np.argmax(c, axis=-1)))
    ok = max_abs <= atol + rtol * scale
    return OutputReport(name, tuple(ref.shape), max_abs, max_rel, cosine, scale, argmax, bool(ok))


def prepare_inputs(model: Model, inputs=None, shapes=None, seed: int = 0) -> dict:
    """Feeds from an .npz path, a dict, or at random from the input types (and --shape overrides).

    An .npz may hold more arrays than the model takes (labels, say): those are left out."""
    if inputs is None:
        return random_inputs(model, shapes, seed)
    feeds = read_feeds(model, inputs) if isinstance(inputs, (str, os.PathLike)) else dict(inputs)
    return check_feeds(model, feeds)


def compare(reference, candidate=None, *, backend: str = "numpy", inputs=None, shapes=None,
            rtol: float = 1e-4, atol: float = 1e-5, repeats: int = 10, threads: int = 2,
            seed: int = 0, labels=None, custom_ops=()) -> CompareReport:
    """Run ``reference`` in onnxruntime and ``candidate`` (default: the same model) on ``backend``
    ('numpy', 'ort' or 'tvm') on the same inputs, and report errors and latencies."""
    from tvmlite.backends.numpy import compile_model
    from tvmlite.frontend import load

    ref_model = reference if isinstance(reference, Model) else load(reference)
    cand_model = ref_model if candidate is None else (candidate if isinstance(candidate, Model) else load(candidate))
    feeds = prepare_inputs(ref_model, inputs, shapes, seed)
    if cand_model is not ref_model:
        check_feeds(cand_model, feeds)
    sess = ort_session(reference if isinstance(reference, (str, os.PathLike)) else ref_model, threads, custom_ops)
    names = [o.name for o in sess.get_outputs()]
    ref_out = sess.run(None, feeds)
    if backend == "ort":
        csess = ort_session(candidate if isinstance(candidate, (str, os.PathLike)) else cand_model, threads, custom_ops)

        def run_candidate():
            return csess.run(None, feeds)
    elif backend == "numpy":
        plan = compile_model(cand_model)

        def run_candidate():
            return plan.run(feeds)
    elif backend == "tvm":
        from tvmlite.backends.tvm import compile_model as tvm_compile

        built = tvm_compile(cand_model, {k: np.shape(v) for k, v in feeds.items()})

        def run_candidate():
            return built.run(feeds)
    else:
        raise TvmliteError(f"unknown backend {backend!r} (numpy, ort, tvm)")
    with np.errstate(all="ignore"):
        cand_out = run_candidate()
    if len(cand_out) != len(ref_out):
        raise TvmliteError(f"reference has {len(ref_out)} outputs, candidate {len(cand_out)}")
    report = CompareReport(_describe(reference, "onnxruntime"),
                           _describe(candidate if candidate is not None else reference, backend), rtol, atol)
    for name, r, c in zip(names, ref_out, cand_out):
        report.outputs.append(output_report(name, r, c, rtol, atol))
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        for attr, out in (("reference_accuracy", ref_out[0]), ("candidate_accuracy", cand_out[0])):
            pred = np.asarray(out).reshape(len(labels), -1).argmax(axis=1) if np.asarray(out).size else None
            if pred is None or np.asarray(out).shape[0] != len(labels):
                raise InputError(f"{len(labels)} labels for an output of shape {np.asarray(out).shape}")
            setattr(report, attr, float(np.mean(pred == labels)))
    if repeats > 0:
        report.reference_ms = median_ms(lambda: sess.run(None, feeds), repeats)
        with np.errstate(all="ignore"):
            report.candidate_ms = median_ms(run_candidate, repeats)
    return report


def _describe(src, backend: str) -> str:
    where = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<in-memory model>"
    return f"{where} on {backend}"
