"""An If whose branches make outputs of different static shapes (backends/tvm/control.py
`sink_into_branches`): what follows it is moved into both branches, so each branch compiles
whole and only the If stays on the host. Cases: readers after the If (one of them a graph output
read again inside), an If output that is itself a graph output, a branch that returns an outer
value unchanged, a branch with a host-run op (the If falls back to the NumPy plan, saying why),
different output shapes with nothing after the If, and a saved artifact. Each matches
onnxruntime for both conditions."""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model, load_module  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402

COMPILED = "If: control flow, body compiled to"
vi = h.make_tensor_value_info


def _model(then_nodes, then_out, else_nodes, else_out, after, outputs, inits=()):
    """x [1, 8] float and k int64 scalar in; If(k == 2) on the given branches (its output 'f')."""
    then = h.make_graph(then_nodes, "then", [], [vi(then_out, T.FLOAT, None)])
    other = h.make_graph(else_nodes, "else", [], [vi(else_out, T.FLOAT, None)])
    nodes = [h.make_node("Equal", ["k", "two"], ["c"]),
             h.make_node("If", ["c"], ["f"], then_branch=then, else_branch=other, name="pick")] + after
    g = h.make_graph(nodes, "if_sink", [vi("x", T.FLOAT, [1, 8]), vi("k", T.INT64, [])],
                     [vi(o, T.FLOAT, [f"{o}0", f"{o}1"]) for o in outputs],
                     [nh.from_array(np.array(2, np.int64), "two")] + list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


_WIDE = [h.make_node("Concat", ["x", "x"], ["w"], axis=1)]  # [1, 16] against the then branch's [1, 8]


def _run_both(proto, cm):
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for k in (2, 5, 2):
        feeds = {"x": x, "k": np.array(k, np.int64)}
        ref = sess.run(None, feeds)
        got = cm.run(feeds)
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and g.dtype == r.dtype
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def _build(proto):
    return compile_model(import_model(proto), {"x": (1, 8), "k": ()})


def test_what_follows_the_if_is_compiled_inside_each_branch(tmp_path):
    after = [h.make_node("Mul", ["f", "half"], ["m"]), h.make_node("Sigmoid", ["m"], ["s"]),
             h.make_node("ReduceSum", ["s"], ["y"], keepdims=1),  # [1, 1] either way
             h.make_node("Neg", ["y"], ["z"])]  # y is a graph output read again
    proto = _model([h.make_node("Relu", ["x"], ["r"])], "r", _WIDE, "w", after, ["y", "z"],
                   [nh.from_array(np.array(0.5, np.float32), "half")])
    cm = _build(proto)
    assert cm.host_ops == [l for l in cm.host_ops if l.startswith(COMPILED)] and len(cm.host_ops) == 1, cm.host_ops
    (seg,) = cm.plan["host"]
    assert [n["op_type"] for n in seg["nodes"]] == ["If"] and seg["outputs"] == ["y", "z"]
    _run_both(proto, cm)
    cm.save(str(tmp_path / "m.so"))
    _run_both(proto, load_module(str(tmp_path / "m.so")))


def test_an_if_output_that_is_a_graph_output_and_a_branch_returning_an_outer_value():
    after = [h.make_node("Sigmoid", ["f"], ["s"])]
    proto = _model([h.make_node("Identity", ["x"], ["same"])], "same", _WIDE, "w", after, ["f", "s"])
    cm = _build(proto)
    assert len(cm.host_ops) == 1 and cm.host_ops[0].startswith(COMPILED), cm.host_ops
    _run_both(proto, cm)


def test_different_shapes_and_nothing_after_the_if():
    proto = _model([h.make_node("Relu", ["x"], ["r"])], "r", _WIDE, "w", [], ["f"])
    cm = _build(proto)
    assert len(cm.host_ops) == 1 and cm.host_ops[0].startswith(COMPILED), cm.host_ops
    _run_both(proto, cm)


def test_a_branch_with_a_host_run_op_leaves_the_if_to_the_numpy_plan():
    after = [h.make_node("Sigmoid", ["f"], ["s"])]
    then = [h.make_node("CumSum", ["x", "axis"], ["cs"])]  # no TVM emitter: the branch is not compiled
    proto = _model(then, "cs", _WIDE, "w", after, ["s"], [nh.from_array(np.array(1, np.int64), "axis")])
    cm = _build(proto)
    line = [x for x in cm.host_ops if x.startswith("If")][0]
    assert line.startswith("If: control flow (body not compiled: CumSum"), cm.host_ops
    _run_both(proto, cm)


def test_a_host_run_op_after_the_if_keeps_it_out_of_the_branches():
    """CumSum has no TVM emitter: moved into the branches it would keep the whole If on the
    host, so nothing moves; the If's branches stay compiled, CumSum and its reader host-run."""
    after = [h.make_node("CumSum", ["f", "axis"], ["cs"]), h.make_node("Sigmoid", ["cs"], ["s"])]
    proto = _model([h.make_node("Relu", ["x"], ["r"])], "r", _WIDE, "w", after, ["s"],
                   [nh.from_array(np.array(1, np.int64), "axis")])
    cm = _build(proto)
    assert any(x.startswith(COMPILED) for x in cm.host_ops), cm.host_ops
    assert any(x.startswith("CumSum") for x in cm.host_ops), cm.host_ops
    _run_both(proto, cm)
