"""int8 in the TVM backend: the VNNI GEMM against tvmlite's own float32 GEMM, and QDQ models built by
tvmlite against onnxruntime running the same QDQ file.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_tvm_int8.py [--quick] [--models digits,digits-ort,cls,cls-ort,...]

1. GEMM 1024^3: `dense_int8` (quantize A to uint8, u8 x s8 dot products into int32, dequantize
   with per-column scales) against `dense_gemm` float32, same shapes, with 8-bit weights and with
   7-bit ones (reduce_range: AVX2's exact byte step, kernels/qintrin.py), interleaved. Target: int8
   >= 2x the float throughput.
2. QDQ models, each built with `compile_model` (the QDQ patterns become int8 kernels at build time)
   and run against onnxruntime on the same file (2 threads, batch 1):
     digits      tvmlite's `quantize(mode=all)` of models/digits_cnn.onnx (calibration digits_calib.npz)
     digits-ort  onnxruntime's quantize_static (QDQ, per-channel s8 weights, u8 activations, MinMax)
     cls         tvmlite's `quantize(mode=all)` of PP-OCR cls (../shared/corpus), calibrated on synthetic
                 text lines
     cls-ort     onnxruntime's quantize_static of PP-OCR cls, the same calibration
     detector    tvmlite's `quantize(mode=all)` of the YOLO-style detector (tests/real_graphs.py) at 320x320,
                 calibrated on synthetic pages
     detector-ort onnxruntime's quantize_static of the same detector
   Target: tvmlite <= 1.0x of onnxruntime's latency, outputs within one quantization step of the
   output (the max difference is printed in units of the last QuantizeLinear's scale when the model
   ends with one, else as an absolute error).
Every pair is timed interleaved (bench_tvm.interleaved: medians, and the ratio of the best runs; before
each block of one runtime's calls it waits until the other's pool workers stop spinning, and prints
the mean waits before tvmlite's / onnxruntime's blocks, i.e. how long the other one spun);
with --cpu the GEMMs are timed in the calling thread's CPU time (use with TVMLITE_THREADS=1).
On a loaded machine, TVMLITE_THREADS=1 runs both single-threaded: a 2-thread TVM kernel waits at
its barrier for a descheduled thread, which made digits 150x slower than onnxruntime at load 16.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # real_graphs.detector

from bench_tvm import build_kernel, interleaved, ort_session  # noqa: E402
from bench_vs_ort_quant import cls_inputs, ort_quant, pages, split  # noqa: E402

from tvmlite.backends.tvm.kernels.target import import_tvm  # noqa: E402

CORPUS = pathlib.Path(os.environ.get("TVMLITE_CORPUS", ROOT.parent / "shared" / "corpus"))


def _timed(fns: dict, rounds: int, per_round: int, clock) -> dict:
    """bench_tvm.interleaved with another clock (time.thread_time: the calling thread's CPU time,
    which leaves out the time other jobs take the core; meaningful at TVMLITE_THREADS=1 only)."""
    for f in fns.values():
        f()
    res = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(rounds):
        for k, f in (items if r % 2 == 0 else items[::-1]):
            for _ in range(per_round):
                t0 = clock()
                f()
                res[k].append((clock() - t0) * 1e3)
    out = {k: float(np.median(v)) for k, v in res.items()}
    out.update({f"{k}_best": float(np.min(v)) for k, v in res.items()})
    return out


def bench_gemm(rounds: int, cpu: bool = False, shape=(1024, 1024, 1024)) -> dict:
    """int8 GEMM ``shape`` (M, K, N; 1024^3 by default) with 8-bit weights (|w| <= 127) and with 7-bit ones (|w| <= 63, what
    reduce_range quantization writes: on AVX2 without VNNI only these can take the `vpmaddubsw`
    byte step, kernels/qintrin.py; there the 7-bit weights also run through the int16 step, the
    A/B of the two steps on the same weights) against the float32 GEMM, all interleaved."""
    from tvmlite.backends.tvm.kernels import gemm as G
    from tvmlite.backends.tvm.kernels import qgemm
    from tvmlite.backends.tvm.kernels.defs import Epilogue
    from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, dense_int8
    from tvmlite.backends.tvm.kernels.qintrin import DotStep, dot_step
    from tvmlite.backends.tvm.kernels.target import vector_lanes
    from tvmlite.backends.tvm.single_kernel import kernel_args

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    a_scale = float(np.abs(a).max() / 127)
    a_q = np.clip(np.rint(a / np.float32(a_scale)), -128, 127)
    kf = G.dense_gemm("gemm_f32", "a", a.shape, w, None, out_value="c", out_shape=(m, n), epilogue=Epilogue(),
                      lanes=vector_lanes())
    lf, sf = build_kernel(kf)
    af, (of,) = kernel_args(kf, {"a": a})
    fns, info = {"float32": lambda: lf["main"](*af)}, {}
    rows = [("int8", 127, None), ("int8_w7", 63, None)]
    if dot_step(np.zeros((4, 1), np.int8)).step == "int8_avx2_u8":
        rows.append(("int8_w7_int16", 63, DotStep(False)))
    for label, top, forced in rows:
        w_scale = (np.abs(w).max(axis=0) / top).astype(np.float32)
        w_q = np.clip(np.rint(w / w_scale), -top, top).astype(np.int8)
        if forced is not None:
            qgemm.dot_step = lambda w2=None: forced
        try:
            kq = dense_int8(f"gemm_{label}", "a", a.shape, w_q, w_scale, None, QuantSpec(a_scale, 0, 1),
                            out_value="c", out_shape=(m, n), epilogue=Epilogue())
        finally:
            qgemm.dot_step = dot_step
        lq, sq = build_kernel(kq)
        aq, (oq,) = kernel_args(kq, {"a": a})
        fq = lq["main"]
        fq(*aq)
        ref = (a_q.astype(np.float64) @ w_q.astype(np.float64)) * a_scale * w_scale
        err = float(np.abs(oq.numpy() - ref).max() / np.abs(ref).max())
        fns[label] = (lambda f, args: lambda: f(*args))(fq, aq)
        info[label] = (kq.steps[0], sq, err, 8 if top == 127 else 7)
    t = _timed(fns, rounds, 5, time.thread_time) if cpu else interleaved(fns, rounds, 5)
    ops, name = 2 * m * k * n, ("1024^3" if shape == (1024, 1024, 1024) else f"{m}x{k}x{n}")
    g = {k: ops / v / 1e6 for k, v in t.items()}
    out = {"float_gflops": g["float32"]}
    for label, (step, sq, err, bits) in info.items():
        ratio, best = g[label] / g["float32"], g[f"{label}_best"] / g["float32_best"]
        print(f"GEMM {name}, {bits}-bit weights ({step}): int8 {g[label]:.0f} GOP/s, float32 {g['float32']:.0f} "
              f"GFLOP/s -> {ratio:.2f}x (best runs {best:.2f}x"
              + (f"; target >= 2x: {'met' if ratio >= 2 else 'NOT met'}" if name == "1024^3" else "") + "); "
              f"builds {sq:.1f} s and {sf:.1f} s; int8 vs exact integer arithmetic rel err {err:.1e}"
              + (" (CPU time)" if cpu else ""))
        key = label[len("int8"):]
        out.update({f"int8{key}_gops": g[label], f"ratio{key}": ratio, f"best_ratio{key}": best, f"step{key}": step})
    if "int8_w7_int16" in g:
        print(f"  7-bit weights, byte step vs int16 step: {g['int8_w7'] / g['int8_w7_int16']:.2f}x")
    return out


def _tvmlite_qdq(src: str, calib: str, out: str) -> None:
    import tvmlite
    from tvmlite.optimize import optimize

    model, _ = optimize(src, passes="fold-bn,quantize(mode=all)", calib=calib, check=False)
    tvmlite.save(model, out)


def _float_source(name: str, tmp: str):
    """(float ONNX file, calibration feed name, calibration batch, one batch-1 feed) of cls and
    detector, or None when the file is missing."""
    if name.startswith("cls"):
        src = CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
        if not src.exists():
            print(f"{name}: skipped ({src} not found)")
            return None
        return str(src), "x", cls_inputs(16, seed=1), {"x": cls_inputs(1, seed=2)}
    from real_graphs import detector

    src = f"{tmp}/detector320.onnx"
    onnx.save(detector(320)[0], src)
    return src, "images", pages(8, 320, seed=1), {"images": pages(1, 320, seed=2)}


def qdq_models(names, tmp: str) -> list[tuple[str, str, dict]]:
    """(label, QDQ file, one batch-1 feed) per requested model."""
    out = []
    digits_calib = np.load(ROOT / "models" / "digits_calib.npz")["input"]
    digits_x = {"input": np.load(ROOT / "models" / "digits_test.npz")["input"][:1].astype(np.float32)}
    for name in names:
        path = f"{tmp}/{name}.onnx"
        if name == "digits":
            _tvmlite_qdq(str(ROOT / "models" / "digits_cnn.onnx"), str(ROOT / "models" / "digits_calib.npz"), path)
            out.append((name, path, digits_x))
        elif name == "digits-ort":
            ort_quant({"src": str(ROOT / "models" / "digits_cnn.onnx"), "quant": "static",
                       "calib": split({"input": digits_calib[:32]})}, path)
            out.append((name, path, digits_x))
        elif name in ("cls", "cls-ort", "detector", "detector-ort"):
            found = _float_source(name, tmp)
            if found is None:
                continue
            src, feed_name, calib, feed = found
            if name.endswith("-ort"):
                ort_quant({"src": src, "quant": "static", "calib": split({feed_name: calib})}, path)
            else:
                np.savez(f"{tmp}/{name}_calib.npz", **{feed_name: calib})
                _tvmlite_qdq(src, f"{tmp}/{name}_calib.npz", path)
            out.append((name, path, feed))
        else:
            raise SystemExit(f"unknown model {name!r} (digits, digits-ort, cls, cls-ort, detector, detector-ort)")
    return out


def _ort_unfused(model: onnx.ModelProto):
    """onnxruntime on the QDQ graph as written: graph optimizations off, so DequantizeLinear -> float
    op -> QuantizeLinear, the model's exact arithmetic."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _last_step(model: onnx.ModelProto) -> float | None:
    """The scale of the DequantizeLinear that makes the first output, if one does."""
    out = model.graph.output[0].name
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if out in n.output and n.op_type == "DequantizeLinear" and n.input[1] in inits:
            return float(onnx.numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
    return None


_FAKE_QUANT_STEPS = ("_div", "_round", "_add", "_clip", "_sub", "_mul")


def float_fallbacks(m, shapes: dict) -> tuple[int, dict]:
    """(QuantizeLinear -> DequantizeLinear pairs left as float arithmetic, {op type: count} of the
    ops left computing float32) in the graph the TVM backend builds: the QDQ patterns no int8 kernel took
    (qdq_fusion.py), each costing a fake quantization around a float kernel."""
    import collections

    from tvmlite.backends.tvm.prepare import prepare

    g = prepare(m, shapes)[0].graph
    pairs = sum(n.op_type == "Round" and n.domain in ("", "ai.onnx") for n in g.nodes)
    ops = collections.Counter(n.op_type for n in g.nodes if n.domain in ("", "ai.onnx")
                              and not (n.name or "").endswith(_FAKE_QUANT_STEPS)
                              and g.value(n.outputs[0]).dtype == np.float32  # a Split of integers is not
                              and n.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"))
    return pairs, dict(ops.most_common())


def bench_models(names, rounds: int) -> list[dict]:
    import tvmlite
    from tvmlite.backends.tvm import compile_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path, feed in qdq_models(names, tmp):
            proto = onnx.load(path)
            m = tvmlite.load(path)
            shapes = {k: v.shape for k, v in feed.items()}
            t0 = time.perf_counter()
            cm = compile_model(m, shapes, cache=False)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            compile_model(m, shapes)  # into the cache, then from it
            cached = compile_model(m, shapes)
            cached_s = time.perf_counter() - t0 if not getattr(cached, "cached", False) else cached.build_seconds
            sess = ort_session(proto)
            ref = sess.run(None, feed)[0]
            got = cm.run(feed)[0]
            step = _last_step(proto)
            diff = float(np.abs(ref - got).max())
            err = f"{diff / step:.2f} steps" if step else f"max abs {diff:.2e}"
            # the QDQ graph as written (no fused QLinearConv): without VNNI onnxruntime's fused uint8 x
            # int8 kernels saturate int16 pair sums (vpmaddubsw), so this is the exact reference there
            exact = float(np.abs(_ort_unfused(proto).run(None, feed)[0] - got).max())
            err += f" (vs its unfused QDQ graph {exact / step:.2f} steps)" if step else f" (unfused {exact:.2e})"
            cm.warm_up(feed)  # a small plan's thread pick runs over its next runs: done before timing
            t = interleaved({"tvmlite": lambda: cm.run(feed), "ort": lambda: sess.run(None, feed)}, rounds, 10)
            ratio, best = t["tvmlite"] / t["ort"], t["tvmlite_best"] / t["ort_best"]
            host = cm.host_ops if hasattr(cm, "host_ops") else []
            pairs, floats = float_fallbacks(m, shapes)
            n_q = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
            if not n_q:  # tvmlite's quantize may keep a model float (its speed and error gates)
                label += " (float: no QuantizeLinear)"
            print(f"{label:12s} tvmlite {t['tvmlite']:.3f} ms, onnxruntime {t['ort']:.3f} ms -> {ratio:.2f}x "
                  f"(best runs {best:.2f}x; target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'}; idle waits before "
                  f"blocks {t['tvmlite_pause']:.0f}/{t['ort_pause']:.0f} ms); output "
                  f"difference {err}; build {build:.1f} s, cached {cached_s:.2f} s; host-run: "
                  f"{', '.join(host) if host else 'none'}; float fallbacks: {pairs} fake-quant pairs, float ops "
                  f"{floats or 'none'}")
            rows.append({"model": label, "quantize_nodes": n_q, "ratio": ratio, "best_ratio": best, "error": err, "build_s": build,
                         "cached_s": cached_s, "host_ops": list(host), "fake_quant_pairs": pairs,
                         "float_ops": floats})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--models", default="digits,digits-ort,cls,cls-ort,detector,detector-ort")
    ap.add_argument("--only", choices=["gemm", "models"], default=None)
    ap.add_argument("--gemm-shape", default="1024,1024,1024", help="M,K,N of the GEMM (default 1024^3)")
    ap.add_argument("--cpu", action="store_true",
                    help="GEMM: time the calling thread's CPU time (with TVMLITE_THREADS=1 on a loaded machine)")
    args = ap.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.gemm_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise SystemExit(f"bench_tvm_int8: --gemm-shape wants three positive integers M,K,N, got {args.gemm_shape!r}")
    import_tvm()
    rounds = 3 if args.quick else 10
    if args.only in (None, "gemm"):
        bench_gemm(rounds, args.cpu, shape)
    if args.only in (None, "models"):
        bench_models([m for m in args.models.split(",") if m], rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
