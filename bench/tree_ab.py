"""Whole models built by two source trees (a base commit and the working tree), timed side by side
in one process: each tree's build is saved as a .so, then both and onnxruntime run interleaved.

    git archive BASE | tar -x -C /tmp/base
    (cd /tmp/base && TVMLITE_THREADS=1 PYTHONPATH=. python $OLDPWD/bench/tree_ab.py build /tmp/abA light_squeezenet)
    TVMLITE_THREADS=1 PYTHONPATH=. python bench/tree_ab.py build /tmp/abB light_squeezenet
    TVMLITE_THREADS=1 PYTHONPATH=. python bench/tree_ab.py time /tmp/abA /tmp/abB light_squeezenet

``build`` uses whichever tvmlite PYTHONPATH imports (run it from each tree's root) and builds with
the threads of $TVMLITE_THREADS (the kernels' parallel loops are chosen at build time). ``time``
runs A, B, onnxruntime in turn each round, each round starting one later (every one takes every
slot): by CPU time at one thread (the figure that holds on a shared machine), or with --wall by wall
clock at $TVMLITE_THREADS threads, each timed call then after a wait for the process's threads to
stop spinning (`runtime.ort.wait_idle`) and one untimed call: without them, whichever ran first
after onnxruntime ran 1.3-2.5x slower at 2 threads (its pool's workers spin on after a run).
``--wall --process`` times the process's CPU time at $TVMLITE_THREADS threads instead: the work
of every thread, spinning included, which a loaded host disturbs less than the wall clock. MODEL is a light_* model
of the onnx wheel (seeded random weights, as bench_tvm.py --only light), ``detector``
(tests/real_graphs.py at 320x320) or an .onnx path with static input shapes.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_model(spec: str):
    """(model, input name, input shape) of a MODEL argument."""
    if spec == "detector":
        from real_graphs import detector

        m, _ = detector(320)
    elif spec.endswith(".onnx"):
        import onnx

        m = onnx.load(spec)
    else:
        from tvmlite.zoo import randomized_light

        m = randomized_light(spec + ".onnx")
    m.ir_version = min(m.ir_version, 10)
    inits = {i.name for i in m.graph.initializer}
    inp = [i for i in m.graph.input if i.name not in inits][0]
    return m, inp.name, tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)


def library(folder: str, spec: str) -> str:
    return os.path.join(folder, pathlib.Path(spec).stem + ".so")


def known(spec: str) -> bool:
    from tvmlite.zoo import LIGHT_DIR

    if spec == "detector":
        return True
    if spec.endswith(".onnx"):
        return os.path.isfile(spec)
    return (LIGHT_DIR / (spec + ".onnx")).exists()


def build(out: str, models) -> None:
    import tvmlite
    from tvmlite.backends.tvm import compile_model

    os.makedirs(out, exist_ok=True)
    for spec in models:
        m, name, shape = load_model(spec)
        t0 = time.perf_counter()
        cm = compile_model(tvmlite.load(m), {name: shape}, cache=False)
        print(f"{spec}: build {time.perf_counter() - t0:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        cm.save(library(out, spec))


def compare(a: str, b: str, models, rounds: int, wall: bool, process: bool = False) -> None:
    import numpy as np
    import onnxruntime as ort

    from tvmlite.backends.tvm import load_module
    from tvmlite.backends.tvm.kernels.target import host_threads
    from tvmlite.runtime.ort import wait_idle

    threads = host_threads() if wall else 1
    clock = time.process_time if process else time.perf_counter if wall else time.thread_time
    for spec in models:
        m, name, shape = load_model(spec)
        feeds = {name: np.random.default_rng(0).random(shape).astype(np.float32)}
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        runs = {"A": load_module(library(a, spec)).run, "B": load_module(library(b, spec)).run,
                "ort": lambda f: sess.run(None, f)}
        err = {k: float(np.max(np.abs(runs[k](feeds)[0] - ref)) / np.max(np.abs(ref))) for k in "AB"}
        for k in "AB":  # a small plan's thread pick (--wall) runs over its next runs: done before timing
            runs[k].__self__.warm_up(feeds)
        times = {k: [] for k in runs}
        order = list(runs)
        for r in range(rounds):
            # each contender takes each slot in turn: in a fixed order A ran just after onnxruntime
            # (its caches evicted, its pool worker spinning) and B after A; one build timed as both
            # A and B, one thread, CPU time, came out B/A 0.96 on all four digits models
            for k in order[r % 3:] + order[:r % 3]:
                if wall:  # the previous runtime's pool workers spin on and would take a core
                    wait_idle()
                    runs[k](feeds)
                t0 = clock()
                runs[k](feeds)
                times[k].append(clock() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        kind = "process CPU" if process else "wall" if wall else "CPU"
        print(f"{spec} ({kind} time, {threads} thread(s), load {os.getloadavg()[0]:.1f}): "
              f"onnxruntime median {med['ort'] * 1e3:.2f} ms; median (best) A/ort {med['A'] / med['ort']:.3f} "
              f"({best['A'] / best['ort']:.3f}), B/ort {med['B'] / med['ort']:.3f} ({best['B'] / best['ort']:.3f}), "
              f"B/A {med['B'] / med['A']:.3f}; max rel err A {err['A']:.1e}, B {err['B']:.1e}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pb = sub.add_parser("build")
    pb.add_argument("out")
    pb.add_argument("models", nargs="+")
    pt = sub.add_parser("time")
    pt.add_argument("a")
    pt.add_argument("b")
    pt.add_argument("models", nargs="+")
    pt.add_argument("--rounds", type=int, default=15)
    pt.add_argument("--wall", action="store_true", help="wall clock at $TVMLITE_THREADS threads")
    pt.add_argument("--process", action="store_true",
                    help="with --wall: the process's CPU time (every thread's) instead of the wall clock")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    bad = [m for m in a.models if not known(m)]
    if bad:
        print(f"tree_ab: unknown model {bad[0]} (a light_* model, detector or an .onnx file)", file=sys.stderr)
        return 2
    if a.cmd == "build":
        build(a.out, a.models)
        return 0
    missing = [library(d, m) for d in (a.a, a.b) for m in a.models if not os.path.isfile(library(d, m))]
    if a.rounds < 1 or missing:
        print(f"tree_ab: {'--rounds must be at least 1' if a.rounds < 1 else 'no build ' + missing[0]}",
              file=sys.stderr)
        return 2
    if not a.wall:
        os.environ["TVMLITE_THREADS"] = "1"
    compare(a.a, a.b, a.models, a.rounds, a.wall, a.process and a.wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
