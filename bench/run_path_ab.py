"""One built artifact run through two trees' run path (CompiledModel in backends/tvm/module.py: input
and output copies, the thread pick, the stall watch), timed interleaved with onnxruntime: the same
kernels, only the Python around them differs. (bench/tree_ab.py loads both builds through this
tree's module.py, so it cannot see a change there.)

    git archive BASE | tar -x -C /tmp/base
    TVMLITE_THREADS=2 PYTHONPATH=. python bench/tree_ab.py build /tmp/ab light_squeezenet
    TVMLITE_THREADS=2 PYTHONPATH=. python bench/run_path_ab.py /tmp/base /tmp/ab light_squeezenet --wall

MODEL as tree_ab takes it. Each round runs base, this tree and onnxruntime, each round starting one
later; by CPU time at one thread, or with --wall by wall clock at $TVMLITE_THREADS threads (the
thread pick and the stall watch only act there). Medians, best runs, and the share of runs slower
than twice onnxruntime's median (stalls). --blocks N: bench_tvm.py's way instead (rounds of N
timed calls each, after waiting for the other runtimes' pool workers to stop spinning). --first N:
each path's first N runs of a fresh model instead, alternating: the plan's passes they made (a
thread pick used to run extra ones inside a call), the main thread's CPU time and the slowest runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from tree_ab import library, load_model


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def base_module(tree: str):
    """The base tree's module.py, imported beside this tree's with the base's plan_func.py (the
    thread pick lives there); their other imports resolve here, and both share this tree's record
    of the pool's thread count (use_threads skips a call that changes nothing)."""
    from tvmlite.backends.tvm import plan_func

    mod = _load("base_module", os.path.join(tree, "tvmlite/backends/tvm/module.py"))
    pf = _load("base_plan_func", os.path.join(tree, "tvmlite/backends/tvm/plan_func.py"))
    pf._pool, pf.use_threads = plan_func._pool, plan_func.use_threads
    mod.plan_func = pf
    return mod


def first_runs(models: dict, feeds: dict, n: int, spec: str) -> None:
    """Each model's first ``n`` runs, alternating: passes of the plan, CPU and wall time."""
    passes, wall, cpu = {k: 0 for k in models}, {k: [] for k in models}, {k: 0.0 for k in models}
    for k, m in models.items():
        go = m._go

        def counted(k=k, go=go):
            passes[k] += 1
            go()
        m._go = counted
    for i in range(n):
        for k in (("base", "new") if i % 2 else ("new", "base")):
            c0, t0 = time.thread_time(), time.perf_counter()
            models[k].run(feeds)
            wall[k].append(time.perf_counter() - t0)
            cpu[k] += time.thread_time() - c0
    line = []
    for k in models:
        med = statistics.median(wall[k])
        top = sorted(wall[k], reverse=True)[:3]
        line.append(f"{k}: {passes[k]} passes, main thread CPU {cpu[k] * 1e3:.1f} ms, wall {sum(wall[k]) * 1e3:.1f} ms, "
                    f"slowest runs {', '.join(f'{t / med:.0f}x' for t in top)} the median {med * 1e3:.3f} ms")
    print(f"{spec} (first {n} runs, load {os.getloadavg()[0]:.1f}): " + "; ".join(line), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base_tree")
    ap.add_argument("folder")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--wall", action="store_true", help="wall clock at $TVMLITE_THREADS threads")
    ap.add_argument("--blocks", type=int, default=0, help="timed calls per block, bench_tvm.interleaved (wall)")
    ap.add_argument("--first", type=int, default=0, help="time the first N runs of fresh models (wall)")
    a = ap.parse_args(argv)
    if not (a.wall or a.blocks or a.first):
        os.environ["TVMLITE_THREADS"] = "1"
    from tvmlite.backends.tvm import load_module
    from tvmlite.backends.tvm.kernels.target import host_threads
    from tvmlite.backends.tvm.module import CompiledModel
    from tvmlite.runtime.ort import wait_idle

    if a.blocks or a.first:
        a.wall = True

    base = base_module(a.base_tree)
    threads = host_threads()
    clock = time.perf_counter if a.wall else time.thread_time
    for spec in a.models:
        m, name, shape = load_model(spec)
        feeds = {name: np.random.default_rng(0).random(shape).astype(np.float32)}
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        cm = load_module(library(a.folder, spec))
        consts = cm._consts
        models = {"base": base.CompiledModel(cm.lib, cm.plan, consts), "new": CompiledModel(cm.lib, cm.plan, consts)}
        runs = {"base": models["base"].run, "new": models["new"].run, "ort": lambda f: sess.run(None, f)}
        if a.first:
            first_runs({k: CompiledModel(cm.lib, cm.plan, consts) if k == "new" else
                        base.CompiledModel(cm.lib, cm.plan, consts) for k in ("base", "new")}, feeds, a.first, spec)
            continue
        ref = runs["base"](feeds)[0]
        if not np.array_equal(runs["new"](feeds)[0], ref):
            print(f"run_path_ab: {spec}: the two run paths disagree", file=sys.stderr)
            return 1
        times = {k: [] for k in runs}
        order = list(runs)
        for r in range(a.rounds):
            for k in order[r % 3:] + order[:r % 3]:
                if a.blocks:
                    wait_idle()
                    runs[k](feeds)
                for _ in range(max(a.blocks, 1)):
                    t0 = clock()
                    runs[k](feeds)
                    times[k].append(clock() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        slow = {k: sum(t > 2 * med["ort"] for t in times[k]) / len(times[k]) for k in ("base", "new")}
        print(f"{spec} ({'wall' if a.wall else 'CPU'} time, {threads} thread(s), load {os.getloadavg()[0]:.1f}): "
              f"onnxruntime median {med['ort'] * 1e3:.3f} ms; median (best) base/ort {med['base'] / med['ort']:.3f} "
              f"({best['base'] / best['ort']:.3f}), new/ort {med['new'] / med['ort']:.3f} ({best['new'] / best['ort']:.3f}), "
              f"new/base {med['new'] / med['base']:.3f}; runs past 2x onnxruntime's median: base {slow['base']:.0%}, "
              f"new {slow['new']:.0%}; threads at the end: base {models['base'].threads}, new {models['new'].threads}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    sys.exit(main())
