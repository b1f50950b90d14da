"""all-MiniLM-L6's three GEMM shapes (seq 128, batch 1) in onnxruntime: float MatMul+Add against
the int8 forms onnxruntime has for a constant weight, interleaved medians, with the relative error
of each against float. Forms: ``qdyn`` (tvmlite's quantize-dynamic: DynamicQuantizeLinear ->
MatMulInteger, fused by onnxruntime into DynamicQuantizeMatMul; 7-bit weights) and
``nb{bits}a{accuracy_level}b{block}`` (com.microsoft MatMulNBits by tvmlite's quantize-weights:
accuracy_level 0 dequantizes to float, 4 quantizes the activations to int8 in MLAS's SQNBit kernels).
Usage (figures in passes/quantize_dynamic_timing.py):
    PYTHONPATH=. python bench/minilm_int8_forms.py [threads] [repeats]
"""
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tvmlite.frontend import load
from tvmlite.passes.quantize_dynamic import QuantizeDynamic
from tvmlite.passes.quantize_weights import QuantizeWeights
from tvmlite.runtime.ort import interleaved_ms, ort_session

SHAPES = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384)]  # M, K, N: Q/K/V/output, FFN up, FFN down


def float_model(m: int, k: int, n: int, rng):
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["y"])],
                          "gemm", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")])
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p.ir_version = 9
    return p


def forms(proto) -> dict:
    out = {"float": load(proto)}
    out["qdyn"] = load(proto)
    QuantizeDynamic(reduce_range="on").run(out["qdyn"])
    for bits in (8, 4):
        for acc in (0, 4):
            for block in (32, 128):
                m = load(proto)
                QuantizeWeights(bits=bits, block=block, form="nbits", accuracy_level=acc, gather=False).run(m)
                out[f"nb{bits}a{acc}b{block}"] = m
    return out


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        sessions = {name: ort_session(model, threads=threads) for name, model in forms(float_model(m, k, n, rng)).items()}
        feeds = {"a": rng.standard_normal((1, m, k)).astype(np.float32)}
        ref = sessions["float"].run(None, feeds)[0]
        errs = {name: float(np.linalg.norm(s.run(None, feeds)[0] - ref) / np.linalg.norm(ref))
                for name, s in sessions.items()}
        ms = interleaved_ms([lambda s=s: s.run(None, feeds) for s in sessions.values()], repeats, settle=1)
        print(f"{m}x{k}x{n}, {threads} thread(s), load average {os.getloadavg()[0]:.1f}")
        for name, t in zip(sessions, ms):
            print(f"  {name:12s} {t:8.3f} ms  {t / ms[0]:.2f}x float  rel error {errs[name]:.4f}")


if __name__ == "__main__":
    main()
