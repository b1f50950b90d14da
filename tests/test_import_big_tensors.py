"""Importing models with big weights: onnx's checker sees them without their data (serializing a
proto for it took 1.3 s of VGG-19's 2.7 s import), each big tensor's raw bytes are read once, and
tvmlite's own checks still refuse a wrong length, a wrong type or a truncated external file."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tvmlite.errors import ModelLoadError
from tvmlite.frontend import load
from tvmlite.ir.value import BIG_ARRAY_BYTES

N = BIG_ARRAY_BYTES // 4 + 256  # float32 elements: one big tensor
X = h.make_tensor_value_info("x", T.FLOAT, [N])
Y = h.make_tensor_value_info("y", T.FLOAT, [N])


def _model(w=None, nodes=None):
    w = w if w is not None else nh.from_array(np.arange(N, dtype=np.float32), "w")
    nodes = nodes or [h.make_node("Add", ["x", "w"], ["y"], name="add")]
    g = h.make_graph(nodes, "g", [X], [Y], initializer=[w] if w is not False else [])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_checker_gets_no_weights_and_the_model_is_unchanged(monkeypatch):
    seen = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: (seen.append(m.ByteSize()), real(m, *a, **k))[1])
    proto = _model()
    before = proto.SerializeToString()
    for source in (proto, before):
        m = load(source)
        w = m.graph.values["w"].const
        np.testing.assert_array_equal(w, np.arange(N, dtype=np.float32))
    assert seen and max(seen) < 4096, seen
    assert proto.SerializeToString() == before  # the caller's proto is not touched


def test_a_big_constant_value_is_left_out_of_the_check_too(monkeypatch):
    seen = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: (seen.append(m.ByteSize()), real(m, *a, **k))[1])
    c = nh.from_array(np.ones(N, np.float32), "c")
    m = load(_model(False, [h.make_node("Constant", [], ["c"], name="k", value=c),
                            h.make_node("Add", ["x", "c"], ["y"], name="add")]))
    assert seen and max(seen) < 4096
    assert m.graph.producer("c").attrs["value"].sum() == N


@pytest.mark.parametrize("delta", [-4, -1, 8])
def test_big_raw_data_of_the_wrong_length_is_refused(delta, tmp_path):
    w = nh.from_array(np.ones(N, np.float32), "w")
    w.raw_data = w.raw_data[:delta] if delta < 0 else w.raw_data + b"\0" * delta
    path = tmp_path / "m.onnx"
    onnx.save_model(_model(w), path)
    for source in (_model(w), str(path)):
        with pytest.raises(ModelLoadError, match=f"initializer 'w': raw_data has {N * 4 + delta:,} bytes"):
            load(source)
    c = nh.from_array(np.ones(N, np.float32), "c")
    c.raw_data = c.raw_data[:-4]
    with pytest.raises(ModelLoadError, match="attribute 'value': raw_data has"):
        load(_model(False, [h.make_node("Constant", [], ["c"], name="k", value=c),
                            h.make_node("Add", ["x", "c"], ["y"], name="add")]))


def test_big_tensor_of_a_wrong_type_is_refused():
    w = nh.from_array(np.ones(N, np.float32), "w")
    w.data_type = T.DOUBLE  # the bytes of N floats are half of what N doubles need
    with pytest.raises(ModelLoadError, match="raw_data has .* DOUBLE need"):
        load(_model(w))
    w.data_type = 999
    with pytest.raises(ModelLoadError, match="data type 999"):
        load(_model(w))
    w.data_type = T.STRING
    with pytest.raises(ModelLoadError):
        load(_model(w))


def test_the_checker_still_sees_the_graph_of_a_big_model():
    bad = _model(nodes=[h.make_node("Add", ["x", "nowhere"], ["y"], name="add")])
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load(bad)
    bad = _model(nodes=[h.make_node("Add", ["x", "w"], ["y"], name="add", bogus=1)])
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load(bad)


def test_truncated_big_external_file_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    data = tmp_path / "w.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="m.onnx"):
        load(str(path))
