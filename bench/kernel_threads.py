"""Each kernel of a built plan timed where it runs, inside the plan's sequence (one Python call per
kernel, caches as the previous kernels left them), on one thread and on all, whole passes
alternating: medians and best runs. On a shared host the best runs show what a kernel gains from
the other cores when they are free, the medians what it gets under the present load.

    PYTHONPATH=. python bench/kernel_threads.py MODEL [MODEL ...] [--passes 400]

MODEL as bench/tree_ab.py takes it. Builds at $TVMLITE_THREADS (default: the cores) threads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from tree_ab import known, load_model


def kernel_times(cm, threads: int, passes: int) -> dict:
    """{threads: [[ns of kernel i in each pass], ...]} for 1 and ``threads``, passes alternating."""
    from tvmlite.backends.tvm import plan_func

    calls = cm._calls
    out = {1: [[] for _ in calls], threads: [[] for _ in calls]}
    for r in range(passes):
        for th in ((1, threads) if r % 2 else (threads, 1)):
            plan_func.use_threads(th)
            fn, args = calls[0]
            fn(*args)  # the first after a switch wakes or settles the pool: not counted
            for i, (fn, args) in enumerate(calls):
                t0 = time.perf_counter_ns()
                fn(*args)
                out[th][i].append(time.perf_counter_ns() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--passes", type=int, default=400)
    a = ap.parse_args(argv)
    bad = [m for m in a.models if not known(m)]
    if bad or a.passes < 1:
        print(f"kernel_threads: {'unknown model ' + bad[0] if bad else '--passes must be at least 1'}", file=sys.stderr)
        return 2
    import tvmlite
    from tvmlite.backends.tvm import compile_model
    from tvmlite.backends.tvm.kernels.target import host_threads

    threads = host_threads()
    for spec in a.models:
        m, name, shape = load_model(spec)
        feeds = {name: np.random.default_rng(0).random(shape).astype(np.float32)}
        cm = compile_model(tvmlite.load(m), {name: shape})
        cm.run(feeds)
        t = kernel_times(cm, threads, a.passes)
        print(f"{spec} (wall us, 1 thread | {threads} threads, load {os.getloadavg()[0]:.1f}):")
        for i, c in enumerate(cm.plan["calls"]):
            one, many = t[1][i], t[threads][i]
            print(f"  {c.get('func', 'host%d' % c.get('host', 0)):32s} median {statistics.median(one) / 1e3:8.1f} | "
                  f"{statistics.median(many) / 1e3:8.1f}   best {min(one) / 1e3:8.1f} | {min(many) / 1e3:8.1f}   "
                  f"best {threads}/1 {min(many) / max(min(one), 1):.2f}")
        print(f"  sum of medians {sum(statistics.median(x) for x in t[1]) / 1e3:.1f} | "
              f"{sum(statistics.median(x) for x in t[threads]) / 1e3:.1f}, of bests {sum(min(x) for x in t[1]) / 1e3:.1f} | "
              f"{sum(min(x) for x in t[threads]) / 1e3:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    sys.exit(main())
