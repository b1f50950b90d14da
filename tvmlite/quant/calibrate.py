"""Calibration statistics: run a model on calibration inputs and keep, per tensor, a running min/max
and a histogram whose memory does not grow with the data (activations are never stored).

    stats = collect_stats(model, calib, ["conv1_out", "relu2"], histogram=True)
    lo, hi = stats["relu2"].range("percentile", percentile=99.99)

Range methods:

- ``minmax``: the observed extremes.
- ``percentile``: clip the ``(100 - p)`` % tail mass off (split over both tails of a signed tensor).
- ``entropy``: TensorRT's KL-divergence calibration: the clipping range whose quantized histogram
  loses the least information against the clipped reference histogram.
- ``mse``: the clipping range minimizing the expected squared quantization + clipping error.

The histogram ranges are searched over ``alpha * [min, max]``: zero stays where it is, which is what
an affine (asymmetric) or symmetric int8 grid needs.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from tvmlite.errors import OptionError, UnsupportedError
from tvmlite.ir.graph import Model
from tvmlite.calibration import fixed_batch, load_calibration
from tvmlite.export import export_model
from tvmlite.backends.numpy import compile_model
from tvmlite.runtime.ort import ort_session
from tvmlite.export.onnx_export import export_lean

METHODS = ("minmax", "percentile", "entropy", "mse")


class TensorStats:
    """Running min/max and a fixed-size histogram of one tensor.

    The histogram covers ``[lo, lo + bins * width]`` and always includes zero. When a batch falls
    outside, the range grows to the left by whole bins and the width by an integer factor, so every
    old bin falls inside exactly one new bin and the merge is exact.
    """

    def __init__(self, bins: int = 2048, histogram: bool = True):
        self.bins = int(bins)
        self.histogram = histogram
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0  # exact zeros (ReLU outputs, padding): representable, so KL ignores them
        self.counts: np.ndarray | None = None
        self.lo = 0.0
        self.width = 0.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        finite = x if np.isfinite(x).all() else x[np.isfinite(x)]
        if finite.size == 0:
            return
        mn, mx = float(finite.min()), float(finite.max())
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        self.count += finite.size
        self.zeros += int(np.count_nonzero(finite == 0))
        if self.histogram:
            self._add_to_histogram(finite.ravel(), min(mn, 0.0), max(mx, 0.0))

    def _add_to_histogram(self, x: np.ndarray, a: float, b: float) -> None:
        if self.counts is None:
            if b <= a:  # all zeros so far: a unit range around zero, grown when real values come
                a, b = -1e-30, 1e-30
            self.lo = a
            self.width = (b - a) / self.bins
            self.counts = np.zeros(self.bins, np.int64)
        else:
            hi = self.lo + self.bins * self.width
            if a < self.lo or b > hi:
                self._grow(min(a, self.lo), max(b, hi))
        idx = np.floor((x.astype(np.float64) - self.lo) / self.width).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)

    def _grow(self, a: float, b: float) -> None:
        j = max(0, math.ceil((self.lo - a) / self.width - 1e-9))  # old bins added on the left
        k = 1
        while (j + self.bins) * self.width > k * self.bins * self.width or \
                self.lo - j * self.width + k * self.bins * self.width < b:
            k *= 2
        new = np.zeros(self.bins, np.int64)
        np.add.at(new, (np.arange(self.bins) + j) // k, self.counts)
        self.counts = new
        self.lo -= j * self.width
        self.width *= k

    # ------------------------------------------------------------------------------------ ranges
    @property
    def seen(self) -> bool:
        return self.count > 0

    def range(self, method: str = "minmax", *, percentile: float = 99.999, levels: int = 256,
              symmetric: bool = False) -> tuple[float, float]:
        """The clipping range ``(lo, hi)`` with ``lo <= 0 <= hi`` for ``levels`` quantization levels."""
        if not self.seen:
            return 0.0, 0.0
        mn, mx = min(self.min, 0.0), max(self.max, 0.0)
        if symmetric:
            m = max(-mn, mx)
            mn, mx = (-m if self.min < 0 else 0.0), m
        if method == "minmax" or mx - mn <= 0:
            return mn, mx
        if self.counts is None:
            raise UnsupportedError(f"range method {method!r} needs histograms (collect with histogram=True)")
        if method == "percentile":
            return self._percentile_range(mn, mx, percentile)
        if method in ("entropy", "mse"):
            alphas = np.linspace(0.05, 1.0, 96)
            losses = [self._kl(a * mn, a * mx, levels) if method == "entropy" else
                      self._mse(a * mn, a * mx, levels) for a in alphas]
            a = float(alphas[int(np.argmin(losses))])
            return a * mn, a * mx
        raise OptionError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")

    def _centers(self) -> np.ndarray:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def _percentile_range(self, mn: float, mx: float, p: float) -> tuple[float, float]:
        if not 0 < p <= 100:
            raise OptionError(f"percentile must be in (0, 100], got {p}")
        total = self.counts.sum()
        cdf = np.cumsum(self.counts) / total
        tail = (100.0 - p) / 100.0
        edges_hi = self.lo + (np.arange(self.bins) + 1) * self.width
        lo, hi = mn, mx
        if mn < 0 and mx > 0:
            tail /= 2
        if mx > 0:
            hi = float(edges_hi[min(int(np.searchsorted(cdf, 1.0 - tail)), self.bins - 1)])
        if mn < 0:
            lo = float(edges_hi[int(np.searchsorted(cdf, tail))] - self.width)
        return max(min(lo, 0.0), mn), min(max(hi, 0.0), mx)

    def _mse(self, lo: float, hi: float, levels: int) -> float:
        step = (hi - lo) / (levels - 1)
        c = self._centers()
        clipped = np.clip(c, lo, hi)
        err = (c - clipped) ** 2 + np.where((c >= lo) & (c <= hi), step * step / 12.0, 0.0)
        return float((self.counts * err).sum())

    def _kl(self, lo: float, hi: float, levels: int) -> float:
        c = self._centers()
        inside = (c >= lo) & (c <= hi)
        idx = np.nonzero(inside)[0]
        if idx.size < levels:  # fewer bins than levels: nothing to lose, but nothing learnt either
            return math.inf
        counts = self.counts.astype(np.float64)
        if self.zeros:
            z = min(max(int((0.0 - self.lo) // self.width), 0), self.bins - 1)
            counts[z] = max(counts[z] - self.zeros, 0.0)
        # as TensorRT: P folds the clipped tails into the edge bins, Q is built from the unclipped
        # bins only, so clipping mass away shows up as divergence
        inner = counts[idx]
        p = inner.copy()
        p[0] += counts[:idx[0]].sum()
        p[-1] += counts[idx[-1] + 1:].sum()
        q = np.zeros_like(p)
        for chunk in np.array_split(np.arange(p.size), levels):
            nz = inner[chunk] > 0
            if nz.any():
                q[chunk[nz]] = inner[chunk].sum() / nz.sum()
        if q.sum() <= 0:
            return math.inf
        ps, qs = p / p.sum(), q / q.sum()
        m = ps > 0
        return float(np.sum(ps[m] * np.log(ps[m] / np.maximum(qs[m], 1e-12))))


def _progress(total: int, label: str, enabled: bool | None):
    """A rich progress bar on a terminal (or when asked), else a no-op."""
    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1 and not os.environ.get("TVMLITE_NO_PROGRESS")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True, disable=not enabled)
    return bar


def _feed_batches(model: Model, calib, batch_size: int):
    """Batches the model accepts: a fixed batch dim in the input type wins over ``batch_size``."""
    fixed = fixed_batch(model)
    bs = fixed or batch_size
    for feeds in calib.batches(bs):
        if fixed and calib.count(feeds) != fixed:
            continue  # an incomplete last batch the model cannot take
        yield feeds


def collect_stats(model: Model, calib, tensors, *, histogram: bool = True, bins: int = 2048,
                  batch_size: int = 16, engine: str = "ort", progress: bool | None = None,
                  threads: int = 2) -> dict[str, TensorStats]:
    """Run ``model`` on the calibration data and return statistics of each named tensor.

    ``engine`` is 'ort' (onnxruntime, with the tensors added as extra graph outputs) or 'numpy'
    (tvmlite's NumPy backend). Only one batch of activations is alive at a time.
    """
    calib = load_calibration(calib, model)
    tensors = list(dict.fromkeys(tensors))
    stats = {t: TensorStats(bins, histogram) for t in tensors}
    run = _runner(model, tensors, engine, threads)
    batches = list(_feed_batches(model, calib, batch_size))
    if not batches:
        raise UnsupportedError("no calibration batch fits the model's fixed batch size")
    with _progress(len(batches), "calibrating", progress) as bar:
        task = bar.add_task("calibrating", total=len(batches))
        for feeds in batches:
            for name, arr in zip(tensors, run(feeds)):
                stats[name].update(arr)
            bar.advance(task)
    return stats


def _runner(model: Model, tensors: list[str], engine: str, threads: int):
    if engine == "ort":
        import onnx

        exported = export_lean(model)  # the weights shared with the session, not serialized
        have = {o.name for o in exported.proto.graph.output}
        for t in tensors:
            if t not in have:
                exported.proto.graph.output.append(onnx.ValueInfoProto(name=t))
        sess = ort_session(exported, threads)
        return lambda feeds: sess.run(tensors, feeds)
    if engine == "numpy":
        saved = list(model.graph.outputs)
        model.graph.outputs = saved + [t for t in tensors if t not in saved]
        try:
            plan = compile_model(model)
        finally:
            model.graph.outputs = saved
        index = {n: i for i, n in enumerate(plan.output_names)}

        def run(feeds):
            with np.errstate(all="ignore"):
                outs = plan.run(feeds)
            return [outs[index[t]] for t in tensors]
        return run
    raise OptionError(f"unknown calibration engine {engine!r} (ort, numpy)")
