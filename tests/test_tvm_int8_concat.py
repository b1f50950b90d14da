"""TVM backend, int8 Concat and Split: a QDQ Concat (each input and the output on its own grid)
becomes QConcat, which requantizes every input to the output's grid as onnxruntime's QLinearConcat
does, and a Split of a quantized value passes the integers through; the convs around them chain
through integer (channels-last where only convs read) buffers and agree with onnxruntime within
one quantization step."""
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

RNG = np.random.default_rng(3)
X = (1, 6, 10, 12)


def _model(out_scale: float, float_reader: bool = False, dq_reader: bool = False):
    """conv a -> Split -> (part0, conv b of part1) ; Concat(part0, b, a, sigmoid(x)) -> Q/DQ ->
    pointwise conv c. part0 and a are on a's grid, b and the sigmoid on their own; the Concat's
    output grid is a's when ``out_scale`` is 0.05."""
    b = QDQ()
    x = b.fake_quant("x", "xd", 0.02, _u8(121))

    def conv(src, out, w_shape, scale, zero, **attrs):
        w = b.weights(f"{out}_w", (RNG.standard_normal(w_shape) * 0.3).astype(np.float32), 0)
        bias = b.const(f"{out}_b", RNG.standard_normal(w_shape[0]).astype(np.float32) * 0.1)
        b.nodes.append(helper.make_node("Conv", [src, w, bias], [f"{out}_c"], **attrs))
        return b.fake_quant(f"{out}_c", out, scale, _u8(zero))

    a = conv(x, "a", (8, 6, 3, 3), 0.05, 120, pads=[1, 1, 1, 1])
    b.nodes.append(helper.make_node("Split", [a, b.const("sizes", np.array([3, 5], np.int64))], ["p0", "p1"], axis=1))
    p0, p1 = b.fake_quant("p0", "p0d", 0.05, _u8(120)), b.fake_quant("p1", "p1d", 0.05, _u8(120))
    bb = conv(p1, "bb", (4, 5, 3, 3), 0.013, 140, pads=[1, 1, 1, 1])
    b.nodes.append(helper.make_node("Sigmoid", [x], ["sg"]))
    sg = b.fake_quant("sg", "sgd", 1 / 255, _u8(0))
    b.nodes.append(helper.make_node("Concat", [p0, bb, a, sg], ["cat"], axis=1))
    cat = b.fake_quant("cat", "catd", out_scale, _u8(120))
    c = conv(cat, "c", (7, 21, 1, 1), 0.03, 128)
    outs = [_out(c, 4)]
    if float_reader:
        b.nodes.append(helper.make_node("Relu", ["cat"], ["side"]))
        outs.append(_out("side", 4))
    if dq_reader:  # a float op reading the Concat's DequantizeLinear output
        b.nodes.append(helper.make_node("Sigmoid", [cat], ["side"]))
        outs.append(_out("side", 4))
    return make_model(b.nodes, [tensor("x", list(X))], outs, b.inits, opset=17)


@pytest.mark.parametrize("out_scale", [0.05, 0.031])
def test_qdq_concat_and_split_run_on_integers(out_scale, tmp_path):
    from tvmlite.backends.tvm.module import load_module

    model = _model(out_scale)
    prepared, shapes = prepare(load(model), {"x": X})
    g = prepared.graph
    ops = [n.op_type for n in g.nodes]
    assert ops.count("QDQConv") == 3 and ops.count("QConcat") == 1 and "Concat" not in ops, ops
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops, ops
    cat = next(n for n in g.nodes if n.op_type == "QConcat")
    assert cat.attrs["y_quantized"] == 1 and list(cat.attrs["in_quantized"]) == [1, 1, 1, 0]
    # the convs' outputs are stored channels-last, the Split splits their stored last axis; the
    # float input (the sigmoid) is read NCHW
    assert list(cat.attrs["in_layouts"]) == ["NHWC", "NHWC", "NHWC", "NCHW"]
    split = next(n for n in g.nodes if n.op_type == "Split")
    assert split.attrs["axis"] == 3 and tuple(shapes[split.outputs[0]]) == (1, 10, 12, 3)
    assert [n.attrs.get("y_layout") for n in g.toposort() if n.op_type == "QDQConv"][:2] == ["NHWC", "NHWC"]
    assert cat.attrs.get("y_layout") == "NHWC"  # read only by conv c
    assert g.value(cat.inputs[0]).dtype == np.uint8 and g.value(cat.outputs[0]).dtype == np.uint8
    cm = compile_model(load(model), {"x": X})
    assert cm.host_ops == []
    assert any("qconcat" in c.get("func", "") for c in cm.plan["calls"])
    for _ in range(3):
        x = (RNG.standard_normal(X) * 2).astype(np.float32)
        (got,), (ref,) = cm.run({"x": x}), ort_unfused(model, {"x": x})
        np.testing.assert_array_less(np.abs(got - ref), 0.03 + 1e-6)  # one output step
        # onnxruntime's own fused kernels (QLinearConv / QLinearConcat) round near-ties of the
        # inner layers differently and differ from its unfused run by up to 2 output steps here
        np.testing.assert_array_less(np.abs(got - ort_qdq(model, {"x": x})[0]), 2 * 0.03 + 1e-6)
    cm.save(str(tmp_path / "m.so"))
    np.testing.assert_array_equal(load_module(str(tmp_path / "m.so")).run({"x": x})[0], got)
    tvmlite.save(prepared, str(tmp_path / "prepared.onnx"))  # QConcat's body: the unfused pattern
    (body,) = ort_unfused(str(tmp_path / "prepared.onnx"), {"x": x})
    np.testing.assert_array_less(np.abs(body - ref), 0.03 + 1e-6)


def test_concat_read_by_a_float_op_stays_a_float_concat():
    model = _model(0.05, float_reader=True)
    prepared, _ = prepare(load(model), {"x": X})
    assert "QConcat" not in {n.op_type for n in prepared.graph.nodes}
    cm = compile_model(load(model), {"x": X})
    x = (RNG.standard_normal(X) * 2).astype(np.float32)
    for got, ref in zip(cm.run({"x": x}), ort_qdq(model, {"x": x})):
        np.testing.assert_array_less(np.abs(got - ref), 0.05 + 1e-6)


def test_qconcat_with_a_float_reader_writes_its_float_grid_values():
    """A float op reading the Concat's DequantizeLinear: QConcat still runs (its readers quantize on
    one grid, or read the dequantized value), its output stays float (the values on its grid)."""
    model = _model(0.031, dq_reader=True)
    prepared, _ = prepare(load(model), {"x": X})
    cat = next(n for n in prepared.graph.nodes if n.op_type == "QConcat")
    assert not cat.attrs.get("y_quantized") and prepared.graph.value(cat.outputs[0]).dtype == np.float32
    cm = compile_model(load(model), {"x": X})
    assert cm.host_ops == []
    x = (RNG.standard_normal(X) * 2).astype(np.float32)
    for got, ref in zip(cm.run({"x": x}), ort_unfused(model, {"x": x})):
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_qconcat_numpy_kernel_requantizes_each_input():
    """The NumPy kernel (the op's reference) against the QDQ arithmetic written out."""
    from tvmlite.ops.qconcat import q_concat

    a = np.array([[0, 10, 255]], np.uint8)
    f = np.array([[0.33, -1.0]], np.float32)
    y = q_concat(a, f, axis=1, in_scales=[0.1, 0.25], in_zero_points=[10, 0], in_signed=[0, 1],
                 in_quantized=[1, 0], y_scale=0.2, y_zero_point=5, y_signed=0, y_quantized=1)
    # a: (q - 10) * 0.1 = -1, 0, 24.5 -> /0.2 -> -5, 0, 122 (122.5 rounds to even) -> +5
    # f: quantized on its grid (0.25: 0.33 -> 1 step, -1 -> -4 steps) = 0.25, -1 -> 1.25, -5 -> +5
    np.testing.assert_array_equal(y, np.array([[0, 5, 127, 6, 0]], np.uint8))


def _feeds(ins) -> dict:
    return {v: (RNG.uniform(-2, 3, s).astype(np.float32) if d == "float32" else
                RNG.integers(np.iinfo(d).min, np.iinfo(d).max + 1, s).astype(d)) for v, s, d, *_ in ins}


def _concat_kernel(ins, feeds, axis, y_grid, y_q, out_shape, y_nhwc, segments, monkeypatch, lanes=8):
    from tvmlite.backends.tvm.kernels import qconcat
    from tvmlite.backends.tvm.kernels.target import host_target
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    tvm = tvmlite.backends.tvm.kernels.target.import_tvm()
    monkeypatch.setattr(qconcat, "_SEGMENTS", segments)
    kd = qconcat.concat_int8("cat", ins, axis=axis, y_grid=y_grid, y_quantized=y_q, out_value="y",
                             out_shape=out_shape, lanes=lanes, y_nhwc=y_nhwc)
    args, _ = kernel_args(kd, feeds)
    args[-1] = tvm.runtime.empty(kd.params[-1].shape, (("int8" if y_grid[2] else "uint8") if y_q else "float32"),
                                 tvm.cpu())
    build_kernel(kd, host_target())["main"](*args)
    return kd, args[-1].numpy()


@pytest.mark.parametrize("y_nhwc, y_q", [(True, 1), (False, 1), (False, 0)])
def test_qconcat_kernel_runs_one_loop_nest_per_input(y_nhwc, y_q, monkeypatch):
    """Channel parts of 16, 8 and 24 (pieces of 8, 6 of them): each piece its own unrolled copy of
    the loop nest, the same values as the NumPy kernel (and as the kernel with one select per
    input): a float NCHW input, a uint8 NHWC one on the output grid (copied) and an int8 one on
    another grid (requantized)."""
    from tvmlite.ops.qconcat import q_concat

    h, w = 3, 5
    grids = [(0.02, 7, 0), (0.05, 120, 0), (0.03, -4, 1)]
    ins = [("a", (1, 16, h, w), "float32", grids[0], 0, False), ("b", (1, h, w, 8), "uint8", grids[1], 1, True),
           ("c", (1, h, w, 24), "int8", grids[2], 1, True)]
    out_shape = (1, h, w, 48) if y_nhwc else (1, 48, h, w)
    feeds = _feeds(ins)
    kd, got = _concat_kernel(ins, feeds, 1, grids[1], y_q, out_shape, y_nhwc, True, monkeypatch)
    assert "T.unroll(6)" in kd.func.script()
    ref = q_concat(*(feeds[v] for v, *_ in ins), axis=1, in_scales=[g[0] for g in grids],
                   in_zero_points=[g[1] for g in grids], in_signed=[g[2] for g in grids], in_quantized=[0, 1, 1],
                   y_scale=0.05, y_zero_point=120, y_signed=0, y_quantized=y_q,
                   in_layouts=["NCHW", "NHWC", "NHWC"], y_layout="NHWC" if y_nhwc else "NCHW")
    np.testing.assert_array_equal(got, ref)
    _, selected = _concat_kernel(ins, feeds, 1, grids[1], y_q, out_shape, y_nhwc, False, monkeypatch)
    np.testing.assert_array_equal(got, selected)


def test_qconcat_kernel_with_many_pieces_keeps_one_loop_nest(monkeypatch):
    """Parts of 3 and 14 channels: gcd 1, 17 pieces (over MAX_SEGMENTS): one nest with a select."""
    from tvmlite.backends.tvm.kernels import qconcat

    assert qconcat.MAX_SEGMENTS < 17
    g = (0.05, 120, 0)
    ins = [("a", (1, 3, 2, 4), "uint8", g, 1, False), ("b", (1, 14, 2, 4), "uint8", g, 1, False)]
    feeds = _feeds(ins)
    kd, got = _concat_kernel(ins, feeds, 1, g, 1, (1, 17, 2, 4), False, True, monkeypatch)
    assert "T.unroll" not in kd.func.script()
    np.testing.assert_array_equal(got, np.concatenate([feeds["a"], feeds["b"]], axis=1))


def test_qconcat_kernel_pieces_narrower_than_a_vector(monkeypatch):
    """Channels-last parts of 2 and 4 channels (pieces of 2, 3 of them): the pieces are split but
    their 2-channel loops are not vectorized; the values are the inputs' on the output grid."""
    g = (0.05, 120, 0)
    ins = [("a", (1, 3, 5, 2), "uint8", g, 1, True), ("b", (1, 3, 5, 4), "uint8", g, 1, True)]
    feeds = _feeds(ins)
    kd, got = _concat_kernel(ins, feeds, 1, g, 1, (1, 3, 5, 6), True, True, monkeypatch)
    assert "T.unroll(3)" in kd.func.script() and "T.vectorized" not in kd.func.script()
    np.testing.assert_array_equal(got, np.concatenate([feeds["a"], feeds["b"]], axis=3))


def test_qconcat_kernel_piece_of_half_a_vector(monkeypatch):
    """16 lanes (AVX-512's) and channels-last parts of 8 and 16 channels: the 8-channel pieces are
    8-lane vectors, as a whole 24-channel loop would have been vectorized."""
    g = (0.05, 120, 0)
    ins = [("a", (1, 2, 3, 8), "uint8", g, 1, True), ("b", (1, 2, 3, 16), "uint8", (0.02, 3, 0), 1, True)]
    feeds = _feeds(ins)
    kd, got = _concat_kernel(ins, feeds, 1, g, 1, (1, 2, 3, 24), True, True, monkeypatch, lanes=16)
    assert "T.unroll(3)" in kd.func.script() and "T.vectorized(8)" in kd.func.script()
    _, selected = _concat_kernel(ins, feeds, 1, g, 1, (1, 2, 3, 24), True, False, monkeypatch, lanes=16)
    np.testing.assert_array_equal(got, selected)
