"""The inputs a checked pipeline measures each pass on, and what each input means.

Where the check data comes from, first that applies:

1. ``--inputs``: all of it; with ``--labels`` it is split (seeded permutation) into a *check* part
   (a third, which per-layer choices see) and a *held-out* part (two thirds) on which only the final
   accuracy is measured;
2. ``--calib``: a held-out quarter of the calibration samples (at least one, at most 64), which the
   passes then do not calibrate on;
3. random inputs, ``RANDOM_SAMPLES`` examples (fewer, ``MIN_RANDOM_SAMPLES`` at least, where one
   example holds so many input elements that 16 would exceed ``RANDOM_ELEMENTS``: a 640x640 image
   is 1.2M; each check then runs 2 examples, not 16, and its dense outputs still give the metrics
   hundreds of thousands of positions): float inputs N(0, 1); integer inputs used as Gather
   indices uniform over the table's rows; mask-like inputs (named ``*mask*`` or cast to float and
   multiplied into scores) 1 for a random-length prefix of each row and 0 after (padding); other
   integer inputs uniform in 0..9; booleans 0/1.

Symbolic dims take their sizes from the data; for random inputs a symbolic leading (batch) dim
holds the samples and every other symbolic dim is ``DEFAULT_DIM`` unless ``--shape`` fixes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvmlite.errors import InputError
from tvmlite.inputs import check_feeds, graph_inputs, read_feeds
from tvmlite.ir.graph import Model
from tvmlite.calibration import CalibrationData, load_calibration

RANDOM_SAMPLES = 16
#: input elements of all random examples together: PP-OCR det at 640x640 checked on 16 examples
#: ran 16 onnxruntime runs of 0.3 s per checked pass (5 s; onnxslim cleans the model in 3.3 s)
RANDOM_ELEMENTS = 3_000_000
MIN_RANDOM_SAMPLES = 2
DEFAULT_DIM = 32
CHECK_FRACTION = 1 / 3  # of labeled --inputs: the part per-layer choices see
CALIB_HOLDOUT = 0.25
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


@dataclass
class CheckSet:
    batches: list[dict]
    source: str
    labels: np.ndarray | None = None  # per example of the batches, in order
    test_batches: list[dict] = field(default_factory=list)  # held-out part (labeled --inputs only)
    test_labels: np.ndarray | None = None
    mask_input: str | None = None  # its feed marks padding positions, left out of the metrics
    notes: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return sum(_rows(b) for b in self.batches)

    def masks(self, batches=None) -> list | None:
        if self.mask_input is None:
            return None
        return [np.asarray(b[self.mask_input]) != 0 for b in (batches or self.batches)]


def _rows(feeds: dict) -> int:
    arr = next(iter(feeds.values()))
    return int(arr.shape[0]) if np.ndim(arr) else 1


def input_roles(model: Model) -> dict[str, tuple]:
    """Per required integer/bool/float input: ("index", rows), ("mask",) or ("plain",)."""
    g = model.graph
    roles = {}
    for name in graph_inputs(g):
        if "mask" in name.lower():
            roles[name] = ("mask",)
            continue
        roles[name] = _role_from_uses(g, name)
    return roles


def _role_from_uses(g, name: str) -> tuple:
    seen, frontier = set(), [name]
    while frontier:
        v = frontier.pop()
        if v in seen:
            continue
        seen.add(v)
        for node in g.consumers(v):
            if node.op_type == "Gather" and len(node.inputs) > 1 and node.inputs[1] == v:
                table = g.const_value(node.inputs[0])
                if table is not None and table.ndim:
                    axis = int(node.attrs.get("axis", 0)) % table.ndim
                    return ("index", int(table.shape[axis]))
            if node.op_type == "Cast" and _feeds_scores(g, node.outputs[0]):
                return ("mask",)
            if node.op_type in _PASS_THROUGH:
                frontier.append(node.outputs[0])
    return ("plain",)


def _feeds_scores(g, value: str, depth: int = 4) -> bool:
    """A float cast of the input is multiplied or subtracted (1 - mask) on its way into scores."""
    frontier = [(value, 0)]
    while frontier:
        v, d = frontier.pop()
        for node in g.consumers(v):
            if node.op_type in ("Mul", "Sub"):
                return True
            if d + 1 < depth and node.op_type in _PASS_THROUGH:
                frontier.append((node.outputs[0], d + 1))
    return False


def random_check_inputs(model: Model, shapes: dict | None = None, samples: int | None = None,
                        seed: int = 0) -> tuple[list[dict], list[str]]:
    """``samples`` random examples (default: RANDOM_SAMPLES, fewer for large examples, see the
    module docstring) that respect each input's role, and notes on how they were made."""
    g = model.graph
    rng = np.random.default_rng(seed)
    roles = input_roles(model)
    shapes = shapes or {}
    names = graph_inputs(g)
    batched = bool(names) and all(_symbolic_lead(g, n, shapes) for n in names)
    notes, defaulted, dims_of = [], [], {}
    for name in names:
        v = g.values[name]
        if v.dtype is None:
            raise InputError(f"input {name!r} has no tensor type: give its values with --inputs")
        shape = shapes.get(name, v.shape)
        if shape is None:
            raise InputError(f"input {name!r} has unknown rank: give its values with --inputs")
        dims = []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif i == 0 and batched:
                dims.append(None)  # the samples
            else:
                dims.append(DEFAULT_DIM)
                defaulted.append(f"{name}[{i}]")
        dims_of[name] = dims
    per_example = None
    if samples is None:
        per_example = sum(int(np.prod([d for d in dims if d is not None], dtype=np.int64))
                          for dims in dims_of.values())
        samples = max(MIN_RANDOM_SAMPLES, min(RANDOM_SAMPLES, RANDOM_ELEMENTS // max(per_example, 1)))
    batches = [{} for _ in range(1 if batched else samples)]
    for name in names:
        dims = tuple(samples if d is None else d for d in dims_of[name])
        for b in batches:
            b[name] = _random_array(rng, g.values[name].dtype, dims, roles[name])
    kinds = {"index": "Gather indices within the table", "mask": "0/1 padding masks"}
    special = [f"{n}: {kinds[r[0]]}" for n, r in roles.items() if r[0] in kinds]
    fewer = f"; not {RANDOM_SAMPLES}: one example holds {per_example:,} input elements" \
        if per_example and samples < RANDOM_SAMPLES else ""
    notes.append(f"random inputs, {samples} examples (floats N(0,1), other integers 0..9"
                 + (f"; {', '.join(special)}" if special else "") + fewer + ")")
    if defaulted:
        notes.append(f"symbolic dims {', '.join(defaulted)} set to {DEFAULT_DIM} (--shape fixes them)")
    for b in batches:
        check_feeds(model, b)
    return batches, notes


def _symbolic_lead(g, name: str, shapes: dict) -> bool:
    shape = shapes.get(name, g.values[name].shape)
    return bool(shape) and not (isinstance(shape[0], int) and shape[0] > 0)


def _random_array(rng, dt: np.dtype, shape: tuple, role: tuple) -> np.ndarray:
    if role[0] == "mask":
        lead = shape[-1] if shape else 1
        keep = rng.integers(1, lead + 1, size=shape[:-1] + (1,)) if shape else 1
        arr = (np.arange(lead) < keep) if shape else np.array(True)
        return np.broadcast_to(arr, shape).astype(dt) if dt.kind != "b" else np.broadcast_to(arr, shape).copy()
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        high = role[1] if role[0] == "index" else 10
        return rng.integers(0, max(high, 1), size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise InputError(f"input with dtype {dt} cannot be made at random: use --inputs")


def to_batches(model: Model, feeds: dict, what: str) -> list[dict]:
    """``feeds`` as one batch when the model takes it, else split along axis 0 into the static
    batch size the model declares (a batch-1 model checked on 360 examples runs 360 times)."""
    try:
        return [check_feeds(model, dict(feeds))]
    except InputError as first:
        g = model.graph
        leads = {g.values[n].shape[0] if g.values[n].shape else None for n in feeds}
        rows = {np.shape(a)[0] if np.ndim(a) else None for a in feeds.values()}
        if len(leads) != 1 or len(rows) != 1:
            raise first
        lead, n = leads.pop(), rows.pop()
        if not (isinstance(lead, int) and lead > 0 and n and n % lead == 0):
            raise InputError(f"{what}: {first}") from None
        out = [{k: a[i:i + lead] for k, a in feeds.items()} for i in range(0, n, lead)]
        check_feeds(model, out[0])
        return out


def split_labeled(feeds: dict, labels: np.ndarray, seed: int = 0):
    """(check feeds, check labels, held-out feeds, held-out labels): a seeded permutation, the
    first CHECK_FRACTION for checks."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    bad = [k for k, a in feeds.items() if np.ndim(a) == 0 or np.shape(a)[0] != n]
    if bad:
        raise InputError(f"--labels has {n} entries but input {bad[0]!r} has shape {np.shape(feeds[bad[0]])}")
    if n < 2:
        return feeds, labels, {}, None
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * CHECK_FRACTION)))
    a, b = np.sort(order[:k]), np.sort(order[k:])
    return ({x: v[a] for x, v in feeds.items()}, labels[a], {x: v[b] for x, v in feeds.items()}, labels[b])


def build_checkset(model: Model, *, inputs=None, labels=None, calib=None, shapes=None,
                   hold_out_calib: bool = True):
    """(CheckSet, calibration for the passes or None): see the module docstring."""
    import os

    mask = next((n for n, r in input_roles(model).items() if r[0] == "mask"), None)
    if inputs is not None:
        feeds = read_feeds(model, inputs)
        src = f"--inputs {os.fspath(inputs)}" if isinstance(inputs, (str, os.PathLike)) else "the given inputs"
        if labels is None:
            batches = to_batches(model, feeds, "--inputs")
            return CheckSet(batches, f"{src} ({sum(_rows(b) for b in batches)} examples)", mask_input=mask), calib
        cf, cl, tf, tl = split_labeled(feeds, labels)
        cs = CheckSet(to_batches(model, cf, "--inputs"), "", cl, mask_input=mask)
        if tl is not None:
            cs.test_batches, cs.test_labels = to_batches(model, tf, "--inputs"), tl
        cs.source = (f"{src}: {len(cl)} examples for checks and per-layer choices, {0 if tl is None else len(tl)} "
                     "held out for the final accuracy (seeded split)")
        return cs, calib
    if calib is not None:
        data = load_calibration(calib, model, shapes=shapes)
        merged = _merge(data.samples)
        n = _rows(merged) if merged else 0
        if merged and n >= 2 and hold_out_calib:
            k = min(64, max(1, int(round(n * CALIB_HOLDOUT))))
            check = {x: a[n - k:] for x, a in merged.items()}
            rest = CalibrationData(to_batches(model, {x: a[:n - k] for x, a in merged.items()}, "--calib"),
                                   f"{data.source} (first {n - k} examples)")
            cs = CheckSet(to_batches(model, check, "--calib"), f"the last {k} of {n} calibration examples "
                          f"({data.source}), held out from calibration", mask_input=mask)
            return cs, rest
        samples = data.samples
        if merged is None and len(samples) >= 2 and hold_out_calib:  # samples of different sizes
            k = min(64, max(1, int(round(len(samples) * CALIB_HOLDOUT))))
            rest = CalibrationData(samples[:-k], f"{data.source} (first {len(samples) - k} samples)")
            cs = CheckSet([b for s in samples[-k:] for b in to_batches(model, s, "--calib")],
                          f"the last {k} of {len(samples)} calibration samples ({data.source}), held out from "
                          "calibration", mask_input=mask)
            return cs, rest
        src = f"the calibration data ({data.source}; too small to hold a part out)" if hold_out_calib else \
            f"the calibration data ({data.source}; no pass calibrates on it)"
        return CheckSet([b for s in samples for b in to_batches(model, s, "--calib")], src, mask_input=mask), data
    batches, notes = random_check_inputs(model, shapes)
    return CheckSet(batches, notes[0], mask_input=mask, notes=notes[1:]), None


def _merge(samples: list[dict]) -> dict | None:
    """One feed dict of all samples when they share every dim but the batch, else None."""
    try:
        return {n: np.concatenate([s[n] for s in samples], axis=0) for n in samples[0]}
    except (ValueError, KeyError):
        return None
