"""Calibration data, one interface for the passes that need example inputs (quantization, low-rank
refits, checked passes): an .npz of inputs, a directory of .npy files, a Python iterable of feed
dicts, or random inputs (with a warning, since statistics of random data say little).

    calib = load_calibration("models/digits_calib.npz", model)
    for feeds in calib.batches(batch_size=16):   # dict name -> array, batched along batch_axes
        ...
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Iterator

import numpy as np

from tvmlite.errors import InputError
from tvmlite.inputs import check_feeds, graph_inputs, load_npz, random_inputs
from tvmlite.ir.graph import Model


def batch_axes(model: Model) -> dict[str, int | None]:
    """Per graph input, the axis its examples are stacked along, or None for an input every example
    shares (a scalar such as a sample rate, a fixed-size table).

    The batch is the leading dim of the first input whose leading dim is symbolic; every input
    holding that symbol stacks along it (a recurrent state [2, N, H] along axis 1). Without a
    symbolic batch, inputs of rank >= 1 stack along axis 0."""
    g = model.graph
    names = graph_inputs(g)
    shapes = {n: g.values[n].shape for n in names}
    symbol = next((s[0] for s in shapes.values() if s and isinstance(s[0], str)), None)
    axes: dict[str, int | None] = {}
    for n in names:
        s = shapes[n]
        if s is not None and len(s) == 0:
            axes[n] = None
        elif symbol is not None and s is not None:
            axes[n] = s.index(symbol) if symbol in s else None
        else:
            axes[n] = 0
    return axes


def fixed_batch(model: Model) -> int | None:
    """The batch size the model's inputs fix (the first input's leading dim), or None when free."""
    g = model.graph
    for n in graph_inputs(g):
        s = g.values[n].shape
        if s:
            return s[0] if isinstance(s[0], int) and s[0] > 0 else None
    return None


class CalibrationData:
    """A list of samples (each a feed dict with batch size >= 1) for one model.

    ``axes`` (see batch_axes) says along which axis each input stacks examples; inputs with axis
    None are shared by the examples of a batch, so samples are merged only where those agree."""

    def __init__(self, samples: list[dict], source: str, axes: dict | None = None):
        if not samples:
            raise InputError(f"calibration data {source} holds no samples")
        self.samples = samples
        self.source = source
        given = axes or {}
        self.axes = {n: given.get(n, 0) if np.ndim(a) else None for n, a in samples[0].items()}

    def count(self, feeds: dict) -> int:
        """The number of examples in ``feeds`` (1 when every input is shared)."""
        for n, a in feeds.items():
            if self.axes.get(n) is not None:
                return int(np.shape(a)[self.axes[n]])
        return 1

    def take(self, feeds: dict, start: int, stop: int | None = None) -> dict:
        """Examples ``start:stop`` of ``feeds`` (shared inputs as they are); take(f, n): the first n."""
        if stop is None:
            start, stop = 0, start
        out = {}
        for n, a in feeds.items():
            ax = self.axes.get(n)
            out[n] = a if ax is None else np.take(a, np.arange(start, min(stop, a.shape[ax])), axis=ax)
        return out

    def __len__(self) -> int:
        return sum(self.count(s) for s in self.samples)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.samples)

    def _groups(self) -> Iterator[dict]:
        """Runs of consecutive samples with equal shared inputs, merged into one feed dict each."""
        shared = [n for n, ax in self.axes.items() if ax is None]
        run: list[dict] = []
        for s in self.samples + [None]:
            if run and (s is None or any(not np.array_equal(s[n], run[0][n]) for n in shared)):
                yield {n: run[0][n] if ax is None else np.concatenate([r[n] for r in run], axis=ax)
                       for n, ax in self.axes.items()}
                run = []
            if s is not None:
                run.append(s)

    def batches(self, batch_size: int = 16) -> Iterator[dict]:
        """Re-batch the samples (along each input's batch axis); samples whose shared inputs
        differ are never merged into one batch."""
        for merged in self._groups():
            total = self.count(merged)
            for i in range(0, total, batch_size):
                yield self.take(merged, i, i + batch_size)

    def groups(self, n: int) -> list[dict]:
        """Feed dicts holding the first ``n`` examples together: one, unless samples whose shared
        inputs differ must run apart."""
        out, have = [], 0
        for feeds in self.batches(n):
            if have >= n:
                break
            feeds = self.take(feeds, n - have)
            out.append(feeds)
            have += self.count(feeds)
        return out

    def first(self, n: int) -> dict:
        """The first ``n`` examples as one feed dict (fewer when the first samples' shared inputs
        differ from the later ones')."""
        return next(self.batches(n))


def load_calibration(source, model: Model, *, shapes: dict | None = None, random_count: int = 8,
                     seed: int = 0) -> CalibrationData:
    """``source``: path to an .npz (one array per input, batch along axis 0), a directory of .npy
    files (``NAME.npy`` per input, or ``NAME_*.npy``/any ``*.npy`` for a single-input model, one
    sample per file), an iterable of feed dicts, a CalibrationData, or None for random inputs."""
    if isinstance(source, CalibrationData):
        return source
    names = graph_inputs(model.graph)
    axes = batch_axes(model)
    if source is None:
        warnings.warn("no calibration data given: using random inputs, whose statistics may not "
                      "match real data", stacklevel=2)
        samples = [random_inputs(model, shapes, seed + i) for i in range(random_count)]
        # shared integer/bool inputs (a sample rate, a mode) keep the first sample's values: random
        # codes mean nothing and would split the samples into batches of one; shared float inputs
        # (a gain) vary, so their range is covered
        for s in samples[1:]:
            s.update({n: samples[0][n] for n, ax in axes.items() if ax is None and s[n].dtype.kind != "f"})
        return CalibrationData(samples, "random inputs", axes)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"calibration data not found: {path}")
        if os.path.isdir(path):
            return CalibrationData(_from_dir(path, names, model), path, axes)
        data = load_npz(path)
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(f"calibration file {path} has no array {missing[0]!r} "
                             f"(it has {sorted(data)}; the model takes {names})")
        feeds = {n: data[n] for n in names}
        check_feeds(model, feeds, axes)
        return CalibrationData([feeds], path, axes)
    if isinstance(source, dict):
        return CalibrationData([check_feeds(model, dict(source), axes)], "feeds", axes)
    if isinstance(source, Iterable):
        samples = [check_feeds(model, dict(s), axes) for s in source]
        return CalibrationData(samples, "iterable", axes)
    raise InputError(f"calibration data of type {type(source).__name__} is not supported")


def _from_dir(path: str, names: list[str], model: Model) -> list[dict]:
    files = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
    if not files:
        raise InputError(f"calibration directory {path} has no .npy files")
    if all(f"{n}.npy" in files for n in names):
        feeds = {n: _load_npy(os.path.join(path, f"{n}.npy")) for n in names}
        return [check_feeds(model, feeds, batch_axes(model))]
    if len(names) != 1:
        raise InputError(f"calibration directory {path}: the model takes {names}; give NAME.npy per input")
    samples = []
    for f in files:
        arr = _load_npy(os.path.join(path, f))
        feeds = {names[0]: arr}
        try:
            check_feeds(model, feeds)
        except InputError:  # one sample without the batch dim
            feeds = {names[0]: arr[None]}
            check_feeds(model, feeds)
        samples.append(feeds)
    return samples


def _load_npy(path: str) -> np.ndarray:
    """One .npy file; pickled (object) arrays are refused, never unpickled."""
    if not os.path.isfile(path):  # a FIFO would block the read
        raise InputError(f"calibration file {path} is not a regular file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        msg = " ".join(str(e).split())
        raise InputError(f"cannot read calibration file {path}: {msg}") from None
