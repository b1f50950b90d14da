"""Dynamic shapes as bucketed builds: one artifact, several exact-shape plans.

``--shape input_ids=1x1..512`` gives a dim a range. Dims are tied by the model's symbol: every
input dim that carries the same symbolic name takes the same run-time value, so a range on one of
them is the range of all (two different ranges on one symbol are refused). Each bucket is an
ordinary exact-shape build (NAME.so.bN.so with its .json plan); NAME.so itself is the largest
bucket, so a loader that knows nothing of buckets still runs it at the top of the range. The
buckets share one constants file, NAME.so.npz, holding each distinct array once (params.py): the
weights are the same in every bucket, so the artifact is about one exact build plus the code and
the length-dependent constants of each bucket, and a process that loads several buckets holds
each weight once (they share one pool of TVM tensors).
NAME.so.buckets.json says which symbol each dim carries, the ranges, the buckets and, per symbol,
whether a value between buckets may be padded up to the next one.

Padding is allowed only for a symbol that (1) appears in an input whose name says it is an
attention mask (integer or float, padded with 0, so the padded positions are masked out), and
(2) passes a check at build time: onnxruntime runs the model at a length between two buckets,
unpadded and padded to the next bucket, and the outputs (sliced back along every dim that grew
with the padding) must agree to 1e-4. Otherwise only the bucket values themselves run and any
other value is refused with one line: never a silent wrong answer from padding.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from tvmlite.backends.tvm.params import SharedConsts
from tvmlite.errors import InputError, TvmliteError
from tvmlite.inputs import graph_inputs, is_int_text, parse_shape_overrides

FORMAT = "tvmlite-buckets-1"
MAX_BUCKETS = 16
_RANGE = re.compile(r"^([0-9]+)\.\.([0-9]+)$")


def parse_ranges(items) -> tuple[dict, dict]:
    """``["ids=1x1..512"]`` -> ({"ids": (1, (1, 512))}, ...): fixed dims as ints, ranged dims as
    (lo, hi). Returns (shapes with ranges, plain shapes for the items without a range)."""
    ranged, plain = {}, []
    for item in items or ():
        name, eq, dims = item.partition("=")
        if not eq or ".." not in dims:
            plain.append(item)
            continue
        shape = []
        for d in dims.split("x"):
            d = d.strip()
            if ".." not in d:
                if not is_int_text(d) or int(d) <= 0:
                    raise InputError(f"--shape {item!r}: {d!r} is not a positive dimension")
                shape.append(int(d))
                continue
            m = _RANGE.match(d)
            if not m:
                raise InputError(f"--shape {item!r}: range {d!r} must be LO..HI with integers")
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo < 1 or lo > hi:
                raise InputError(f"--shape {item!r}: range {d!r} needs 1 <= LO <= HI")
            shape.append((lo, hi))
        if name in ranged:
            raise InputError(f"--shape {name}: given twice")
        ranged[name] = tuple(shape)
    twice = set(ranged) & set(parse_shape_overrides(plain))  # which also refuses a plain name twice
    if twice:
        raise InputError(f"--shape {sorted(twice)[0]}: given twice")
    return ranged, plain


def parse_bucket_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        vals = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"--buckets {text!r}: expected comma-separated integers, e.g. 16,64,128") from None
    if not vals or vals[0] < 1:
        raise InputError(f"--buckets {text!r}: bucket values must be positive")
    return vals


def bucket_values(lo: int, hi: int, given: list[int] | None) -> list[int]:
    """The given values inside the range plus HI (so every value has a bucket at or above it);
    by default the powers of two in (LO, HI) plus LO and HI."""
    if given is not None:
        vals = sorted({v for v in given if lo <= v <= hi} | {hi})
    else:
        vals = sorted({lo, hi} | {1 << k for k in range(hi.bit_length()) if lo < (1 << k) < hi})
    if len(vals) > MAX_BUCKETS:
        raise InputError(f"--shape range {lo}..{hi} makes {len(vals)} buckets, more than {MAX_BUCKETS}: "
                         f"give fewer with --buckets")
    return vals


def symbols_of(model, ranged: dict) -> tuple[dict, dict]:
    """Per input, the symbol each ranged dim carries, and per symbol its range. A range on a dim
    the model fixes, or two ranges on one symbol, is refused."""
    g = model.graph
    names = graph_inputs(g)
    layout, sym_range, fixed_sym = {}, {}, {}
    for name, shape in ranged.items():
        if name not in names:
            raise InputError(f"--shape {name}: the model has no input {name!r} (inputs: {', '.join(names)})")
        decl = g.values[name].shape
        if decl is None or len(decl) != len(shape):
            raise InputError(f"--shape {name}: rank {len(shape)}, the model declares {decl}")
        dims = []
        for i, (d, want) in enumerate(zip(decl, shape)):
            if not isinstance(want, tuple):
                if isinstance(d, str) and d:
                    fixed_sym.setdefault(d, want)
                dims.append(want)
                continue
            if isinstance(d, int) and d > 0:
                raise InputError(f"--shape {name}: dim {i} is fixed to {d} by the model, it cannot take a range")
            sym = d if isinstance(d, str) and d else f"{name}:{i}"
            if sym_range.setdefault(sym, want) != want:
                raise InputError(f"--shape {name}: symbol {sym!r} has range {want[0]}..{want[1]} here and "
                                 f"{sym_range[sym][0]}..{sym_range[sym][1]} on another input")
            dims.append(sym)
        layout[name] = dims
    # an input not named whose dims carry a ranged symbol gets it too (tied by name)
    for name in names:
        decl = g.values[name].shape
        if name in layout or decl is None:
            continue
        if any(isinstance(d, str) and d in sym_range for d in decl):
            dims = [d if d in sym_range else fixed_sym.get(d, d) if isinstance(d, str) else d for d in decl]
            if not all(isinstance(d, int) and d > 0 or d in sym_range for d in dims):
                raise InputError(f"input {name!r} has shape {decl}: give it with --shape too")
            layout[name] = dims
    return layout, sym_range


def sizes_the_model_takes(model, layout: dict, per_sym: dict, fixed: dict) -> tuple[list, dict]:
    """(indices of the buckets the model takes, {index: (values, why)} of those it does not), by
    onnx's strict shape inference at each bucket's shapes (a Gemm whose inner dims then differ).
    Where inference fails with the ranged dims left symbolic too, it cannot tell: all are kept."""
    from tvmlite.export.shapes import shape_conflict

    n = max(len(v) for v in per_sym.values())
    if shape_conflict(model, concrete(layout, {s: s for s in per_sym}, fixed)) is not None:
        return list(range(n)), {}
    kept, refused = [], {}
    for i in range(n):
        values = {s: v[i] for s, v in per_sym.items()}
        why = shape_conflict(model, concrete(layout, values, fixed))
        if why is None:
            kept.append(i)
        else:
            refused[i] = (values, why)
    return kept, refused


def check_exact_shapes(model, shapes: dict) -> None:
    """InputError with one line where the model cannot take the exact ``shapes`` given with
    --shape (shape inference refuses a node there, and passes with the model's own shapes)."""
    from tvmlite.export.shapes import check_input_shapes, shape_conflict

    check_input_shapes(model, shapes)  # names the model's inputs and fits their declared shapes first
    if shapes and shape_conflict(model, {}) is None:
        why = shape_conflict(model, shapes)
        if why:
            given = " ".join(f"{n}={'x'.join(map(str, d))}" for n, d in shapes.items())
            raise InputError(f"--shape {given}: the model does not take these shapes: {why}")


def _where(layout: dict, values: dict) -> str:
    """'input 'x' dim 2 (h) = 40' for each symbol of ``values``."""
    parts = []
    for s, v in values.items():
        name, i = next((n, i) for n, dims in layout.items() for i, d in enumerate(dims) if d == s)
        parts.append(f"input {name!r} dim {i} ({s}) = {v}")
    return ", ".join(parts)


def concrete(layout: dict, values: dict, fixed: dict) -> dict:
    shapes = dict(fixed)
    for name, dims in layout.items():
        shapes[name] = tuple(values[d] if isinstance(d, str) else d for d in dims)
    return shapes


def mask_inputs(model, layout: dict, sym: str) -> list[str]:
    return [n for n, dims in layout.items() if sym in dims and "mask" in n.lower()
            and np.dtype(model.graph.values[n].dtype).kind in "iuf"]


def padding_safe(model, layout: dict, sym: str, lo: int, hi: int, fixed: dict, out_dims: dict) -> str | None:
    """None when padding ``sym`` is proven safe on a sample, else the reason it is not. Records in
    ``out_dims`` which output dims grew with the padding (they are sliced back at run time)."""
    from tvmlite.inputs import random_inputs
    from tvmlite.runtime.ort import ort_session

    if not mask_inputs(model, layout, sym):
        return "no attention-mask input carries it"
    if hi - lo < 2:
        return "the range is too short to test padding"
    short, long_ = lo + (hi - lo) // 3 or 1, hi
    others = {s: 1 for dims in layout.values() for s in dims if isinstance(s, str)}
    try:
        sess = ort_session(model)
        feeds = random_inputs(model, concrete(layout, {**others, sym: short}, fixed), seed=3)
        for n, v in feeds.items():  # ids 0/1: in range of any table (token types have two rows)
            if v.dtype.kind in "iu":
                feeds[n] = (v % 2).astype(v.dtype)
        for n in mask_inputs(model, layout, sym):
            feeds[n] = np.ones_like(feeds[n])
        ref = sess.run(None, feeds)
        padded = pad_feeds(model, layout, feeds, {sym: long_}, {sym: True})
        got = sess.run(None, padded)
    except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run unpadded is not proven safe
        return f"onnxruntime could not run the check ({str(e).splitlines()[0][:80]})"
    names = [o.name for o in sess.get_outputs()]
    for name, r, o in zip(names, ref, got):
        grown = [sym if a != b else None for a, b in zip(np.shape(r), np.shape(o))]
        o = slice_back(np.asarray(o), np.shape(r))
        if o is None:
            return "an output changes shape with it in a way that cannot be sliced back"
        r = np.asarray(r)
        if r.dtype.kind == "f":
            if not np.allclose(o, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max(initial=0)))):
                return "padded and unpadded outputs differ (the padded positions leak into the result)"
        elif not np.array_equal(o, r):
            return "padded and unpadded outputs differ"
        if any(grown):
            prev = out_dims.setdefault(name, [None] * len(grown))
            out_dims[name] = [g or p for g, p in zip(grown, prev)]
    return None


def pad_feeds(model, layout: dict, feeds: dict, target: dict, paddable: dict) -> dict:
    out = dict(feeds)
    for name, dims in layout.items():
        if name not in feeds:
            continue
        a = np.asarray(feeds[name])
        widths = [(0, target[d] - a.shape[i]) if isinstance(d, str) and paddable.get(d) else (0, 0)
                  for i, d in enumerate(dims)]
        if any(w for _, w in widths):
            out[name] = np.pad(a, widths)  # zeros: pad tokens, and mask 0 on the padded positions
    return out


def slice_back(a: np.ndarray, shape) -> np.ndarray | None:
    if a.ndim != len(shape) or any(s > t for s, t in zip(shape, a.shape)):
        return None
    return a[tuple(slice(0, s) for s in shape)]


def _narrowed(sym: dict) -> str:
    """' (the build narrowed 30..40: ...)' where the build dropped buckets the model does not take."""
    if "narrowed_from" not in sym:
        return ""
    lo, hi = sym["narrowed_from"]
    return f" (the build narrowed {lo}..{hi}: the model does not take the bucket size(s) {', '.join(sym['refused'])})"


def read_manifest(path: str) -> dict:
    p = path + ".buckets.json"
    try:
        with open(p) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise TvmliteError(f"{p}: cannot read the bucket table ({e})") from None
    try:
        assert m["format"] == FORMAT
        syms = m["symbols"]
        for s, r in syms.items():
            lo, hi = int(r["range"][0]), int(r["range"][1])
            assert 1 <= lo <= hi and isinstance(r["pad"], bool)
            if "narrowed_from" in r or "refused" in r:  # written together (build_bucketed)
                assert len(r["narrowed_from"]) == 2 and all(isinstance(v, int) for v in r["narrowed_from"])
                assert r["refused"] and all(isinstance(k, str) and isinstance(v, str) for k, v in r["refused"].items())
        layout = m["inputs"]
        assert all(isinstance(d, int) or d in syms for dims in layout.values() for d in dims)
        assert 1 <= len(m["buckets"]) <= MAX_BUCKETS
        for b in m["buckets"]:
            assert set(b["values"]) == set(syms) and isinstance(b["lib"], str)
            assert os.path.basename(b["lib"]) == b["lib"] and b["lib"].endswith(".so")
            assert all(syms[s]["range"][0] <= v <= syms[s]["range"][1] for s, v in b["values"].items())
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
        raise TvmliteError(f"{p}: the bucket table is malformed or not of format {FORMAT}") from None
    return m


class BucketedModel:
    """A bucketed artifact: picks the bucket per call, pads where the table allows, slices back."""

    def __init__(self, path: str, manifest: dict, load):
        self.path, self.m, self._load = path, manifest, load
        self._loaded = {}
        self._pool: dict = {}  # the shared constants, one TVM tensor each, for every bucket
        top = self._plan(manifest["buckets"][-1])
        self.input_names, self.output_names = top.input_names, top.output_names
        self.input_shapes, self.input_dtypes = top.input_shapes, top.input_dtypes
        self.summary = f"{len(manifest['buckets'])} buckets over " + ", ".join(
            f"{s}={r['range'][0]}..{r['range'][1]}{' (padded)' if r['pad'] else ''}" for s, r in manifest["symbols"].items())

    @property
    def host_ops(self) -> list[str]:  # on demand: the report imports the compiler (0.5 s)
        return self._plan(self.m["buckets"][-1]).host_ops

    def _plan(self, b):
        lib = b["lib"]
        if lib not in self._loaded:
            self._loaded[lib] = self._load(os.path.join(os.path.dirname(self.path) or ".", lib), pool=self._pool)
        return self._loaded[lib]

    def pick(self, feeds: dict) -> tuple[dict, dict]:
        syms, values = self.m["symbols"], {}
        for name, dims in self.m["inputs"].items():
            if name not in feeds:
                continue
            shape = np.shape(feeds[name])
            if len(shape) != len(dims):
                raise InputError(f"input {name!r}: rank {len(shape)}, the build takes rank {len(dims)}")
            for i, d in enumerate(dims):
                if isinstance(d, int):
                    if shape[i] != d:
                        raise InputError(f"input {name!r}: dim {i} is {shape[i]}, the build fixes it to {d}")
                    continue
                lo, hi = syms[d]["range"]
                why = syms[d].get("refused", {}).get(str(shape[i]))
                if why:
                    raise InputError(f"input {name!r}: dim {i} ({d}) is {shape[i]}, a size the model does not take "
                                     f"(found at build: {why})")
                if not lo <= shape[i] <= hi:
                    raise InputError(f"input {name!r}: dim {i} ({d}) is {shape[i]}, outside the built range {lo}..{hi}"
                                     + _narrowed(syms[d]))
                if values.setdefault(d, shape[i]) != shape[i]:
                    raise InputError(f"input {name!r}: dim {i} ({d}) is {shape[i]} but {values[d]} on another input "
                                     f"(the same symbol takes one value)")
        for b in self.m["buckets"]:
            if all(b["values"][s] == v or (syms[s]["pad"] and b["values"][s] > v) for s, v in values.items()):
                return b, values
        raise InputError("no bucket runs " + ", ".join(f"{s}={v}" for s, v in values.items())
                         + " (padding is not proven safe there; buckets: "
                         + "; ".join(",".join(f"{s}={v}" for s, v in b["values"].items()) for b in self.m["buckets"]) + ")")

    def run(self, feeds: dict) -> list[np.ndarray]:
        b, values = self.pick(feeds)
        plan = self._plan(b)
        if all(b["values"][s] == v for s, v in values.items()):
            return plan.run(feeds)
        paddable = {s: r["pad"] for s, r in self.m["symbols"].items()}
        outs = plan.run(pad_feeds(None, self.m["inputs"], feeds, b["values"], paddable))
        shapes = self.m.get("outputs", {})
        res = []
        for name, o in zip(plan.output_names, outs):
            dims = shapes.get(name)
            if dims is None:
                res.append(o)
                continue
            res.append(o[tuple(slice(0, values.get(d, o.shape[i])) if isinstance(d, str) else slice(None)
                               for i, d in enumerate(dims))])
        return res


@dataclass
class Built:
    """What the build command reports of one bucket (the compiled model itself is let go: holding
    every bucket's tensors at once would hold every weight once per bucket)."""
    summary: str
    build_seconds: float
    cached: bool
    host_ops: list = field(default_factory=list)
    winograd: list = field(default_factory=list)  # CompiledModel.winograd's lines


def build_bucketed(model, ranged: dict, fixed: dict, given: list[int] | None, output: str, txn, *,
                   strict: bool = False, compile_model=None):
    """Build one exact-shape plan per bucket into ``output`` (the largest bucket) and
    ``output.bN.so`` beside it, their shared constants (``output.npz``) and the bucket table.
    Returns (table, [(values, Built)])."""
    layout, sym_range = symbols_of(model, ranged)
    if len(sym_range) > 1 and given is None:
        raise InputError("--shape: ranges on several symbols need --buckets (the buckets of all "
                         "symbols are built together, value i of each)")
    per_sym = {s: bucket_values(lo, hi, given) for s, (lo, hi) in sym_range.items()}
    n = max(len(v) for v in per_sym.values())
    if any(len(v) != n for v in per_sym.values()):
        raise InputError("--shape: the ranges give different bucket counts: give ranges with the same ends")
    kept, refused = sizes_the_model_takes(model, layout, per_sym, fixed)
    if not kept:  # every bucket: one line with the first (the input, its size, the node)
        vals, why = next(iter(refused.values()))
        raise InputError(f"--shape: the model takes none of the bucket sizes; at {_where(layout, vals)}: {why}")
    n = len(kept)
    out_dims, symbols = {}, {}
    for s, (lo, hi) in sym_range.items():
        vals = [per_sym[s][i] for i in kept]
        gone = sorted(per_sym[s][i] for i in refused)
        new_lo = min(vals) if gone and gone[0] < min(vals) else lo
        why = padding_safe(model, layout, s, new_lo, max(vals), fixed, out_dims)
        symbols[s] = {"range": [new_lo, max(vals)], "pad": why is None, "why_not_padded": why}
        if refused:  # the sizes the model cannot take, and why: said by the build and at run time
            symbols[s]["narrowed_from"] = [lo, hi]
            symbols[s]["refused"] = {str(per_sym[s][i]): why for i, (_, why) in refused.items()}
        per_sym[s] = vals
    base = os.path.basename(output)
    table = {"format": FORMAT, "symbols": symbols, "inputs": layout, "outputs": out_dims, "buckets": []}
    built = []
    shared = SharedConsts(base + ".npz")
    npz = txn.file(output + ".npz", "constants", existing_ok=True)
    for i in range(n):
        values = {s: v[i] for s, v in per_sym.items()}
        lib = base if i == n - 1 else f"{base}.b{i}.so"
        path = os.path.join(os.path.dirname(output) or ".", lib)
        for p, what in ((path, "bucket library"), (path + ".json", "run plan")):
            txn.file(p, what, existing_ok=True)
        cm = compile_model(model, concrete(layout, values, fixed), strict=strict)
        cm.save(path, outputs=txn, shared=shared)
        table["buckets"].append({"values": values, "lib": lib})
        built.append((values, Built(cm.summary, cm.build_seconds, cm.cached, list(cm.host_ops), cm.winograd)))
        del cm
    shared.write(npz)
    table["constants"] = {"file": shared.file_name, "arrays": len(shared.arrays),
                          "bytes": shared.stored_bytes, "unshared_bytes": shared.offered_bytes}
    staged = txn.file(output + ".buckets.json", "bucket table")
    with open(staged, "w") as f:
        json.dump(table, f, indent=1)
    return table, built
