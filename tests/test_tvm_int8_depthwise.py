"""TVM backend, int8 depthwise convs (kernels/qdepthwise.py): a QDQ Conv with one input channel per
group becomes a QDQConv that reads and writes integer buffers between the VNNI convs, and agrees
with onnxruntime running the QDQ graph (unfused) within one output step, and with its fused
QLinearConv run within the steps onnxruntime differs from itself by."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_qdq, ort_unfused, tensor
from test_tvm_int8 import QDQ, _out, _u8

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

import tvmlite  # noqa: E402
from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.prepare import prepare  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(7)


def _model(x_shape, c, k, strides, relu, float_tail):
    """pointwise conv -> depthwise conv (k x k, ``strides``) [-> Relu] -> Q/DQ -> pointwise conv;
    with ``float_tail`` a Sigmoid also reads the depthwise output (it stays float there)."""
    b = QDQ()
    x = b.fake_quant("x", "xd", 0.02, _u8(121))

    def conv(src, out, w_shape, scale, zero, relu=False, **attrs):
        w = b.weights(f"{out}_w", (RNG.standard_normal(w_shape) * 0.3).astype(np.float32), 0)
        bias = b.const(f"{out}_b", RNG.standard_normal(w_shape[0]).astype(np.float32) * 0.1)
        b.nodes.append(helper.make_node("Conv", [src, w, bias], [f"{out}_c"], **attrs))
        y = f"{out}_c"
        if relu:
            b.nodes.append(helper.make_node("Relu", [y], [f"{out}_r"]))
            y = f"{out}_r"
        return b.fake_quant(y, out, scale, _u8(zero))

    a = conv(x, "a", (c, x_shape[1], 1, 1), 0.04, 128)
    d = conv(a, "d", (c, 1, k, k), 0.05, 0 if relu else 110, relu=relu, group=c, strides=strides,
             pads=[k // 2] * 4)
    y = conv(d, "y", (8, c, 1, 1), 0.03, 128)
    outs = [_out(y, 4)]
    if float_tail:
        b.nodes.append(helper.make_node("Sigmoid", [d], ["side"]))
        outs.append(_out("side", 4))
    return make_model(b.nodes, [tensor("x", list(x_shape))], outs, b.inits, opset=17)


@pytest.mark.parametrize("x_shape,c,k,strides,relu,float_tail", [
    ((1, 5, 12, 20), 24, 3, [2, 1], True, False),   # columns as lanes, integer in and out
    ((1, 4, 3, 12), 40, 5, [1, 1], False, False),   # short rows: channels as lanes
    ((1, 6, 9, 16), 16, 3, [1, 2], False, True),    # a float reader: the output stays float
])
def test_depthwise_int8(x_shape, c, k, strides, relu, float_tail):
    model = _model(x_shape, c, k, strides, relu, float_tail)
    prepared, _ = prepare(load(model), {"x": x_shape})
    convs = [n for n in prepared.graph.toposort() if n.op_type == "QDQConv"]
    assert [int(n.attrs.get("group", 1)) for n in convs] == [1, c, 1]
    dw = convs[1]
    assert dw.attrs.get("x_quantized") == 1 and dw.attrs.get("y_quantized", 0) == (0 if float_tail else 1)
    assert dw.attrs.get("x_layout", "NCHW") == "NCHW" and dw.attrs.get("y_layout", "NCHW") == "NCHW"
    assert not any(n.op_type == "Conv" for n in prepared.graph.nodes)
    cm = compile_model(load(model), {"x": x_shape})
    assert cm.host_ops == []
    for _ in range(3):
        x = (RNG.standard_normal(x_shape) * 2).astype(np.float32)
        got = cm.run({"x": x})
        for g, r in zip(got, ort_unfused(model, {"x": x})):
            np.testing.assert_array_less(np.abs(g - r), 0.03 + 1e-6)
        np.testing.assert_array_less(np.abs(got[0] - ort_qdq(model, {"x": x})[0]), 2 * 0.03 + 1e-6)


def test_depthwise_body_exports(tmp_path):
    """The depthwise QDQConv's ONNX body (a grouped Conv) runs in onnxruntime like the QDQ model."""
    model = _model((1, 5, 12, 20), 24, 3, [2, 1], True, False)
    prepared, _ = prepare(load(model), {"x": (1, 5, 12, 20)})
    tvmlite.save(prepared, str(tmp_path / "p.onnx"))
    x = (RNG.standard_normal((1, 5, 12, 20)) * 2).astype(np.float32)
    (body,), (ref,) = ort_unfused(str(tmp_path / "p.onnx"), {"x": x}), ort_unfused(model, {"x": x})
    np.testing.assert_array_less(np.abs(body - ref), 0.03 + 1e-6)


class _Depth:
    """A term that records how many additions deep it is."""

    def __init__(self, depth=0):
        self.depth = depth

    def __add__(self, other):
        return _Depth(max(self.depth, other.depth) + 1)


def test_window_sum_is_a_balanced_tree():
    """The taps' sum is a tree of the row sums, not one chain: the 5 x 5 window's 25 products
    are 4 additions per row plus 3 levels over the 5 rows (7 deep, not 24). Exact either way (the
    terms are integers below 2^24)."""
    from tvmlite.backends.tvm.kernels.qdepthwise import pairwise_sum

    assert [pairwise_sum([_Depth()] * n).depth for n in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]
    assert pairwise_sum([_Depth(4)] * 5).depth == 7  # five rows of five taps
    assert pairwise_sum(list(range(1, 26))) == 325
