"""fold-constants hardening: output sizes are checked before a node is evaluated, and a node it cannot
evaluate (bad shapes, string weights cast to float, ...) is skipped with a reason, never a crash."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.constants import FOLD_MAX_ELEMENTS
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor


def constant_of_shape_model(n):
    """A ~140-byte model whose ConstantOfShape would make ``n`` floats."""
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("Add", ["x", "c"], ["y"])]
    return make_model(nodes, [tensor("x", [1])], [tensor("y", [n])], [("s", np.array([n], np.int64))], opset=13)


@pytest.mark.parametrize("n", [500_000_000, 3_000_000_000])
def test_huge_fold_refused_before_evaluating(n, monkeypatch):
    import tvmlite.ops.tensor as tensor_ops  # noqa: F401  (the ConstantOfShape kernel lives there)
    from tvmlite.passes import cleanup

    calls = []
    real = cleanup._resolve

    def spy(node, opsets):
        op = real(node, opsets)
        if op is not None and node.op_type == "ConstantOfShape":
            calls.append(node.label)
        return op

    monkeypatch.setattr(cleanup, "_resolve", spy)
    m = tvmlite.load(constant_of_shape_model(n))
    r = Pipeline("fold-constants").run(m)[0]
    assert not r.changed
    (node, why), = r.skipped
    assert node == "ConstantOfShape->c"
    assert f"{n:,} elements" in why and f"{FOLD_MAX_ELEMENTS:,}" in why
    assert [n.op_type for n in m.graph.toposort()] == ["ConstantOfShape", "Add"]


def test_fold_limits_are_options():
    m = tvmlite.load(constant_of_shape_model(1000))
    r = Pipeline("fold-constants(max_elements=999)").run(m)[0]
    assert not r.changed and "1,000 elements" in r.skipped[0][1]
    m = tvmlite.load(constant_of_shape_model(1000))
    r = Pipeline("fold-constants(max_elements=1000)").run(m)[0]
    assert r.rewritten == ["ConstantOfShape->c"]
    assert m.graph.const_value("c").shape == (1000,)


def test_growth_checked_before_evaluating():
    m = tvmlite.load(constant_of_shape_model(10_000_000))  # 40 MB from 8 bytes
    r = Pipeline("fold-constants").run(m)[0]
    assert not r.changed and "would store 40000000 bytes from 8" in r.skipped[0][1]


def _s(*vals):
    return np.array(vals, dtype=object)


# (name, node, constant inputs): nodes whose evaluation fails or is odd; each must fold or be skipped
HOSTILE = [
    ("cast_str", helper.make_node("Cast", ["w"], ["o"], to=TensorProto.FLOAT), [_s(b"abc", b"1.5")]),
    ("cast_str_ok", helper.make_node("Cast", ["w"], ["o"], to=TensorProto.FLOAT), [_s(b"2.5", b"1.5")]),
    ("reshape_bad", helper.make_node("Reshape", ["a", "s"], ["o"]), [np.ones(6, np.float32), np.array([4, 2])]),
    ("gather_oob", helper.make_node("Gather", ["a", "i"], ["o"]), [np.ones(3, np.float32), np.array([7])]),
    ("concat_mismatch", helper.make_node("Concat", ["a", "b"], ["o"], axis=0),
     [np.ones((2, 2), np.float32), np.ones((2, 3), np.float32)]),
    ("range_zero_delta", helper.make_node("Range", ["a", "b", "c"], ["o"]),
     [np.array(0, np.int64), np.array(5, np.int64), np.array(0, np.int64)]),
    ("tile_rank", helper.make_node("Tile", ["a", "r"], ["o"]), [np.ones((2, 2), np.float32), np.array([2])]),
    ("cos_negative", helper.make_node("ConstantOfShape", ["s"], ["o"]), [np.array([-3, 2])]),
    ("expand_bad", helper.make_node("Expand", ["a", "s"], ["o"]), [np.ones((3,), np.float32), np.array([4])]),
    ("slice_step0", helper.make_node("Slice", ["a", "b", "c", "d", "e"], ["o"]),
     [np.ones(4, np.float32), np.array([0]), np.array([4]), np.array([0]), np.array([0])]),
    ("squeeze_not1", helper.make_node("Squeeze", ["a", "ax"], ["o"]), [np.ones((2, 3), np.float32), np.array([0])]),
    ("transpose_perm", helper.make_node("Transpose", ["a"], ["o"], perm=[0, 0]), [np.ones((2, 3), np.float32)]),
    ("div_int_zero", helper.make_node("Div", ["a", "b"], ["o"]), [np.array([1, 2], np.int64), np.array([0, 1], np.int64)]),
    ("matmul_bad", helper.make_node("MatMul", ["a", "b"], ["o"]), [np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)]),
    ("onehot", helper.make_node("OneHot", ["i", "d", "v"], ["o"]),
     [np.array([0, 2]), np.array(10**12), np.array([0, 1], np.float32)]),
    ("unknown_op", helper.make_node("NoSuchOp", ["a"], ["o"], domain="custom.x"), [np.ones(2, np.float32)]),
]


@pytest.mark.parametrize("name,node,consts", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_fold_never_crashes(name, node, consts):
    inits = [(n, c) for n, c in zip(node.input, consts)]
    # the folded value feeds an Identity so it is not a graph output (those are never folded)
    nodes = [node, helper.make_node("Identity", ["o"], ["y"])]
    opsets = [("", 17)] + ([("custom.x", 1)] if node.domain else [])
    proto = helper.make_model(helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", 0, None)],
                                                [_init(n, c) for n, c in inits]),
                              opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=8)
    m = tvmlite.load(proto, check=False)  # onnx's checker would stop some before the pass
    r = Pipeline("fold-constants").run(m)[0]
    if r.changed:
        assert r.rewritten == [node.op_type + "->o"] and not r.skipped
        assert m.graph.const_value("o") is not None
    else:
        (label, why), = r.skipped
        assert label == node.op_type + "->o" and why
    export_model(m)  # whatever happened, the model still exports


def _init(name, arr):
    if arr.dtype == object:
        return helper.make_tensor(name, TensorProto.STRING, arr.shape, list(arr.reshape(-1)))
    from onnx import numpy_helper
    return numpy_helper.from_array(arr, name)


def test_cast_of_numeric_strings_folds_like_onnxruntime():
    node = helper.make_node("Cast", ["w"], ["o"], to=TensorProto.FLOAT)
    nodes = [node, helper.make_node("Add", ["o", "x"], ["y"])]
    proto = make_model(nodes, [tensor("x", [2])], [tensor("y", [2])], [], opset=17)
    proto.graph.initializer.append(_init("w", _s(b"2.5", b"-1e3")))
    m = tvmlite.load(proto)
    r = Pipeline("fold-constants").run(m)[0]
    x = np.array([1, 2], np.float32)
    want = ort_run(proto, {"x": x})[0]
    got = ort_run(export_model(m), {"x": x})[0]
    assert r.changed
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layouts", [["NCHW", "NCHW"], ["NCHW", "NHWC"]])
def test_tvmlite_op_of_constants_sized_by_its_own_rule(layouts):
    """A QConcat (tvmlite's requantizing Concat, which the TVM backend makes before shape arithmetic
    folds) of constants folds, sized by its registered shape rule (onnx cannot infer a tvmlite
    op: it was left as 'output size unknown' and ran as a host call in the detector's int8 build);
    the folded value is the kernel's, NHWC inputs included."""
    from tvmlite.ops.qconcat import q_concat

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (1, 2, 3, 4)).astype(np.float32)
    b = rng.uniform(-1, 1, (1, 3, 4, 2) if layouts[1] == "NHWC" else (1, 2, 3, 4)).astype(np.float32)
    m = tvmlite.load(make_model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", [1])],
                                [tensor("y", [1])], opset=13))
    g = m.graph
    g.add_initializer("a", a)
    g.add_initializer("b", b)
    attrs = {"axis": 1, "in_scales": [0.01, 0.02], "in_zero_points": [0, 3], "in_signed": [1, 0],
             "in_layouts": layouts, "y_scale": 0.015, "y_zero_point": 2, "y_signed": 0}
    g.add_node("QConcat", ["a", "b"], ["c"], attrs, domain="tvmlite", name="qc")
    g.add_node("Add", ["c", "c"], ["d"], name="add")
    g.outputs.append("d")
    m.opsets.setdefault("tvmlite", 1)
    r = Pipeline("fold-constants").run(m)[0]
    assert r.changed and not any(n.op_type == "QConcat" for n in g.nodes), r.skipped
    want = q_concat(a, b, **attrs)
    assert want.shape == (1, 4, 3, 4)
    np.testing.assert_array_equal(g.const_value("c"), want)
