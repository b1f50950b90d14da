"""Softmax over long rows: the row kernel (`reduce._softmax_rows`, vectorized, ragged rows too)
against the generic kernel it replaced for rows past 4096 or of no whole number of vectors, and
onnxruntime's Softmax, one thread, CPU time, interleaved (medians).

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/softmax_rows_ab.py [--rows 40] [--red 6625] [--rounds 60]

The default is PP-OCR rec's head: 6625 classes x 40 steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--red", type=int, default=6625, help="the row's length (the softmax axis)")
    p.add_argument("--rounds", type=int, default=60)
    a = p.parse_args(argv)
    if min(a.rows, a.red, a.rounds) < 1:
        print("softmax_rows_ab: --rows, --red and --rounds must be at least 1", file=sys.stderr)
        return 2
    if os.environ.get("TVMLITE_THREADS", "").strip() != "1":
        print("softmax_rows_ab: run with TVMLITE_THREADS=1 (the kernels are timed by this thread's CPU time)",
              file=sys.stderr)
        return 2
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tvmlite.backends.tvm.kernels import reduce as R
    from tvmlite.backends.tvm.kernels.defs import Epilogue
    from tvmlite.backends.tvm.kernels.target import vector_lanes
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    x = (np.random.default_rng(0).standard_normal((1, a.rows, a.red)) * 5).astype(np.float32)
    runs = {}
    for variant in ("generic", "rows"):
        keep = R.MAX_ROW
        R.MAX_ROW = 0 if variant == "generic" else keep
        try:
            kd = R.softmax("s", "x", x.shape, axis=2, log=False, opset=13, out_value="y", epilogue=Epilogue(),
                           lanes=vector_lanes())
        finally:
            R.MAX_ROW = keep
        fn = build_kernel(kd)["main"]
        args, outs = kernel_args(kd, {"x": x})
        runs[variant] = (fn, args, outs)
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=2)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    times = {k: [] for k in list(runs) + ["ort"]}
    calls = {k: (lambda fn=fn, args=args: fn(*args)) for k, (fn, args, _) in runs.items()}
    calls["ort"] = lambda: sess.run(None, {"x": x})
    for f in calls.values():
        f()
    for _ in range(a.rounds):
        for k, f in calls.items():
            t0 = time.thread_time()
            f()
            times[k].append(time.thread_time() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"softmax {a.rows} x {a.red}, one thread, CPU time, load {os.getloadavg()[0]:.1f}")
    for k in runs:
        err = float(np.abs(runs[k][2][0].numpy().reshape(ref.shape) - ref).max())
        print(f"  {k:8s} {med[k]:.3f} ms  {med[k] / med['ort']:.2f}x onnxruntime  max abs err {err:.1e}")
    print(f"  onnxruntime {med['ort']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
