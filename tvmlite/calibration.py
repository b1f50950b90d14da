"""Calibration data, one interface for the passes that need example inputs (quantization, low-rank
refits, checked passes): an .npz of inputs, a directory of .npy files, a Python iterable of feed
dicts, or random inputs (with a warning, since statistics of random data say little).

    calib = load_calibration("models/digits_calib.npz", model)
    for feeds in calib.batches(batch_size=16):   # dict name -> array, batch along axis 0
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


class CalibrationData:
    """A list of samples (each a feed dict with batch size >= 1) for one model."""

    def __init__(self, samples: list[dict], source: str):
        if not samples:
            raise InputError(f"calibration data {source} holds no samples")
        self.samples = samples
        self.source = source

    def __len__(self) -> int:
        return sum(next(iter(s.values())).shape[0] for s in self.samples)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.samples)

    def batches(self, batch_size: int = 16) -> Iterator[dict]:
        """Re-batch the samples along axis 0 (all inputs must share the batch dim)."""
        names = list(self.samples[0])
        merged = {n: np.concatenate([s[n] for s in self.samples], axis=0) for n in names}
        total = merged[names[0]].shape[0]
        for i in range(0, total, batch_size):
            yield {n: a[i:i + batch_size] for n, a in merged.items()}

    def first(self, n: int) -> dict:
        """The first ``n`` examples as one feed dict."""
        return next(self.batches(n))


def load_calibration(source, model: Model, *, shapes: dict | None = None, random_count: int = 8,
                     seed: int = 0) -> CalibrationData:
    """``source``: path to an .npz (one array per input, batch along axis 0), a directory of .npy
    files (``NAME.npy`` per input, or ``NAME_*.npy``/any ``*.npy`` for a single-input model, one
    sample per file), an iterable of feed dicts, a CalibrationData, or None for random inputs."""
    if isinstance(source, CalibrationData):
        return source
    names = graph_inputs(model.graph)
    if source is None:
        warnings.warn("no calibration data given: using random inputs, whose statistics may not "
                      "match real data", stacklevel=2)
        samples = [random_inputs(model, shapes, seed + i) for i in range(random_count)]
        return CalibrationData(samples, "random inputs")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"calibration data not found: {path}")
        if os.path.isdir(path):
            return CalibrationData(_from_dir(path, names, model), path)
        data = load_npz(path)
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(f"calibration file {path} has no array {missing[0]!r} "
                             f"(it has {sorted(data)}; the model takes {names})")
        feeds = {n: data[n] for n in names}
        check_feeds(model, feeds)
        return CalibrationData([feeds], path)
    if isinstance(source, dict):
        return CalibrationData([check_feeds(model, dict(source))], "feeds")
    if isinstance(source, Iterable):
        samples = [check_feeds(model, dict(s)) for s in source]
        return CalibrationData(samples, "iterable")
    raise InputError(f"calibration data of type {type(source).__name__} is not supported")


def _from_dir(path: str, names: list[str], model: Model) -> list[dict]:
    files = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
    if not files:
        raise InputError(f"calibration directory {path} has no .npy files")
    if all(f"{n}.npy" in files for n in names):
        feeds = {n: _load_npy(os.path.join(path, f"{n}.npy")) for n in names}
        return [check_feeds(model, feeds)]
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
