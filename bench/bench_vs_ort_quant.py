"""tvmlite's presets vs onnxruntime's own quantizer vs float, per model, timed in one process.

Variants: ``float`` (the model as given); ``ort-quant``: onnxruntime's quantizer, quantize_dynamic
(int8 weights, per-channel) for the transformer and quantize_static (QDQ, per-channel, MinMax, u8
activations, s8 weights) for the conv nets, on the same calibration inputs tvmlite gets (dynamic
quantization calibrates nothing); ``tvmlite-fast`` (default preset) and ``tvmlite-small``:
``tvmlite.optimize.optimize`` with the calibration data and the evaluation inputs as check inputs.

Models and task metric (each vs float unless it has labels):
  encoder  all-MiniLM-L6-v2 built by tvmlite.zoo_encoder, seq 128, 32 real sentences; calibration
           on 16 other sentences. Metric: cosine of each sentence embedding with float (min, mean).
  digits   models/digits_cnn.onnx; accuracy on models/digits_test.npz (360 labeled images);
           calibration models/digits_calib.npz.
  cls      PP-OCR text-direction classifier; synthetic text lines (random stroke glyphs), half
           rotated 180 degrees. Metric: argmax agreement with float.
  det      PP-OCRv4 detector at 640x640; synthetic pages of glyph lines. Metric: max abs error of
           the probability map (in [0, 1], so also its error relative to the map's range).
  rec      PP-OCRv4 recognizer at 48x320; synthetic text lines. Metric: agreement of the per-step
           argmax (the CTC greedy decode) with float; beside it the relative L2 error of the
           probabilities (what quantize's error_budget measures). ``--rec-lines letters``: legible
           block-letter lines the recognizer reads, instead of random-stroke glyphs.
  detector the YOLO-style detector of tests/real_graphs.py at 320x320 (random weights, BN folded in
           by the presets); synthetic pages. Metric: max abs error of the objectness/class
           probabilities (sigmoids, in [0, 1]); the box columns are reported beside it.

Each metric also gives an error (lower is better: 100 - accuracy, 1 - agreement, 1 - min cosine,
max abs error) for the summary line per model: does tvmlite's default preset (``tvmlite-fast``)
meet issue 14's target, i.e. run no slower than the faster of float and onnxruntime's quantized
model (median ms) at an error no larger than onnxruntime's quantized model's?

Latency: onnxruntime CPU, 2 intra-op threads, batch 1; all variants of a model run round-robin
(tvmlite.runtime.ort.block_medians_ms) in ``--blocks`` blocks of ``--repeats`` rounds, each timed run right
after an untimed run of the same session (``settle=1``: another session's spinning thread pool would
slow it, by the order of the variants); ``ms`` is the median of the block medians, ``best`` the
fastest block median. ``--variants`` in any order (float need not be first). A variant that fails prints its one-line
reason in its row and the others go on. ``--variants`` picks a subset (plus ``tvmlite-qdyn``: the
quantize-dynamic pass alone, unchecked; ``tvmlite-fast-bc``: the fast preset with quantize's
bias_correction=true (tvmlite/quant/rounding.py); ``tvmlite-fast-noatt``: the fast preset without
quantize-dynamic's attention=true, so that one interleaved run times QAttention against the unfused
int8 attention); ``--reuse`` re-times the variant files already in ``--out``.

    PYTHONPATH=. python bench/bench_vs_ort_quant.py [--models encoder,digits,cls,det,rec,detector] [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # real_graphs.detector, as bench_tvm.py does
sys.path.insert(0, str(ROOT / "bench"))  # text_render, also when loaded from a file by the tests

import tvmlite  # noqa: E402
from tvmlite.compare import ort_session  # noqa: E402
from tvmlite.runtime.ort import block_medians_ms  # noqa: E402
from text_render import letter_lines  # noqa: E402

CORPUS = pathlib.Path(os.environ.get("TVMLITE_CORPUS", ROOT.parent / "shared" / "corpus"))
VARIANTS = ("float", "ort-quant", "tvmlite-fast", "tvmlite-small")
#: extra variants, by name only: tvmlite's quantize-dynamic pass alone, unchecked (the transformer path)
#: tvmlite-fast-noatt: the fast preset with quantize-dynamic's attention=true taken out (the form before
#: QAttention), so one interleaved run says whether the fused int8 attention pays
#: tvmlite-fast-bc: the fast preset with quantize's bias correction, to time and score it beside the preset
EXTRA_VARIANTS = ("tvmlite-qdyn", "tvmlite-fast-noatt", "tvmlite-fast-bc")

# Evaluation sentences (STS-style pairs and everyday statements) and, disjoint, calibration ones.
EVAL_SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "A cheetah is running behind its prey.", "The weather is lovely today.", "It's so sunny outside!",
    "He drove to the stadium.", "The stock market fell sharply after the announcement.",
    "Investors sold shares as prices dropped.", "My phone battery dies too quickly.",
    "How do I reset my password?", "I forgot the password to my account.",
    "The recipe calls for two cups of flour and a pinch of salt.", "Bake the bread for forty minutes.",
    "The train to Berlin leaves at seven in the morning.", "Our flight was delayed by three hours.",
    "Children are playing football in the park.", "A group of kids kick a ball on the grass.",
    "The museum is closed on Mondays.", "Quantum computers use qubits instead of bits.",
    "She painted the fence bright blue.", "The committee approved the new budget yesterday.",
    "Heavy rain caused flooding in the valley.", "The library has thousands of old manuscripts.",
    "He plays the piano every evening after dinner.", "Please turn off the lights when you leave.",
    "The patient was discharged from the hospital on Friday.",
]
CALIB_SENTENCES = [
    "The new movie is awesome.", "The cat sits outside.", "A man is playing guitar.", "I love pasta.",
    "Do you like pizza?", "A woman watches TV.", "The dog plays in the garden.",
    "The new movie is so great.", "A plane is taking off.", "Scientists discovered a new species of frog.",
    "The meeting was moved to Thursday afternoon.", "Can you send me the report by email?",
    "The river flows through the old town.", "He fixed the bicycle with a wrench.",
    "Prices of vegetables rose this winter.", "They hiked to the top of the mountain.",
]


def glyph_lines(h: int, w: int, rng, lines: int) -> np.ndarray:
    """A light page (h x w, 0..255) with ``lines`` rows of dark random-stroke glyphs."""
    page = np.full((h, w), rng.uniform(190, 250))
    row_h = h // max(lines, 1)
    for li in range(lines):
        gh = int(min(row_h * rng.uniform(0.45, 0.7), 60))
        top = li * row_h + int(rng.integers(1, max(row_h - gh, 2)))
        x, end, ink = int(rng.integers(2, 20)), int(w * rng.uniform(0.6, 0.98)), rng.uniform(10, 80)
        while x + gh < end:
            gw = max(int(gh * rng.uniform(0.5, 0.8)), 4)
            glyph = np.zeros((5, 4), bool)
            glyph[rng.integers(0, 5), :] = glyph[:, rng.integers(0, 4)] = True  # a bar and a stem
            glyph |= rng.random((5, 4)) < 0.25
            glyph[4, :] |= rng.random() < 0.5  # a baseline-heavy stroke: what makes "upright" visible
            patch = glyph[np.arange(gh) * 5 // gh][:, np.arange(gw) * 4 // gw]
            page[top:top + gh, x:x + gw][patch] = ink
            x += gw + int(rng.integers(1, 6)) + (gw if rng.random() < 0.15 else 0)
    return np.clip(page + rng.normal(0, 4, page.shape), 0, 255)


def cls_inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        page = glyph_lines(48, 192, rng, 1)
        page = page[::-1, ::-1] if i % 2 else page
        out.append(((np.repeat(page[None], 3, 0) / 255.0 - 0.5) / 0.5).astype(np.float32))
    return np.stack(out)


def text_lines(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Upright single text lines, normalized like PP-OCR's recognizer input ((x / 255 - 0.5) / 0.5)."""
    rng = np.random.default_rng(seed)
    return np.stack([((np.repeat(glyph_lines(h, w, rng, 1)[None], 3, 0) / 255.0 - 0.5) / 0.5).astype(np.float32)
                     for _ in range(n)])


def pages(n: int, size: int, seed: int) -> np.ndarray:
    """Pages of glyph lines in [0, 1] (the YOLO-style input convention)."""
    rng = np.random.default_rng(seed)
    return np.stack([(np.repeat(glyph_lines(size, size, rng, int(rng.integers(3, 8)))[None], 3, 0) / 255.0)
                     .astype(np.float32) for _ in range(n)])


def det_inputs(n: int, seed: int, size: int = 640) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    return np.stack([((np.repeat(glyph_lines(size, size, rng, int(rng.integers(6, 14)))[None], 3, 0) / 255.0
                       - mean) / std).astype(np.float32) for _ in range(n)])


def split(feeds: dict) -> list[dict]:
    n = next(iter(feeds.values())).shape[0]
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]


def setup(label: str, args) -> dict:
    """src, eval feeds, calibration samples (batch-1 feed dicts), metric, options for optimize."""
    if label == "encoder":
        from tvmlite.zoo_encoder import minilm_encoder

        model, tok = minilm_encoder()
        src = str(args.out / "encoder_minilm.onnx")
        onnx.save(model, src)
        return dict(src=src, quant="dynamic", eval=tok.encode(EVAL_SENTENCES, 128),
                    calib=split(tok.encode(CALIB_SENTENCES, 128)), metric=embedding_cosine, opt={})
    if label == "digits":
        test = np.load(ROOT / "models" / "digits_test.npz")
        calib = np.load(ROOT / "models" / "digits_calib.npz")["input"]
        return dict(src=str(ROOT / "models" / "digits_cnn.onnx"), quant="static", eval={"input": test["input"]},
                    labels=test["label"], calib=split({"input": calib}), metric=accuracy,
                    opt=dict(labels=test["label"]))
    if label == "cls":
        return dict(src=str(CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), quant="static",
                    eval={"x": cls_inputs(64, seed=2)}, calib=split({"x": cls_inputs(32, seed=1)}),
                    metric=argmax_agreement, opt={})
    if label == "det":
        return dict(src=str(CORPUS / "ch_PP-OCRv4_det_infer.onnx"), quant="static",
                    eval={"x": det_inputs(args.det_images, seed=2)}, calib=split({"x": det_inputs(4, seed=1)}),
                    metric=prob_map_error, opt=dict(shapes={"x": ("N", 3, 640, 640)}))
    if label == "rec":
        lines = letter_lines if getattr(args, "rec_lines", "glyphs") == "letters" else text_lines
        return dict(src=str(CORPUS / "ch_PP-OCRv4_rec_infer.onnx"), quant="static",
                    eval={"x": lines(16, 48, 320, seed=2)}, calib=split({"x": lines(16, 48, 320, seed=1)}),
                    metric=argmax_and_l2, opt=dict(shapes={"x": ("N", 3, 48, 320)}))
    if label == "detector":
        from real_graphs import detector

        model, _ = detector(320)
        src = str(args.out / "detector320.onnx")
        onnx.save(model, src)
        return dict(src=src, quant="static", eval={"images": pages(8, 320, seed=2)},
                    calib=split({"images": pages(8, 320, seed=1)}), metric=detection_error, opt={})
    raise SystemExit(f"unknown model {label!r} (encoder, digits, cls, det, rec, detector)")


# Each metric: (text for the table, error for the summary: lower is better).
def embedding_cosine(ref, out, spec) -> tuple[str, float]:
    a, b = ref[-1].astype(np.float64), out[-1].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return f"cos min {cos.min():.4f} mean {cos.mean():.4f}", 1 - float(cos.min())


def accuracy(ref, out, spec) -> tuple[str, float]:
    acc = 100 * np.mean(out[0].argmax(-1) == spec["labels"])
    return f"acc {acc:.2f}%", 100 - float(acc)


def argmax_agreement(ref, out, spec) -> tuple[str, float]:
    agree = np.mean(out[0].argmax(-1) == ref[0].argmax(-1))
    return f"argmax agree {100 * agree:.1f}%", 1 - float(agree)


def argmax_and_l2(ref, out, spec) -> tuple[str, float]:
    """rec: the argmax agreement, and beside it the relative L2 error of the probabilities, which is
    what quantize's error_budget (0.02 by default) measures on the calibration examples."""
    text, err = argmax_agreement(ref, out, spec)
    a, b = ref[0].astype(np.float64), out[0].astype(np.float64)
    return f"{text}, rel L2 {np.linalg.norm(b - a) / np.linalg.norm(a):.4f}", err


def prob_map_error(ref, out, spec) -> tuple[str, float]:
    err = float(np.abs(out[0].astype(np.float64) - ref[0]).max())
    same = sum(text_boxes(r) == text_boxes(o) for r, o in zip(ref[0], out[0]))
    return f"max abs err {err:.4f}, boxes same on {same}/{len(ref[0])} pages", err


def text_boxes(prob: np.ndarray, thresh: float = 0.3, min_side: int = 3) -> list[tuple[int, int, int, int]]:
    """DBNet's post-processing, simplified: the bounding boxes (top, left, bottom, right) of the
    8-connected components of ``prob > thresh`` (prob: [1, H, W]) at least ``min_side`` pixels on
    each side, sorted."""
    fg = np.pad(prob.reshape(prob.shape[-2:]) > thresh, 1)
    h, w = fg.shape
    big = h * w
    lab = np.where(fg, np.arange(big).reshape(h, w), big)
    while True:  # each pixel takes the smallest label around it, then follows its label's label
        nb = lab.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nb = np.minimum(nb, np.roll(lab, (dy, dx), (0, 1)))
        nb = np.where(fg, nb, big)
        flat = np.append(nb.ravel(), big)
        nb = np.where(fg, flat[flat[nb]], big)
        if np.array_equal(nb, lab):
            break
        lab = nb
    ys, xs = np.nonzero(fg)
    ids = lab[ys, xs]
    boxes = []
    for k in np.unique(ids):
        sel = ids == k
        top, left, bottom, right = ys[sel].min() - 1, xs[sel].min() - 1, ys[sel].max(), xs[sel].max()
        if bottom - top >= min_side and right - left >= min_side:
            boxes.append((int(top), int(left), int(bottom), int(right)))
    return sorted(boxes)


def detection_error(ref, out, spec) -> tuple[str, float]:
    d = np.abs(out[0].astype(np.float64) - ref[0])
    probs, boxes = d[..., 4:].max(), d[..., :4].max() / max(np.abs(ref[0][..., :4]).max(), 1e-12)
    return f"prob max abs err {probs:.4f}, box max err {boxes:.4f} of max|box|", float(probs)


def ort_quant(spec: dict, out: str) -> str:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        m = onnx.load(spec["src"])
        if spec["quant"] == "dynamic":
            quantize_dynamic(m, out, per_channel=True, weight_type=QuantType.QInt8)
            return "quantize_dynamic per-channel s8 (no calibration)"
        if m.opset_import[0].version < 13:  # per-channel Q/DQ needs opset 13
            m = onnx.version_converter.convert_version(m, 13)
        onnx.save(m, f"{tmp}/in.onnx")
        # symbolic shape inference fails on the PP-OCR models: skip it, keep the ORT optimizations
        quant_pre_process(f"{tmp}/in.onnx", f"{tmp}/pre.onnx", skip_symbolic_shape=True)
        samples = spec["calib"]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(samples)

            def get_next(self):
                return next(self.it, None)

        quantize_static(f"{tmp}/pre.onnx", out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return "quantize_static QDQ per-channel MinMax u8/s8"


def tvmlite_preset(spec: dict, preset: str, out: str, timeout: float) -> str:
    """optimize() in a spawned child, so a preset that runs past ``timeout`` seconds is one failed
    row instead of a stuck benchmark; the child writes the model and sends back a note or an error."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    keys = ("src", "calib", "eval", "opt")
    child = ctx.Process(target=_optimize_child, args=({k: spec[k] for k in keys}, preset, out, send))
    child.start()
    send.close()
    ready = recv.poll(timeout)
    if not ready:
        child.terminate()
        child.join()
        raise TimeoutError(f"optimize(preset={preset!r}) ran past {timeout:.0f}s")
    ok, msg = recv.recv()
    child.join()
    if not ok:
        raise RuntimeError(msg)
    return msg


def tvmlite_qdyn(spec: dict, out: str) -> str:
    from tvmlite.passes import Pipeline

    m = tvmlite.load(spec["src"])
    res = Pipeline("quantize-dynamic").run(m)[-1]
    tvmlite.save(m, out)
    return f"quantize-dynamic (form=integer), unchecked: {len(set(res.rewritten))} MatMuls"


def _optimize_child(spec: dict, preset: str, out: str, send) -> None:
    try:
        from tvmlite.optimize import PRESETS, optimize
        from tvmlite.optimize_report import NO_CHANGE

        how = dict(preset=preset)
        if preset == "fast-noatt":
            how = dict(passes=PRESETS["fast"].replace(",attention=true", ""), speed_check=True)
        if preset == "fast-bc":
            how = dict(passes=PRESETS["fast"].replace("quantize(mode=auto,measure=true)",
                                                      "quantize(mode=auto,measure=true,bias_correction=true)"),
                       speed_check=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, report = optimize(spec["src"], calib=list(spec["calib"]), inputs=dict(spec["eval"]),
                                 progress=False, **how, **spec["opt"])
        tvmlite.save(m, out)
        pathlib.Path(out).with_suffix(".report.txt").write_text(report.format() + "\n")
        passes = [f"{r.name}{'' if r.kept else ' undone'}" for r in report.rows[1:]
                  if r.status != NO_CHANGE and r.name not in ("dce", "remove-identity", "fold-constants", "fold-bn")]
        send.send((True, "kept: " + (", ".join(passes) if passes else "clean-ups only")))
    except BaseException as e:  # noqa: BLE001 - reported as the variant's one-line failure
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        send.send((False, f"{type(e).__name__}: {msg}"))


def run_model(label: str, args) -> list[dict]:
    spec = setup(label, args)
    if not os.path.exists(spec["src"]):
        return [dict(model=label, variant=v, error=f"{spec['src']} not found") for v in args.variants.split(",")]
    rows, sessions = [], []
    for variant in args.variants.split(","):
        row = dict(model=label, variant=variant)
        path = spec["src"] if variant == "float" else str(args.out / f"{label}_{variant}.onnx")
        t0 = time.perf_counter()
        try:
            if args.reuse and variant != "float" and os.path.exists(path):
                row["note"] = "reused " + path
            elif variant == "ort-quant":
                row["note"] = ort_quant(spec, path)
            elif variant == "tvmlite-qdyn":
                row["note"] = tvmlite_qdyn(spec, path)
            elif variant.startswith("tvmlite-"):
                row["note"] = tvmlite_preset(spec, variant.split("-", 1)[1], path, args.make_timeout)
            row["make_s"] = time.perf_counter() - t0
            sess = ort_session(path, threads=getattr(args, "threads", 2))
            outs = [np.concatenate(o) for o in zip(*(sess.run(None, f) for f in split(spec["eval"])))]
        except Exception as e:  # noqa: BLE001 - one line per failed variant, then go on
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            row["error"] = f"{type(e).__name__}: {msg}"[:200]
            rows.append(row)
            continue
        if variant == "float":
            spec["reference"] = outs
        row["size"] = os.path.getsize(path) + sum(os.path.getsize(p) for p in _external_files(path))
        row["outs"] = outs
        rows.append(row)
        sessions.append((row, sess))
    for row in rows:  # after the loop: --variants may list float after the others
        outs = row.pop("outs", None)
        if outs is not None and "reference" in spec:
            row["metric"], row["err"] = spec["metric"](spec["reference"], outs, spec)
        elif outs is not None:
            row["metric"] = "-"
    _time(sessions, split(spec["eval"])[0], args)
    base = next((r for r in rows if r["variant"] == "float" and "ms" in r), None)
    for r in rows:
        if base and "ms" in r:
            r["ratio"] = r["ms"] / base["ms"]
            r["size_ratio"] = r["size"] / base["size"]
    return rows


def _external_files(path: str) -> list[str]:
    m = onnx.load(path, load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return [os.path.join(os.path.dirname(path), x) for x in locs]


def _time(sessions, feeds: dict, args) -> None:
    if not sessions:
        return
    fns = [lambda s=s: s.run(None, feeds) for _, s in sessions]
    # settle=1: each timed run follows an untimed run of the same session, never another session's,
    # whose spinning pool threads would take the cores (without it, two sessions of the same float
    # encoder timed among four read 1.08-1.11x of each other in both orders; with it 1.00-1.02x).
    # Each block also starts the round at the next variant, so that every variant takes every slot.
    blocks = block_medians_ms(fns, args.repeats, args.blocks, warmup=2, settle=1)
    for i, (row, _) in enumerate(sessions):
        per = [b[i] for b in blocks]
        row["ms"], row["best_ms"] = float(np.median(per)), float(np.min(per))


def format_table(rows: list[dict]) -> str:
    hdr = f"{'model':<8} {'variant':<14} {'ms':>9} {'best':>9} {'x float':>8} {'size':>10} {'x size':>7}  metric / note"
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<8} {r['variant']:<14} FAILED: {r['error']}")
            continue
        ms = f"{r['ms']:9.2f} {r['best_ms']:9.2f} {r.get('ratio', 1):7.2f}x" if "ms" in r else f"{'-':>9} {'-':>9} {'-':>8}"
        size = f"{r['size'] / 2**20:8.2f}Mi {r.get('size_ratio', 1):6.2f}x"
        lines.append(f"{r['model']:<8} {r['variant']:<14} {ms} {size}  {r['metric']}")
        if r.get("note"):
            lines.append(f"{'':<24}{r['note']} ({r.get('make_s', 0):.0f}s to make)")
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """Per model, whether the default preset meets the target (see the module docstring)."""
    lines = []
    for label in dict.fromkeys(r["model"] for r in rows):
        by = {r["variant"]: r for r in rows if r["model"] == label and "ms" in r}
        fast, flt, ortq = by.get("tvmlite-fast"), by.get("float"), by.get("ort-quant")
        if fast is None or flt is None:
            lines.append(f"{label}: no verdict (tvmlite-fast or float did not run)")
            continue
        bar = min(flt["ms"], ortq["ms"]) if ortq else flt["ms"]
        err_bar = ortq.get("err") if ortq else None
        speed_ok = fast["ms"] <= bar
        err_ok = err_bar is None or fast.get("err", np.inf) <= err_bar + 1e-12
        verdict = "MEETS" if speed_ok and err_ok else "MISSES"
        small = by.get("tvmlite-small")
        size = (f"; small {small['size'] / 2**10:.0f} KiB vs default {fast['size'] / 2**10:.0f} KiB"
                f" ({'<=' if small['size'] <= fast['size'] else '>'})") if small else ""
        lines.append(f"{label}: default preset {verdict} the target: {fast['ms']:.2f} ms vs "
                     f"{'min(float, ort-quant)' if ortq else 'float (ort-quant missing)'} {bar:.2f} ms "
                     f"({'ok' if speed_ok else 'slower'}), error {fast.get('err', float('nan')):.4g} vs ort-quant "
                     f"{'-' if err_bar is None else f'{err_bar:.4g}'} ({'ok' if err_ok else 'higher'}){size}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="encoder,digits,cls,det,rec,detector")
    ap.add_argument("--repeats", type=int, default=20, help="rounds per timing block")
    ap.add_argument("--blocks", type=int, default=5, help="timing blocks (median and best of their medians)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads (the target's 2; 1 under load)")
    ap.add_argument("--det-images", type=int, default=2, help="640x640 pages for det's error metric")
    ap.add_argument("--rec-lines", choices=["glyphs", "letters"], default="glyphs",
                    help="rec's inputs: random-stroke glyphs, or legible block letters (bench/text_render.py)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="a subset of " + ",".join(VARIANTS))
    ap.add_argument("--reuse", action="store_true", help="time the variant files already in --out, remake none")
    ap.add_argument("--make-timeout", type=float, default=1800, help="seconds one tvmlite preset may take")
    ap.add_argument("--out", default=str(ROOT / ".bench" / "vs_ort_quant"))
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads {args.threads}: at least 1")
    args.out = pathlib.Path(args.out)
    unknown = set(args.variants.split(",")) - set(VARIANTS + EXTRA_VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)} (known: {', '.join(VARIANTS + EXTRA_VARIANTS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    rows = []
    for label in args.models.split(","):
        t0 = time.perf_counter()
        new = run_model(label.strip(), args)
        rows += new
        print(f"[{label}: {time.perf_counter() - t0:.0f}s]\n{format_table(new)}\n" + "\n".join(summary(new)),
              file=sys.stderr, flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"onnxruntime CPU, {args.threads} thread(s), batch 1; ms = median of block medians, best = fastest block")
    print(format_table(rows))
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
