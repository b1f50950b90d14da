"""MiniLM encoder (seq 128, batch 1) on the TVM backend built as it was before the session-25 kernel
changes (a vdivps per element for epilogue divisions by a constant; one vector register per exp
step in Softmax; the key transpose vectorized along its output's last axis) and as it is now,
against onnxruntime, interleaved in one process (every other round reversed), medians. Usage:

    PYTHONPATH=. python bench/minilm_softmax_ab.py [rounds] [--cpu]
    PYTHONPATH=. python bench/minilm_softmax_ab.py [rounds] --kernel

--cpu: TVM and onnxruntime on one thread, CPU time of the calling thread (what a loaded machine
barely moves); without it wall time on 2 threads. Both builds skip the build cache. --kernel: the
encoder's fused scores kernel (12 heads x 128 x 32 @ 32 x 128, / sqrt(32), key mask, Softmax) and
its key transpose alone, before and now, one thread, CPU time, 20 calls per sample.

Measured on the AVX2 Zen 1 host under load 4-10 (other jobs): --kernel scores 0.88 -> 0.66-0.68 ms
(Div as multiply 0.78, then the exp chains), key transpose 0.045 -> 0.011 ms; --cpu the encoder
now/before 0.967, 0.971, 0.996, 0.989, 1.030 over five runs (now/onnxruntime 0.940-0.998): the
whole encoder's 1-thread CPU time moves +-3% from build to build and run to run here, more than
the ~1.5 ms (1.7%) the kernels save; two builds of each in one process (A/A/B/B, 30 rounds) read
before 1.000 and 0.996, now 0.983 and 0.982."""
import os
import sys
import time

KERNEL = "--kernel" in sys.argv
CPU = "--cpu" in sys.argv or KERNEL
if CPU:
    os.environ["TVMLITE_THREADS"] = "1"  # before TVM's runtime starts

import numpy as np  # noqa: E402

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.kernels import epilogue as E, reduce as R, tensor as T  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.runtime.ort import ort_session, time_interleaved  # noqa: E402
from tvmlite.zoo_encoder import minilm_encoder  # noqa: E402
from minilm_cases import encoder_feeds, scores_case  # noqa: E402

ARGS = [a for a in sys.argv[1:] if a not in ("--cpu", "--kernel")]
ROUNDS = int(ARGS[0]) if ARGS else 40
clock = time.thread_time if CPU else time.perf_counter
NOW = E._divide_as_multiply, R.exp_run, T.block_transpose
BEFORE = (lambda op: op), (lambda red, lanes: lanes), (lambda *a, **k: False)


def built(make, before: bool):
    """``make()`` with this session's changes off (``before``) or on."""
    E._divide_as_multiply, R.exp_run, T.block_transpose = BEFORE if before else NOW
    try:
        return make()
    finally:
        E._divide_as_multiply, R.exp_run, T.block_transpose = NOW


def kernels_ab():
    from tvmlite.backends.tvm.kernels.defs import Epilogue
    from tvmlite.backends.tvm.kernels.target import vector_lanes
    from tvmlite.backends.tvm.kernels.transformer import scores_softmax
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    scores_feeds, epi, ref = scores_case("Div", float(np.sqrt(32.0)))
    q, k = scores_feeds["q"], scores_feeds["k"]
    keys = np.random.default_rng(1).standard_normal((1, 128, 12, 32)).astype(np.float32)

    def scores():
        return scores_softmax("s", "q", q.shape, "k", k.shape, out_value="p", out_shape=ref.shape, epilogue=epi,
                              after=Epilogue(), lanes=vector_lanes())

    def transpose():
        return T.transpose("t", "x", keys.shape, (0, 2, 3, 1), out_value="y", lanes=vector_lanes())

    for label, make, feeds, want in (("scores + softmax", scores, scores_feeds, ref),
                                     ("key transpose", transpose, {"x": keys}, keys.transpose(0, 2, 3, 1))):
        fns = []
        for before in (True, False):
            kd = built(make, before)
            args, outs = kernel_args(kd, feeds)
            fn = build_kernel(kd)["main"]
            fn(*args)
            err = float(np.abs(outs[0].numpy().reshape(want.shape) - want).max() / np.abs(want).max())
            print(f"{label} {'before' if before else 'now'}: max rel err {err:.1e}")
            fns.append(lambda fn=fn, args=args: [fn(*args) for _ in range(20)])
        med = [x / 20 for x in time_interleaved(fns, ROUNDS, 1, clock=clock).medians_ms]
        print(f"{label}: cpu time, 1 thread, medians of {ROUNDS}, load average {os.getloadavg()[0]:.1f}: "
              f"before {med[0]:.4f} ms, now {med[1]:.4f} ms, now/before {med[1] / med[0]:.3f}")


if KERNEL:
    kernels_ab()
    sys.exit(0)
m, _ = minilm_encoder()
feeds = encoder_feeds(m)
shapes = {k: v.shape for k, v in feeds.items()}
before = built(lambda: compile_model(load(m), shapes, cache=False), True)
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
