"""MiniLM encoder (seq 128, batch 1): the fused attention scores kernel with its register tile of
`gemm_rows(lanes)` rows (4 on AVX2, 8 with AVX-512) against the fixed 8 rows it had before, and
onnxruntime, interleaved in one process; medians and best runs of each ratio.

    PYTHONPATH=. python bench/minilm_scores_tile.py [rounds] [--cpu]

--cpu: TVM and onnxruntime on one thread, CPU time of the thread (what a loaded machine barely
moves); without it wall time on 2 threads. On AVX-512 both builds are the same kernel."""
import os
import sys
import time

CPU = "--cpu" in sys.argv
if CPU:
    os.environ["TVMLITE_THREADS"] = "1"  # before TVM's runtime starts

import numpy as np  # noqa: E402

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.kernels import transformer as TR  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.runtime.ort import ort_session  # noqa: E402
from tvmlite.zoo_encoder import minilm_encoder  # noqa: E402

ARGS = [a for a in sys.argv[1:] if a != "--cpu"]
ROUNDS = int(ARGS[0]) if ARGS else 40
clock = time.thread_time if CPU else time.perf_counter
m, _ = minilm_encoder()
ids = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
named = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
feeds = {i.name: named[i.name] for i in m.graph.input}
shapes = {k: v.shape for k, v in feeds.items()}
after = compile_model(load(m), shapes, cache=False)
rows = TR.gemm_rows
TR.gemm_rows = lambda lanes: 8  # the tile as it was (cache=False: the sources did not change)
before = compile_model(load(m), shapes, cache=False)
TR.gemm_rows = rows
sess = ort_session(m, 1 if CPU else 2)
ref = sess.run(None, feeds)
for name, cm in (("8 rows", before), ("gemm_rows", after)):
    err = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(cm.run(feeds), ref))
    print(f"{name}: max rel err {err:.1e}")
fns = [lambda: before.run(feeds), lambda: after.run(feeds), lambda: sess.run(None, feeds)]
ts = [[] for _ in fns]
for f in fns:
    f()
for r in range(ROUNDS):
    for i in (range(3) if r % 2 == 0 else reversed(range(3))):
        t0 = clock()
        fns[i]()
        ts[i].append((clock() - t0) * 1e3)
med = [float(np.median(t)) for t in ts]
best = [float(np.min(t)) for t in ts]
print("%s medians: 8 rows %.2f ms, gemm_rows %.2f ms, onnxruntime %.2f ms" % (
    "cpu time, 1 thread" if CPU else "wall, 2 threads", *med))
print("tvmlite/onnxruntime: 8 rows %.3f, gemm_rows %.3f (best runs %.3f, %.3f); gemm_rows/8 rows %.3f" % (
    med[0] / med[2], med[1] / med[2], best[0] / best[2], best[1] / best[2], med[1] / med[0]))
