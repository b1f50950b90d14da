"""Small model builders shared by the tests."""
from __future__ import annotations

import contextlib
import pathlib
import resource
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime 1.31 refuses onnx 1.23's default IR 14


def make_model(nodes, inputs, outputs, initializers=(), opset=17, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)
    model.ir_version = IR_VERSION
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_bn_relu_model(seed=0, with_dropout=True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(8).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    mean = rng.standard_normal(8).astype(np.float32) * 0.1
    var = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    fc = rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["r2"], name="ident"),
    ]
    last = "r2"
    if with_dropout:
        nodes.append(helper.make_node("Dropout", ["r2"], ["d"], name="drop"))
        last = "d"
    nodes += [
        helper.make_node("Flatten", [last], ["f"], name="flat"),
        helper.make_node("Constant", [], ["two"], name="two_c",
                         value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Constant", [], ["three"], name="three_c",
                         value=numpy_helper.from_array(np.array(3.0, np.float32))),
        helper.make_node("Mul", ["two", "three"], ["six"], name="six"),
        helper.make_node("MatMul", ["f", "fc"], ["mm"], name="fc"),
        helper.make_node("Div", ["mm", "six"], ["y"], name="scale_out"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    return make_model(nodes, [tensor("x", ["N", 3, 4, 4])], [tensor("y", ["N", 5])],
                      [("w", w), ("b", b), ("scale", scale), ("bias", bias), ("mean", mean), ("var", var),
                       ("fc", fc)])


def ort_run(model, feeds):
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def ort_qdq(model, feeds):
    """onnxruntime's outputs for a QDQ model, as the int8 reference: its optimized session where
    the CPU has a VNNI dot product, else the graph as written (graph optimizations off:
    DequantizeLinear -> float op -> QuantizeLinear, the QDQ model's exact meaning). Without VNNI,
    onnxruntime's fused QLinearConv / MatMulInteger use AVX2's `vpmaddubsw` for uint8 x int8, whose
    int16 pair sums saturate (onnxruntime's quantization docs say so), which put its outputs up to
    12 steps off the model's own arithmetic on an AVX2 (Zen) machine."""
    import onnxruntime as ort

    flags = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return ort_run(model, feeds)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


@contextlib.contextmanager
def memory_cap(extra_bytes=3 * 2**30):
    """Cap this process's address space at its current size plus ``extra_bytes`` (a fuzzed model
    that asks for a huge tensor gets MemoryError instead of taking the machine)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vsz + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def two_matmuls(n: int, k: int, seed: int = 0, scale: float = 1.0) -> onnx.ModelProto:
    """MatMul(x, w1) -> Identity -> MatMul(., w2), x of shape [N, n], weights n x k and k x n: the
    large-model tests' model (two big weights, one clean-up to do)."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.standard_normal((n, k), np.float32), rng.standard_normal((k, n), np.float32)
    if scale != 1.0:
        w1 *= scale
        w2 *= scale
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    del w1, w2
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Identity", ["h"], ["h2"], name="id"),
             helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def refused_passes(tmp_path, proto: onnx.ModelProto, passes: str) -> str:
    """`tvmlite optimize --passes PASSES` on ``proto`` saved in ``tmp_path``: asserts exit 2, one
    line on stderr and no traceback, no output written and the input unchanged; returns the line."""
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(proto, src)
    before = src.read_bytes()
    p = subprocess.run([sys.executable, "-m", "tvmlite.cli", "optimize", str(src), "-o", str(dst),
                        "--passes", passes], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert not dst.exists() and src.read_bytes() == before
    return lines[0]
