"""Import -> export is lossless: bit-identical onnxruntime outputs and a full onnx.checker pass."""
import numpy as np
import onnx
import pytest

import tvmlite
from tvmlite.export import export_model

from conftest import corpus_model
from helpers import conv_bn_relu_model, make_model, ort_run, tensor
from models_under_test import CORPUS_MODELS, LIGHT, LIGHT_DIR, light_input


def _check_roundtrip(proto_in, feeds, full_check=True):
    out = export_model(tvmlite.load(proto_in))
    onnx.checker.check_model(out, full_check=full_check)
    a = ort_run(proto_in, feeds)
    b = ort_run(out, feeds)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True)
    return out


@pytest.mark.parametrize("name", LIGHT)
def test_light_roundtrip(name):
    proto = onnx.load(LIGHT_DIR / name)
    out = _check_roundtrip(proto, light_input(proto))
    assert out.ir_version == proto.ir_version


@pytest.mark.parametrize("name", sorted(CORPUS_MODELS))
def test_corpus_roundtrip(name):
    path = corpus_model(name)
    proto = onnx.load(path)
    feeds = {"x": np.random.default_rng(0).random(CORPUS_MODELS[name]["x"], dtype=np.float32)}
    out = _check_roundtrip(proto, feeds)
    assert [n.name for n in out.graph.node] == [n.name for n in proto.graph.node]
    assert out.metadata_props == proto.metadata_props


def test_everything_else_survives(tmp_path):
    """Metadata, doc strings, value_info, several opset domains, functions and sparse initializers."""
    from onnx import TensorProto, helper

    proto = conv_bn_relu_model()
    proto.doc_string = "model doc"
    proto.producer_name = "tests"
    proto.model_version = 7
    helper.set_model_props(proto, {"author": "tvmlite", "note": "ünïcode"})
    proto.graph.doc_string = "graph doc"
    proto.graph.node[0].doc_string = "conv doc"
    proto.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 8, 4, 4]))
    fn = helper.make_function("custom.fn", "Twice", ["a"], ["b"],
                              [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    proto.functions.append(fn)
    proto.opset_import.append(helper.make_opsetid("custom.fn", 1))
    proto.graph.node.append(helper.make_node("Twice", ["y"], ["y2"], domain="custom.fn", name="twice"))
    proto.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 5]))
    sp = helper.make_sparse_tensor(onnx.numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "sp"),
                                   onnx.numpy_helper.from_array(np.array([1, 6], np.int64), "sp_idx"), [2, 4])
    proto.graph.sparse_initializer.append(sp)
    proto.graph.node.append(helper.make_node("ReduceSum", ["sp"], ["s"], keepdims=0, name="rs"))
    proto.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    onnx.checker.check_model(proto)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    # onnx's shape inference does not type sparse initializers (onnxruntime densifies them)
    out = _check_roundtrip(proto, feeds, full_check=False)
    assert out.doc_string == "model doc" and out.producer_name == "tests" and out.model_version == 7
    assert {p.key: p.value for p in out.metadata_props} == {"author": "tvmlite", "note": "ünïcode"}
    assert out.graph.doc_string == "graph doc" and out.graph.node[0].doc_string == "conv doc"
    assert [v.name for v in out.graph.value_info][:1] == ["c"]
    assert out.functions == proto.functions
    assert {(o.domain, o.version) for o in out.opset_import} == {(o.domain, o.version) for o in proto.opset_import}
    assert len(out.graph.sparse_initializer) == 1
    assert [t.name for t in out.graph.initializer] == [t.name for t in proto.graph.initializer]


def test_external_data_roundtrip(tmp_path):
    proto = conv_bn_relu_model()
    src = tmp_path / "ext.onnx"
    onnx.save_model(onnx.ModelProto.FromString(proto.SerializeToString()), src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    m = tvmlite.load(src)
    assert m.external_data
    dst = tmp_path / "out.onnx"
    tvmlite.save(m, dst)
    written = onnx.load(dst, load_external_data=False)
    assert any(onnx.external_data_helper.uses_external_data(t) for t in written.graph.initializer)
    assert (tmp_path / "out.onnx.data").exists()
    feeds = {"x": np.ones((1, 3, 4, 4), np.float32)}
    np.testing.assert_array_equal(ort_run(proto, feeds)[0], ort_run(dst, feeds)[0])


def test_loop_and_scan_bodies_survive():
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)]
    proto = make_model(nodes, [tensor("x", [2]), tensor("n", [], TensorProto.INT64), tensor("step", [2])],
                       [tensor("y", [2])])
    feeds = {"x": np.zeros(2, np.float32), "n": np.array(3), "step": np.array([1, 2], np.float32)}
    _check_roundtrip(proto, feeds)
    from tvmlite.backends.numpy import run_model

    np.testing.assert_array_equal(run_model(proto, feeds)["y"], [3, 6])
