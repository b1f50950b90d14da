"""fuse-hardswish: x * clip(x + 3, 0, 6) / 6 written out in element-wise nodes becomes HardSwish
(opset >= 14) or HardSigmoid * x (below), with the same outputs in onnxruntime; forms that are not
hardswish (other constants, broadcasting constants, an intermediate read elsewhere) are left alone
with a reason."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

rng = np.random.default_rng(0)


def ops(m):
    return [n.op_type for n in m.graph.toposort()]


def hardswish_model(form="x*clip/6", opset=12, three=3.0, lo=0.0, hi=6.0, k=None, k_shape=(),
                    extra_reader=False, clip_attrs=False):
    """Conv -> hardswish written out in ``form`` -> y (and, with extra_reader, the Clip's output as a
    second graph output)."""
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    inits = [("w", w), ("three", np.array(three, np.float32))]
    if k is None:
        k = 6.0 if form.endswith("/6") or form.endswith("/6)") else 1 / 6
    inits.append(("k", np.full(k_shape, k, np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "three"], ["a"])]
    if clip_attrs:
        nodes.append(helper.make_node("Clip", ["a"], ["clip"], min=lo, max=hi))
    else:
        inits += [("lo", np.array(lo, np.float32)), ("hi", np.array(hi, np.float32))]
        nodes.append(helper.make_node("Clip", ["a", "lo", "hi"], ["clip"]))
    scale_op = "Div" if "/6" in form else "Mul"
    if form.startswith("x*clip"):
        nodes += [helper.make_node("Mul", ["c", "clip"], ["m"]), helper.make_node(scale_op, ["m", "k"], ["y"])]
    elif form == "6/(x*clip)":
        nodes += [helper.make_node("Mul", ["c", "clip"], ["m"]), helper.make_node("Div", ["k", "m"], ["y"])]
    else:  # x*(clip/6), x*(clip*1/6)
        nodes += [helper.make_node(scale_op, ["clip", "k"], ["s"]), helper.make_node("Mul", ["s", "c"], ["y"])]
    outputs = [tensor("y", ["N", 4, 5, 5])] + ([tensor("clip", ["N", 4, 5, 5])] if extra_reader else [])
    return make_model(nodes, [tensor("x", ["N", 2, 5, 5])], outputs, inits, opset=opset)


def check_same(proto, m):
    out = export_model(m)
    onnx.checker.check_model(out)
    x = (4 * rng.standard_normal((2, 2, 5, 5))).astype(np.float32)  # values on both sides of -3 and 3
    for a, b in zip(ort_run(proto, {"x": x}), ort_run(out, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["x*clip/6", "x*clip*(1/6)", "x*(clip/6)", "x*(clip*1/6)"])
@pytest.mark.parametrize("opset,fused_ops", [(12, ["Conv", "HardSigmoid", "Mul"]), (14, ["Conv", "HardSwish"])])
def test_written_out_hardswish_is_fused(form, opset, fused_ops):
    proto = hardswish_model(form, opset)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-hardswish").run(m)[0]
    assert r.stats["fused"] == 1 and ops(m) == fused_ops
    if opset < 14:
        hs = next(n for n in m.graph.toposort() if n.op_type == "HardSigmoid")
        assert np.isclose(hs.attrs["alpha"], 1 / 6) and hs.attrs["beta"] == 0.5
    check_same(proto, m)


def test_clip_bounds_as_attributes_before_opset_11():
    proto = hardswish_model(opset=10, clip_attrs=True)
    m = tvmlite.load(proto)
    assert Pipeline("fuse-hardswish").run(m)[0].stats["fused"] == 1
    assert ops(m) == ["Conv", "HardSigmoid", "Mul"]
    check_same(proto, m)


@pytest.mark.parametrize("kw,reason", [
    (dict(three=2.0), "not a scalar 3"),
    (dict(hi=5.0), "bounds are not the constants 0 and 6"),
    (dict(lo=-1.0), "bounds are not the constants 0 and 6"),
    (dict(k=5.0), "not divided by 6"),
    (dict(form="x*clip*(1/6)", k=0.2), "not divided by 6"),
    (dict(form="6/(x*clip)"), "6 divided by the product"),
    # a (1, 1, 1, 1, 1) constant would make the 4-D result 5-D: not an element-wise activation
    (dict(k_shape=(1, 1, 1, 1, 1)), "not divided by 6"),
    (dict(extra_reader=True), "other readers"),
])
def test_what_is_not_hardswish_is_left_alone(kw, reason):
    proto = hardswish_model(**kw)
    m = tvmlite.load(proto)
    before = ops(m)
    r = Pipeline("fuse-hardswish").run(m)[0]
    assert r.stats["fused"] == 0 and ops(m) == before
    assert any(reason in why for _, why in r.skipped), r.skipped


def hardsigmoid_mul_model(alpha, opset):
    nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=alpha, beta=0.5),
             helper.make_node("Mul", ["x", "g"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 3])], [tensor("y", ["N", 3])], opset=opset)


def test_hardsigmoid_times_x_becomes_hardswish_from_opset_14():
    proto = hardsigmoid_mul_model(1 / 6, 14)
    m = tvmlite.load(proto)
    assert Pipeline("fuse-hardswish").run(m)[0].stats["fused"] == 1 and ops(m) == ["HardSwish"]
    check_same_2d = export_model(m)
    x = (4 * rng.standard_normal((5, 3))).astype(np.float32)
    np.testing.assert_allclose(ort_run(check_same_2d, {"x": x})[0], ort_run(proto, {"x": x})[0], atol=1e-6)
    # below 14 there is no HardSwish: the pair is what the fusion would write anyway
    m = tvmlite.load(hardsigmoid_mul_model(1 / 6, 13))
    assert Pipeline("fuse-hardswish").run(m)[0].stats["fused"] == 0
    # another slope is not hardswish
    m = tvmlite.load(hardsigmoid_mul_model(0.2, 14))
    r = Pipeline("fuse-hardswish").run(m)[0]
    assert r.stats["fused"] == 0 and "not hardswish's" in r.skipped[0][1]
