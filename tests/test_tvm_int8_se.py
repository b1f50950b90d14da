"""TVM backend, int8: a squeeze-and-excitation block's Mul(x, s) (s one factor per image and channel)
read only by a QDQConv is folded into that conv (qdq_fusion.fold_channel_scales: QDQConv's
``x_mul`` input, ops/qdq_fused.py), which multiplies each float input element by its factor right
before quantizing it. The build, the NumPy kernel and the exported ONNX body each agree with
onnxruntime running the QDQ graph as written; shapes and readers that do not fit keep their Mul."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from test_tvm_int8 import QDQ, _out, _u8

from helpers import make_model, ort_unfused, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

import tvmlite  # noqa: E402
from tvmlite.backends.numpy import run_model  # noqa: E402
from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.prepare import prepare  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(27)
STEP = 0.03  # the output's quantization step


def _model(x_shape, *, scale="se", extra_reader=False, group=1):
    """x -> Q/DQ -> 1x1 conv (-> Q/DQ) = a; s from ``scale``: "se" (GlobalAveragePool -> 1x1 conv ->
    Relu -> 1x1 conv -> HardSigmoid: [N, C, 1, 1]), "pixel" (a [1, 1, H, W] constant) or "channel" (a
    [C, 1, 1] constant); Mul(a, s) -> Q/DQ -> conv (``group``) -> Q/DQ = y. ``extra_reader``: a
    Sigmoid reads the Mul's output too."""
    n, ci, h, w = x_shape
    c = 24
    b = QDQ()
    x = b.fake_quant("x", "xd", 0.02, _u8(121))

    def conv(src, out, w_shape, q=None, **attrs):
        wt = b.weights(f"{out}_w", (RNG.standard_normal(w_shape) * 0.3).astype(np.float32), 0)
        bias = b.const(f"{out}_b", RNG.standard_normal(w_shape[0]).astype(np.float32) * 0.1)
        b.nodes.append(helper.make_node("Conv", [src, wt, bias], [f"{out}_c"], **attrs))
        return b.fake_quant(f"{out}_c", out, *q) if q else f"{out}_c"

    a = conv(x, "a", (c, ci, 1, 1), (0.04, _u8(128)))
    if scale == "se":
        b.nodes.append(helper.make_node("GlobalAveragePool", [a], ["gap"]))
        r = conv("gap", "r", (6, c, 1, 1))
        b.nodes.append(helper.make_node("Relu", [r], ["rr"]))
        e = conv("rr", "e", (c, 6, 1, 1))
        b.nodes.append(helper.make_node("HardSigmoid", [e], ["s"], alpha=1 / 6, beta=0.5))
        s = "s"
    elif scale == "pixel":
        s = b.const("s", RNG.uniform(0.2, 1.0, (1, 1, h, w)).astype(np.float32))
    else:
        s = b.const("s", RNG.uniform(0.2, 1.0, (c, 1, 1)).astype(np.float32))
    b.nodes.append(helper.make_node("Mul", [a, s], ["m"]))
    xm = b.fake_quant("m", "md", 0.035, _u8(100))
    y = conv(xm, "y", (c if group > 1 else 8, c // group, 1, 1), (STEP, _u8(128)), group=group)
    outs = [_out(y, 4)]
    if extra_reader:
        b.nodes.append(helper.make_node("Sigmoid", ["m"], ["side"]))
        outs.append(_out("side", 4))
    return make_model(b.nodes, [tensor("x", list(x_shape))], outs, b.inits, opset=17)


def _folded(model, x_shape) -> bool:
    g = prepare(load(model), {"x": x_shape})[0].graph
    convs = [n for n in g.toposort() if n.op_type == "QDQConv"]
    has_mul = any(n.op_type == "Mul" and n.outputs[0] == "m" for n in g.nodes)
    x_mul = [n for n in convs if len(n.inputs) > 4 and n.inputs[4]]
    assert has_mul != bool(x_mul)
    return bool(x_mul)


@pytest.mark.parametrize("x_shape", [(1, 16, 6, 10), (2, 5, 3, 12)])
def test_se_mul_folds_into_the_conv(x_shape, tmp_path):
    model = _model(x_shape)
    assert _folded(model, x_shape)
    cm = compile_model(load(model), {"x": x_shape})
    assert cm.host_ops == []
    prepared, _ = prepare(load(model), {"x": x_shape})
    tvmlite.save(prepared, str(tmp_path / "p.onnx"))  # QDQConv's ONNX body, x_mul included
    for _ in range(3):
        x = (RNG.standard_normal(x_shape) * 2).astype(np.float32)
        (ref,) = ort_unfused(model, {"x": x})
        (got,) = cm.run({"x": x})
        np.testing.assert_array_less(np.abs(got - ref), STEP + 1e-6)  # the int8 kernel: within a step
        (body,) = ort_unfused(str(tmp_path / "p.onnx"), {"x": x})
        np.testing.assert_array_less(np.abs(body - ref), 1e-6)  # the body is the unfused graph
        npy = run_model(prepared, {"x": x})["y"]
        np.testing.assert_array_less(np.abs(npy - ref), STEP + 1e-6)


@pytest.mark.parametrize("kw", [dict(scale="pixel"), dict(extra_reader=True), dict(group=24)])
def test_mul_left_alone(kw):
    """A factor per pixel, a Mul another node also reads, a depthwise conv: the Mul stays."""
    x_shape = (1, 16, 6, 10)
    model = _model(x_shape, **kw)
    assert not _folded(model, x_shape)
    cm = compile_model(load(model), {"x": x_shape})
    x = (RNG.standard_normal(x_shape) * 2).astype(np.float32)
    for g, r in zip(cm.run({"x": x}), ort_unfused(model, {"x": x})):
        np.testing.assert_array_less(np.abs(g - r), STEP + 1e-6)


def test_constant_channel_factor_folds():
    """A constant [C, 1, 1] factor (broadcast over images) folds as a constant of the kernel."""
    x_shape = (2, 16, 6, 10)
    model = _model(x_shape, scale="channel")
    assert _folded(model, x_shape)
    cm = compile_model(load(model), {"x": x_shape})
    x = (RNG.standard_normal(x_shape) * 2).astype(np.float32)
    (got,), (ref,) = cm.run({"x": x}), ort_unfused(model, {"x": x})
    np.testing.assert_array_less(np.abs(got - ref), STEP + 1e-6)
