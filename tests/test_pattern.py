"""Pattern -> check -> rewrite: matching (commute, repeated captures, constants, `...`), refusals that
reach the skip list, and a rule of a few lines checked end to end in onnxruntime."""
import numpy as np
from onnx import helper

import tvmlite
from tvmlite.export import export_model
from tvmlite.passes import PassResult
from tvmlite.passes.pattern import Const, Op, Rule, apply_rules, match

from helpers import make_model, ort_run, tensor

# the README's example: x / c -> x * (1 / c) for a constant float c without zeros
DIV_BY_CONST = Rule(
    "div-to-mul",
    Op("Div", "x", Const("d")),
    check=lambda g, m: None if m.const("d").dtype.kind == "f" and np.all(m.const("d") != 0)
    else "divisor is not a float constant without zeros",
    rewrite=lambda b, m: {m.root.outputs[0]: b.op.Mul(m["x"], b.const(1 / m.const("d"), "reciprocal"))},
)


def _div_model(d):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Div", ["r", "d"], ["q"], name="div"),
             helper.make_node("Div", ["q", "x"], ["y"], name="div_by_x")]
    return make_model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 4])], [("d", d)])


def test_rule_in_a_few_lines_runs_in_onnxruntime():
    proto = _div_model(np.array([2.0, 4.0, 0.5, 8.0], np.float32))
    m = tvmlite.load(proto)
    result = PassResult("div-to-mul")
    assert apply_rules(m, [DIV_BY_CONST], result) == 1
    assert result.rewritten == ["div"] and result.skipped == []  # Div by x: no match, no skip
    ops = [n.op_type for n in m.graph.toposort()]
    assert ops == ["Relu", "Mul", "Div"] and m.graph.producer("q").op_type == "Mul"
    assert "d" not in m.graph.values  # the divisor only the rewritten node read is gone
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-6)


def test_refused_match_reason_reaches_skip_list():
    m = tvmlite.load(_div_model(np.array([2.0, 0.0, 1.0, 1.0], np.float32)))
    result = PassResult("div-to-mul")
    assert apply_rules(m, [DIV_BY_CONST], result) == 0
    assert result.skipped == [("div", "divisor is not a float constant without zeros")]
    assert not result.changed and m.graph.producer("q").op_type == "Div"


def _mm_add_model(extra_reader=False):
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["c", "mm"], ["y"], name="add")]
    outs = [tensor("y", [3, 5])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["mm"], ["z"], name="neg"))
        outs.append(tensor("z", [3, 5]))
    return make_model(nodes, [tensor("x", [3, 4])], outs,
                      [("w", rng.standard_normal((4, 5)).astype(np.float32)),
                       ("c", rng.standard_normal(5).astype(np.float32))])


def test_matching_commute_captures_and_shared_intermediates():
    m = tvmlite.load(_mm_add_model())
    g = m.graph
    add = g.producer("y")
    assert match(g, Op("Add", Op("MatMul", "a", "b"), "c"), add) is None  # operands the other way
    found = match(g, Op("Add", Op("MatMul", "a", Const("b"), name="mm"), "c", commute=True), add)
    assert found["a"] == "x" and found["c"] == "c" and found.node("mm").name == "mm"
    assert found.const("b").shape == (4, 5)
    assert match(g, Op("Add", Op("MatMul", "a", "a"), "c", commute=True), add) is None  # a twice: x != w
    assert match(g, Op("MatMul", "a"), g.producer("mm")) is None  # two inputs, pattern has one
    assert match(g, Op("MatMul", "a", ...), g.producer("mm")) is not None
    from tvmlite.passes.fusions import MatMulAddToGemm

    shared = tvmlite.load(_mm_add_model(extra_reader=True))
    r = MatMulAddToGemm().run(shared)
    assert r.skipped == [("add", "the output of 'mm' has other readers")] and not r.changed


def test_matmul_add_to_gemm_keeps_the_layer_name_and_outputs():
    from tvmlite.passes.fusions import MatMulAddToGemm

    proto = _mm_add_model()
    m = tvmlite.load(proto)
    r = MatMulAddToGemm().run(m)
    assert r.rewritten == ["add"] and r.stats["fused"] == 1
    (gemm,) = m.graph.toposort()
    assert gemm.op_type == "Gemm" and gemm.name == "mm" and gemm.outputs == ("y",)
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_readme_rule_runs_as_written():
    """The README's rule block, executed on a model: it rewrites, and refuses a divisor with zeros."""
    import re

    from conftest import ROOT

    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "apply_rules(m," in b)
    for d, rewritten in ((np.array([2.0, 4.0, 0.5, 8.0], np.float32), ["div"]),
                         (np.array([2.0, 0.0, 1.0, 1.0], np.float32), [])):
        proto = _div_model(d)
        scope = {"m": tvmlite.load(proto)}
        exec(block, scope)
        assert scope["result"].rewritten == rewritten
        assert scope["result"].skipped == ([] if rewritten else [("div", "divisor has zeros")])
        x = np.random.default_rng(4).uniform(0.5, 2.0, (2, 4)).astype(np.float32)
        with np.errstate(divide="ignore"):
            want = ort_run(proto, {"x": x})[0]
        np.testing.assert_allclose(ort_run(export_model(scope["m"]), {"x": x})[0], want, rtol=1e-6)
