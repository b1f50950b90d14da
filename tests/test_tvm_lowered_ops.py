"""TVM backend: tvmlite's own conv-lowering ops (Im2Col, MecLower/MecMatMul,
WinogradInput/WinogradOutput and the weights-on-the-left batched GEMM between them) build, and a
model after `lower-conv` (im2col or MEC) or `winograd` agrees with onnxruntime running the
original model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.passes import Pipeline  # noqa: E402
from tvmlite.backends.tvm import compile_model, emit_tvmscript, unsupported_ops  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(0)


def _conv_model(x_shape, w_shape, bias=True, relu=True, **attrs):
    w = (RNG.standard_normal(w_shape) * 0.3).astype(np.float32)
    inits = [("w", w)]
    ins = ["x", "w"]
    if bias:
        inits.append(("b", RNG.standard_normal(w_shape[0]).astype(np.float32)))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c" if relu else "y"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    return make_model(nodes, [tensor("x", list(x_shape))], [tensor("y", ["d"] * len(x_shape))], inits)


def _lowered_matches(model, spec, x, lowered_op):
    m = load(model)
    Pipeline(spec).run(m)
    assert any(n.op_type == lowered_op and n.domain == "tvmlite" for n in m.graph.nodes), "the pass did not apply"
    assert unsupported_ops(m, {"x": x.shape}) == []
    cm = compile_model(m, {"x": x.shape})
    (got,) = cm.run({"x": x})
    (ref,) = ort_run(model, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    return cm


@pytest.mark.parametrize("cfg", [
    dict(x=(2, 3, 9, 11), w=(5, 3, 3, 3), pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    dict(x=(1, 4, 7, 6), w=(6, 2, 3, 2), pads=[1, 1, 1, 0], group=2, bias=False),  # grouped: broadcast GEMM
    dict(x=(1, 8, 5, 5), w=(16, 8, 1, 1)),
    dict(x=(2, 3, 13), w=(4, 3, 5), pads=[2, 1], strides=[2]),  # 1-D
])
def test_lower_conv_im2col_builds_and_matches(cfg):
    cfg = dict(cfg)
    x_shape, w_shape, bias = cfg.pop("x"), cfg.pop("w"), cfg.pop("bias", True)
    model = _conv_model(x_shape, w_shape, bias=bias, **cfg)
    cm = _lowered_matches(model, "lower-conv", RNG.standard_normal(x_shape).astype(np.float32), "Im2Col")
    # Im2Col, then the GEMM with bias and (behind the Reshape back to NCHW) the Relu as its epilogue
    assert cm.kernel_count == 2


@pytest.mark.parametrize("m,x_shape,pads,bias", [
    (2, (1, 3, 8, 8), [1, 1, 1, 1], True),
    (4, (2, 5, 11, 9), [1, 1, 1, 1], True),  # ragged last tiles, batch 2
    (6, (1, 4, 10, 13), [0, 2, 1, 0], True),  # asymmetric pads
    (4, (1, 6, 7, 7), [1, 1, 1, 1], False),  # 2x2 tiles, the last ones mostly crop
    (2, (2, 3, 13, 13), [0, 0, 0, 0], True),  # no pads: 11x11 out, 6x6 tiles, batch 2
    (4, (1, 2, 27, 27), [1, 1, 1, 1], False),  # 7 tiles per row, ragged
    (4, (2, 3, 28, 28), [1, 0, 1, 2], True),  # 7 tiles per row, exact, asymmetric pads, batch 2
    (6, (1, 3, 13, 27), [1, 1, 1, 1], True),  # 3x5 tiles of 6
])
def test_winograd_builds_and_matches(m, x_shape, pads, bias):
    model = _conv_model(x_shape, (7, x_shape[1], 3, 3), bias=bias, pads=pads)
    _lowered_matches(model, f"winograd(m={m})", RNG.standard_normal(x_shape).astype(np.float32), "WinogradInput")


def test_winograd_transforms_split_tiles_exactly(tmp_path):
    """28x28 in F(4) tiles: 7 per row, 49 per image. The transforms run per tile row, vectorized
    over its 7 tiles (input) and the 28 columns of an output row (output): no guarded vector tail
    and no division of a flat tile index per element."""
    model = _conv_model((1, 8, 28, 28), (16, 8, 3, 3), pads=[1, 1, 1, 1])
    m = load(model)
    Pipeline("winograd(m=4)").run(m)
    emit_tvmscript(m, str(tmp_path), {"x": (1, 8, 28, 28)})
    wi = next(tmp_path.glob("k000_*.py")).read_text()
    wo = next(tmp_path.glob("k002_*.py")).read_text()
    assert "T.vectorized(7)" in wi and "T.vectorized(30)" in wi and "T.where" not in wi, wi
    assert "T.vectorized(28)" in wo and "T.vectorized(7)" in wo, wo
    assert "T.float32(-5.0)" in wi  # Bᵀ's entries are constants in the code, not loads


def test_winograd_gemm_is_packed_and_output_fuses_epilogue(tmp_path):
    model = _conv_model((1, 16, 8, 8), (32, 16, 3, 3), pads=[1, 1, 1, 1])
    m = load(model)
    Pipeline("winograd(m=4)").run(m)
    emit_tvmscript(m, str(tmp_path), {"x": (1, 16, 8, 8)})
    index = (tmp_path / "index.txt").read_text()
    assert index.count(".py") == 3, index  # input transform, batched GEMM, output transform (+bias, relu)
    gemm = next(tmp_path.glob("k001_matmul*.py")).read_text()
    # A packed [α², M/mr, K, mr] on the host, B's columns packed per tile, register tile, vectorized;
    # mr is the GEMM's row tile for the host's registers (8 with AVX-512, 4 with AVX2)
    from tvmlite.backends.tvm.kernels.gemm import gemm_rows
    from tvmlite.backends.tvm.kernels.target import vector_lanes

    mr = gemm_rows(vector_lanes())
    assert f"w0: T.Buffer((36, {32 // mr}, 16, {mr})" in gemm and "pack[" in gemm and 'scope="local"' in gemm
    assert "T.vectorized(" in gemm and f"T.unroll({mr})" in gemm


@pytest.mark.parametrize("cfg", [
    dict(x=(2, 3, 9, 11), w=(5, 3, 3, 3), pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    dict(x=(1, 4, 8, 7), w=(9, 4, 3, 2), pads=[0, 1, 0, 1], strides=[1, 2], dilations=[2, 1], bias=False),
])
def test_lower_conv_mec_builds_and_matches(cfg):
    cfg = dict(cfg)
    x_shape, w_shape, bias = cfg.pop("x"), cfg.pop("w"), cfg.pop("bias", True)
    model = _conv_model(x_shape, w_shape, bias=bias, **cfg)
    _lowered_matches(model, "lower-conv(layout=mec)", RNG.standard_normal(x_shape).astype(np.float32), "MecLower")


def test_tvmlite_op_without_emitter_is_reported():
    m = load(make_model([helper.make_node("Relu", ["x"], ["r"])], [tensor("x", [2, 4])], [tensor("r", [2, 4])]))
    g = m.graph
    for name, arr in [("data", np.ones((1, 2, 2), np.float32)), ("indices", np.array([1], np.int64)),
                      ("indptr", np.array([0, 1, 1], np.int64))]:
        g.add_initializer(name, arr)
    g.add_node("SparseMatMul", ["r", "data", "indices", "indptr"], ["y"], {}, domain="tvmlite", name="sp")
    m.opsets.setdefault("tvmlite", 1)
    g.outputs[:] = ["y"]
    assert unsupported_ops(m, {"x": (2, 4)}) == ["SparseMatMul (tvmlite op without a TVM emitter)"]


@pytest.mark.parametrize("spec,op", [("lower-conv", "Im2Col"), ("winograd", "WinogradInput"),
                                     ("lower-conv(layout=mec)", "MecLower")])
def test_lowered_digits_model_matches_onnxruntime(spec, op):
    from models_under_test import example_model

    path = example_model()
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    x = np.load(path.parent / "digits_test.npz")["input"][:8].astype(np.float32)
    m = load(path)
    Pipeline(spec).run(m)
    assert any(n.op_type == op for n in m.graph.nodes)
    cm = compile_model(m, {"input": x.shape})
    (got,) = cm.run({"input": x})
    (ref,) = ort_run(onnx.load(path), {"input": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("y_layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("m,mm,out_hw", [(4, 32, (28, 28)), (2, 24, (7, 9)), (4, 20, (13, 11)), (4, 7, (9, 10))])
def test_winograd_output_kernel_in_each_layout(lanes, y_layout, m, mm, out_hw):
    """WinogradOutput's kernel against the op's NumPy reference, written NCHW or NHWC (for readers
    taking the conv's output channels-last), with bias, a residual stored NHWC (read through
    Epilogue.layouts) and ReLU fused; ragged last tiles, batch 2, channels a whole vector, half a
    vector (24 at 16 lanes), a quarter (20) and no vector (7: one block of all channels)."""
    from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
    from tvmlite.backends.tvm.kernels.lowered import winograd_output
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args
    from tvmlite.ops.lowered import winograd_matrices, winograd_output as reference, winograd_tiles

    n, (oh, ow) = 2, out_hw
    th, tw = winograd_tiles(out_hw, m)
    mt = RNG.standard_normal(((m + 2) ** 2, mm, n * th * tw)).astype(np.float32)
    b = RNG.standard_normal(mm).astype(np.float32)
    res = RNG.standard_normal((n, mm, oh, ow)).astype(np.float32)
    epi = Epilogue([EwOp("Add", [("value", "r", res.shape)]), EwOp("Relu")], layouts={"r": "r::nhwc"})
    at, _, _ = winograd_matrices(m, 3)
    kd = winograd_output("k", "t", mt.shape, b, m=m, r=3, out_shape=(n, mm, oh, ow), at=at, out_value="y",
                         epilogue=epi, lanes=lanes, y_layout=y_layout)
    args, outs = kernel_args(kd, {"t": mt, "r::nhwc": np.ascontiguousarray(res.transpose(0, 2, 3, 1))})
    build_kernel(kd)["main"](*args)
    y = outs[0].numpy()
    y = y.reshape(n, oh, ow, mm).transpose(0, 3, 1, 2) if y_layout == "NHWC" else y.reshape(n, mm, oh, ow)
    want = np.maximum(reference(mt, b, m=m, out_shape=(oh, ow)) + res, 0)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def _winograd_build(nodes, inits, x_shape, lanes):
    """Compiled model (every 3x3 conv lowered to F(4) first) checked against onnxruntime."""
    from tvmlite.frontend import load as load_model

    m = make_model(nodes, [tensor("x", x_shape)], [tensor("y", ["d"] * 4)], inits)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    (ref,) = ort_run(m, {"x": x})
    lowered = load_model(m)
    Pipeline("winograd(m=4)").run(lowered)
    assert any(n.op_type == "WinogradOutput" for n in lowered.graph.nodes)
    cm = compile_model(lowered, {"x": x_shape}, cache=False, lanes=lanes)
    got = cm.run({"x": x})
    got = got["y"] if isinstance(got, dict) else got[0]
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) <= 1e-4
    return cm


def _fire(c=64):
    """SqueezeNet's fire module: 1x1 squeeze, then 1x1 and 3x3 expands, concatenated along the
    channels and read by a 1x1 conv."""
    from test_tvm_nhwc import W, conv_node

    nodes = [conv_node("x", "w0", "s0"), helper.make_node("Relu", ["s0"], ["s"]),
             conv_node("s", "w1", "t1"), helper.make_node("Relu", ["t1"], ["o1"]),
             conv_node("s", "w2", "t2", k=3), helper.make_node("Relu", ["t2"], ["o2"]),
             helper.make_node("Concat", ["o1", "o2"], ["cat"], axis=1), conv_node("cat", "w3", "y")]
    inits = [W("w0", 16, 8, 1, 1), W("b0", 16), W("w1", c, 16, 1, 1), W("b1", c), W("w2", c, 16, 3, 3),
             W("b2", c), W("w3", 8, 2 * c, 1, 1), W("b3", 8)]
    return nodes, inits


def _slices(cm) -> dict:
    return {v: (b["of"], b["offset"]) for v, b in cm.plan["buffers"].items() if b.get("kind") == "slice"}


@pytest.mark.parametrize("lanes", [8, 16])
def test_winograd_output_writes_its_nhwc_concat_slice(lanes):
    """The 3x3 expand of a fire module as Winograd: its output transform writes NHWC, straight into
    its channels of the Concat's channels-last buffer (nhwc_concat.py), as the 1x1 expand does; no
    transpose, no Concat copy."""
    from test_tvm_nhwc import nhwc_buffers, transposes

    nodes, inits = _fire()
    cm = _winograd_build(nodes, inits, (1, 8, 13, 11), lanes)
    assert {"o2::nhwc", "cat::nhwc"} <= nhwc_buffers(cm)
    assert _slices(cm) == {"o1::nhwc": ("cat::nhwc", 0), "o2::nhwc": ("cat::nhwc", 64)}
    assert not transposes(cm) and not [c for c in cm.plan["calls"] if "_concat_" in c.get("func", "")]


def test_winograd_output_writes_its_nchw_concat_slice(monkeypatch):
    """With channels-last values off, the output transform writes NCHW into the Concat's buffer
    at its channel offset (concat_views.py)."""
    from test_tvm_nhwc import nhwc_buffers

    monkeypatch.setenv("TVMLITE_FLOAT_NHWC", "0")
    nodes, inits = _fire()
    cm = _winograd_build(nodes, inits, (1, 8, 13, 11), 16)
    assert not nhwc_buffers(cm)
    assert _slices(cm) == {"o1": ("cat", 0), "o2": ("cat", 64 * 13 * 11)}


@pytest.mark.parametrize("lanes", [8, 16])
def test_winograd_output_writes_nhwc_for_a_1x1_conv(lanes):
    """ResNet's bottleneck with its 3x3 conv as Winograd: the output transform writes NHWC for the
    1x1 expand, which reads it channels-last; nothing is transposed."""
    from test_tvm_nhwc import bottleneck, nhwc_buffers, transposes

    nodes, inits = bottleneck()
    cm = _winograd_build(nodes, inits, (1, 8, 9, 11), lanes)
    assert "r2::nhwc" in nhwc_buffers(cm) and not transposes(cm)
