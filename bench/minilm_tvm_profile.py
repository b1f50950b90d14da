"""MiniLM encoder (seq 128, batch 1) on the TVM backend vs onnxruntime: host ops, max relative
error, interleaved medians, and milliseconds per op kind and per kernel role across the six layers
(issue 15 item 3).

    PYTHONPATH=. python bench/minilm_tvm_profile.py          # wall time, TVM and onnxruntime on 2 threads
    PYTHONPATH=. python bench/minilm_tvm_profile.py --cpu    # 1 thread each, CPU time of the thread

On a shared, loaded machine wall times of a 2-thread pool mostly measure waiting for a core
(a parallel loop waits for its slowest, descheduled worker); ``--cpu`` times what each run costs
in CPU time on one thread, which the load barely moves, for comparing kernels and versions.
"""
import collections
import os
import re
import sys
import time

CPU = "--cpu" in sys.argv
if CPU:
    os.environ["TVMLITE_THREADS"] = "1"  # before TVM's runtime starts

import numpy as np  # noqa: E402

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.runtime.ort import interleaved_ms, ort_session  # noqa: E402
from tvmlite.zoo_encoder import minilm_encoder  # noqa: E402

clock = time.thread_time if CPU else time.perf_counter
m, tok = minilm_encoder()
feeds = {}
for i in m.graph.input:
    feeds[i.name] = np.ones((1, 128), np.int64) if i.name != "token_type_ids" else np.zeros((1, 128), np.int64)
feeds["input_ids"] = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
t = time.time()
cm = compile_model(load(m), {k: v.shape for k, v in feeds.items()}, cache=False)
print("build s", round(time.time() - t, 1), cm.summary)
print("host ops", cm.host_ops)
sess = ort_session(m, 1 if CPU else 2)
ref = sess.run(None, feeds)
got = cm.run(feeds)
for g, r in zip(got, ref):
    print("max rel err", float(np.abs(g - r).max() / np.abs(r).max()))


def timed(fns, rounds):
    """Medians (ms) of ``fns`` run in turn, every other round reversed, on ``clock``."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = clock()
            fns[i]()
            ts[i].append((clock() - t0) * 1e3)
    return [float(np.median(x)) for x in ts]


run_tvm, run_ort = (lambda: cm.run(feeds)), (lambda: sess.run(None, feeds))
ms = timed([run_tvm, run_ort], 30) if CPU else interleaved_ms([run_tvm, run_ort], 30)
print("%s: tvm ms %.2f ort ms %.2f ratio %.2f" % ("cpu time, 1 thread" if CPU else "wall, 2 threads",
                                                  ms[0], ms[1], ms[0] / ms[1]))
cm.set_inputs(feeds)
cm.execute()
prof = []
for (fn, args), call in zip(cm._calls, cm.plan["calls"]):
    med = timed([lambda fn=fn, args=args: fn(*args)], 7)[0]
    prof.append((call.get("func", "host"), ", ".join(call.get("nodes", [])), med))
agg = collections.defaultdict(float)
for name, label, t_ms in prof:
    agg[re.sub(r"^k\d+_", "", name).split("_")[0]] += t_ms
print(f"kernel sum {sum(agg.values()):.2f} ms")
for k, v in sorted(agg.items(), key=lambda kv: -kv[1]):
    if v >= 0.005:
        print(f"{k:24s} {v:8.2f} ms")
# per role across the six layers (layerN/ stripped): which kernel of the block costs what
roles = collections.defaultdict(lambda: [0.0, 0, ""])
for name, label, t_ms in prof:
    first = label.split(", ")[0]
    role = re.sub(r"^layer\d+/", "", first)
    roles[role][0] += t_ms
    roles[role][1] += 1
    roles[role][2] = re.sub(r"layer\d+/", "", label)
print(f"{'kernel (first node)':28s} {'n':>2s} {'ms':>7s}  nodes fused")
for role, (t_ms, n, label) in sorted(roles.items(), key=lambda kv: -kv[1][0]):
    if t_ms >= 0.005:
        print(f"{role:28s} {n:2d} {t_ms:7.2f}  {label[:100]}")
