"""The encoder's GEMMs alone (seq 128, batch 1): tvmlite's TVM kernel vs onnxruntime (2 threads)
on the same one-node model, interleaved medians and GFLOP/s (issue 15 item 3). Usage:
    PYTHONPATH=. python bench/minilm_gemm.py [repeats] [--cpu]
--cpu: both on one thread, CPU time of the thread (what a loaded machine barely moves)."""
import os
import sys
import time

CPU = "--cpu" in sys.argv
if CPU:
    os.environ["TVMLITE_THREADS"] = "1"  # before TVM's runtime starts

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tvmlite.backends.tvm import compile_model
from tvmlite.frontend import load
from tvmlite.runtime.ort import interleaved_ms, ort_session

ARGS = [a for a in sys.argv[1:] if a != "--cpu"]
REPEATS = int(ARGS[0]) if ARGS else 200
rng = np.random.default_rng(0)


def model(a_shape, b_shape, const_b):
    out = list(np.matmul(np.zeros(a_shape), np.zeros(b_shape)).shape)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape))]
    inits = []
    b = rng.standard_normal(b_shape).astype(np.float32) * 0.1
    if const_b:
        inits.append(numpy_helper.from_array(b, "b"))
        inits.append(numpy_helper.from_array(rng.standard_normal(b_shape[-1]).astype(np.float32), "bias"))
        nodes = [helper.make_node("MatMul", ["a", "b"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["y"])]
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape)))
        nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    feeds = {"a": rng.standard_normal(a_shape).astype(np.float32)}
    if not const_b:
        feeds["b"] = b
    return m, feeds


def cpu_ms(fns, rounds):
    ts = [[] for _ in fns]
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            t0 = time.thread_time()
            fns[i]()
            ts[i].append((time.thread_time() - t0) * 1e3)
    return [float(np.median(t)) for t in ts]


CASES = [("ffn up 128x384x1536", (1, 128, 384), (384, 1536), True),
         ("ffn down 128x1536x384", (1, 128, 1536), (1536, 384), True),
         ("qkv/out 128x384x384", (1, 128, 384), (384, 384), True),
         ("scores QK^T 12x128x32x128", (1, 12, 128, 32), (1, 12, 32, 128), False),
         ("context PV 12x128x128x32", (1, 12, 128, 128), (1, 12, 128, 32), False)]
for name, sa, sb, const_b in CASES:
    m, feeds = model(sa, sb, const_b)
    cm = compile_model(load(m), {k: v.shape for k, v in feeds.items()}, cache=False)
    sess = ort_session(m, 1 if CPU else 2)
    got, ref = cm.run(feeds)[0], sess.run(None, feeds)[0]
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    fns = [lambda: cm.run(feeds), lambda: sess.run(None, feeds)]
    ms = cpu_ms(fns, REPEATS) if CPU else interleaved_ms(fns, REPEATS)
    flop = 2 * np.prod(np.matmul(np.zeros(sa), np.zeros(sb)).shape) * sa[-1]
    print(f"{name:28s} tvm {ms[0]:.3f} ms ({flop / ms[0] / 1e6:6.1f} GFLOP/s)  ort {ms[1]:.3f} ms "
          f"({flop / ms[1] / 1e6:6.1f})  ratio {ms[0] / ms[1]:.2f}  rel err {err:.1e}")
