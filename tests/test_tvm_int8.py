"""TVM backend, int8: QDQ Conv / MatMul / Gemm patterns become int8 VNNI kernels at build time
(backends/tvm/qdq_fusion.py, kernels/qgemm.py) and agree with onnxruntime running the same QDQ model
within one quantization step of the output; what does not fit the pattern is left as it was and
still runs correctly."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import make_model, ort_qdq, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

import tvmlite  # noqa: E402
from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.prepare import prepare  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _q(name, x, scale, zp, out):
    return helper.make_node(name, [x, scale, zp], [out])


class QDQ:
    """A QDQ model under construction: initializers, nodes, and fake-quant helpers."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, a):
        self.inits.append((name, a))
        return name

    def fake_quant(self, x, out, scale, zp):
        s = self.const(f"{out}_s", np.array(scale, np.float32))
        z = self.const(f"{out}_z", zp)
        self.nodes += [_q("QuantizeLinear", x, s, z, f"{out}_q"), _q("DequantizeLinear", f"{out}_q", s, z, out)]
        return out

    def weights(self, name, w, axis, per_channel=True, zero_point=None):
        red = tuple(i for i in range(w.ndim) if i != axis)
        s = (np.abs(w).max(axis=red) / 127 if per_channel else np.array(np.abs(w).max() / 127)).astype(np.float32)
        shape = [1] * w.ndim
        if per_channel:
            shape[axis] = -1
        wq = np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8)
        ins = [self.const(f"{name}_q", wq), self.const(f"{name}_s", s)]
        if zero_point is not None:
            ins.append(self.const(f"{name}_z", np.full(s.shape, zero_point, np.int8)))
        self.nodes.append(helper.make_node("DequantizeLinear", ins, [name], axis=axis))
        return name


def _out(name, rank):
    return tensor(name, [f"{name}{i}" for i in range(rank)])


def _u8(v):
    return np.array(v, np.uint8)


def _conv_qdq(x_shape, w_shape, *, relu=True, out_q=True, signed=False, per_channel=True, bias=True,
              extra_reader=False, weight_zp=None, **attrs):
    b = QDQ()
    zp = np.array(-3, np.int8) if signed else _u8(121)
    x = b.fake_quant("x", "xd", 0.02, zp)
    w = b.weights("w", (RNG.standard_normal(w_shape) * 0.3).astype(np.float32), 0, per_channel, weight_zp)
    ins = [x, w] + ([b.const("bias", RNG.standard_normal(w_shape[0]).astype(np.float32))] if bias else [])
    b.nodes.append(helper.make_node("Conv", ins, ["c"], **attrs))
    y = "c"
    if relu:
        b.nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        y = "r"
    outs = []
    if out_q:
        y = b.fake_quant(y, "y", 0.05, _u8(0 if relu else 128))
    if extra_reader:
        b.nodes.append(helper.make_node("Sigmoid", ["c"], ["side"]))
        outs.append(_out("side", 4))
    b.nodes.append(helper.make_node("Identity", [y], ["out"]))
    return make_model(b.nodes, [tensor("x", list(x_shape))], [_out("out", 4)] + outs, b.inits, opset=17)


def _check(model, feeds, fused_op, *, steps=1.0, step=0.05, fused=True):
    m = load(model)
    prepared, _ = prepare(m, {k: v.shape for k, v in feeds.items()})
    ops = [n.op_type for n in prepared.graph.nodes]
    assert (fused_op in ops) == fused, ops
    cm = compile_model(m, {k: v.shape for k, v in feeds.items()})
    got = cm.run(feeds)
    ref = ort_qdq(model, feeds)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_array_less(np.abs(g - r), steps * step + 1e-6)
    return cm, got, ref


@pytest.mark.parametrize("cfg", [
    dict(x=(1, 3, 11, 9), w=(20, 3, 3, 3), pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    dict(x=(1, 16, 8, 8), w=(32, 16, 1, 1)),                          # pointwise: no input copy
    dict(x=(2, 5, 7, 7), w=(17, 5, 3, 3), pads=[1, 1, 1, 1]),         # batch 2, odd channels
    dict(x=(1, 8, 9, 9), w=(16, 8, 3, 3), signed=True, relu=False),   # int8 activations
    dict(x=(1, 8, 6, 6), w=(16, 8, 3, 3), per_channel=False, bias=False, auto_pad="SAME_UPPER"),
    dict(x=(1, 20, 7, 9), w=(24, 20, 3, 3), pads=[1, 2, 0, 1], signed=True),  # float input quantized first
])
def test_qdq_conv_runs_int8_and_matches_onnxruntime(cfg):
    cfg = dict(cfg)
    x_shape, w_shape = cfg.pop("x"), cfg.pop("w")
    model = _conv_qdq(x_shape, w_shape, **cfg)
    x = (RNG.standard_normal(x_shape) * 2).astype(np.float32)
    cm, got, ref = _check(model, {"x": x}, "QDQConv")
    assert cm.host_ops == []
    assert any("qdqconv" in c.get("func", "") for c in cm.plan["calls"])
    assert np.mean(got[0] == ref[0]) > 0.95  # off by one step only where the two round differently


def test_qdq_conv_without_output_quantization_is_float_close():
    model = _conv_qdq((1, 4, 8, 8), (8, 4, 3, 3), out_q=False, pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    _check(model, {"x": x}, "QDQConv", step=1e-3)


def test_left_alone_where_the_pattern_does_not_fit():
    x = RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)
    # grouped conv, weights with a non-zero zero point: no fused node, same answer as onnxruntime
    _check(_conv_qdq((1, 8, 6, 6), (8, 4, 3, 3), group=2), {"x": x}, "QDQConv", fused=False)
    _check(_conv_qdq((1, 8, 6, 6), (8, 8, 3, 3), weight_zp=3), {"x": x}, "QDQConv", fused=False)


def test_conv_output_read_elsewhere_keeps_its_float_value():
    model = _conv_qdq((1, 4, 6, 6), (8, 4, 3, 3), extra_reader=True, pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    m = load(model)
    prepared, _ = prepare(m, {"x": x.shape})
    fused = [n for n in prepared.graph.nodes if n.op_type == "QDQConv"]
    assert fused and fused[0].attrs.get("y_scale", 0.0) == 0.0 and not fused[0].attrs["activation"]
    cm = compile_model(m, {"x": x.shape})
    for g, r in zip(cm.run({"x": x}), ort_qdq(model, {"x": x})):
        np.testing.assert_allclose(g, r, atol=0.05 + 1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["matmul3d", "gemm_transB", "gemm"])
def test_qdq_matmul_and_gemm(kind):
    b = QDQ()
    x_shape = (2, 5, 37) if kind == "matmul3d" else (3, 37)
    x = b.fake_quant("x", "xd", 0.03, _u8(128))
    w = (RNG.standard_normal((37, 19)) * 0.2).astype(np.float32)
    bias = b.const("bias", RNG.standard_normal(19).astype(np.float32))
    if kind == "matmul3d":
        b.nodes.append(helper.make_node("MatMul", [x, b.weights("w", w, 1)], ["c"]))
    elif kind == "gemm_transB":
        b.nodes.append(helper.make_node("Gemm", [x, b.weights("w", np.ascontiguousarray(w.T), 0), bias], ["c"],
                                        transB=1))
    else:
        b.nodes.append(helper.make_node("Gemm", [x, b.weights("w", w, 1), bias], ["c"]))
    b.nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    y = b.fake_quant("r", "y", 0.04, _u8(0))
    model = make_model(b.nodes + [helper.make_node("Identity", [y], ["out"])], [tensor("x", list(x_shape))],
                       [_out("out", len(x_shape))], b.inits, opset=17)
    xv = RNG.standard_normal(x_shape).astype(np.float32)
    cm, _, _ = _check(model, {"x": xv}, "QDQMatMul", step=0.04)
    assert cm.host_ops == []


def test_lone_fake_quant_pair_runs_as_fused_float_arithmetic():
    b = QDQ()
    x = b.fake_quant("x", "xd", 0.1, _u8(100))
    b.nodes.append(helper.make_node("MaxPool", [x], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
    y = b.fake_quant("p", "y", 0.07, _u8(90))
    model = make_model(b.nodes + [helper.make_node("Identity", [y], ["out"])], [tensor("x", [1, 3, 8, 8])],
                       [_out("out", 4)], b.inits, opset=17)
    x = (RNG.standard_normal((1, 3, 8, 8)) * 3).astype(np.float32)
    cm, got, ref = _check(model, {"x": x}, "QDQConv", fused=False, step=0.07)
    assert cm.host_ops == []
    np.testing.assert_array_equal(got[0], ref[0])  # no product to round: bit-exact


def test_tvmlite_quantized_digits_runs_int8_without_host_calls(tmp_path):
    from tvmlite.optimize import optimize

    model, _ = optimize(str(ROOT / "models" / "digits_cnn.onnx"), passes="fold-bn,quantize(mode=all)",
                        calib=str(ROOT / "models" / "digits_calib.npz"), check=False)
    path = tmp_path / "q.onnx"
    tvmlite.save(model, str(path))
    x = np.load(ROOT / "models" / "digits_test.npz")["input"][:2].astype(np.float32)
    m = load(str(path))
    cm = compile_model(m, {"input": (1,) + x.shape[1:]})
    assert cm.host_ops == []
    for i in range(len(x)):
        (got,) = cm.run({"input": x[i:i + 1]})
        (ref,) = ort_qdq(str(path), {"input": x[i:i + 1]})
        np.testing.assert_allclose(got, ref, atol=1e-5)  # the logits are dequantized fc2 outputs


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_gemm_uses_vnni(vnni, monkeypatch):
    """The int8 GEMM is exact integer arithmetic with VNNI's `vpdpbusd` and, on CPUs without it
    (where LLVM aborts on that intrinsic), with AVX2's `vpmaddwd` (any x86-64-v3 CPU runs it)."""
    from tvmlite.backends.tvm.kernels import qgemm
    from tvmlite.backends.tvm.kernels.defs import Epilogue
    from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, dense_int8
    from tvmlite.backends.tvm.kernels.target import host_target
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    if vnni and "avx512_vnni" not in pathlib.Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setattr(qgemm, "dot_step", lambda w2=None: qgemm.DotStep(vnni))
    wq = RNG.integers(-127, 128, (64, 32), dtype=np.int8)
    wq[:, 0] = 127
    ws = RNG.uniform(0.01, 0.02, 32).astype(np.float32)
    kd = dense_int8("g", "a", (9, 64), wq, ws, None, QuantSpec(0.05, 7, 1), out_value="c", out_shape=(9, 32),
                    epilogue=Epilogue())
    a = RNG.standard_normal((9, 64)).astype(np.float32)
    a[0] = 10.0  # uint8 255 x weight 127, pairwise 64770: what a saturating int16 sum gets wrong
    lib = build_kernel(kd, host_target())
    args, (out,) = kernel_args(kd, {"a": a})
    lib["main"](*args)
    aq = np.clip(np.rint(a / np.float32(0.05)) + 7, -128, 127) - 7
    ref = (aq @ wq.astype(np.float64)) * np.float32(0.05) * ws
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    import tvm

    mod = tvm.compile(kd.func, target=host_target())
    asm = mod.mod.inspect_source("asm") if hasattr(mod, "mod") else mod.inspect_source("asm")
    # on a VNNI host LLVM fuses AVX2's vpmaddwd + vpaddd into VNNI's int16 vpdpwssd (exact too)
    assert "vpdpbusd" in asm if vnni else (("vpmaddwd" in asm or "vpdpwssd" in asm) and "vpdpbusd" not in asm)
    assert kd.steps == ["int8_vnni" if vnni else "int8_avx2"]


def _ort_quantize_static(ortq, model, tmp_path, x_shape, reduce_range=False):
    """onnxruntime's quantize_static (QDQ, per-channel s8 weights, 7-bit with ``reduce_range``,
    u8 activations) of ``model`` calibrated on 8 random inputs; returns the QDQ file."""
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(model.SerializeToString())
    calib = [{"x": RNG.standard_normal(x_shape).astype(np.float32)} for _ in range(8)]

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    ortq.quantize_static(str(src), str(dst), Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                         reduce_range=reduce_range, activation_type=ortq.QuantType.QUInt8,
                         weight_type=ortq.QuantType.QInt8)
    return dst


def _output_step(path) -> float:
    """The scale of the DequantizeLinear that makes the output ``y`` (1e-3 when none does)."""
    import onnx

    q = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    last = next(n for n in q.graph.node if n.output[0] == "y")
    return float(inits[last.input[1]]) if last.op_type == "DequantizeLinear" else 1e-3


def test_onnxruntime_quantize_static_output_runs_int8(tmp_path):
    """onnxruntime's own QDQ form: int32 bias through DequantizeLinear, per-channel s8 weights."""
    ortq = pytest.importorskip("onnxruntime.quantization")
    w1 = (RNG.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((10, 16 * 4 * 4)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    model = make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 10])],
                       [("w1", w1), ("b1", RNG.standard_normal(16).astype(np.float32)), ("w2", w2),
                        ("b2", RNG.standard_normal(10).astype(np.float32))], opset=17)
    dst = _ort_quantize_static(ortq, model, tmp_path, (1, 3, 8, 8))
    m = load(str(dst))
    prepared, _ = prepare(m, {"x": (1, 3, 8, 8)})
    ops = [n.op_type for n in prepared.graph.nodes]
    assert "QDQConv" in ops and "QDQMatMul" in ops, ops
    cm = compile_model(m, {"x": (1, 3, 8, 8)})
    assert cm.host_ops == []
    step = _output_step(dst)
    for _ in range(3):
        x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
        (got,), (ref,) = cm.run({"x": x}), ort_qdq(str(dst), {"x": x})
        np.testing.assert_array_less(np.abs(got - ref), step + 1e-6)


def test_fused_nodes_export_as_their_onnx_bodies(tmp_path):
    """The fused nodes' function bodies are the unfused pattern: the prepared graph, exported,
    runs in onnxruntime and gives what the QDQ model gives."""
    model = _conv_qdq((1, 4, 8, 8), (8, 4, 3, 3), pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    prepared, _ = prepare(load(model), {"x": x.shape})
    assert any(n.op_type == "QDQConv" for n in prepared.graph.nodes)
    path = tmp_path / "fused.onnx"
    tvmlite.save(prepared, str(path))
    (got,), (ref,) = ort_qdq(str(path), {"x": x}), ort_qdq(model, {"x": x})
    np.testing.assert_array_less(np.abs(got - ref), 0.05 + 1e-6)


def _chain(x_shape, signed):
    """conv (pads) -> conv (stride 2, uneven pads) -> MaxPool (pads, ceil_mode) -> Q/DQ -> pointwise conv
    -> Flatten -> Gemm: every value between them is on its producer's grid."""
    b = QDQ()
    zp = (lambda v: np.array(v, np.int8)) if signed else _u8
    x = b.fake_quant("x", "xd", 0.02, zp(-3 if signed else 121))
    c = x_shape[1]

    def conv(src, out, w_shape, scale, zero, relu=True, **attrs):
        w = b.weights(f"{out}_w", (RNG.standard_normal(w_shape) * 0.3).astype(np.float32), 0)
        bias = b.const(f"{out}_b", RNG.standard_normal(w_shape[0]).astype(np.float32))
        b.nodes.append(helper.make_node("Conv", [src, w, bias], [f"{out}_c"], **attrs))
        y = f"{out}_c"
        if relu:
            b.nodes.append(helper.make_node("Relu", [y], [f"{out}_r"]))
            y = f"{out}_r"
        return b.fake_quant(y, out, scale, zero)

    a1 = conv(x, "a1", (12, c, 3, 3), 0.05, zp(-128 if signed else 0), pads=[1, 1, 1, 1])
    a2 = conv(a1, "a2", (16, 12, 3, 3), 0.08, zp(5 if signed else 130), relu=False, strides=[2, 2], pads=[0, 1, 1, 0])
    b.nodes.append(helper.make_node("MaxPool", [a2], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                    ceil_mode=1))
    p = b.fake_quant("p", "pq", 0.08, zp(5 if signed else 130))
    a3 = conv(p, "a3", (20, 16, 1, 1), 0.06, zp(-128 if signed else 0))
    b.nodes.append(helper.make_node("Flatten", [a3], ["f"]))
    return b, a3


def _chain_model(x_shape, signed):
    b, _ = _chain(x_shape, signed)
    proto = make_model(b.nodes, [tensor("x", list(x_shape))], [_out("f", 2)], b.inits, opset=17)
    flat = ort_qdq(proto, {"x": np.zeros(x_shape, np.float32)})[0].shape[1]
    w = (RNG.standard_normal((7, flat)) * 0.05).astype(np.float32)
    b.nodes.append(helper.make_node("Gemm", ["f", b.weights("g_w", w, 0), b.const("g_b", np.ones(7, np.float32))],
                                    ["g"], transB=1))
    y = b.fake_quant("g", "y", 0.04, _u8(128))
    b.nodes.append(helper.make_node("Identity", [y], ["out"]))
    return make_model(b.nodes, [tensor("x", list(x_shape))], [_out("out", 2)], b.inits, opset=17)


@pytest.mark.parametrize("signed,batch", [(False, 1), (True, 1), (False, 2)])
def test_int8_kernels_pass_quantized_buffers(signed, batch, tmp_path):
    """Between int8 kernels the values stay uint8 / int8 (channels-last between convs and pools):
    requantized in the producer's epilogue, max-pooled as integers, read as they are."""
    from tvmlite.backends.tvm.module import load_module

    x_shape = (batch, 5, 13, 11)
    model = _chain_model(x_shape, signed)
    prepared, _ = prepare(load(model), {"x": x_shape})
    g = prepared.graph
    ops = sorted(n.op_type for n in g.nodes)
    assert ops == ["Flatten", "QDQConv", "QDQConv", "QDQConv", "QDQMatMul", "QMaxPool"], ops
    convs = [n for n in g.toposort() if n.op_type == "QDQConv"]
    assert [n.attrs.get("y_quantized") for n in convs] == [1, 1, 1]
    assert [n.attrs.get("x_quantized", 0) for n in convs] == [0, 1, 1]
    assert [n.attrs.get("y_layout", "NCHW") for n in convs] == ["NHWC", "NHWC", "NCHW"]  # the last feeds Flatten
    assert [n.attrs.get("x_layout", "NCHW") for n in convs] == ["NCHW", "NHWC", "NHWC"]
    qdt = np.int8 if signed else np.uint8
    assert g.value(convs[0].outputs[0]).dtype == qdt and g.value("f").dtype == qdt
    cm = compile_model(load(model), {"x": x_shape})
    assert cm.host_ops == []
    assert {b.get("dtype") for b in cm.plan["buffers"].values() if b["kind"] == "temp"} >= {np.dtype(qdt).name}
    for _ in range(3):
        x = (RNG.standard_normal(x_shape) * 2).astype(np.float32)
        (got,), (ref,) = cm.run({"x": x}), ort_qdq(model, {"x": x})
        np.testing.assert_array_less(np.abs(got - ref), 0.04 + 1e-6)  # one output step
    cm.save(str(tmp_path / "m.so"))  # the integer buffers survive the artifact's plan check
    (again,) = load_module(str(tmp_path / "m.so")).run({"x": x})
    np.testing.assert_array_equal(again, got)
    # the prepared graph, exported, runs in onnxruntime: the new attributes' bodies are exact
    tvmlite.save(prepared, str(tmp_path / "prepared.onnx"))
    (body,) = ort_qdq(str(tmp_path / "prepared.onnx"), {"x": x})
    np.testing.assert_array_less(np.abs(body - ref), 0.04 + 1e-6)


def conv_read_by_conv_and_float_op():
    """x -> QDQ conv (output grid 0.05) read by a second QDQ conv and by a Sigmoid; input [1, 4, 6, 6]."""
    b = QDQ()
    x = b.fake_quant("x", "xd", 0.02, _u8(121))
    w = b.weights("w", (RNG.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32), 0)
    b.nodes.append(helper.make_node("Conv", [x, w], ["c"], pads=[1, 1, 1, 1]))
    a = b.fake_quant("c", "a", 0.05, _u8(128))
    w2 = b.weights("w2", (RNG.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32), 0)
    b.nodes += [helper.make_node("Conv", [a, w2], ["c2"]), helper.make_node("Sigmoid", [a], ["s"])]
    return make_model(b.nodes, [tensor("x", [1, 4, 6, 6])], [_out("c2", 4), _out("s", 4)], b.inits, opset=17)


def test_quantized_value_read_by_a_float_op_stays_float():
    """A fused output that a float op also reads keeps its float buffer (only int8 readers)."""
    model = conv_read_by_conv_and_float_op()
    prepared, _ = prepare(load(model), {"x": (1, 4, 6, 6)})
    assert not any(n.attrs.get("y_quantized") or n.attrs.get("x_quantized") for n in prepared.graph.nodes)
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    cm = compile_model(load(model), {"x": (1, 4, 6, 6)})
    for g_, r in zip(cm.run({"x": x}), ort_qdq(model, {"x": x})):
        np.testing.assert_allclose(g_, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("signed", [0, 1])
def test_silu_table_holds_the_qdq_graphs_output_integers(signed):
    """With an integer output, the fused SiLU's table gives each input integer's output integer:
    the same integers as the QDQ chain Q -> DQ -> Sigmoid -> Q -> DQ -> Mul -> Q run by onnxruntime
    as written, for all 256 input integers (the kernel then reads one table entry per output)."""
    from tvmlite.backends.tvm.kernels.builder import Builder
    from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, silu_lut

    c_grid, s_grid = (0.043, -3 if signed else 131, signed), (1 / 255, 0, 0)
    y_grid = (0.029, -7 if signed else 9, signed)
    spec = QuantSpec(0.05, 0, 0, *y_grid, "SiLU", y_quantized=1, silu=(c_grid, s_grid))
    b = Builder("t")
    silu_lut(b, spec)
    table = b.params[-1].array
    lo = -128 if signed else 0
    zdt = np.int8 if signed else np.uint8
    g = QDQ()
    c = g.fake_quant("x", "c", c_grid[0], np.array(c_grid[1], zdt))
    g.nodes.append(helper.make_node("Sigmoid", [c], ["sg"]))
    sq = g.fake_quant("sg", "s", s_grid[0], _u8(s_grid[1]))
    g.nodes.append(helper.make_node("Mul", [c, sq], ["m"]))
    ys, yz = g.const("ys", np.array(y_grid[0], np.float32)), g.const("yz", np.array(y_grid[1], zdt))
    g.nodes.append(_q("QuantizeLinear", "m", ys, yz, "y"))
    out = helper.make_tensor_value_info("y", TensorProto.INT8 if signed else TensorProto.UINT8, [256])
    model = make_model(g.nodes, [tensor("x", [256])], [out], g.inits, opset=17)
    x = ((np.arange(lo, lo + 256) - c_grid[1]) * c_grid[0]).astype(np.float32)  # each integer's value
    (ref,) = ort_qdq(model, {"x": x})
    assert table.dtype == np.int32 and table.shape == (256,)
    np.testing.assert_array_equal(table, ref.astype(np.int32))


def test_silu_input_step_is_folded_into_the_multiplier(monkeypatch):
    """Before a fused SiLU the accumulator's multiplier and bias carry 1 / (SiLU's input step), so
    the epilogue divides by it no more; the outputs agree with the per-element division (the QDQ
    graph's arithmetic, ``_SILU_FOLD`` off) within one output step, nearly all exactly."""
    from tvmlite.backends.tvm.kernels import qgemm
    from tvmlite.backends.tvm.kernels.defs import Epilogue, window_2d
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args
    from tvmlite.ops.geometry import WindowGeometry

    ci, co, h = 16, 24, 12
    wq = RNG.integers(-127, 128, (co, ci, 3, 3)).astype(np.int8)
    ws = RNG.uniform(0.001, 0.002, co).astype(np.float32)
    bias = RNG.standard_normal(co).astype(np.float32)
    cs = 0.031
    spec = qgemm.QuantSpec(0.04, 98, 0, 0.02, 10, 0, "SiLU", x_quantized=1, x_nhwc=True,
                           silu=((cs, 40, 0), (1 / 255, 0, 0)))
    geom = window_2d(WindowGeometry.conv({"pads": [1, 1, 1, 1]}, (1, ci, h, h), wq.shape))
    x = RNG.integers(0, 256, (1, h, h, ci)).astype(np.uint8)
    outs, texts = [], []
    for fold in (True, False):
        monkeypatch.setattr(qgemm, "_SILU_FOLD", fold)
        kd = qgemm.conv2d_int8("c", "x", x.shape, wq, ws, bias, spec, geom, out_value="y",
                               out_shape=(1, co, h, h), epilogue=Epilogue())
        texts.append(kd.func.script())
        lib = build_kernel(kd)
        args, (out,) = kernel_args(kd, {"x": x})
        lib["main"](*args)
        outs.append(out.numpy())
    divisions = [t.count(") / T.float32(") for t in texts]  # the output grid's fake quantization keeps one
    assert divisions[0] < divisions[1]
    diff = np.abs(outs[0] - outs[1])
    assert diff.max() <= 0.02 * 1.001 and np.count_nonzero(diff) <= diff.size // 100


def test_onnxruntime_qdq_silu_fuses_into_the_conv(tmp_path):
    """onnxruntime's QDQ SiLU (Sigmoid and Mul, each with its own Q/DQ pair) becomes the conv's
    activation: the convs chain through integer buffers and agree with onnxruntime within a step."""
    ortq = pytest.importorskip("onnxruntime.quantization")
    nodes, inits, x = [], [], "x"
    for i, (ci, co, stride) in enumerate([(3, 16, 2), (16, 24, 1), (24, 8, 2)]):
        inits += [(f"w{i}", (RNG.standard_normal((co, ci, 3, 3)) * 0.3).astype(np.float32)),
                  (f"b{i}", RNG.standard_normal(co).astype(np.float32) * 0.1)]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride] * 2),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"])]
        x = f"y{i}"
    model = make_model(nodes, [tensor("x", [1, 3, 20, 20])], [tensor("y2", [1, 8, 5, 5])], inits, opset=17)
    dst = _ort_quantize_static(ortq, model, tmp_path, (1, 3, 20, 20))
    m = load(str(dst))
    prepared, _ = prepare(m, {"x": (1, 3, 20, 20)})
    convs = [n for n in prepared.graph.toposort() if n.op_type == "QDQConv"]
    assert [n.attrs.get("activation") for n in convs] == ["SiLU"] * 3
    assert [n.attrs.get("y_quantized", 0) for n in convs] == [1, 1, 0]
    assert not any(n.op_type in ("Sigmoid", "Mul") for n in prepared.graph.nodes)
    cm = compile_model(m, {"x": (1, 3, 20, 20)})
    assert cm.host_ops == []
    import onnx

    q = onnx.load(str(dst))
    inits_q = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    last = next(n for n in q.graph.node if n.output[0] == "y2")
    step = float(inits_q[last.input[1]])
    for _ in range(3):
        xv = RNG.standard_normal((1, 3, 20, 20)).astype(np.float32)
        (got,), (ref,) = cm.run({"x": xv}), ort_qdq(str(dst), {"x": xv})
        np.testing.assert_array_less(np.abs(got - ref), step + 1e-6)
    tvmlite.save(prepared, str(tmp_path / "prepared.onnx"))  # the SiLU body runs in onnxruntime
    (body,) = ort_qdq(str(tmp_path / "prepared.onnx"), {"x": xv})
    np.testing.assert_array_less(np.abs(body - ref), step + 1e-6)
