"""Model inputs: read them from .npz files, make random ones from the input types, check them.

Every problem is one InputError line naming the input, e.g. "input 'x': shape (1, 3, 32) does not
fit the model's [N, 3, 32, 32]".
"""
from __future__ import annotations

import os
import re
import zipfile

import numpy as np
from onnx import helper

from tvmlite.errors import InputError
from tvmlite.ir.graph import Graph, Model


#: NumPy's own limits on an array (64 dims, sizes that fit an int64 in bytes): past them it raises
#: ValueError deep inside a kernel instead of saying which option is wrong
MAX_RANK = 64
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**40


def is_int_text(d: str) -> bool:
    """Whether ``d`` spells an integer in ASCII digits (an optional leading minus): str.isdigit
    also takes '²' (which int() refuses) and other scripts' digits."""
    return bool(_INT_TEXT.fullmatch(d))


_INT_TEXT = re.compile(r"-?[0-9]+")


def parse_shape_overrides(items) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x224x224", "y=Nx16"]`` -> {"x": (1, 3, 224, 224), "y": ("N", 16)}; the peers'
    spelling ``x:1,3,224,224`` is read too."""
    out = {}
    for item in items or ():
        name, eq, dims = item.partition("=")
        sep = "x"
        if not eq and ":" in item:
            name, eq, dims = item.rpartition(":")
            sep = ","
        if not eq or not name:
            raise InputError(f"--shape {item!r}: expected NAME=D1xD2x... or NAME:D1,D2,...")
        if name in out:
            raise InputError(f"--shape {name}: given twice")
        parts = [d.strip() for d in dims.split(sep) if d.strip() != ""]
        if not parts:
            raise InputError(f"--shape {item!r}: no dimensions")
        shape = []
        for d in parts:
            if is_int_text(d):
                if int(d) <= 0:
                    raise InputError(f"--shape {item!r}: dimensions must be positive")
                if int(d) > MAX_DIM:
                    raise InputError(f"--shape {name}: dimension {d[:30]} is larger than {MAX_DIM}")
                shape.append(int(d))
            elif d.isidentifier():
                shape.append(d)  # a symbolic dim stays symbolic (e.g. the batch: Nx3x48x192)
            else:
                raise InputError(f"--shape {item!r}: dimensions must be integers or names")
        if len(shape) > MAX_RANK:
            raise InputError(f"--shape {name}: rank {len(shape)} is more than {MAX_RANK} dimensions")
        if int(np.prod([d for d in shape if isinstance(d, int)], dtype=object)) > MAX_ELEMENTS:
            raise InputError(f"--shape {name}: more than {MAX_ELEMENTS} elements (2**40) in one tensor")
        out[name] = tuple(shape)
    return out


def graph_inputs(graph: Graph) -> list[str]:
    """The inputs a caller must feed: graph inputs that have no initializer to fall back on."""
    return [n for n in graph.inputs if n not in graph.initializers]


def load_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise InputError(f"inputs file not found: {path}")
    if not os.path.isfile(path):  # a FIFO would block the read, a device never end it
        raise InputError(f"inputs file {path} is not a regular file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise InputError(f"cannot read inputs file {path}: {e}") from None


#: the size random inputs give a symbolic dim that ``shapes`` leaves open (a leading one gets 1)
DEFAULT_SYMBOLIC_DIM = 32


def random_inputs(model: Model, shapes: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds from the input types; a symbolic dim not fixed by ``shapes`` is 1 when leading
    (the batch), else DEFAULT_SYMBOLIC_DIM."""
    rng = np.random.default_rng(seed)
    g = model.graph
    feeds = {}
    for name in graph_inputs(g):
        v = g.values[name]
        if v.dtype is None:
            raise InputError(f"input {name!r} has no tensor type: give its values with --inputs")
        shape = (shapes or {}).get(name)
        if shape is None:
            if v.shape is None:
                raise InputError(f"input {name!r} has unknown rank: give its values with --inputs")
            shape = v.shape
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 if i == 0 else DEFAULT_SYMBOLIC_DIM
                      for i, d in enumerate(shape))
        feeds[name] = random_array(rng, shape, v.dtype, name)
    check_feeds(model, feeds)
    return feeds


def random_array(rng, shape, dt, name: str) -> np.ndarray:
    """Random data for input ``name``: normal floats, integers 0..9 (in range of small tables and
    index sets), random bools."""
    dt = np.dtype(dt)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise InputError(f"input {name!r} of dtype {dt} cannot be made at random: use --inputs")


def read_feeds(model: Model, inputs) -> dict:
    """The model's inputs from an .npz path or a dict (unchecked); other arrays (labels) are left out."""
    if isinstance(inputs, (str, os.PathLike)):
        data = load_npz(os.fspath(inputs))
        feeds = {k: v for k, v in data.items() if k in model.graph.inputs}
        if not feeds:
            raise InputError(f"inputs file {os.fspath(inputs)} has none of the model's inputs "
                             f"{graph_inputs(model.graph)} (it has {sorted(data)})")
        return feeds
    return dict(inputs)


def check_feeds(model: Model, feeds: dict, stacked: dict | None = None) -> dict:
    """Raise InputError unless ``feeds`` gives every required input with a fitting dtype and shape.
    ``stacked``: per input, the axis along which it holds a stack of examples (calibration data:
    `calibration.batch_axes`), of any size even where the model fixes that dim (a batch-1 model
    calibrated on 64 images, re-batched into ones)."""
    g = model.graph
    required = graph_inputs(g)
    missing = [n for n in required if n not in feeds]
    if missing:
        raise InputError(f"missing input {missing[0]!r} (the model takes {required})")
    unknown = [n for n in feeds if n not in g.inputs]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r} (the model takes {required})")
    for name, arr in feeds.items():
        v = g.values[name]
        if not isinstance(arr, np.ndarray):
            continue
        if v.elem_type is not None:
            want = helper.tensor_dtype_to_np_dtype(v.elem_type)
            if arr.dtype != want:
                raise InputError(f"input {name!r}: dtype {arr.dtype} does not fit the model's {want}")
        shape = v.shape
        if shape is not None:
            if arr.ndim != len(shape):
                raise InputError(f"input {name!r}: shape {arr.shape} does not fit the model's "
                                 f"{_fmt(shape)} (rank {arr.ndim} vs {len(shape)})")
            free = (stacked or {}).get(name)
            for axis, (have, want) in enumerate(zip(arr.shape, shape)):
                if axis == free and have >= 1:
                    continue
                if isinstance(want, int) and want > 0 and have != want:
                    raise InputError(f"input {name!r}: shape {arr.shape} does not fit the model's {_fmt(shape)}")
    return feeds


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
