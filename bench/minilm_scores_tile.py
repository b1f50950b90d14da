"""MiniLM encoder (seq 128, batch 1): the fused attention scores kernel with its register tile of
`gemm_rows(lanes)` rows (4 on AVX2, 8 with AVX-512) against the fixed 8 rows it had before, and
onnxruntime, interleaved in one process; medians and best runs of each ratio.

    PYTHONPATH=. python bench/minilm_scores_tile.py [rounds] [--cpu]
    PYTHONPATH=. python bench/minilm_scores_tile.py [rounds] --kernel   # the scores kernel alone

--cpu: TVM and onnxruntime on one thread, CPU time of the thread (what a loaded machine barely
moves); without it wall time on 2 threads. --kernel: the encoder's scores kernel alone (12 heads x
128 x 32 @ 32 x 128, scale, key mask, Softmax), both tiles, one thread, CPU time, 20 calls per
sample. On AVX-512 both builds are the same kernel."""
import os
import sys
import time

KERNEL = "--kernel" in sys.argv
CPU = "--cpu" in sys.argv or KERNEL
if CPU:
    os.environ["TVMLITE_THREADS"] = "1"  # before TVM's runtime starts

import numpy as np  # noqa: E402

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.kernels import transformer as TR  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.runtime.ort import ort_session  # noqa: E402
from tvmlite.zoo_encoder import minilm_encoder  # noqa: E402
from minilm_cases import encoder_feeds, scores_case  # noqa: E402

ARGS = [a for a in sys.argv[1:] if a not in ("--cpu", "--kernel")]
ROUNDS = int(ARGS[0]) if ARGS else 40
clock = time.thread_time if CPU else time.perf_counter


def scores_kernel_ab():
    from tvmlite.backends.tvm.kernels.defs import Epilogue
    from tvmlite.backends.tvm.kernels.target import vector_lanes
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    feeds, epi, ref = scores_case("Mul", 0.125)
    q, k, s = feeds["q"], feeds["k"], ref

    def make():
        kd = TR.scores_softmax("s", "q", q.shape, "k", k.shape, out_value="p", out_shape=s.shape, epilogue=epi,
                               after=Epilogue(), lanes=vector_lanes())
        args, outs = kernel_args(kd, feeds)
        fn = build_kernel(kd)["main"]
        fn(*args)
        print("max rel err", float(np.abs(outs[0].numpy().reshape(s.shape) - ref).max() / ref.max()))
        return lambda: [fn(*args) for _ in range(20)]

    after = make()
    rows = TR.gemm_rows
    TR.gemm_rows = lambda lanes: 8
    before = make()
    TR.gemm_rows = rows
    ts = [[], []]
    for r in range(ROUNDS):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.thread_time()
            (before, after)[i]()
            ts[i].append((time.thread_time() - t0) / 20 * 1e3)
    med = [float(np.median(t)) for t in ts]
    print("scores kernel alone, cpu time, 1 thread medians: 8 rows %.3f ms, gemm_rows %.3f ms, ratio %.3f" % (
        med[0], med[1], med[1] / med[0]))


if KERNEL:
    scores_kernel_ab()
    sys.exit(0)
m, _ = minilm_encoder()
feeds = encoder_feeds(m)
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
