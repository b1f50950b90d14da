"""NumPy backend vs onnxruntime on the int8 models tvmlite writes, in quantization steps.

Per model: ``quantize(mode=all)`` after ``fold-bn`` on a few calibration inputs (or a given int8 file
with --file), then every QuantizeLinear output compared as integers between
- NumPy and onnxruntime's optimized session, end to end (its unoptimized QDQ graph where the CPU has
  no VNNI int8 dot product: the fused u8s8 kernels saturate there, see the last comparison);
- the same, per op: the graph cut at every QuantizeLinear, each int8 tensor computed by NumPy from
  onnxruntime's own int8 tensors (tests/test_int8_numpy_vs_ort.py, _steps_per_op);
- onnxruntime optimized vs onnxruntime with its graph optimizations off (the plain QDQ semantics).

    PYTHONPATH=. python bench/bench_int8_steps.py [digits detector cls rec det] [--file M.onnx --model cls]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import bench_vs_ort_quant as B  # noqa: E402
from test_int8_numpy_vs_ort import _expose_int8, _quantize, _steps, _steps_per_op  # noqa: E402


def model(label: str):
    """(float model, calibration feeds, one evaluation feed)."""
    if label == "digits":
        calib = np.load(ROOT / "models" / "digits_calib.npz")["input"][:32]
        return (onnx.load(ROOT / "models" / "digits_cnn.onnx"), B.split({"input": calib}),
                {"input": np.load(ROOT / "models" / "digits_test.npz")["input"][:8]})
    if label == "detector":
        from real_graphs import detector

        return detector(320)[0], B.split({"images": B.pages(4, 320, 1)}), {"images": B.pages(1, 320, 2)}
    if label == "cls":
        return (onnx.load(B.CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), B.split({"x": B.cls_inputs(8, 1)}),
                {"x": B.cls_inputs(1, 2)})
    if label == "rec":
        return (onnx.load(B.CORPUS / "ch_PP-OCRv4_rec_infer.onnx"), B.split({"x": B.text_lines(4, 48, 320, 1)}),
                {"x": B.text_lines(1, 48, 320, 2)})
    if label == "det":
        return (onnx.load(B.CORPUS / "ch_PP-OCRv4_det_infer.onnx"), B.split({"x": B.det_inputs(2, 1)}),
                {"x": B.det_inputs(1, 2)})
    raise SystemExit(f"unknown model {label!r} (digits, detector, cls, rec, det)")


def ort_vs_unoptimized(q: onnx.ModelProto, feeds: dict) -> tuple[str, int]:
    m = _expose_int8(q, feeds)
    names = [o.name for o in m.graph.output]
    runs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.graph_optimization_level = level
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        runs.append(dict(zip(names, sess.run(None, feeds))))
    a, b = runs
    steps = {n: int(np.abs(a[n].astype(np.int32) - b[n].astype(np.int32)).max())
             for n in names if a[n].dtype in (np.uint8, np.int8)}
    return max(steps.items(), key=lambda kv: kv[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["digits", "detector", "cls", "rec", "det"])
    ap.add_argument("--file", help="an int8 model to check instead of quantizing (one model label for its inputs)")
    args = ap.parse_args(argv)
    for label in args.models:
        t = time.perf_counter()
        proto, calib, feeds = model(label)
        q = onnx.load(args.file) if args.file else _quantize(proto, calib)
        e2e, per = _steps(q, feeds), _steps_per_op(q, feeds)
        producer = {n.output[0]: n.op_type for n in q.graph.node}
        made_by = {n.output[0]: producer.get(n.input[0]) for n in q.graph.node if n.op_type == "QuantizeLinear"}
        w, wp = max(e2e.items(), key=lambda kv: kv[1][0]), max(per.items(), key=lambda kv: kv[1][0])
        oo = ort_vs_unoptimized(q, feeds)
        print(f"{label}: {len(e2e)} int8 tensors. End to end: max {w[1][0]} steps ({w[1][1]:.4%} of {w[0]}), "
              f"{sum(v[0] > 1 for v in e2e.values())} tensors > 1 step. Per op: max {wp[1][0]} steps "
              f"({wp[1][1]:.4%} of {wp[0]}), ops that differ: {sorted({made_by[k] for k, v in per.items() if v[0]})}. "
              f"onnxruntime optimized vs unoptimized: max {oo[1]} steps ({oo[0]}). "
              f"{time.perf_counter() - t:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
