"""Channel pruning with least-squares refit under an error budget, kept per layer group only where
onnxruntime runs the model faster: the pass's decision per group and the model before/after.

    PYTHONPATH=. python bench/bench_prune.py digits|cls|detector ["fold-constants,prune(mode=channel,sparsity=0.5,budget=0.05,measure=true)"]

Latency: onnxruntime CPU, 2 threads, batch 1, the two models interleaved in 5 blocks of 30 rounds,
median of the block medians. Held-out metric: digits accuracy on models/digits_test.npz; cls argmax
agreement with the unpruned model on 64 synthetic lines; detector(320) max abs error of its
probability columns on 8 synthetic pages.
"""
from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import tvmlite  # noqa: E402
import bench_vs_ort_quant as B  # noqa: E402
from tvmlite.compare import interleaved_ms  # noqa: E402
from tvmlite.passes import parse_spec  # noqa: E402
from tvmlite.runtime.ort import ort_session  # noqa: E402

SPEC = "fold-constants,prune(mode=channel,sparsity=0.5,budget=0.05,measure=true)"


def setup(label: str):
    """(float model, calibration batch, held-out batch, labels or None)."""
    if label == "digits":
        test = np.load(ROOT / "models" / "digits_test.npz")
        return (onnx.load(ROOT / "models" / "digits_cnn.onnx"),
                {"input": np.load(ROOT / "models" / "digits_calib.npz")["input"][:64]},
                {"input": test["input"]}, test["label"])
    if label == "cls":
        return (onnx.load(B.CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), {"x": B.cls_inputs(32, 1)},
                {"x": B.cls_inputs(64, 2)}, None)
    if label == "detector":
        from real_graphs import detector

        return detector(320)[0], {"images": B.pages(8, 320, 1)}, {"images": B.pages(8, 320, 2)}, None
    raise SystemExit(f"unknown model {label!r} (digits, cls, detector)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    label, spec = argv[0], (argv[1] if len(argv) > 1 else SPEC)
    src, calib, held, labels = setup(label)
    m, ref = tvmlite.load(src), tvmlite.load(src)
    t = time.perf_counter()
    for p in parse_spec(spec):
        if p.name == "prune":
            p.options.calib = B.split(calib)
            p.options.calib_count = len(next(iter(calib.values())))
        r = p.run(m)
    took = time.perf_counter() - t
    for d in r.decisions:
        print(f"  {d['node']}: {'KEPT' if d.get('kept') else 'not kept'} {d.get('channels_before')}->"
              f"{d.get('channels_after')} channels, model error {d.get('model_error')}: {d.get('reason')}")
    for node, why in r.skipped:
        if not any(d["node"] == node for d in r.decisions):
            print(f"  {node}: not pruned: {why}")
    s0, s1 = ort_session(ref, 2), ort_session(m, 2)
    one = B.split(held)[0]
    blocks = [interleaved_ms([lambda: s0.run(None, one), lambda: s1.run(None, one)], 30) for _ in range(5)]
    a, b = np.median([x[0] for x in blocks]), np.median([x[1] for x in blocks])
    o0 = np.concatenate([s0.run(None, f)[0] for f in B.split(held)])
    o1 = np.concatenate([s1.run(None, f)[0] for f in B.split(held)])
    if labels is not None:
        metric = f"accuracy {100 * np.mean(o0.argmax(-1) == labels):.2f}% -> {100 * np.mean(o1.argmax(-1) == labels):.2f}%"
    elif label == "cls":
        metric = f"argmax agreement {100 * np.mean(o0.argmax(-1) == o1.argmax(-1)):.1f}%"
    else:
        metric = f"probability max abs error {np.abs(o0[..., 4:] - o1[..., 4:]).max():.4f}"
    print(f"{label} {spec}: {r.stats.get('groups_kept')} groups kept, model error {r.stats.get('model_error')}; "
          f"onnxruntime {a:.3f} -> {b:.3f} ms ({b / a:.2f}x); held out: {metric}; the pass took {took:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
