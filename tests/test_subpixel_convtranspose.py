"""subpixel-convtranspose: chains of ConvTransposes with kernel = stride (DBNet's head) become 1x1
Convs in sub-pixel space and one DepthToSpace, with the per-channel affines and BatchNormalizations
between them folded and the activations kept; the same outputs as onnxruntime's run of the original.
What is not such a chain (a lone ConvTranspose by default, kernel != stride, padding, groups,
dilation, weights not constant, an intermediate read elsewhere, opset < 11) is left alone."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.errors import OptionError
from tvmlite.passes import Pipeline
from tvmlite.passes.subpixel_convtranspose import subpixel_weight
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

rng = np.random.default_rng(0)


def ops(m):
    return [n.op_type for n in m.graph.toposort()]


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def head_model(c=4, mid=3, out=2, k=2, k2=2, opset=13, ct_attrs=None, extra_output=False, w_input=False, chain=2):
    """x (c ch) -> ConvTranspose(k) -> +bias -> BN -> Relu -> ConvTranspose(k2, bias) -> Sigmoid
    [-> ConvTranspose(2) -> Mul when chain == 3]; DBNet's head when c=mid=24, out=1."""
    attrs = dict(kernel_shape=[k, k], strides=[k, k], **(ct_attrs or {}))
    inits = [("w1", f32(c, mid, k, k) * 0.5), ("b1", f32(1, mid, 1, 1)),
             ("g", np.abs(f32(mid)) + 0.5), ("beta", f32(mid)), ("mu", f32(mid)), ("var", np.abs(f32(mid)) + 0.1),
             ("w2", f32(mid, out, k2, k2) * 0.5), ("b2", f32(out))]
    nodes = [helper.make_node("ConvTranspose", ["x", "w1x" if w_input else "w1"], ["t1"], **attrs),
             helper.make_node("Add", ["t1", "b1"], ["a1"]),
             helper.make_node("BatchNormalization", ["a1", "g", "beta", "mu", "var"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "w2", "b2"], ["t2"], kernel_shape=[k2, k2], strides=[k2, k2]),
             helper.make_node("Sigmoid", ["t2"], ["y" if chain == 2 else "s2"])]
    if chain == 3:
        inits += [("sc", f32(1, 2, 1, 1)), ("w3", f32(out, 2, 2, 2))]
        nodes += [helper.make_node("ConvTranspose", ["s2", "w3"], ["t3"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Mul", ["t3", "sc"], ["y"])]
    inputs = [tensor("x", ["N", c, "H", "W"])] + ([tensor("w1x", [c, mid, k, k])] if w_input else [])
    outputs = [tensor("y", ["N", "Co", "Ho", "Wo"])] + ([tensor("r1", ["N", "Cr", "Hr", "Wr"])] if extra_output else [])
    return make_model(nodes, inputs, outputs, inits, opset=opset)


def check_same(proto, m, feeds=None):
    out = export_model(m)
    onnx.checker.check_model(out)
    feeds = feeds or {"x": f32(2, 4, 5, 3)}
    for a, b in zip(ort_run(proto, feeds), ort_run(out, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_subpixel_weight_is_the_convtranspose():
    """B=1: row co*K*K + a*K + b reads W[ci, co, a, b]; B=2: only the columns of its own sub-pixel."""
    w = f32(3, 2, 2, 2)
    m1 = subpixel_weight(w, 1)
    assert m1.shape == (8, 3) and m1[1 * 4 + 1 * 2 + 0, 2] == w[2, 1, 1, 0]
    m2 = subpixel_weight(w, 2)
    assert m2.shape == (2 * 16, 3 * 4) and np.count_nonzero(m2) == w.size * 4
    # output co=1, row (u*2+a)=1*2+1, col (v*2+b)=0*2+1 reads input ci=2 at sub-pixel (u, v) = (1, 0)
    assert m2[1 * 16 + 3 * 4 + 1, 2 * 4 + 1 * 2 + 0] == w[2, 1, 1, 1]


@pytest.mark.parametrize("kw", [dict(), dict(c=24, mid=24, out=1)])
def test_dbnet_head_becomes_two_convs_and_one_depth_to_space(kw):
    proto = head_model(**kw)
    m = tvmlite.load(proto)
    r = Pipeline("subpixel-convtranspose").run(m)[0]
    assert r.stats["chains"] == 1, r.skipped
    assert ops(m) == ["Conv", "Relu", "Conv", "Sigmoid", "DepthToSpace"]
    d2s = next(n for n in m.graph.toposort() if n.op_type == "DepthToSpace")
    assert d2s.attrs["blocksize"] == 4 and d2s.attrs["mode"] == "CRD"
    assert r.decisions[0]["block"] == 4
    c = kw.get("c", 4)
    check_same(proto, m, {"x": f32(2, c, 5, 3)})


def test_three_convtransposes_up_to_max_block():
    proto = head_model(chain=3)
    m = tvmlite.load(proto)
    Pipeline("subpixel-convtranspose").run(m)
    # max_block 4: the third ConvTranspose (block 8) is left after the DepthToSpace, alone
    assert ops(m) == ["Conv", "Relu", "Conv", "Sigmoid", "DepthToSpace", "ConvTranspose", "Mul"]
    check_same(proto, m)
    m = tvmlite.load(proto)
    r = Pipeline("subpixel-convtranspose(max_block=8)").run(m)[0]
    assert ops(m) == ["Conv", "Relu", "Conv", "Sigmoid", "Conv", "DepthToSpace"]  # the Mul folded
    assert r.decisions[0]["block"] == 8
    check_same(proto, m)


def test_a_lone_convtranspose_only_with_min_convtransposes_1():
    proto = make_model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
                        helper.make_node("Sub", ["t", "s"], ["u"]), helper.make_node("LeakyRelu", ["u"], ["y"])],
                       [tensor("x", ["N", 4, "H", "W"])], [tensor("y", ["N", "Co", "Ho", "Wo"])],
                       [("w", f32(4, 3, 2, 2)), ("b", f32(3)), ("s", f32(3, 1, 1))], opset=13)
    m = tvmlite.load(proto)
    r = Pipeline("subpixel-convtranspose").run(m)[0]
    assert not r.changed and "fewer than min_convtransposes=2" in r.skipped[0][1]
    r = Pipeline("subpixel-convtranspose(min_convtransposes=1)").run(m)[0]
    assert r.changed and ops(m) == ["Conv", "LeakyRelu", "DepthToSpace"]
    check_same(proto, m)


@pytest.mark.parametrize("kw,reason", [
    (dict(ct_attrs=dict(pads=[1, 1, 1, 1])), "padding"),
    (dict(ct_attrs=dict(group=2), c=4, mid=4), "group != 1"),
    (dict(ct_attrs=dict(dilations=[2, 2])), "dilated"),
    (dict(ct_attrs=dict(output_padding=[1, 1])), "padding"),
    (dict(w_input=True), "not constant"),
    (dict(opset=10), "opset 10 < 11"),
])
def test_what_is_not_a_subpixel_chain_is_left_alone(kw, reason):
    if kw.get("ct_attrs", {}).get("group") == 2:
        proto = head_model(**kw)
        proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(f32(4, 2, 2, 2), "w1"))
    else:
        proto = head_model(**kw)
    m = tvmlite.load(proto)
    before = ops(m)
    r = Pipeline("subpixel-convtranspose").run(m)[0]
    assert not r.changed and ops(m) == before
    assert any(reason in why for _, why in r.skipped), r.skipped


def test_kernel_other_than_stride_is_left_alone():
    proto = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2])],
                       [tensor("x", [1, 2, 4, 4])], [tensor("y", ["N", "Co", "Ho", "Wo"])], [("w", f32(2, 2, 3, 3))], opset=13)
    m = tvmlite.load(proto)
    r = Pipeline("subpixel-convtranspose(min_convtransposes=1)").run(m)[0]
    assert not r.changed and "differ from the kernel" in r.skipped[0][1]


def test_an_intermediate_read_elsewhere_ends_the_chain():
    proto = head_model(extra_output=True)
    m = tvmlite.load(proto)
    r = Pipeline("subpixel-convtranspose").run(m)[0]
    assert not r.changed  # the chain stops at r1 (a graph output): one ConvTranspose each side
    m = tvmlite.load(proto)
    Pipeline("subpixel-convtranspose(min_convtransposes=1)").run(m)
    assert "ConvTranspose" not in ops(m)
    check_same(proto, m)


@pytest.mark.parametrize("spec", ["subpixel-convtranspose(min_convtransposes=0)",
                                  "subpixel-convtranspose(max_block=1)"])
def test_bad_options_are_refused(spec):
    with pytest.raises(OptionError):
        Pipeline(spec)


def test_pp_ocr_det_head_and_se_residuals_in_onnxruntime():
    """The real DBNet head (and RSE-FPN's 8 SE residuals): one chain of two ConvTransposes with
    their bias Adds, BatchNormalization, Relu and Sigmoid; the probability map as onnxruntime
    computes the original's (a 64x64 page keeps it fast)."""
    from conftest import corpus_model

    path = corpus_model("ch_PP-OCRv4_det_infer.onnx")
    proto = onnx.load(path)
    m = tvmlite.load(proto)
    r_res, r_sub = Pipeline("fold-bn,fuse-residual-scale,subpixel-convtranspose").run(m)[1:]
    assert r_res.stats["fused"] == 8 and r_sub.stats["chains"] == 1, (r_res.skipped, r_sub.skipped)
    assert len(r_sub.decisions[0]["chain"]) == 7 and "ConvTranspose" not in ops(m)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, b = ort_run(proto, {"x": x})[0], ort_run(export_model(m), {"x": x})[0]
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
