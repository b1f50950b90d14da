"""Fuzzing what users build from a file they were handed: the fast preset's output, bucketed
(ranged-shape) TVM builds, and hostile files and paths given to `tvmlite build` / `tvmlite run NAME.so`.

The mutants are test_fuzz_semantic's (its seeds and mutators); test_tvm_fuzz_cases fuzzes the plain
exact-shape TVM build of them. Three kinds, each a function returning its figures:

- ``fast_fuzz(n, seed)``: each mutant the NumPy backend and onnxruntime run goes through ``optimize``
  with the fast preset's passes (the default preset; its timing decisions off, so every change
  that fits the error budget stays and the output holds the most rewriting: int8, low rank,
  fusions; every ``real_every``-th mutant gets the preset itself, timing included). It must end
  in a one-line refusal or a model that onnxruntime runs within the kept passes' error budget of
  the input's outputs, and the TVM build of that model must give onnxruntime's outputs of it
  (float: 1e-3; with int8 in it: within the budget).
- ``bucket_fuzz(n, seed)``: one dim of one input of each mutant made symbolic and built with
  `tvmlite build --shape NAME=..LO..HI..`: the build ends in one line or an artifact whose every
  bucket value gives the NumPy backend's outputs at that size, a size between buckets runs (where
  padding was proven safe) or is refused with one line, and a size outside the range is refused
  with one line. Seeds: test_fuzz_semantic's plus test_tvm_dynamic's masked pooling (padded buckets).
- ``cli_fuzz(n, seed)``: a built artifact (plain and bucketed) damaged at random (library, plan,
  constants or bucket table truncated, bytes flipped, swapped for another model's, deleted or made a
  directory; inputs of wrong dtype, rank, shape or none; output paths in missing directories, equal
  to an input, or directories) and run through `tvmlite build` / `tvmlite run`: exit status 0 with
  the intact artifact's outputs, or exit 2 with one line on stderr, no traceback, nothing written,
  no input changed.

Sizes the model cannot take (digits' 32 rows ranged to 40: its Gemm's inner dims then differ):
the build asks shape inference at each bucket and drops those it fails, saying so (buckets.py);
a range it takes nowhere is one line at build. A size the model does not take at run time is
refused by both the NumPy backend and the build; the fuzzer accepts a refused bucket value only
where the NumPy backend refuses it too.

First campaigns (session 27): fast 1,010 mutants (seeds 1, 2, 7, 13), 174 compared (47 int8 builds
among the last 96), 0 bad; bucket 1,040 (seeds 1, 2, 3, 9, 14), 202 built and compared, 2 bad, both
fixed (an int mask's view read by a host call: test_tvm_fuzz_cases; a scalar constant output given
the stored [1] of another: test_tvm_dynamic); cli 2,260 commands (seeds 1-5, 11, 17), 0 bad, and '²'
in --shape (an internal error, fixed: test_tvm_dynamic, test_checks) once added to its list.

CI runs a slow-marked smoke run of each (a few seconds). Longer runs by hand::

    TVMLITE_CACHE=/tmp/tvmcache python tests/test_fuzz_builds.py fast 200 1     # kind, mutants, seed
    TVMLITE_CACHE=/tmp/tvmcache python tests/test_fuzz_builds.py bucket 100 1
    TVMLITE_CACHE=/tmp/tvmcache python tests/test_fuzz_builds.py cli 300 1
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import traceback
import warnings

import numpy as np
import onnx
import pytest

HERE = pathlib.Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))

from tvm_support import private_tvm_cache, require_tvm  # noqa: E402,F401 - the fixture is autouse

require_tvm()

import test_fuzz_semantic as F  # noqa: E402
from helpers import cli_main  # noqa: E402
from test_tvm_fuzz_cases import TYPE_CONFLICT  # noqa: E402
from tvmlite import limits  # noqa: E402
from tvmlite.backends.numpy import compile_model as numpy_plan  # noqa: E402
from tvmlite.backends.tvm import compile_model as tvm_compile  # noqa: E402
from tvmlite.backends.tvm import load_module  # noqa: E402
from tvmlite.errors import TvmliteError  # noqa: E402

#: small limits keep each mutant fast (as in test_tvm_fuzz_cases)
SMALL = dict(max_loop_iterations=10_000, max_tensor_elements=2**22, max_tensor_bytes=2**26)


def _stats(*keys) -> dict:
    return {"tried": 0, **{k: 0 for k in keys}, "bad": []}


def _mutants(st: dict, n: int, seed: int, models: dict, seeds: tuple = ()):
    """(rng, seed name, mutant, what was changed), ``n`` of them, the seeds in turn (only those
    named in ``seeds`` when given), counted in st["tried"]."""
    rng = random.Random(seed)
    names = sorted(k for k in models if not seeds or k in seeds)
    while st["tried"] < n:
        which = names[st["tried"] % len(names)]
        data, what = F.mutate(models[which], rng)
        st["tried"] += 1
        yield rng, which, data, what


def _tally(st: dict, verdict: str, line: str, log) -> None:
    """Count ``verdict``; a bad one keeps its line (and logs it)."""
    if verdict != "bad":
        st[verdict] += 1
        return
    st["bad"].append(line[:1500])
    if log:
        log(line)


def _reference(data: bytes, shapes=None):
    """(model, feeds, NumPy outputs) of a mutant, or None where the NumPy backend refuses it."""
    try:
        with F.guard():
            m = F.load(data)
            feeds = F.random_inputs(m, shapes)
            return m, feeds, numpy_plan(m).run(feeds)
    except (TvmliteError, F.Hang, MemoryError):
        return None


def _has_nan(outs) -> bool:
    return any(np.asarray(o).dtype.kind == "f" and np.isnan(o).any() for o in outs)


def _rel(got, want) -> float:
    """test_fuzz_semantic's tolerance failing, as tvmlite.metrics' 'rel' error: max |a - b| over
    the spread of b (inf on a shape or NaN mismatch)."""
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if a.shape != b.shape or (np.isnan(a) != np.isnan(b)).any():
        return float("inf")
    if not b.size:
        return 0.0
    ok = ~np.isnan(b)
    spread = float(np.ptp(b[ok])) if ok.any() else 0.0
    diff = float(np.abs(a - b)[ok].max(initial=0))
    return diff / max(spread, 1e-6 * max(1.0, float(np.abs(b[ok]).max(initial=0))))


# ----------------------------------------------------------------------------- (a) the fast preset
def fast_spec() -> str:
    from tvmlite.optimize import PRESETS

    return PRESETS["fast"].replace("measure=true", "measure=false")


LOSSY_OPS = ("QuantizeLinear", "DynamicQuantizeLinear", "QLinear", "MatMulInteger", "ConvInteger",
             "GatherBlockQuantized", "MatMulNBits")


def check_fast(data: bytes, real: bool = False) -> tuple[str, str]:
    """("ok" | "ok-int8" | "refused" | "skip" | "nan" | "bad", detail) for one mutant through the fast preset
    and the TVM build of its output."""
    from tvmlite.export import export_model
    from tvmlite.optimize import optimize

    ref = _reference(data)
    if ref is None:
        return "skip", "the NumPy backend refuses it"
    m, feeds, _ = ref
    want = F._ort_outputs(data, feeds)
    if want is None:
        return "skip", "onnxruntime refuses it"
    kw = {"preset": "fast", "repeats": 3} if real else {"passes": fast_spec()}
    try:
        with F.guard(120), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, report = optimize(data, check=True, progress=False, **kw)
            written = export_model(model).SerializeToString()
    except TvmliteError as e:
        return ("refused", str(e)) if F._ok_error(e) else ("bad", f"optimize: bad message {e!r}")
    except F.Hang as e:
        return "bad", f"optimize hang: {e}"
    except Exception:  # noqa: BLE001 - that is what we look for
        return "bad", "optimize: " + traceback.format_exc(limit=-3)
    kept = [r for r in report.rows[1:] if r.kept]
    budget = max([v for r in kept for v in (r.budget or {}).values()] or [1e-3])
    got = F._ort_outputs(written, feeds)
    if got is None:
        return "bad", "onnxruntime refuses the fast preset's output (it ran the input)"
    if _has_nan(want):
        return "nan", ""
    # the check ran on its own check set: twice the budget on these feeds
    errs = [_rel(a, b) for a, b in zip(got, want)]
    if len(got) != len(want) or max(errs, default=0) > 2 * budget + 1e-6:
        return "bad", (f"the fast preset's output differs from the input in onnxruntime: rel errors {errs}, "
                       f"budget {budget} (kept: {[r.name for r in kept]})")
    lossy = any(op in n.op_type for n in onnx.load_from_string(written).graph.node for op in LOSSY_OPS)
    try:
        with F.guard(180), limits.override(**SMALL):
            cm = tvm_compile(F.load(written), {k: v.shape for k, v in feeds.items()})
    except TvmliteError as e:
        return ("refused", "TVM: " + str(e)) if F._ok_error(e) else ("bad", f"TVM build: bad message {e!r}")
    except F.Hang as e:
        return "bad", f"TVM build hang: {e}"
    except Exception:  # noqa: BLE001
        return "bad", "TVM build: " + traceback.format_exc(limit=-3)
    try:  # built: onnxruntime ran these feeds, so must the build (a refusal now is the plan's fault)
        with F.guard(180), limits.override(**SMALL):
            tv = cm.run(feeds)
    except TvmliteError as e:
        if TYPE_CONFLICT.search(str(e)):
            return "refused", f"TVM run: {e}"
        return "bad", f"TVM run refused what onnxruntime ran: {e}"
    except Exception:  # noqa: BLE001
        return "bad", "TVM run: " + traceback.format_exc(limit=-3)
    if _has_nan(got):
        return "nan", ""
    errs = [_rel(a, b) for a, b in zip(tv, got)]
    tol = budget if lossy else 1e-3
    if len(tv) != len(got) or max(errs, default=0) > tol:
        return "bad", f"TVM build of the fast preset's output differs from onnxruntime's: rel errors {errs} (tol {tol})"
    return ("ok-int8" if lossy else "ok"), ""


def fast_fuzz(n: int, seed: int, real_every: int = 8, seeds: tuple = (), log=None) -> dict:
    st = _stats("skip", "refused", "ok", "ok-int8", "nan")
    with np.errstate(all="ignore"):
        for _, which, data, what in _mutants(st, n, seed, F.seed_models(), seeds):
            real = real_every and (st["tried"] - 1) % real_every == 0
            verdict, detail = check_fast(data, real)
            _tally(st, verdict, f"[{which}] {what}{' (preset fast)' if real else ''}: {detail}", log)
    return st


# --------------------------------------------------------------------------- (b) bucketed builds
def _dynamic_variant(data: bytes, rng) -> tuple[bytes, str, int, int] | None:
    """The mutant with one dim of one input made symbolic ('n'), or, for the pooled seed, its
    'seq' (which ties x and its mask): (bytes, input name, dim index, the size it had; 0: none)."""
    p = onnx.ModelProto()
    p.ParseFromString(data)
    inits = {t.name for t in p.graph.initializer}
    cands = [(vi, i, d.dim_value) for vi in p.graph.input if vi.name not in inits
             and vi.type.HasField("tensor_type")
             for i, d in enumerate(vi.type.tensor_type.shape.dim) if d.HasField("dim_value") and 0 < d.dim_value <= 64]
    named = [(vi, i, 0) for vi in p.graph.input if vi.type.HasField("tensor_type")
             for i, d in enumerate(vi.type.tensor_type.shape.dim) if d.dim_param == "seq"]
    if named:  # the pooled seed: its 'seq' already ties x and mask
        vi, i, _ = named[0]
        return p.SerializeToString(), vi.name, i, 0
    if not cands:
        return None
    vi, i, size = rng.choice(cands)
    vi.type.tensor_type.shape.dim[i].dim_param = "n"
    return p.SerializeToString(), vi.name, i, size


def _one_line(err: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return (len(lines) == 1 and lines[0].startswith("tvmlite: error: ") and "internal error" not in err
            and "Traceback" not in err)


def _snapshot(d) -> dict:
    out = {}
    for root, dirs, files in os.walk(d):
        for f in files + dirs:
            p = os.path.join(root, f)
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
    return out


def check_bucketed(data: bytes, rng, tmp: str) -> tuple[str, str]:
    var = _dynamic_variant(data, rng)
    if var is None:
        return "skip", "no input dim to range"
    data, name, dim, size = var
    try:
        m = F.load(data)
    except TvmliteError:
        return "skip", "load refuses the variant"
    # every other input at its declared (or default) shape
    try:
        base = F.random_inputs(m)
    except TvmliteError:
        return "skip", "no random inputs"
    size = size or base[name].shape[dim]
    lo, hi = max(1, size - rng.choice([0, 1, 2])), size + rng.choice([0, 1, 3, 6, 20])  # 20: past what digits takes
    mid = (lo + hi) // 2
    buckets = sorted({mid, hi}) if hi - lo >= 2 and rng.random() < 0.7 else None
    # the symbol's other inputs (the pooled seed's mask) take the range too
    tied = [n for n in base if n != name and n in {vi.name for vi in onnx.load_from_string(data).graph.input}
            and any(d == "seq" for d in (m.graph.values[n].shape or ()))]
    args = []
    for n, a in base.items():
        dims = [str(d) for d in a.shape]
        if n == name:
            dims[dim] = f"{lo}..{hi}"
        elif n in tied:
            dims[[i for i, d in enumerate(m.graph.values[n].shape) if d == "seq"][0]] = f"{lo}..{hi}"
        args += ["--shape", f"{n}={'x'.join(dims) if dims else ''}"]
    src, so = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.so")
    with open(src, "wb") as f:
        f.write(data)
    before = _snapshot(tmp)
    cmd = ["build", src, "-o", so, *args] + (["--buckets", ",".join(map(str, buckets))] if buckets else [])
    with F.guard(600):
        rc, out, err = cli_main(*cmd)
    if rc != 0:
        if not _one_line(err):
            return "bad", f"build {args}: exit {rc}, not one line: {err[-800:]}"
        if _snapshot(tmp) != before:
            return "bad", f"build {args} refused ({err.strip()}) but wrote files"
        return "refused", err.strip()
    try:
        art = load_module(so)
    except TvmliteError as e:
        return "bad", f"the artifact just built does not load: {e}"
    with open(so + ".buckets.json") as f:
        table = json.load(f)
    bucket_vals = {b["values"][s] for b in table["buckets"] for s in b["values"]}
    padded = any(r["pad"] for r in table["symbols"].values())
    narrowed = next((r for r in table["symbols"].values() if "narrowed_from" in r), {})
    narrowed = {**narrowed, "refused": {int(v) for v in narrowed.get("refused", {})}}
    verdict = "ok-narrowed" if narrowed.get("narrowed_from") else "ok"
    for s in sorted({lo, mid, hi, *bucket_vals, hi + 1, lo - 1} - {0}):
        shapes = {n: tuple(s if (n == name and i == dim) or (n in tied and m.graph.values[n].shape[i] == "seq")
                           else d for i, d in enumerate(a.shape)) for n, a in base.items()}
        feeds = {n: F.random_inputs(m, shapes, seed=s)[n] for n in base}
        if "mask" in feeds:
            feeds["mask"] = np.ones_like(feeds["mask"])
        inside = lo <= s <= hi
        try:
            with F.guard(), limits.override(**SMALL):
                want = numpy_plan(m).run(feeds)
        except (TvmliteError, F.Hang, MemoryError):
            want = None  # the model does not run at this size: a refusal is right, no outputs to compare
        try:
            with F.guard(60), limits.override(**SMALL):
                got = art.run(feeds)
        except TvmliteError as e:
            if not F._ok_error(e):
                return "bad", f"size {s}: bad message {e!r}"
            if inside and want is not None and (s in bucket_vals or padded) and not TYPE_CONFLICT.search(str(e)):
                return "bad", f"size {s} ({'a bucket value' if s in bucket_vals else 'padded'}) was refused: {e}"
            if want is not None and s in narrowed.get("refused", {}):  # shape inference vs the NumPy backend
                return "bad", f"size {s}: the build found the model does not take it, the NumPy backend runs it: {e}"
            continue
        except Exception:  # noqa: BLE001
            return "bad", f"size {s}: " + traceback.format_exc(limit=-3)
        if not inside:
            return "bad", f"size {s} outside {lo}..{hi} ran"
        if want is None:
            continue
        if _has_nan(want):
            verdict = "nan"
            continue
        if len(got) != len(want) or not all(F._same(a, b) for a, b in zip(got, want)):
            errs = [_rel(a, b) for a, b in zip(got, want)]
            return "bad", f"size {s} (range {lo}..{hi}, buckets {sorted(bucket_vals)}): outputs differ, rel {errs}"
    return verdict, ""


def bucket_seeds() -> dict:
    from test_tvm_dynamic import pooled_model

    return {**F.seed_models(), "pooled": pooled_model().SerializeToString()}


def bucket_fuzz(n: int, seed: int, seeds: tuple = (), log=None) -> dict:
    st = _stats("skip", "numpy-refuses", "refused", "ok", "ok-narrowed", "nan")
    with np.errstate(all="ignore"):
        for rng, which, data, what in _mutants(st, n, seed, bucket_seeds(), seeds):
            if _reference(data) is None:
                st["numpy-refuses"] += 1
                continue
            tmp = tempfile.mkdtemp(prefix="fuzzb-")
            try:
                verdict, detail = check_bucketed(data, rng, tmp)
            except F.Hang as e:
                verdict, detail = "bad", f"hang: {e}"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _tally(st, verdict, f"[{which}] {what}: {detail}", log)
    return st


# ------------------------------------------------------------------------- (c) hostile CLI inputs
def _chain(n_in: int, dtype=onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    from onnx import helper as h

    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Neg", ["a"], ["y"])]
    return F._model(nodes, [h.make_tensor_value_info("x", dtype, [1, n_in])],
                    [h.make_tensor_value_info("y", dtype, [1, n_in])])


class Artifacts:
    """Two plain builds of models with other input shapes, and one bucketed build, in ``root``."""

    def __init__(self, root: str):
        from test_tvm_dynamic import RANGE, pooled_model

        self.root = root
        for name, proto, extra in (("a", _chain(4), []), ("b", _chain(6), []),
                                   ("d", pooled_model(), [*RANGE, "--buckets", "8"])):
            onnx.save(proto, os.path.join(root, f"{name}.onnx"))
            rc, _, err = cli_main("build", os.path.join(root, f"{name}.onnx"), "-o", os.path.join(root, f"{name}.so"), *extra)
            assert rc == 0, err
        rng = np.random.default_rng(0)
        np.savez(os.path.join(root, "a_in.npz"), x=rng.standard_normal((1, 4)).astype(np.float32))
        np.savez(os.path.join(root, "d_in.npz"), x=rng.standard_normal((1, 5, 8)).astype(np.float32),
                 mask=np.ones((1, 5), np.float32))
        self.want = {}
        for k in "ad":
            rc, _, err = cli_main("run", os.path.join(root, f"{k}.so"), "--inputs", os.path.join(root, f"{k}_in.npz"),
                                  "-o", os.path.join(root, f"{k}_out.npz"))
            assert rc == 0, err
            self.want[k] = dict(np.load(os.path.join(root, f"{k}_out.npz")))

    def files(self, k):
        return [f for f in sorted(os.listdir(self.root)) if f.startswith(k + ".so")]


def _damage_file(rng, p: str, other: str | None) -> str:
    data = open(p, "rb").read()
    kind = rng.choice(["truncate", "flip", "swap", "delete", "dir", "empty", "append"])
    if kind == "swap" and other and os.path.exists(other):
        shutil.copyfile(other, p)
        return f"{os.path.basename(p)} swapped for {os.path.basename(other)}"
    if kind == "truncate" and data:
        cut = rng.randrange(len(data))
        open(p, "wb").write(data[:cut])
        return f"{os.path.basename(p)} cut to {cut} of {len(data)} bytes"
    if kind == "flip" and data:
        b = bytearray(data)
        for _ in range(rng.choice([1, 1, 4, 32])):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        open(p, "wb").write(bytes(b))
        return f"{os.path.basename(p)} bytes flipped"
    if kind == "delete":
        os.remove(p)
        return f"{os.path.basename(p)} deleted"
    if kind == "dir":
        os.remove(p)
        os.mkdir(p)
        return f"{os.path.basename(p)} is a directory"
    if kind == "append":
        open(p, "ab").write(bytes(rng.randrange(256) for _ in range(rng.choice([1, 100]))))
        return f"{os.path.basename(p)} with bytes appended"
    open(p, "wb").close()
    return f"{os.path.basename(p)} empty"


def _bad_inputs(rng, path: str, k: str) -> str:
    x = np.random.default_rng(1).standard_normal((1, 5, 8) if k == "d" else (1, 4))
    feeds = {"x": x.astype(np.float32)}
    if k == "d":
        feeds["mask"] = np.ones((1, 5), np.float32)
    kind = rng.choice(["dtype", "rank", "shape", "missing", "garbage", "dir", "int", "big", "nan"])
    if kind == "dtype":
        feeds["x"] = x.astype(rng.choice([np.float64, np.float16, np.int64, np.bool_]))
    elif kind == "rank":
        feeds["x"] = feeds["x"].reshape(-1) if rng.random() < 0.5 else feeds["x"][None]
    elif kind == "shape":
        feeds["x"] = np.zeros((1, 99) + feeds["x"].shape[2:], np.float32)
    elif kind == "missing":
        del feeds[rng.choice(sorted(feeds))]
    elif kind == "int" and k == "d":
        feeds["mask"] = np.ones((1, 5), np.int64)
    elif kind == "big":
        feeds["x"] = np.zeros((1, 5000) + feeds["x"].shape[2:], np.float32)
    elif kind == "nan":
        feeds["x"][...] = np.nan
    if kind == "garbage":
        open(path, "wb").write(b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(200)))
    elif kind == "dir":
        os.mkdir(path)
    else:
        np.savez(path, **feeds)
    return f"inputs: {kind}"


def check_cli(art: Artifacts, rng, tmp: str) -> tuple[str, str]:
    """One hostile command in a fresh copy of the artifacts."""
    for f in os.listdir(art.root):
        shutil.copy2(os.path.join(art.root, f), tmp) if os.path.isfile(os.path.join(art.root, f)) else None
    k = rng.choice("ad")
    so = os.path.join(tmp, f"{k}.so")
    inputs = os.path.join(tmp, f"{k}_in.npz")
    out = os.path.join(tmp, "out.npz")
    what, damaged, command = [], False, rng.choice(["run", "run", "run", "build"])
    if command == "run":
        r = rng.random()
        if r < 0.1:  # the whole artifact is another model's, under this name
            other = "b" if k == "a" else "a"
            for f in art.files(k):
                os.remove(os.path.join(tmp, f))
            for f in art.files(other):
                shutil.copyfile(os.path.join(tmp, f), os.path.join(tmp, f.replace(f"{other}.so", f"{k}.so", 1)))
            what.append(f"{k}.so is {other}'s build")
            damaged = True
        elif r < 0.55:
            f = rng.choice(art.files(k))
            other = os.path.join(tmp, f.replace(f"{k}.so", "b.so" if k == "a" else "a.so", 1))
            what.append(_damage_file(rng, os.path.join(tmp, f), other))
            damaged = True
        elif r < 0.8:
            inputs = os.path.join(tmp, "bad_in.npz")
            what.append(_bad_inputs(rng, inputs, k))
            damaged = True
        out_kind = "fine" if rng.random() < 0.7 else rng.choice(["missing-dir", "is-so", "is-inputs", "is-dir",
                                                                 "is-json"])
        out = {"fine": out, "missing-dir": os.path.join(tmp, "nowhere", "out.npz"), "is-so": so,
               "is-inputs": inputs, "is-dir": tmp, "is-json": so + ".json"}[out_kind]
        damaged |= out_kind != "fine"
        what.append(f"-o {out_kind}")
        cmd = ["run", so, "--inputs", inputs, "-o", out]
    else:
        src = os.path.join(tmp, f"{k}.onnx")
        kind = rng.choice(["out-is-input", "missing-dir", "out-is-dir", "model-is-dir", "model-cut",
                           "model-is-so", "out-is-inputs", "not-so", "shape", "shape", "shape"])
        out = {"out-is-input": src, "missing-dir": os.path.join(tmp, "nowhere", "x.so"), "out-is-dir": tmp,
               "out-is-inputs": inputs, "not-so": os.path.join(tmp, "x.bin")}.get(kind, os.path.join(tmp, "new.so"))
        if kind == "out-is-input":  # the model named like a library, built onto itself
            os.rename(src, src[:-5] + ".so.onnx.so")
            src = out = src[:-5] + ".so.onnx.so"
        elif kind == "model-is-dir":
            src = tmp
        elif kind == "model-cut":
            data = open(src, "rb").read()
            open(src, "wb").write(data[:rng.randrange(len(data))])
        elif kind == "model-is-so":
            src = so
        what.append(f"build: {kind}")
        damaged = True
        extra = ["--shape", "x=1x1..64x8", "--shape", "mask=1x1..64", "--buckets", "8"] if k == "d" else []
        if kind == "shape":  # a hostile --shape / --buckets in place of one of the good ones
            bad = rng.choice(["x=1x0..4x8", "x=1x5..2x8", "x=1x1..99999999999x8", "x=1xax8", "x=1x1..64", "x=",
                              "x=1x1..64x8x1", "y=1x1..4", "x=1x-1..4x8", "x=1x1...4x8", "x=1x1..4x8,", "mask=1x1..8",
                              "x=1x1..2**40x8", "x=0x4", "x=1x4x", "=1x4", "x=1x\u0661..4x8", "x=2x1..4x8",
                              "x=\u00b2x1..4x8", "x=1x\u00b2x8", "x=1x\u00b2..4x8"])
            extra = (extra or ["--shape", "x=1x4"])[:]
            extra[1] = bad
            if k == "d" and rng.random() < 0.4:
                extra[-1] = rng.choice(["0", "-3", "a,b", "", "8,8,8", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18",
                                        "100000"])
            what.append(" ".join(extra))
        cmd = ["build", src, "-o", out, *extra]
    before = _snapshot(tmp)
    with F.guard(300):
        rc, stdout, err = cli_main(*cmd)
    after = _snapshot(tmp)
    desc = "; ".join(what)
    if rc == 0:
        if command == "build":
            if kind == "shape":  # a value it takes: nothing to compare, the artifact must load
                return "ran-damaged", desc
            return "bad", f"{desc}: the build ran ({stdout.strip()[-200:]})"
        if out not in after or before.get(out) == after.get(out):
            return "bad", f"{desc}: exit 0 but -o not written"
        got = dict(np.load(out))
        want = art.want[k]
        if inputs.endswith("bad_in.npz"):  # odd inputs the run accepted (NaN, extra arrays): not compared
            return "ran", desc
        if set(got) != set(want) or not all(np.array_equal(got[n], want[n], equal_nan=True) for n in want):
            return "bad", f"{desc}: exit 0 with outputs that are not the intact artifact's"
        return ("ran-damaged" if damaged else "ran"), desc
    if not _one_line(err):
        return "bad", f"{desc}: exit {rc}, stderr not one line: {err[-1000:]}"
    if after != before:
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        return "bad", f"{desc}: refused ({err.strip()}) but changed {changed}"
    return "refused", f"{desc}: {err.strip()}"


def cli_fuzz(n: int, seed: int, log=None) -> dict:
    rng = random.Random(seed)
    st = _stats("refused", "ran", "ran-damaged")
    st["messages"] = {}
    root = tempfile.mkdtemp(prefix="fuzzc-art-")
    try:
        art = Artifacts(root)
        while st["tried"] < n:
            st["tried"] += 1
            tmp = tempfile.mkdtemp(prefix="fuzzc-")
            try:
                verdict, detail = check_cli(art, rng, tmp)
            except F.Hang as e:
                verdict, detail = "bad", f"hang: {e}"
            except Exception:  # noqa: BLE001 - a fault of the fuzzer itself is reported too
                verdict, detail = "bad", "fuzzer: " + traceback.format_exc(limit=-3)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _tally(st, verdict, detail, log)
            if verdict not in ("bad", "ran"):  # what it said, by kind of damage (printed by hand runs)
                msg = verdict + ": " + detail.replace(tmp, "DIR")
                st["messages"][msg[:120]] = st["messages"].get(msg[:120], 0) + 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return st


# ----------------------------------------------------------------------------------- CI smoke runs
@pytest.mark.slow
def test_fast_preset_fuzz_smoke():
    """A smoke run on the quick seeds (digits takes ~20 s a mutant through the preset): 2 of the 8
    mutants compared, one through the preset itself (45 s on a host loaded 13x over)."""
    st = fast_fuzz(n=8, seed=3, real_every=4, seeds=("fusions", "if", "int", "loop"))
    assert st["ok"] + st["ok-int8"] >= 1, st
    assert not st["bad"], "\n".join(st["bad"])


@pytest.mark.slow
def test_bucketed_build_fuzz_smoke():
    """One of the 8 mutants builds and is compared at its sizes (12 s on a host loaded 13x over)."""
    st = bucket_fuzz(n=8, seed=8, seeds=("pooled", "int"))
    assert st["ok"] >= 1, st
    assert not st["bad"], "\n".join(st["bad"])


@pytest.mark.slow
def test_hostile_cli_fuzz_smoke():
    st = cli_fuzz(n=40, seed=2)
    assert st["refused"] >= 10 and st["ran"] >= 1, st
    assert not st["bad"], "\n".join(st["bad"])


if __name__ == "__main__":
    kind, count, sd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fn = {"fast": fast_fuzz, "bucket": bucket_fuzz, "cli": cli_fuzz}[kind]
    res = fn(count, sd, log=lambda s: print("BAD " + s + "\n", file=sys.stderr, flush=True))
    bad = res.pop("bad")
    res.pop("messages", None)
    print(f"{kind} fuzz, {count} mutants, seed {sd}: {res}, {len(bad)} bad")
    sys.exit(1 if bad else 0)
