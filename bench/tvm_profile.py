"""Per-kernel profile of a model built by the TVM backend, against onnxruntime (2 threads).

    PYTHONPATH=$PWD .venv/bin/python bench/tvm_profile.py MODEL [--shape NAME=1x3x320x320 ...] [--top 25]

MODEL is an .onnx path, or ``detector[:SIZE]`` (tests/real_graphs.py's YOLO-style detector,
default 320), ``minilm`` (the encoder at sequence 128) or a ``light_*`` model of the onnx wheel
(seeded random weights, as bench_tvm.py --only light). Prints the build time, the host-run
ops, the max relative error against onnxruntime, the interleaved medians of both and their
ratio, the best milliseconds per kernel kind (the emitter's name stem) and the slowest kernels with the
graph nodes each one runs. With --ort, onnxruntime's own profiler times its nodes as well (best
of the rounds per node, mapped back by node name: onnxruntime names a fused node after its first
node) and each kernel is printed beside the sum of onnxruntime's times for the same graph nodes.

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/tvm_profile.py detector --ort --threads 1
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
    elif spec.startswith("light_"):
        from tvmlite.zoo import randomized_light  # as bench_tvm --only light: seeded random weights

        m = randomized_light(spec if spec.endswith(".onnx") else spec + ".onnx")
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


def name_nodes(m) -> None:
    """Give every unnamed node the label tvmlite gives it (op->first output), so onnxruntime's
    profile and tvmlite's plan name the same nodes alike."""
    for n in m.graph.node:
        if not n.name:
            n.name = f"{n.op_type}->{n.output[0] if n.output else '?'}"


def ort_profile_events(m, feeds: dict, threads: int, rounds: int) -> list:
    """onnxruntime's profiler events over ``rounds`` runs of ``m`` (a ModelProto) at ``threads``."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(max(rounds, 1)):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            return json.load(f)


def ort_node_ms(m, feeds: dict, threads: int, rounds: int) -> dict:
    """{onnxruntime node name: best ms over ``rounds`` runs} from onnxruntime's profiler."""
    best: dict = {}
    for e in ort_profile_events(m, feeds, threads, rounds):
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            best[name] = min(best.get(name, math.inf), e["dur"] / 1e3)
    return best


def ort_per_kernel(prof, ort_ms: dict, m):
    """(rows of (call, nodes, tvmlite ms, onnxruntime ms for the same nodes)), onnxruntime ms
    mapped to no kernel). An onnxruntime node is named after a graph node or its output value
    (the longest such name its name starts with: fused and NCHWc nodes add suffixes); a graph node tvmlite
    folded away (a BatchNormalization into its conv) counts for the kernel of its producer."""
    owner = {}
    for call, nodes, _ in prof:
        for n in filter(None, nodes.split(", ")):
            owner[n] = call
    producer = {o: n for n in m.graph.node for o in n.output}
    by_name = {n.name: n for n in m.graph.node}

    def kernel_of(name):
        node = by_name.get(name)
        for _ in range(64):  # up through folded nodes to one a kernel runs
            if node is None or node.name in owner:
                break
            node = next((producer[i] for i in node.input if i in producer), None)
        return owner.get(node.name) if node is not None else None

    # the NCHWc rewrite names its nodes after their output value instead
    names = dict(by_name) | {v: n for v, n in producer.items() if v not in by_name}
    per_call = collections.Counter()
    unmapped = 0.0
    for name, t in ort_ms.items():
        hit = max((n for n in names if name.startswith(n)), key=len, default=None)
        call = kernel_of(names[hit].name) if hit is not None else None
        if call is None:
            unmapped += t
        else:
            per_call[call] += t
    return [(c, nodes, t, per_call.get(c, 0.0)) for c, nodes, t in prof], unmapped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--shape", action="append", default=[], metavar="NAME=1x3x224x224")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=20, help="runs per kernel (its best is kept)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--ort", action="store_true", help="also onnxruntime's per-node times, per kernel")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime's threads (tvmlite: $TVMLITE_THREADS)")
    a = ap.parse_args(argv)
    shapes = {}
    for s in a.shape:
        k, _, v = s.partition("=")
        shapes[k] = [int(d) for d in v.split("x")]
    import tvmlite
    from tvmlite.backends.tvm import compile_model
    from bench_tvm import interleaved
    from tvmlite.runtime.ort import ort_session

    m, feeds = model_and_feeds(a.model, shapes)
    name_nodes(m)
    t0 = time.time()
    cm = compile_model(tvmlite.load(m), {k: v.shape for k, v in feeds.items()}, cache=not a.no_cache)
    print(f"build {time.time() - t0:.1f} s{' (cached)' if cm.cached else ''}, {cm.kernel_count} kernels")
    print("host ops:", cm.host_ops or "none")
    sess = ort_session(m, a.threads)
    ref = sess.run(None, feeds)
    got = cm.run(feeds)
    for g, r in zip(got, ref):
        print("max rel err %.2e" % (float(np.abs(np.asarray(g, np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-30)))
    cm.warm_up(feeds)  # a small plan's thread pick runs over its next runs: done before timing
    # blocks after wait_idle, as bench_tvm times them: one call each in turn had every tvmlite run
    # beside onnxruntime's pool spinning on after its run (MiniLM read 1.38x here, 0.97x in bench_tvm)
    t = interleaved({"tvm": lambda: cm.run(feeds), "ort": lambda: sess.run(None, feeds)}, a.rounds, 3)
    ms = (t["tvm"], t["ort"])
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
    if not a.ort:
        print("slowest kernels:")
        for name, nodes, t in prof[:a.top]:
            print(f"  {t:8.3f} ms  {name:40s} {nodes[:110]}")
        return 0
    rows, unmapped = ort_per_kernel(prof, ort_node_ms(m, feeds, a.threads, a.repeats), m)
    ort_total = sum(r[3] for r in rows) + unmapped
    print(f"onnxruntime's nodes: {ort_total:.3f} ms ({unmapped:.3f} ms on nodes of no kernel: layout reorders, nodes tvmlite removed)")
    print("slowest kernels (tvmlite ms, onnxruntime ms for the same nodes, ratio):")
    for name, nodes, t, o in rows[:a.top]:
        ratio = f"{t / o:5.2f}" if o > 0 else "    -"
        print(f"  {t:8.3f} {o:8.3f} {ratio}  {name:40s} {nodes[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
