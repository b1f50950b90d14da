"""Per-channel affines that feed a Conv: fuse-affine-conv folds them into the Conv's weights and
bias where that is exact (a shift only without padding, groups respected); affine-as-conv turns the
rest into a 1x1 depthwise Conv. Both keep onnxruntime's outputs and leave other forms alone with a
reason."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

rng = np.random.default_rng(0)
C, O = 4, 8


def ops(m):
    return [n.op_type for n in m.graph.toposort()]


def affine_conv_model(affine=("Mul", "Add"), s_shape=(), t_shape=(), pads=0, k=1, group=1, sub_first=False,
                      extra_reader=False, channels=C):
    """x -> Relu -> [Mul s] -> [Add/Sub t] -> Conv(k x k, pads, group) -> y."""
    w = rng.standard_normal((O, channels // group, k, k)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    inits = [("w", w), ("b", b), ("s", rng.uniform(0.5, 2, s_shape).astype(np.float32)),
             ("t", rng.standard_normal(t_shape).astype(np.float32))]
    nodes, cur = [helper.make_node("Relu", ["x"], ["r"])], "r"
    for op in affine:
        const = "s" if op == "Mul" else "t"
        ins = [const, cur] if (op == "Sub" and sub_first) or op == "Mul" else [cur, const]
        nodes.append(helper.make_node(op, ins, [f"{op}_out"]))
        cur = f"{op}_out"
    nodes.append(helper.make_node("Conv", [cur, "w", "b"], ["y"], kernel_shape=[k, k], pads=[pads] * 4, group=group))
    hw = 5 + 2 * pads - k + 1
    outputs = [tensor("y", ["N", O, hw, hw])] + ([tensor(cur, ["N", channels, 5, 5])] if extra_reader else [])
    return make_model(nodes, [tensor("x", ["N", channels, 5, 5])], outputs, inits, opset=13)


def check_same(proto, m, channels=C):
    out = export_model(m)
    onnx.checker.check_model(out)
    x = rng.standard_normal((2, channels, 5, 5)).astype(np.float32)
    for a, b in zip(ort_run(proto, {"x": x}), ort_run(out, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,left", [
    (dict(), ["Relu", "Conv"]),                                               # scalar scale and shift, 1x1
    (dict(s_shape=(C, 1, 1), t_shape=(1, C, 1, 1)), ["Relu", "Conv"]),        # per channel
    (dict(affine=("Mul", "Sub"), s_shape=(C, 1, 1), k=3), ["Relu", "Conv"]),  # 3x3 without padding
    (dict(s_shape=(C, 1, 1), t_shape=(C, 1, 1), group=2), ["Relu", "Conv"]),  # grouped: each group its channels
    (dict(s_shape=(C, 1, 1), t_shape=(C, 1, 1), group=C), ["Relu", "Conv"]),  # depthwise
    (dict(affine=("Mul",), s_shape=(C, 1, 1), k=3, pads=1), ["Relu", "Conv"]),  # a scale alone survives padding
])
def test_affine_folds_into_the_conv_it_feeds(kw, left):
    proto = affine_conv_model(**kw)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-affine-conv").run(m)[0]
    assert r.stats["fused"] == 1 and ops(m) == left
    # the old weights go with the old Conv (the report counts parameters right after the pass)
    assert not {"w", "b"} & set(m.graph.initializers)
    check_same(proto, m)


@pytest.mark.parametrize("kw,reason", [
    (dict(k=3, pads=1), "pads its input"),                       # a shift is not exact under zero padding
    (dict(affine=("Add",), k=3, pads=1), "pads its input"),
    (dict(affine=("Mul",), s_shape=(1, 1, 5, 1)), "not per input channel"),  # varies along H
    (dict(affine=("Sub",), sub_first=True), "constant minus the input"),
    (dict(extra_reader=True), "other readers"),
])
def test_affine_left_where_folding_is_not_exact(kw, reason):
    proto = affine_conv_model(**kw)
    m = tvmlite.load(proto)
    before = ops(m)
    r = Pipeline("fuse-affine-conv").run(m)[0]
    assert r.stats["fused"] == 0 and ops(m) == before
    assert any(reason in why for _, why in r.skipped), r.skipped


@pytest.mark.parametrize("kw", [dict(), dict(s_shape=(C, 1, 1), t_shape=(1, C, 1, 1)),
                                dict(affine=("Mul", "Sub"), t_shape=(C, 1, 1)), dict(affine=("Add",)),
                                dict(affine=("Mul",), s_shape=(1, C, 1, 1))])
def test_affine_before_padded_conv_becomes_depthwise_conv(kw):
    proto = affine_conv_model(k=3, pads=1, **kw)
    m = tvmlite.load(proto)
    r = Pipeline("affine-as-conv").run(m)[0]
    assert r.stats["rewritten"] == 1 and ops(m) == ["Relu", "Conv", "Conv"]
    dw = m.graph.toposort()[1]
    assert dw.attrs["group"] == C and m.graph.const_value(dw.inputs[1]).shape == (C, 1, 1, 1)
    check_same(proto, m)


def test_affine_as_conv_leaves_what_no_conv_reads_or_is_not_per_channel():
    # read by a Relu, not a Conv
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    proto = make_model(nodes, [tensor("x", ["N", C, 5, 5])], [tensor("y", ["N", C, 5, 5])],
                       [("s", np.float32(2)), ("t", np.float32(1))], opset=13)
    m = tvmlite.load(proto)
    r = Pipeline("affine-as-conv").run(m)[0]
    assert r.stats["rewritten"] == 0 and "no Conv reads it" in r.skipped[0][1]
    # varies along H: not a per-channel affine
    m = tvmlite.load(affine_conv_model(affine=("Mul",), s_shape=(1, 1, 5, 1), k=3, pads=1))
    r = Pipeline("affine-as-conv").run(m)[0]
    assert r.stats["rewritten"] == 0 and any("not per channel" in why for _, why in r.skipped)
    # constant minus the tensor
    m = tvmlite.load(affine_conv_model(affine=("Sub",), sub_first=True, k=3, pads=1))
    r = Pipeline("affine-as-conv").run(m)[0]
    assert r.stats["rewritten"] == 0 and any("constant minus" in why for _, why in r.skipped)


def test_affine_as_conv_needs_a_known_channel_count():
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Conv", ["m", "w"], ["y"])]
    proto = make_model(nodes, [tensor("x", ["N", "C", 5, 5])], [tensor("y", ["N", O, 5, 5])],
                       [("s", np.float32(2)), ("w", rng.standard_normal((O, C, 1, 1)).astype(np.float32))],
                       opset=13)
    m = tvmlite.load(proto)
    r = Pipeline("affine-as-conv").run(m)[0]
    assert r.stats["rewritten"] == 0 and "known channel count" in r.skipped[0][1]


def test_weights_in_constant_nodes_go_with_the_folded_conv():
    # PP-OCR keeps its weights in Constant nodes: the old ones must not linger until a dce
    w = helper.make_tensor("wc", onnx.TensorProto.FLOAT, [O, C, 1, 1], rng.standard_normal(O * C).tolist())
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Conv", ["m", "w"], ["y"])]
    proto = make_model(nodes, [tensor("x", ["N", C, 5, 5])], [tensor("y", ["N", O, 5, 5])],
                       [("s", np.float32(2))], opset=13)
    m = tvmlite.load(proto)
    assert Pipeline("fuse-affine-conv").run(m)[0].stats["fused"] == 1
    assert ops(m) == ["Conv"]
    check_same(proto, m)


@pytest.mark.parametrize("x_shape,s_shape", [
    (["N", 1, 5, 5], (1, C, 1, 1)),   # the scale broadcasts 1 channel to C
    ([1, 5, 5], (1, C, 1, 1)),         # ... and a 3-D input to 4-D
    ([], (1, C, 1, 1)),               # a scalar input becomes (1, C, 1, 1)
    (["N", C, 5, 5], ()),             # same shape: folded (the control)
])
def test_affine_that_broadcasts_its_input_is_not_folded(x_shape, s_shape):
    """Found by fuzzing the float fusions (mutated input shapes): Conv(s * x) read x itself after the
    fold, so a broadcasting scale left a Conv onnxruntime refused (rank or channel mismatch)."""
    w = rng.standard_normal((O, C, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Conv", ["m", "w"], ["y"])]
    proto = make_model(nodes, [tensor("x", x_shape)], [tensor("y", ["N", O, 5, 5])],
                       [("s", rng.uniform(0.5, 2, s_shape).astype(np.float32)), ("w", w)], opset=13)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-affine-conv").run(m)[0]
    folds = x_shape == ["N", C, 5, 5]
    assert r.stats["fused"] == int(folds), r.skipped
    if not folds:
        assert any("would broadcast it" in why for _, why in r.skipped), r.skipped
        assert ops(m) == ["Mul", "Conv"]
    out = export_model(m)
    x = rng.standard_normal([2 if d == "N" else d for d in x_shape]).astype(np.float32)
    for a, b in zip(ort_run(proto, {"x": x}), ort_run(out, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
