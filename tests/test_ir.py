"""The Graph mutation API keeps producers, consumers, edges and output names consistent."""
import numpy as np
import pytest

import tvmlite
from tvmlite.errors import TvmliteError
from tvmlite.export import export_model
from tvmlite.ir import Graph, tensor_type

from helpers import conv_bn_relu_model, ort_run


def small_graph():
    g = Graph()
    g.add_input("x", tensor_type(np.float32, ["N", 4]))
    a = g.add_node("Relu", ["x"], ["a"], name="relu")
    b = g.add_node("Neg", ["a"], ["b"], name="neg")
    g.add_node("Add", ["a", "b"], ["y"], name="add")
    g.outputs.append("y")
    return g, a, b


def test_toposort_and_consumers():
    g, a, b = small_graph()
    assert [n.name for n in g.toposort()] == ["relu", "neg", "add"]
    assert {n.name for n in g.consumers("a")} == {"neg", "add"}
    assert g.producer("b") is b
    assert g.nx.has_edge(a, b)


def test_remove_node_refuses_when_used():
    g, a, b = small_graph()
    with pytest.raises(TvmliteError, match="still used"):
        g.remove_node(a)


def test_replace_all_uses_keeps_output_name():
    g, a, b = small_graph()
    add = g.producer("y")
    g.replace_all_uses("y", "b")  # y is a graph output: b takes over its name
    assert g.outputs == ["y"]
    assert g.producer("y") is b
    g.remove_node(add)
    g.check()
    assert [n.name for n in g.toposort()] == ["relu", "neg"]


def test_replace_all_uses_with_input_inserts_identity():
    g, a, b = small_graph()
    g.replace_all_uses("y", "x")
    assert g.outputs == ["y"]
    assert g.producer("y").op_type == "Identity"


def test_replace_node_with_subgraph():
    g, a, b = small_graph()
    created = g.replace_node_with(b, [("Mul", ["a", "a"], ["sq"], {}), ("Neg", ["sq"], ["nsq"], {})],
                                  outputs=["nsq"])
    assert [n.op_type for n in created] == ["Mul", "Neg"]
    assert g.producer("b").op_type == "Neg"  # the old output name is kept
    assert [n.op_type for n in g.toposort()] == ["Relu", "Mul", "Neg", "Add"]
    g.check()


def test_rename_value_updates_everything():
    g, a, b = small_graph()
    g.rename_value("a", "act")
    assert a.outputs == ("act",)
    assert all("a" not in n.inputs for n in g.nx.nodes)
    g.check()


def test_duplicate_producer_rejected():
    g, a, b = small_graph()
    with pytest.raises(TvmliteError, match="produced by both"):
        g.add_node("Neg", ["x"], ["a"])


def test_cycle_detected():
    g = Graph()
    g.add_input("x", tensor_type(np.float32, [1]))
    g.add_node("Add", ["x", "c"], ["b"])
    g.add_node("Neg", ["b"], ["c"])
    with pytest.raises(TvmliteError, match="cycle"):
        g.toposort()


def test_subgraph_outer_references_are_implicit_inputs():
    from onnx import TensorProto, helper

    then_g = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    from helpers import make_model, tensor

    proto = make_model(nodes, [tensor("x", [2]), tensor("c", [], TensorProto.BOOL)], [tensor("y", [2])])
    m = tvmlite.load(proto)
    iff = m.graph.producer("y")
    assert iff.implicit_inputs == ("a",)
    # the Relu feeding only the subgraphs is not dead
    from tvmlite.passes import Pipeline

    Pipeline("dce").run(m)
    assert len(m.graph) == 2
    m.graph.rename_value("a", "act")
    assert iff.attrs["then_branch"].outer_references() == ["act"]
    x = np.array([1.0, -2.0], np.float32)
    for c in (True, False):
        got = ort_run(export_model(m), {"x": x, "c": np.array(c)})[0]
        want = np.maximum(x, 0) * (1 if c else -1)
        np.testing.assert_array_equal(got, want)


def test_lazy_initializer_and_export_reuses_proto():
    proto = conv_bn_relu_model()
    m = tvmlite.load(proto)
    v = m.graph.values["w"]
    assert v._const is None  # not decoded until used
    out = export_model(m)
    assert out.graph.initializer[0] is not None
    assert out.graph.initializer[0] == proto.graph.initializer[0]
