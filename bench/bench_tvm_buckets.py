"""What a bucketed build costs against exact-shape builds, on the MiniLM encoder (real weights):
build time, artifact size, load time and peak memory, and latency at a few lengths (interleaved
medians, with onnxruntime beside them).

    PYTHONPATH=$PWD python bench/bench_tvm_buckets.py [--dir /tmp/tvmlite-buckets]
        [--range 1..128] [--buckets 16,32,64] [--rounds 15] [--no-latency] 10 50 100 128

The bucketed artifact is built once by `tvmlite build enc.onnx -o enc.so --shape input_ids=1xLO..HI
--shape attention_mask=1xLO..HI --buckets ...` with a build cache of its own under --dir (a second
run reuses it: the build time printed then is the cached one). The exact builds are made with no
cache, one per length. Sequence lengths between buckets are padded (the attention mask makes that
safe, checked at build time), so they run the next bucket's plan.
"""
import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

import tvmlite
from tvmlite.backends.tvm import compile_model
from tvmlite.compare import interleaved_ms

_MEM = r"""
import sys, time
import numpy as np
from tvmlite.backends.tvm import load_module
from tvmlite.backends.tvm import buckets, module  # imported before the clock: load times only
from tvmlite.backends.tvm.kernels.target import import_tvm
import_tvm()

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

base = rss()
t0 = time.perf_counter(); m = load_module(sys.argv[1]); load = time.perf_counter() - t0
t0 = time.perf_counter()
for n in map(int, sys.argv[2:]):
    ids = np.ones((1, n), np.int64)
    m.run({"input_ids": ids, "attention_mask": ids, "token_type_ids": 0 * ids})
first_runs = time.perf_counter() - t0
plans = list(getattr(m, "_loaded", {"": m}).values())
held = {id(t): int(np.prod(t.shape)) * np.dtype(str(t.dtype)).itemsize for p in plans for t in p._tensors.values()}
print(load, first_runs, rss() - base, sum(held.values()) / 2**20)
"""


def feeds(n: int) -> dict:
    ids = np.random.default_rng(n).integers(1000, 20000, (1, n)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def size_of(so: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(so + "*"))


def memory(so: str, lengths) -> tuple:
    """(load s, first runs s, resident MiB added by loading and running, MiB of constants held) of
    a fresh process that loads ``so`` and runs each length once (loading every bucket they touch)."""
    r = subprocess.run([sys.executable, "-c", _MEM, so, *map(str, lengths)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if r.returncode:
        raise SystemExit(f"memory probe of {so} failed: {r.stderr.strip().splitlines()[-1]}")
    return tuple(float(v) for v in r.stdout.split())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lengths", nargs="*", type=int, default=[10, 50, 100, 128])
    ap.add_argument("--dir", default="/tmp/tvmlite-buckets")
    ap.add_argument("--range", default="1..128")
    ap.add_argument("--buckets", default="16,32,64")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-latency", action="store_true", help="only the build, size, load and memory figures")
    a = ap.parse_args(argv)
    d = pathlib.Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    enc = d / "enc.onnx"
    if not enc.exists():
        from tvmlite.zoo_encoder import minilm_encoder

        proto, _ = minilm_encoder()
        proto.ir_version = min(proto.ir_version, 10)
        onnx.save(proto, enc)
    so = str(d / "enc.so")
    env = {**os.environ, "TVMLITE_CACHE": str(d / "cache")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tvmlite.cli", "build", str(enc), "-o", so, "--shape",
                        f"input_ids=1x{a.range}", "--shape", f"attention_mask=1x{a.range}",
                        "--shape", f"token_type_ids=1x{a.range}", "--buckets", a.buckets],
                       capture_output=True, text=True, env=env)
    bucketed_build = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"bucketed build failed: {r.stderr.strip()}")
    print(r.stdout.rstrip())
    table = json.loads(pathlib.Path(so + ".buckets.json").read_text())
    tops = [b["values"] for b in table["buckets"]]
    print(f"bucketed build: {bucketed_build:.1f} s for {len(tops)} buckets"
          f"{' (cached)' if '(cached)' in r.stdout else ''}, in a fresh process (import and checks included)")
    c = table["constants"]
    print(f"constants: {c['bytes'] / 1e6:.1f} MB in one file, {c['arrays']} arrays "
          f"({c['unshared_bytes'] / 1e6:.1f} MB if each bucket kept its own)")

    sess = ort.InferenceSession(str(enc))
    model = tvmlite.load(str(enc))
    from tvmlite.backends.tvm import load_module

    bucketed = load_module(so)
    top = max(v for b in tops for v in b.values())
    rows = []
    for n in [] if a.no_latency else a.lengths:
        f = feeds(n)
        t0 = time.perf_counter()
        ex = compile_model(model, {k: v.shape for k, v in f.items()}, cache=False)
        bt = time.perf_counter() - t0
        ex_so = str(d / f"ex{n}.so")
        ex.save(ex_so)
        ref = sess.run(None, f)
        got = bucketed.run(f)
        err = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))
        t = interleaved_ms([lambda: bucketed.run(f), lambda: ex.run(f), lambda: sess.run(None, f)], a.rounds)
        rows.append((n, t, bt, size_of(ex_so)))
        print(f"seq {n:>3}: bucketed {t[0]:7.2f} ms  exact {t[1]:7.2f} ms  onnxruntime {t[2]:7.2f} ms  "
              f"bucketed/exact {t[0] / t[1]:.2f}  (exact build {bt:.1f} s, {size_of(ex_so) / 1e6:.1f} MB; "
              f"bucketed rel err vs onnxruntime {err:.1e})", flush=True)
    del bucketed
    ex_top = str(d / f"ex{top}.so")
    if not os.path.exists(ex_top):
        compile_model(model, {k: (1, top) for k in ("input_ids", "attention_mask", "token_type_ids")},
                      cache=False).save(ex_top)
    bsize, esize = size_of(so), size_of(ex_top)
    print(f"size: bucketed {bsize / 1e6:.1f} MB in {len(glob.glob(so + '*'))} files, exact (seq {top}) "
          f"{esize / 1e6:.1f} MB: +{(bsize - esize) / 1e6:.1f} MB for {len(tops) - 1} more buckets")
    runs = sorted({max(b.values()) for b in tops})  # one length per bucket
    probes = [(memory(so, runs), memory(ex_top, [top])) for _ in range(3)]  # interleaved, medians
    (bl, br, brss, bheld), (el, er, erss, eheld) = (np.median([p[i] for p in probes], axis=0) for i in (0, 1))
    print(f"load (median of 3 fresh processes): bucketed {bl * 1e3:.0f} ms (the top bucket; the {len(runs) - 1} "
          f"others load on first use: {br * 1e3:.0f} ms for one run of each), exact {el * 1e3:.0f} ms")
    print(f"memory: bucketed with all {len(runs)} buckets loaded and run: {brss:.0f} MiB resident added, "
          f"{bheld:.1f} MiB of constants held; exact: {erss:.0f} MiB, {eheld:.1f} MiB of constants")
    print("(timings on a shared machine: compare the ratios, interleaved medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
