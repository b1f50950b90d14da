"""quantize's weight range in onnxruntime: 8-bit weights, 7-bit weights (reduce_range=on) and 8-bit
codes stored as uint8 (w + 128, zero point 128: onnxruntime's u8u8 kernels, exact everywhere).

Per model (digits, cls, detector, as bench_int8_steps.py builds them): ``quantize(mode=all)`` after
``fold-bn`` with reduce_range off and on, and the 8-bit file with its weights moved to uint8. For each
file: onnxruntime's optimized session (its fused int8 kernels) against the file's own arithmetic
(onnxruntime with graph optimizations off: DequantizeLinear -> float op -> QuantizeLinear), in steps,
the largest over every int8 tensor; the relative L2 error of the outputs against the float model in
onnxruntime's optimized session; and the latency of the float model and each int8 file, onnxruntime at
batch 1, interleaved (every other round reversed, one settle run before each timed run), medians.

    PYTHONPATH=. python bench/bench_int8_weight_range.py [digits cls detector] [--threads 1] [--repeats 40]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_int8_steps import model  # noqa: E402
from test_int8_numpy_vs_ort import _expose_int8, _quantize  # noqa: E402
from tvmlite.runtime.ort import time_interleaved  # noqa: E402

COMPUTE = ("Conv", "Gemm", "MatMul")


def uint8_weights(q: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ file with each Conv/Gemm/MatMul weight DequantizeLinear's int8 codes and zero point
    stored as uint8 + 128 (the same values: (w + 128) - (z + 128) = w - z)."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    inits = {t.name: t for t in m.graph.initializer}
    weights = {n.input[1] for n in m.graph.node if n.op_type in COMPUTE and len(n.input) > 1}
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" or n.output[0] not in weights or n.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[0]])
        if w.dtype != np.int8:
            continue
        zp = (numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2]
              else np.zeros(numpy_helper.to_array(inits[n.input[1]]).shape, np.int8))  # Conv's: none written
        wn, zn = f"{n.input[0]}__u8", f"{n.output[0]}__zp_u8"
        m.graph.initializer.extend([
            numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), wn),
            numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), zn)])
        n.input[:] = [wn, n.input[1], zn]
    used = {i for n in m.graph.node for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def session(proto, threads, optimized=True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def steps_off_exact(q, feeds) -> int:
    m = _expose_int8(q, feeds)
    names = [o.name for o in m.graph.output]
    a, b = (dict(zip(names, session(m, 2, opt).run(None, feeds))) for opt in (True, False))
    return max(int(np.abs(a[n].astype(np.int32) - b[n].astype(np.int32)).max()) for n in names
               if a[n].dtype in (np.uint8, np.int8))


def rel_l2(ref: list, got: list) -> float:
    num = sum(float(np.sum((r.astype(np.float64) - g.astype(np.float64)) ** 2)) for r, g in zip(ref, got))
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    return float(np.sqrt(num / den))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["digits", "cls", "detector"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f}; onnxruntime {ort.__version__}, {args.threads} thread(s)")
    for label in args.models:
        proto, calib, feeds = model(label)
        batch1 = {k: v[:1] for k, v in feeds.items()}
        files = {"8-bit": _quantize(proto, calib, reduce_range="off"),
                 "7-bit": _quantize(proto, calib, reduce_range="on")}
        files["uint8"] = uint8_weights(files["8-bit"])
        float_sess = session(proto, args.threads)
        ref = float_sess.run(None, feeds)
        sessions = {k: session(q, args.threads) for k, q in files.items()}
        t = time_interleaved([lambda s=s: s.run(None, batch1) for s in [float_sess, *sessions.values()]],
                             args.repeats, settle=1).medians_ms
        print(f"{label}: float {t[0]:.3f} ms")
        for (k, q), ms in zip(files.items(), t[1:]):
            print(f"  {k:<6} int8/float {ms / t[0]:.3f}x ({ms:.3f} ms)  steps off exact {steps_off_exact(q, feeds):>4}  "
                  f"rel-L2 vs float {rel_l2(ref, sessions[k].run(None, feeds)):.4f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
