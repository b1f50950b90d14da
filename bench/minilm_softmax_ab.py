"""MiniLM encoder (seq 128, batch 1) on the TVM backend built as it was before the session-25 kernel
changes (a vdivps per element for epilogue divisions by a constant; one vector register per exp
step in Softmax; the key transpose vectorized along its output's last axis) and as it is now,
against onnxruntime, interleaved in one process (every other round reversed), medians. Usage:

    PYTHONPATH=. python bench/minilm_softmax_ab.py [rounds] [--cpu]

--cpu: TVM and onnxruntime on one thread, CPU time of the calling thread (what a loaded machine
barely moves); without it wall time on 2 threads. Both builds skip the build cache."""
import os
import sys
import time

CPU = "--cpu" in sys.argv
if CPU:
    os.environ["TVMLITE_THREADS"] = "1"  # before TVM's runtime starts

import numpy as np  # noqa: E402

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.kernels import epilogue as E, reduce as R, tensor as T  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.runtime.ort import ort_session, time_interleaved  # noqa: E402
from tvmlite.zoo_encoder import minilm_encoder  # noqa: E402

ARGS = [a for a in sys.argv[1:] if a != "--cpu"]
ROUNDS = int(ARGS[0]) if ARGS else 40
clock = time.thread_time if CPU else time.perf_counter

m, _ = minilm_encoder()
ids = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
named = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
feeds = {i.name: named[i.name] for i in m.graph.input}
shapes = {k: v.shape for k, v in feeds.items()}
now = E._divide_as_multiply, R.exp_run, T.block_transpose
E._divide_as_multiply, R.exp_run, T.block_transpose = (lambda op: op), (lambda red, lanes: lanes), \
    (lambda *a, **k: False)
before = compile_model(load(m), shapes, cache=False)
E._divide_as_multiply, R.exp_run, T.block_transpose = now
t0 = time.time()
after = compile_model(load(m), shapes, cache=False)
print(f"build (now) {time.time() - t0:.1f} s")
sess = ort_session(m, 1 if CPU else 2)
ref = sess.run(None, feeds)
for name, cm in (("before", before), ("now", after)):
    err = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(cm.run(feeds), ref))
    print(f"{name}: max rel err {err:.1e}, threads {cm.threads}")
fns = [lambda: before.run(feeds), lambda: after.run(feeds), lambda: sess.run(None, feeds)]
# settle: a timed call never runs straight after another callable (onnxruntime's pool spins on after
# its run, and in plain round-robin the middle build would follow it every other round)
med = time_interleaved(fns, ROUNDS, 1, clock=clock, settle=0 if CPU else 1).medians_ms
print("%s, medians of %d, load average %.1f: before %.2f ms, now %.2f ms, onnxruntime %.2f ms" % (
    "cpu time, 1 thread" if CPU else "wall, 2 threads", ROUNDS, os.getloadavg()[0], *med))
print("tvmlite/onnxruntime: before %.3f, now %.3f; now/before %.3f" % (med[0] / med[2], med[1] / med[2],
                                                                      med[1] / med[0]))
