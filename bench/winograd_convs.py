"""3x3 stride-1 convs on the TVM backend: the direct/im2col kernel the backend picks against the
same conv lowered to Winograd F(m x m, 3x3) (passes/winograd.py: WinogradInput, batched MatMul,
WinogradOutput with the epilogue), and onnxruntime's Conv, timed interleaved in one process.

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/winograd_convs.py --rounds 30 [--shapes all] [--m 2,4] [--depth 8]

Each shape CI-CO-HxW is a Conv (bias) + Relu at batch 1; one thread by the calling thread's CPU
time (``--clock wall`` at $TVMLITE_THREADS threads). Prints per shape the medians as ratios to
onnxruntime, the Winograd/direct ratio, and the max rel error of each against onnxruntime.
``--depth N`` times N such convs in a row (CI->CO, CO->CI, ...), each with its own weights, so
that past a few the weights come from memory as in a whole model (a lone conv's timing loop keeps
them in cache: 256->256 at 14x14 F(4) 0.76x alone, 1.30x at depth 8; backends/tvm/winograd_choice.py).
The direct variant is built with $TVMLITE_WINOGRAD=0 (the backend's own choice off).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETS = {
    "digits": ["32-64-32x32", "64-128-16x16", "128-128-8x8"],
    "vgg": ["64-64-112x112", "128-128-56x56", "256-256-28x28", "512-512-14x14"],
    "resnet": ["64-64-56x56", "128-128-28x28", "256-256-14x14", "512-512-7x7"],
    "det": ["16-16-80x80", "48-48-40x40", "112-48-40x40", "64-64-20x20", "112-64-20x20", "64-48-20x20"],
    "densenet": ["128-32-56x56", "128-32-28x28", "128-32-14x14", "128-32-7x7"],
    "small": ["16-64-55x55", "32-128-27x27", "48-192-13x13", "64-256-13x13", "64-192-56x56", "96-128-28x28"],
}


def conv_model(ci: int, co: int, h: int, w: int, seed: int = 0, depth: int = 1):
    """Conv (bias) + Relu, ``depth`` of them in a row (ci->co, co->ci, ci->co, ...), each with its
    own weights: past a few, the weights are read from memory as in a whole model."""
    from onnx import TensorProto, helper as hp, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        cin, cout = (ci, co) if i % 2 == 0 else (co, ci)
        wt = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(wt, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        y = "y" if i == depth - 1 else f"r{i}"
        nodes += [hp.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  hp.make_node("Relu", [f"c{i}"], [y])]
        prev = y
    g = hp.make_graph(nodes, "conv", [hp.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, h, w])],
                      [hp.make_tensor_value_info("y", TensorProto.FLOAT, [1, co if depth % 2 else ci, h, w])], inits)
    m = hp.make_model(g, opset_imports=[hp.make_opsetid("", 17)], ir_version=10)
    return m, {"x": rng.standard_normal((1, ci, h, w)).astype(np.float32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="all", help="comma-separated CI-CO-HxW or set names: " + ",".join(SETS))
    ap.add_argument("--m", default="2,4", help="Winograd tile sizes to time")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--depth", type=int, default=1, help="convs in a row, each its own weights (ci->co, co->ci, ...)")
    a = ap.parse_args()
    import onnxruntime as ort

    import tvmlite
    from tvmlite.backends.tvm import compile_model
    from tvmlite.backends.tvm.kernels.target import host_threads
    from tvmlite.passes.winograd import Winograd
    from tvmlite.runtime.ort import time_interleaved

    names = []
    for s in a.shapes.split(","):
        names += SETS.get(s, []) if s != "all" else [x for v in SETS.values() for x in v]
        if s not in SETS and s != "all":
            names.append(s)
    ms = [int(m) for m in a.m.split(",") if m]
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    threads = 1 if a.clock == "cpu" else host_threads()
    print(f"{threads} thread(s), {a.clock} clock, depth {a.depth}, load {os.getloadavg()[0]:.1f}", flush=True)
    for name in names:
        ci, co, hw = name.split("-")
        h, w = (int(v) for v in hw.split("x"))
        proto, feeds = conv_model(int(ci), int(co), h, w, depth=a.depth)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        fns, errs, labels = [lambda: sess.run(None, feeds)], [], ["ort"]
        variants = [("direct", None)] + [(f"F({m})", m) for m in ms]
        for label, m in variants:
            model = tvmlite.load(proto)
            if m is not None:
                Winograd(m=m)(model)
            os.environ["TVMLITE_WINOGRAD"] = "0"  # "direct" is the direct kernel, not the backend's own choice
            cm = compile_model(model, {"x": feeds["x"].shape})
            os.environ.pop("TVMLITE_WINOGRAD")
            got = cm.run(feeds)[0]
            errs.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
            fns.append(lambda cm=cm: cm.run(feeds))
            labels.append(label)
        t = time_interleaved(fns, a.rounds, 3, clock=clock).medians_ms
        parts = [f"ort {t[0]:.3f} ms"] + [f"{lb} {t[i] / t[0]:.2f}x (err {errs[i - 1]:.1e})"
                                        for i, lb in enumerate(labels) if i]
        best = min(range(2, len(t)), key=lambda i: t[i]) if len(t) > 2 else 1
        print(f"{name:>14}: " + ", ".join(parts) + f"; best Winograd/direct {t[best] / t[1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
