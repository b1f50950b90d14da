"""fuse-residual-scale: x + x * s (s broadcast, smaller than x: a squeeze-and-excitation residual)
becomes x * (s + 1), the same outputs in onnxruntime to float rounding; s as large as x, s that
broadcasts x to a larger shape, unknown shapes, and a product read elsewhere are left alone."""
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


def se_model(s_shape=("N", 4, 1, 1), x_shape=("N", 4, "H", "W"), order="x+x*s", extra_reader=False,
             const_s=False):
    """x -> [GlobalAveragePool -> Sigmoid = s] -> x + x * s (operands in ``order``)."""
    nodes, inits = [], []
    if const_s:
        inits.append(("s", rng.standard_normal([d if isinstance(d, int) else 1 for d in s_shape]).astype(np.float32)))
    elif tuple(s_shape[2:]) == (1, 1):
        nodes += [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Sigmoid", ["p"], ["s"])]
    else:
        nodes.append(helper.make_node("Sigmoid", ["x"], ["s"]))
    mul = ["x", "s"] if order in ("x+x*s", "x*s+x") else ["s", "x"]
    nodes.append(helper.make_node("Mul", mul, ["m"]))
    nodes.append(helper.make_node("Add", ["x", "m"] if order.startswith("x+") else ["m", "x"], ["y"]))
    outputs = [tensor("y", list(x_shape))] + ([tensor("m", list(x_shape))] if extra_reader else [])
    return make_model(nodes, [tensor("x", list(x_shape))], outputs, inits, opset=13)


def check_same(proto, m, shape=(2, 4, 5, 6)):
    out = export_model(m)
    onnx.checker.check_model(out)
    x = rng.standard_normal(shape).astype(np.float32)
    for a, b in zip(ort_run(proto, {"x": x}), ort_run(out, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("order", ["x+x*s", "x+s*x", "x*s+x", "s*x+x"])
def test_se_residual_becomes_one_mul(order):
    proto = se_model(order=order)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-residual-scale").run(m)[0]
    assert r.stats["fused"] == 1, r.skipped
    assert ops(m) == ["GlobalAveragePool", "Sigmoid", "Add", "Mul"]
    add = next(n for n in m.graph.toposort() if n.op_type == "Add")
    assert add.inputs[0] == "s"  # the Add runs on s, not on x
    check_same(proto, m)


def test_constant_scale_folds_into_the_mul():
    proto = se_model(s_shape=(1, 4, 1, 1), const_s=True)
    m = tvmlite.load(proto)
    assert Pipeline("fuse-residual-scale").run(m)[0].stats["fused"] == 1
    assert ops(m) == ["Mul"]
    check_same(proto, m)


@pytest.mark.parametrize("kw,reason", [
    (dict(s_shape=("N", 4, "H", "W")), "as large as x"),
    (dict(s_shape=("N", 4, 1, 1), x_shape=("N", 4, 1, 1)), "as large as x"),
    (dict(s_shape=(1, 4, 3, 1), x_shape=(1, 4, 1, 6), const_s=True), "does not broadcast"),
    (dict(extra_reader=True), "other readers"),
])
def test_what_saves_nothing_or_changes_shapes_is_left_alone(kw, reason):
    proto = se_model(**kw)
    m = tvmlite.load(proto)
    before = ops(m)
    r = Pipeline("fuse-residual-scale").run(m)[0]
    assert r.stats["fused"] == 0 and ops(m) == before
    assert any(reason in why for _, why in r.skipped), r.skipped


def test_x_plus_x_squared_is_not_a_residual_scale():
    proto = make_model([helper.make_node("Mul", ["x", "x"], ["m"]), helper.make_node("Add", ["x", "m"], ["y"])],
                       [tensor("x", [2, 3])], [tensor("y", [2, 3])], opset=13)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-residual-scale").run(m)[0]
    assert r.stats["fused"] == 0 and ops(m) == ["Mul", "Add"]


def test_symbolic_dims_broadcast_only_when_they_are_the_same_symbol_or_one():
    from tvmlite.passes.residual_scale import broadcast_smaller

    assert broadcast_smaller(("N", 4, "H", "W"), ("N", 4, 1, 1)) is None
    assert broadcast_smaller(("N", 4, "H", "W"), (4, 1, 1)) is None
    assert "does not broadcast" in broadcast_smaller(("N", 4, "H", 6), (1, 4, "K", 1))
    assert "more dims" in broadcast_smaller((4, 5), (1, 4, 5))
    assert "as large as x" in broadcast_smaller((1, 4, 1, 1), (4, 1, 1))
