"""tvmlite int8 vs onnxruntime's own quantize_static (QDQ, per-channel, MinMax) vs float.

Models: the example digits CNN (models/digits_cnn.onnx, held-out test set, calibration set) and the
PP-OCR text-direction classifier (cls) on a labeled set built here: text lines composed of
scikit-learn's handwritten digit glyphs, upright (label 0) or rotated 180 degrees (label 1),
preprocessed as PP-OCR does ((x/255 - 0.5) / 0.5, 1x3x48x192). Both quantizers get the same
calibration inputs.

Reported per model: accuracy, file size vs float, onnxruntime latency (batch 1, 2 threads; the three
models timed round-robin, medians), and `tvmlite compare`'s error of each int8 model vs float.

    PYTHONPATH=. python bench/bench_quant.py [--models digits,cls,dynamic] [--repeats 300]

``dynamic`` times quantize-dynamic's forms (integer: DynamicQuantizeLinear + MatMulInteger; dq: int8
weights behind DequantizeLinear) against float on a transformer-style MLP and PP-OCR rec.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tvmlite  # noqa: E402
from tvmlite.passes import Pipeline  # noqa: E402
from tvmlite.compare import compare, ort_session  # noqa: E402

CORPUS = pathlib.Path(os.environ.get("TVMLITE_CORPUS", ROOT.parent / "shared" / "corpus"))


def text_lines(n: int, seed: int, h: int = 48, w: int = 192):
    """``n`` gray text lines of digit glyphs (dark on light), half rotated by 180 degrees."""
    from sklearn.datasets import load_digits

    glyphs = load_digits().images / 16.0  # 8x8, 1 = ink
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for i in range(n):
        page = np.full((h, w), rng.uniform(200, 250))
        gh = int(rng.integers(22, 34))  # glyph height in pixels
        gw = max(int(gh * rng.uniform(0.55, 0.8)), 6)
        top = int(rng.integers(2, h - gh - 2))
        x = int(rng.integers(2, 16))
        ink = rng.uniform(10, 70)
        while x + gw < w - 2:
            g = glyphs[rng.integers(len(glyphs))]
            rows = (np.arange(gh) * 8 // gh)[:, None]
            cols = (np.arange(gw) * 8 // gw)[None, :]
            patch = g[rows, cols]
            region = page[top:top + gh, x:x + gw]
            page[top:top + gh, x:x + gw] = region * (1 - patch) + ink * patch
            x += gw + int(rng.integers(1, 6))
            if rng.random() < 0.15:
                x += gw // 2  # word gap
        # a baseline-heavy stroke (underline-like descender cue) makes "upright" visible like real text
        label = i % 2
        if label:
            page = page[::-1, ::-1]
        page = page + rng.normal(0, 4, page.shape)
        img = np.clip(page, 0, 255)
        x3 = np.repeat(img[None], 3, axis=0)
        imgs.append(((x3 / 255.0 - 0.5) / 0.5).astype(np.float32))
        labels.append(label)
    return np.stack(imgs), np.array(labels)


def ort_quantize_static(src: str, calib: dict, out: str) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        m = onnx.load(src)
        if m.opset_import[0].version < 13:  # per-channel Q/DQ needs opset 13
            m = onnx.version_converter.convert_version(m, 13)
        onnx.save(m, f"{tmp}/in.onnx")
        # symbolic shape inference fails on the PP-OCR models: skip it, keep the ORT optimizations
        quant_pre_process(f"{tmp}/in.onnx", f"{tmp}/pre.onnx", skip_symbolic_shape=True)
        name = next(iter(calib))
        data = calib[name]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{name: data[i:i + 1]} for i in range(len(data))])

            def get_next(self):
                return next(self.it, None)

        quantize_static(f"{tmp}/pre.onnx", out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def accuracy(path: str, x: np.ndarray, labels: np.ndarray) -> float:
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    preds = np.concatenate([sess.run(None, {name: x[i:i + 32]})[0].argmax(-1) for i in range(0, len(x), 32)])
    return float((preds == labels).mean())


def round_robin_ms(paths: list[str], feeds: dict, repeats: int) -> list[float]:
    """Median ms per model, the models run in rotating order so load drift hits all alike."""
    sessions = [ort_session(p) for p in paths]
    for s in sessions:
        for _ in range(5):
            s.run(None, feeds)
    times = [[] for _ in sessions]
    for r in range(repeats):
        for k in range(len(sessions)):
            i = (k + r) % len(sessions)
            t0 = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def run_model(label: str, src: str, calib: dict, test_x: np.ndarray, test_y: np.ndarray, spec: str,
              repeats: int, out_dir: pathlib.Path) -> dict:
    name = next(iter(calib))
    cal_path = out_dir / f"{label}_calib.npz"
    np.savez(cal_path, **calib)
    ours = str(out_dir / f"{label}_tvmlite_int8.onnx")
    theirs = str(out_dir / f"{label}_ort_int8.onnx")
    m = tvmlite.load(src)
    t0 = time.perf_counter()
    res = Pipeline(spec.format(calib=cal_path)).run(m)
    quant_s = time.perf_counter() - t0
    tvmlite.save(m, ours)
    ort_quantize_static(src, calib, theirs)
    paths = [src, ours, theirs]
    acc = [accuracy(p, test_x, test_y) for p in paths]
    size = [os.path.getsize(p) for p in paths]
    feeds = {name: test_x[:1]}
    lat = round_robin_ms(paths, feeds, repeats)
    errs = []
    for p in paths[1:]:
        rep = compare(src, p, backend="ort", inputs={name: test_x[:64]}, repeats=0)
        o = rep.outputs[0]
        errs.append({"max_abs": o.max_abs, "cosine": o.cosine, "argmax_agreement": o.argmax_agreement})
    decisions = [d for d in res[-1].decisions if d.get("node") == "<model>"]
    row = {
        "model": label, "spec": spec.format(calib=cal_path.name), "quantize_seconds": round(quant_s, 2),
        "accuracy": {"float": acc[0], "tvmlite_int8": acc[1], "ort_int8": acc[2]},
        "size_ratio": {"tvmlite_int8": size[1] / size[0], "ort_int8": size[2] / size[0]},
        "latency_ms": {"float": lat[0], "tvmlite_int8": lat[1], "ort_int8": lat[2]},
        "error_vs_float": {"tvmlite_int8": errs[0], "ort_int8": errs[1]},
        "int8_nodes": res[-1].stats.get("int8_nodes"), "auto": decisions[0] if decisions else None,
    }
    row["targets"] = {
        "accuracy >= ort int8": acc[1] >= acc[2],
        "size <= 0.27x": size[1] / size[0] <= 0.27,
        "latency <= ort int8": lat[1] <= lat[2],
        "latency <= float": lat[1] <= lat[0],
    }
    return row


def mlp_model(path: str, tokens: int = 40, width: int = 384, blocks: int = 4) -> None:
    """A transformer-style MLP stack (MatMul 384->1536, Relu, MatMul 1536->384, residual Add)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        for name, shape in ((f"w1_{i}", (width, 4 * width)), (f"w2_{i}", (4 * width, width))):
            inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name))
        nodes += [helper.make_node("MatMul", [x, f"w1_{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"o{i}"]),
                  helper.make_node("Add", [f"o{i}", x], [f"y{i}"])]
        x = f"y{i}"
    io = [helper.make_tensor_value_info(n, 1, [1, tokens, width]) for n in ("x", x)]
    m = helper.make_model(helper.make_graph(nodes, "mlp", io[:1], io[1:], inits),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def run_dynamic(label: str, src: str, feeds: dict, repeats: int, out_dir: pathlib.Path) -> dict:
    """quantize-dynamic's two forms vs float: size, error vs float, latency (round-robin medians)."""
    paths, row = [src], {"model": label, "size_ratio": {}, "error_vs_float": {}}
    for form in ("integer", "dq"):
        m = tvmlite.load(src)
        res = Pipeline(f"quantize-dynamic(form={form})").run(m)
        out = str(out_dir / f"{label}_dynamic_{form}.onnx")
        tvmlite.save(m, out)
        paths.append(out)
        o = compare(src, out, backend="ort", inputs=feeds, repeats=0).outputs[0]
        row["size_ratio"][form] = os.path.getsize(out) / os.path.getsize(src)
        row["error_vs_float"][form] = {"max_abs": o.max_abs, "cosine": o.cosine,
                                       "rewritten": res[-1].stats.get("rewritten")}
    lat = round_robin_ms(paths, feeds, repeats)
    row["latency_ms"] = {"float": lat[0], "integer": lat[1], "dq": lat[2]}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,cls")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / ".bench" / "quant"))
    args = ap.parse_args(argv)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in args.models.split(","):
        if label == "digits":
            src = ROOT / "models" / "digits_cnn.onnx"
            if not src.exists():
                print("skip digits: models/digits_cnn.onnx not found")
                continue
            calib = {"input": np.load(ROOT / "models" / "digits_calib.npz")["input"]}
            test = np.load(ROOT / "models" / "digits_test.npz")
            spec = "quantize(calibration={calib},progress=false)"
            rows.append(run_model(label, str(src), calib, test["input"], test["label"], spec, args.repeats, out_dir))
        elif label == "cls":
            src = CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
            if not src.exists():
                print(f"skip cls: {src} not found")
                continue
            cx, _ = text_lines(32, seed=1)
            tx, ty = text_lines(400, seed=2)
            spec = "quantize(calibration={calib},mode=auto,measure=true,progress=false)"
            rows.append(run_model(label, str(src), {"x": cx}, tx, ty, spec, args.repeats, out_dir))
        elif label == "dynamic":  # quantize-dynamic forms on MatMul-heavy models
            mlp = str(out_dir / "mlp.onnx")
            mlp_model(mlp)
            rng = np.random.default_rng(0)
            rows.append(run_dynamic("mlp", mlp, {"x": rng.standard_normal((1, 40, 384)).astype(np.float32)},
                                    args.repeats, out_dir))
            rec = CORPUS / "ch_PP-OCRv4_rec_infer.onnx"
            if rec.exists():
                rows.append(run_dynamic("rec", str(rec), {"x": rng.uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)},
                                        max(args.repeats // 5, 20), out_dir))
    for r in rows:
        print(json.dumps(r, indent=1))
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
