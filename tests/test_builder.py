"""The Builder: fresh names over the whole model (subgraphs included), insertion order, constants as
initializers, domains, multi-output ops and named replacements; every result runs in onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import tvmlite
from tvmlite.errors import TvmliteError
from tvmlite.export import export_model
from tvmlite.ir.builder import Builder

from helpers import make_model, ort_run, tensor


def _chain():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Neg", ["a"], ["y"], name="neg")]
    return make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])


def _with_if_body():
    """An If whose branches define values named like what a naive fresh name would pick."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["w_const"], name="w_node")], "then", [],
                               [tensor("w_const", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["w_const_1"], name="w_node_1")], "else", [],
                               [tensor("w_const_1", [2, 3])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="if")]
    return make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])],
                      [("zero", np.array(0, np.float32))])


def test_fresh_names_never_collide_with_subgraph_names():
    m = tvmlite.load(_with_if_body())
    g = m.graph
    assert g.fresh_name("w_const") == "w_const"  # the Graph's own helper cannot see into the bodies
    b = Builder(m, before=g.producer("y"))
    c1, c2 = b.const(np.ones((2, 3), np.float32), "w_const"), b.const(np.zeros(3, np.float32), "w_const")
    v = b.op.Mul("x", c1, name_hint="w_node")
    assert c1.name not in ("w_const", "w_const_1") and c2.name not in ("w_const", "w_const_1", c1.name)
    node_names = [n.name for n in g.nx.nodes] + [n.name for sg in g.producer("y").subgraphs for n in sg.nx.nodes]
    assert len(node_names) == len(set(node_names)) and v.producer.name not in ("w_node", "w_node_1")
    values = list(g.values) + [k for sg in g.producer("y").subgraphs for k in sg.values]
    assert len(values) == len(set(values))
    # many requests for one base stay unique (a counter per base, no rescans)
    names = {b.value_name("t") for _ in range(500)}
    assert len(names) == 500


def test_insertion_point_is_topological_and_in_creation_order():
    m = tvmlite.load(_chain())
    g = m.graph
    neg = g.producer("y")
    b = Builder(m, before=neg)
    one = b.const(np.float32(1.0), "one")
    t1 = b.op.Add("a", one, name_hint="plus")
    t2 = b.op.Mul(t1, t1, name_hint="sq")
    g.set_input(neg, 0, t2.name)
    order = [n.name for n in g.toposort()]
    assert order == ["relu", "plus", "sq", "neg"]
    after = Builder(m, after=g.producer("a")).op.Abs("a", name_hint="abs")
    assert [n.name for n in g.toposort()].index("abs") == 1
    assert one.is_initializer and one.name in g.initializers and one.const.shape == ()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    (y,) = ort_run(export_model(m), {"x": x})
    np.testing.assert_allclose(y, -((np.maximum(x, 0) + 1) ** 2), rtol=1e-6)
    assert after.name == "abs"


def test_multi_output_domains_and_named_replace_keep_graph_output():
    m = tvmlite.load(_chain())
    g = m.graph
    neg = g.producer("y")
    b = Builder(m, before=neg)
    top, idx = b.op.TopK("a", b.const(np.array([2], np.int64), "k"), axis=1, outputs=["top", "top_idx"])
    assert idx.producer is top.producer and top.name == "top" and idx.name == "top_idx"
    ms = b.ms.Gelu("a", name_hint="gelu")  # com.microsoft, opset import added
    assert ms.producer.domain == "com.microsoft" and m.opsets["com.microsoft"] == 1
    lowered = b.op("Im2Col", "a", domain="tvmlite", kernel_shape=[1])
    assert lowered.producer.domain == "tvmlite" and "tvmlite" in m.opsets
    for node in (ms.producer, lowered.producer, top.producer):  # unread: the model must run in onnxruntime
        g.remove_node(node)
    b2 = b.at(before=neg)
    y2 = b2.op.Sub(b2.const(np.float32(0), "zero"), "a", name_hint="negate")
    b2.replace(neg, {"y": y2}, heir=y2)
    assert g.outputs == ["y"] and g.producer("y").op_type == "Sub" and g.producer("y").name == "neg"
    assert "negate" not in [n.name for n in g.nx.nodes]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    (y,) = ort_run(export_model(m), {"x": x})
    np.testing.assert_array_equal(y, -np.maximum(x, 0))


def test_replace_with_existing_value_and_refusals():
    m = tvmlite.load(_chain())
    g = m.graph
    relu = g.producer("a")
    b = Builder(m, before=relu)
    b.replace(g.producer("y"), {"y": "a"})  # a pass-through: readers of y read a, y keeps its name
    assert g.outputs == ["y"] and g.producer("y") is relu
    with pytest.raises(TvmliteError, match="without a producer"):
        b.replace(relu, {})
    with pytest.raises(TvmliteError, match="does not produce"):
        b.replace(relu, {"nope": "x"})
    with pytest.raises(TvmliteError, match="not both"):
        Builder(m, before=relu, after=relu)


def test_builder_in_a_subgraph_reserves_against_the_outer_graph():
    m = tvmlite.load(_with_if_body())
    body = g_then = m.graph.producer("y").attrs["then_branch"]
    inner = Builder(body, before=next(iter(g_then.nx.nodes)))
    v = inner.op.Abs("x", name_hint="s")  # "s" is an outer value: the body must not shadow it
    assert v.name != "s" and v.name in body.values


def test_take_over_keeps_the_new_node_object_and_the_graph_output():
    """replace() hands the old output name to the node the builder made, in place: the same Node
    object (created/heirs lists stay valid), graph output order kept, edges to the old readers."""
    m = tvmlite.load(_chain())
    g = m.graph
    relu = g.producer("a")
    b = Builder(m, before=relu)
    t = b.op.Sigmoid("x", name_hint="sig")
    sig = t.producer
    b.replace(relu, {"a": t}, heir=t)
    assert g.producer("a") is sig and b.created == [sig] and sig.name == "relu"
    assert "sig" not in g.values and g.outputs == ["y"]
    assert [n.op_type for n in g.toposort()] == ["Sigmoid", "Neg"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], -1 / (1 + np.exp(-x)), rtol=1e-6)
    with pytest.raises(TvmliteError, match="already has a source"):
        g.produce_instead(g.producer("y"), "y", "a")  # "a" is produced by sig


def test_produce_instead_renames_outer_references_in_subgraphs():
    """A reader of the retired value inside an If body follows it to the surviving name."""
    then_g = helper.make_graph([helper.make_node("Neg", ["t"], ["b"], name="neg_in_body")], "then", [],
                               [tensor("b", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Abs", ["t"], ["c"], name="abs_in_body")], "else", [],
                               [tensor("c", [2, 3])])
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"),
             helper.make_node("Sigmoid", ["x"], ["o"], name="sig"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="if")]
    m = tvmlite.load(make_model(nodes, [tensor("x", [2, 3]), tensor("cond", [], TensorProto.BOOL)],
                                [tensor("o", [2, 3]), tensor("y", [2, 3])]))
    g = m.graph
    g.remove_node(g.producer("o"), remove_outputs=False)
    relu = g.producer("t")
    g.produce_instead(relu, "t", "o")
    assert g.producer("o") is relu and "t" not in g.values and g.outputs == ["o", "y"]
    body_inputs = [n.inputs for sg in g.producer("y").subgraphs for n in sg.nx.nodes]
    assert sorted(body_inputs) == [("o",), ("o",)]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    o, y = ort_run(export_model(m), {"x": x, "cond": np.array(True)})
    np.testing.assert_allclose(o, np.maximum(x, 0))
    np.testing.assert_allclose(y, -np.maximum(x, 0))
