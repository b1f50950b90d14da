"""TVM backend: Resize and ConvTranspose (the upsampling ops of detection/segmentation heads)
agree with onnxruntime across their attributes, refuse what they do not cover with a reason,
and PP-OCR det (Resize + ConvTranspose) builds and agrees with onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model, unsupported_ops  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _check(model, feeds, rtol=1e-5):
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    ref = ort_run(model, feeds)
    for g, r in zip(cm.run(feeds), ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * max(1.0, float(np.abs(r).max())))
    return cm


# ------------------------------------------------------------------------------------------ Resize
def _resize_model(x_shape, out_shape, *, scales=None, sizes=None, opset=13, extra=(), **attrs):
    inits = [("roi", np.zeros(0, np.float32))]
    ins = ["x", "roi"]
    if scales is not None:
        inits.append(("scales", np.array(scales, np.float32)))
        ins.append("scales")
    else:
        inits.append(("sizes", np.array(sizes, np.int64)))
        ins += ["", "sizes"]
    nodes = [helper.make_node("Resize", ins, ["r" if extra else "y"], **attrs)]
    inputs = [tensor("x", list(x_shape))]
    if extra:  # an elementwise consumer, fused into the resize kernel
        nodes.append(helper.make_node("Add", ["r", "z"], ["y"]))
        inputs.append(tensor("z", list(out_shape)))
    return make_model(nodes, inputs, [tensor("y", list(out_shape))], inits, opset=opset)


@pytest.mark.parametrize("case", [
    # PP-OCR det's upsampling: integer scale, index computed in the kernel
    dict(x=(1, 3, 5, 6), out=(1, 3, 10, 12), scales=[1, 1, 2, 2], mode="nearest",
         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(x=(2, 2, 5, 7), out=(2, 2, 8, 11), sizes=[2, 2, 8, 11], mode="nearest",
         coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
    dict(x=(1, 2, 9, 8), out=(1, 2, 4, 3), sizes=[1, 2, 4, 3], mode="nearest",
         coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"),
    dict(x=(1, 2, 4, 5), out=(1, 2, 6, 12), scales=[1, 1, 1.5, 2.5], mode="nearest",
         coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="ceil"),
    dict(x=(2, 3, 4, 5), out=(4, 3, 4, 10), scales=[2, 1, 1, 2], mode="nearest",  # batch axis too
         coordinate_transformation_mode="asymmetric", nearest_mode="round_prefer_floor"),
    dict(x=(1, 3, 5, 6), out=(1, 3, 10, 12), scales=[1, 1, 2, 2], mode="linear",
         coordinate_transformation_mode="half_pixel"),
    dict(x=(1, 2, 5, 7), out=(1, 2, 9, 3), sizes=[1, 2, 9, 3], mode="linear",
         coordinate_transformation_mode="align_corners"),
    dict(x=(1, 2, 6, 7), out=(1, 2, 1, 4), sizes=[1, 2, 1, 4], mode="linear",
         coordinate_transformation_mode="pytorch_half_pixel"),
    dict(x=(1, 2, 5, 7), out=(1, 2, 7, 7), scales=[1, 1, 1.5, 1], mode="linear",
         coordinate_transformation_mode="asymmetric", extra=True),
    dict(x=(2, 4, 9), out=(2, 4, 4), sizes=[2, 4, 4], mode="linear",
         coordinate_transformation_mode="half_pixel"),
])
def test_resize_matches_onnxruntime(case):
    case = dict(case)
    x_shape, out_shape, extra = case.pop("x"), case.pop("out"), case.pop("extra", False)
    model = _resize_model(x_shape, out_shape, extra=("z",) if extra else (), **case)
    feeds = {"x": _x(*x_shape)}
    if extra:
        feeds["z"] = _x(*out_shape)
    cm = _check(model, feeds)
    assert cm.kernel_count == 1


def test_resize_tables_survive_save_and_load(tmp_path):
    """The int32 index tables and float weights are constants of the saved artifact."""
    from tvmlite.backends.tvm import load_module

    model = _resize_model((1, 2, 5, 7), (1, 2, 9, 3), sizes=[1, 2, 9, 3], mode="linear",
                          coordinate_transformation_mode="align_corners")
    feeds = {"x": _x(1, 2, 5, 7)}
    cm = _check(model, feeds)
    assert sorted(str(a.dtype) for a in cm._consts.values()) == ["float32", "float32", "int32", "int32"]
    cm.save(str(tmp_path / "r.so"))
    np.testing.assert_array_equal(load_module(str(tmp_path / "r.so")).run(feeds)[0], cm.run(feeds)[0])


def test_resize_10_and_upsample_match_onnxruntime():
    nodes = [helper.make_node("Resize", ["x", "s"], ["a"], mode="nearest"),
             helper.make_node("Resize", ["x", "s2"], ["b"], mode="linear")]
    model = make_model(nodes, [tensor("x", [1, 2, 5, 6])], [tensor("a", [1, 2, 10, 9]), tensor("b", [1, 2, 7, 3])],
                       [("s", np.array([1, 1, 2, 1.5], np.float32)), ("s2", np.array([1, 1, 1.5, 0.5], np.float32))],
                       opset=10)
    _check(model, {"x": _x(1, 2, 5, 6)})
    up = make_model([helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], [tensor("x", [1, 2, 3, 4])],
                    [tensor("y", [1, 2, 6, 12])], [("s", np.array([1, 1, 2, 3], np.float32))], opset=9)
    _check(up, {"x": _x(1, 2, 3, 4)})


def test_resize_refuses_what_it_does_not_cover():
    cases = [
        (dict(mode="cubic"), "Resize (mode=cubic)"),
        (dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
         "Resize (coordinate_transformation_mode=tf_crop_and_resize)"),
    ]
    for attrs, msg in cases:
        model = _resize_model((1, 2, 4, 4), (1, 2, 8, 8), scales=[1, 1, 2, 2], **attrs)
        assert unsupported_ops(load(model)) == [msg]
    chan = _resize_model((1, 2, 4, 4), (1, 4, 8, 8), scales=[1, 2, 2, 2], mode="linear")
    assert unsupported_ops(load(chan)) == ["Resize (linear resize of axis 1 (only the last two axes))"]
    runtime = make_model([helper.make_node("Resize", ["x", "", "s"], ["y"])], [tensor("x", [1, 2, 4, 4]),
                         tensor("s", [4])], [tensor("y", ["a", "b", "c", "d"])], opset=13)
    assert unsupported_ops(load(runtime), {"x": (1, 2, 4, 4), "s": (4,)}) == ["Resize (non-constant roi/scales/sizes)"]


# ----------------------------------------------------------------------------------- ConvTranspose
@pytest.mark.parametrize("case", [
    dict(x=(1, 6, 5, 7), w=(6, 4, 2, 2), attrs=dict(strides=[2, 2]), bias=True, relu=True),  # PP-OCR det
    dict(x=(2, 3, 5, 4), w=(3, 5, 3, 3), attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
         bias=True),
    dict(x=(1, 4, 6, 5), w=(4, 3, 3, 2), attrs=dict(group=2, dilations=[2, 1], pads=[0, 1, 2, 0]), bias=False),
    dict(x=(1, 3, 4, 5), w=(3, 2, 3, 3), attrs=dict(strides=[2, 3], auto_pad="SAME_UPPER"), bias=True),
    dict(x=(1, 3, 4, 4), w=(3, 2, 4, 4), attrs=dict(strides=[2, 2], output_shape=[9, 10]), bias=False),
    dict(x=(2, 3, 7), w=(3, 4, 3), attrs=dict(strides=[2], pads=[1, 0]), bias=True),  # 1-D
])
def test_conv_transpose_matches_onnxruntime(case):
    w = _x(*case["w"])
    inits = [("w", w)]
    ins = ["x", "w"]
    if case["bias"]:
        inits.append(("b", _x(case["w"][1] * case["attrs"].get("group", 1))))
        ins.append("b")
    nodes = [helper.make_node("ConvTranspose", ins, ["c" if case.get("relu") else "y"], **case["attrs"])]
    if case.get("relu"):
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    model = make_model(nodes, [tensor("x", list(case["x"]))], [tensor("y", ["d"] * len(case["x"]))], inits)
    cm = _check(model, {"x": _x(*case["x"])}, rtol=1e-4)
    assert cm.kernel_count == 2  # the GEMM, then the gather (with bias and epilogue)


def test_conv_transpose_refuses_runtime_weights():
    model = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"])],
                       [tensor("x", [1, 2, 3, 3]), tensor("w", [2, 2, 2, 2])], [tensor("y", [1, 2, 4, 4])])
    assert unsupported_ops(load(model)) == ["ConvTranspose (non-constant weights)"]


# ---------------------------------------------------------------------------------- PP-OCR det
def test_ppocr_det_agrees_with_onnxruntime():
    """FPN with nearest Resize, ConvTranspose 2x2/s2 heads, BN after ConvTranspose, sigmoid."""
    from conftest import corpus_model

    path = corpus_model("ch_PP-OCRv4_det_infer.onnx")
    model = onnx.load(path)
    # the logits too: the sigmoid output of random input is tiny and hides their error
    sig = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    model.graph.output.append(helper.make_tensor_value_info(sig.input[0], onnx.TensorProto.FLOAT, [1, 1, 64, 64]))
    x = ((np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
    cm = compile_model(load(model), {"x": x.shape})
    got = cm.run({"x": x})
    ref = ort_run(model, {"x": x})
    # probabilities: absolute (onnxruntime's sigmoid flushes tiny values to 0); logits: relative
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-5 * np.abs(ref[1]).max())
