"""Declared element types against the op schemas (tvmlite/ops/typecheck.py): a model whose declared
input types break what its nodes take is refused when a backend compiles it, as onnxruntime refuses
it at load; valid models, unknown types and ops outside the ONNX domain are left alone."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from helpers import cli_main, make_model, tensor
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import ShapeError, TvmliteError
from tvmlite.frontend import load
from tvmlite.ops.typecheck import check_declared_types


def if_double_model():
    """test_fuzz_semantic's If seed with x declared double (a fuzz mutant): the then-branch's Mul
    binds T to double (Relu of x) and to float (the constant k). NumPy promoted to double, the TVM
    build made float32 buffers and refused at run time; onnxruntime refuses the file."""
    then_b = helper.make_graph([helper.make_node("Relu", ["x"], ["t0"]), helper.make_node("Mul", ["t0", "k"], ["t1"])],
                               "then", [], [tensor("t1", [2, 3])])
    else_b = helper.make_graph([helper.make_node("Neg", ["x"], ["e1"])], "else", [], [tensor("e1", [2, 3])])
    nodes = [helper.make_node("If", ["c"], ["y0"], name="if", then_branch=then_b, else_branch=else_b),
             helper.make_node("Softmax", ["y0"], ["y"], name="softmax", axis=1)]
    return make_model(nodes, [tensor("c", [], TensorProto.BOOL), tensor("x", [2, 3], TensorProto.DOUBLE)],
                      [tensor("y", [2, 3])], [("k", np.full((1, 3), 2.0, np.float32))])


def int8_mul_model():
    nodes = [helper.make_node("Mul", ["x", "s"], ["y"], name="scale")]
    return make_model(nodes, [tensor("x", [1, 4], TensorProto.INT8)], [tensor("y", [1, 4])],
                      [("s", np.ones((1, 4), np.float32))])


@pytest.mark.parametrize("build, words", [
    (if_double_model, ["from input 'x', declared double", "node 'if' (If), then_branch", "(Mul)", "'k' is float"]),
    (int8_mul_model, ["input 'x' is declared int8", "node 'scale' (Mul) takes one type", "'s' is float"]),
])
def test_declared_type_conflict_is_refused_by_the_numpy_backend_as_by_onnxruntime(build, words):
    proto = build()
    with pytest.raises(Exception):  # onnxruntime refuses the same file at load
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(ShapeError) as e:
        compile_model(load(proto))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_cli_run_refuses_it_with_one_line(tmp_path):
    import onnx

    onnx.save(int8_mul_model(), str(tmp_path / "m.onnx"))
    rc, out, err = cli_main("run", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.npz"))
    assert rc == 2 and err.startswith("tvmlite: error: input 'x' is declared int8") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.npz").exists()


def _valid_models():
    """Models whose types fit: ints where the schema takes them, bool conditions, Cast chains,
    a Loop counter, an op outside the ONNX domain, an input of unknown type."""
    where = make_model([helper.make_node("Where", ["c", "a", "b"], ["y"])],
                       [tensor("c", [2], TensorProto.BOOL), tensor("a", [2]), tensor("b", [2])], [tensor("y", [2])])
    cast = make_model([helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["f", "k"], ["y"])],
                      [tensor("i", [2], TensorProto.INT64)], [tensor("y", [2])], [("k", np.ones(2, np.float32))])
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT), helper.make_node("Add", ["s", "fi"], ["s1"]),
         helper.make_node("Less", ["i", "lim"], ["co"])], "body",
        [tensor("i", [], TensorProto.INT64), tensor("ci", [], TensorProto.BOOL), tensor("s", [2])],
        [tensor("co", [], TensorProto.BOOL), tensor("s1", [2])])
    loop = make_model([helper.make_node("Loop", ["n", "c0", "s0"], ["y"], body=body)], [tensor("s0", [2])],
                      [tensor("y", [2])], [("n", np.array(3, np.int64)), ("c0", np.array(True)),
                                           ("lim", np.array(2, np.int64))])
    custom = make_model([helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
                         helper.make_node("Add", ["g", "k"], ["y"])],
                        [tensor("x", [2], TensorProto.DOUBLE)], [tensor("y", [2])], [("k", np.ones(2, np.float32))])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    untyped = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2], TensorProto.UNDEFINED)],
                         [tensor("y", [2])])
    return {"where": where, "cast": cast, "loop": loop, "custom": custom, "untyped": untyped}


@pytest.mark.parametrize("name", sorted(_valid_models()))
def test_types_that_fit_or_are_unknown_are_not_refused(name):
    proto = _valid_models()[name]
    try:
        m = load(proto)
    except Exception:  # an input of UNDEFINED type is refused at import: nothing to check here
        assert name == "untyped"
        return
    check_declared_types(m.graph, m.opsets)


@pytest.mark.parametrize("to", [-1, 0, 999])
def test_a_cast_to_no_type_is_left_to_the_kernel(to):
    """Found by fuzzing (test_fuzz_builds fast, seed 43): a Cast whose 'to' was mutated to -1 made
    the check raise ValueError ('Enum DataType has no name defined for value -1'), an internal
    error; the type is now unknown past it and the NumPy backend refuses the node with one line."""
    proto = make_model([helper.make_node("Cast", ["x"], ["c"], to=to), helper.make_node("Relu", ["c"], ["y"])],
                       [tensor("x", [2])], [tensor("y", [2])])
    m = load(proto)
    check_declared_types(m.graph, m.opsets)
    with pytest.raises(TvmliteError):
        compile_model(m).run({"x": np.ones(2, np.float32)})
