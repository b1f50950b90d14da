"""Compare a candidate (another model, or the same model on a tvmlite backend) with onnxruntime.

Per output: max abs error, max rel error, cosine similarity, argmax agreement for classifier-like
outputs; median latency of each side. An output is within tolerance when
``max_abs <= atol + rtol * max|reference|``: the error is judged against the output's magnitude.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from tvmlite.errors import InputError, TvmliteError
from tvmlite.export.shapes import check_input_shapes
from tvmlite.ir.graph import Model
from tvmlite.inputs import check_feeds, random_inputs, read_feeds
# sessions and timing live in the runtime layer; their names stay importable from here
from tvmlite.runtime.ort import interleaved_ms, median_ms, ort_session  # noqa: F401
from tvmlite.backends.numpy import compile_model
from tvmlite.frontend import load


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

    An .npz may hold more arrays than the model takes (labels, say): those are left out. ``shapes``
    must name inputs of the model and fit their declared shapes; they shape random inputs only, so
    they are refused beside ``inputs`` (the arrays' shapes are the ones used)."""
    if shapes:
        if inputs is not None:
            raise InputError("--shape shapes the random inputs; with --inputs the arrays' own shapes are used "
                             "(give one of them)")
        check_input_shapes(model, shapes)
    if inputs is None:
        return random_inputs(model, shapes, seed)
    feeds = read_feeds(model, inputs) if isinstance(inputs, (str, os.PathLike)) else dict(inputs)
    return check_feeds(model, feeds)


def compare(reference, candidate=None, *, backend: str = "numpy", inputs=None, shapes=None,
            rtol: float = 1e-4, atol: float = 1e-5, repeats: int = 10, threads: int = 2,
            seed: int = 0, labels=None, custom_ops=()) -> CompareReport:
    """Run ``reference`` in onnxruntime and ``candidate`` (default: the same model) on ``backend``
    ('numpy', 'ort' or 'tvm') on the same inputs, and report errors and latencies."""
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
