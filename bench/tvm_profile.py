"""Per-kernel profile of a model built by the TVM backend, against onnxruntime (2 threads).

    PYTHONPATH=$PWD .venv/bin/python bench/tvm_profile.py MODEL [--shape NAME=1x3x320x320 ...] [--top 25]

MODEL is an .onnx path, or ``detector[:SIZE]`` (tests/real_graphs.py's YOLO-style detector,
default 320) or ``minilm`` (the encoder at sequence 128). Prints the build time, the host-run
ops, the max relative error against onnxruntime, the interleaved medians of both and their
ratio, the best milliseconds per kernel kind (the emitter's name stem) and the slowest kernels with the
graph nodes each one runs.
"""
from __future__ import annotations

import argparse
import collections
import math
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402


def model_and_feeds(spec: str, shapes: dict):
    """(onnx model, feeds) for a MODEL argument; random inputs of the model's (or given) shapes."""
    rng = np.random.default_rng(0)
    if spec.startswith("detector"):
        from real_graphs import detector

        size = int(spec.split(":")[1]) if ":" in spec else 320
        m, _ = detector(size)
    elif spec == "minilm":
        from tvmlite.zoo_encoder import minilm_encoder

        m, _ = minilm_encoder()
        ids = rng.integers(1000, 20000, (1, 128)).astype(np.int64)
        return m, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    else:
        m = onnx.load(spec)
    m.ir_version = min(m.ir_version, 10)
    inits = {i.name for i in m.graph.initializer}
    feeds = {}
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = shapes.get(i.name) or [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[i.name] = (rng.random(dims).astype(dt) if np.issubdtype(dt, np.floating)
                         else rng.integers(0, 2, dims).astype(dt))
    return m, feeds


def profile_best(cm, feeds: dict, repeats: int) -> list:
    """(call, graph nodes, best ms) per kernel or host call, slowest first, each call timed where
    it runs in the plan (its input just written by the previous call, as in a real run) over
    ``repeats`` passes: on a shared machine the best pass says more about the code than the
    median (`CompiledModel.profile` times each call repeatedly on its own)."""
    cm.run(feeds)
    best = [math.inf] * len(cm._calls)
    for _ in range(max(repeats, 1)):
        for i, (fn, args) in enumerate(cm._calls):
            t0 = time.perf_counter()
            fn(*args)
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
    rows = [(c["func"] if "func" in c else f"host{c['host']}", ", ".join(c.get("nodes", [])), t)
            for c, t in zip(cm.plan["calls"], best)]
    return sorted(rows, key=lambda r: -r[2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--shape", action="append", default=[], metavar="NAME=1x3x224x224")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=20, help="runs per kernel (its best is kept)")
    ap.add_argument("--no-cache", action="store_true")
    a = ap.parse_args(argv)
    shapes = {}
    for s in a.shape:
        k, _, v = s.partition("=")
        shapes[k] = [int(d) for d in v.split("x")]
    import tvmlite
    from tvmlite.backends.tvm import compile_model
    from tvmlite.runtime.ort import interleaved_ms, ort_session

    m, feeds = model_and_feeds(a.model, shapes)
    t0 = time.time()
    cm = compile_model(tvmlite.load(m), {k: v.shape for k, v in feeds.items()}, cache=not a.no_cache)
    print(f"build {time.time() - t0:.1f} s{' (cached)' if cm.cached else ''}, {cm.kernel_count} kernels")
    print("host ops:", cm.host_ops or "none")
    sess = ort_session(m, 2)
    ref = sess.run(None, feeds)
    got = cm.run(feeds)
    for g, r in zip(got, ref):
        print("max rel err %.2e" % (float(np.abs(np.asarray(g, np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-30)))
    ms = interleaved_ms([lambda: cm.run(feeds), lambda: sess.run(None, feeds)], a.rounds)
    print("tvm ms %.3f ort ms %.3f ratio %.2f" % (ms[0], ms[1], ms[0] / ms[1]))
    prof = profile_best(cm, feeds, a.repeats)
    total = sum(p[2] for p in prof)
    agg = collections.defaultdict(lambda: [0.0, 0])
    for name, _, t in prof:
        k = re.sub(r"^k\d+_", "", name).split("_")[0]
        agg[k][0] += t
        agg[k][1] += 1
    print(f"sum of kernels {total:.3f} ms; per kind:")
    for k, (v, n) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
        print(f"  {k:24s} {v:8.3f} ms  {n:3d} kernel(s)  {100 * v / total:5.1f}%")
    print("slowest kernels:")
    for name, nodes, t in prof[:a.top]:
        print(f"  {t:8.3f} ms  {name:40s} {nodes[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
