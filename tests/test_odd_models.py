"""optimize on odd models: opsets 9 to the newest, ops no pass knows, control flow, symbolic dims."""
import numpy as np
import onnx
import onnx.version_converter
import pytest
from onnx import TensorProto, helper

import tvmlite
from tvmlite.export import export_model
from tvmlite.optimize import optimize

from helpers import conv_bn_relu_model, make_model, ort_run, tensor
from models_under_test import LIGHT_DIR


def _opset_model(version):
    if version == 9:
        return onnx.load(LIGHT_DIR / "light_squeezenet.onnx")  # a real opset-9 model
    proto = conv_bn_relu_model()
    if version != 17:
        proto = onnx.version_converter.convert_version(proto, version)
        proto.ir_version = 10
    return proto


@pytest.mark.parametrize("version", [9, 17, 19, 21, 23, onnx.defs.onnx_opset_version()])
def test_clean_preset_across_opsets(version):
    proto = _opset_model(version)
    if version > 23:
        # onnxruntime 1.31 may not implement the newest opset yet: then tvmlite must still
        # round-trip the model (checked by onnx.checker) and run it on the NumPy backend
        try:
            ort_run(proto, {})
        except Exception as e:  # noqa: BLE001
            if "opset" not in str(e).lower() and "version" not in str(e).lower() and "Required inputs" not in str(e):
                raise
    m, report = optimize(proto, preset="clean", check=version <= 23, repeats=1)
    out = export_model(m)
    onnx.checker.check_model(out)
    assert {(o.domain, o.version) for o in out.opset_import} >= {("", version)} or version == 9
    if version <= 23:
        assert report.rows[-1].max_error < 1e-4


def test_unknown_ops_pass_through_unchanged():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Frobnicate", ["c"], ["f"], domain="com.acme", level=3, mode="fast"),
             helper.make_node("Identity", ["f"], ["y"])]
    proto = make_model(nodes, [tensor("x", [1, 2, 4, 4])], [tensor("y", [1, 2, 4, 4])],
                       [("w", np.ones((2, 2, 1, 1), np.float32))])
    proto.opset_import.append(helper.make_opsetid("com.acme", 1))
    m, report = optimize(proto, preset="clean", check=False)
    out = export_model(m)
    frob = [n for n in out.graph.node if n.op_type == "Frobnicate"]
    assert len(frob) == 1 and frob[0].domain == "com.acme"
    assert {a.name: helper.get_attribute_value(a) for a in frob[0].attribute} == {"level": 3, "mode": b"fast"}
    assert ("com.acme", 1) in {(o.domain, o.version) for o in out.opset_import}


def test_control_flow_bodies_are_left_alone():
    then_g = helper.make_graph([helper.make_node("Identity", ["a"], ["t"]),
                                helper.make_node("Neg", ["a"], ["unused_inside"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    proto = make_model(nodes, [tensor("x", [2]), tensor("c", [], TensorProto.BOOL)], [tensor("y", [2])])
    m, report = optimize(proto, preset="clean", inputs={"x": np.array([1, -2], np.float32), "c": np.array(True)},
                         repeats=1)
    out = export_model(m)
    body = [a.g for a in out.graph.node[-1].attribute if a.name == "then_branch"][0]
    assert [n.op_type for n in body.node] == ["Identity", "Neg"]  # bodies untouched
    for c in (True, False):
        feeds = {"x": np.array([1, -2], np.float32), "c": np.array(c)}
        np.testing.assert_array_equal(ort_run(out, feeds)[0], ort_run(proto, feeds)[0])


def test_symbolic_dims_survive_optimize():
    m, _ = optimize(conv_bn_relu_model(), preset="clean", shapes={"x": (3, 3, 4, 4)}, repeats=1)
    out = export_model(m)
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
