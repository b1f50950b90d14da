"""tvmlite's own ops: a kernel, a shape rule and an ONNX function body, exported so onnxruntime runs them."""
import numpy as np
import onnx

import tvmlite
from tvmlite.backends.numpy import compile_model
from tvmlite.export import export_model
from tvmlite.export.shapes import inferred_types
from tvmlite.ir.graph import type_shape
from tvmlite.ops.registry import tvmlite_op

from helpers import make_model, ort_run, tensor


def _shape(types, *, factor, axis):
    dtype, shape = types[0]
    return [(dtype, shape), (np.dtype(np.int64), (shape[axis],) if shape else None)]


def _body(fb, *, factor, axis):
    c = fb.const(np.float32(factor))
    fb.node("Mul", [fb.inputs[0], c], output=fb.outputs[0])
    shp = fb.node("Shape", [fb.inputs[0]])
    idx = fb.const(np.array([axis], np.int64))
    fb.node("Gather", [shp, idx], {"axis": 0}, output=fb.outputs[1])


@tvmlite_op("TestScaleAndDim", shape=_shape, body=_body)
def scale_and_dim(x, *, factor, axis):
    return x * np.float32(factor), np.array([x.shape[axis]], np.int64)


def test_custom_op_runs_everywhere(tmp_path):
    proto = make_model([onnx.helper.make_node("Relu", ["x"], ["r"])], [tensor("x", ["N", 3])], [tensor("r", ["N", 3])])
    m = tvmlite.load(proto)
    g = m.graph
    a = g.add_node("TestScaleAndDim", ["r"], ["y", "d"], {"factor": 2.5, "axis": 1}, domain="tvmlite", name="s1")
    g.add_node("TestScaleAndDim", ["y"], ["z", "d2"], {"factor": 2.5, "axis": 1}, domain="tvmlite", name="s2")
    g.add_node("TestScaleAndDim", ["z"], ["w", "d3"], {"factor": -1.0, "axis": 0}, domain="tvmlite", name="s3")
    g.outputs[:] = ["w", "d", "d3"]
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    # one function per distinct attribute set: s1 and s2 share theirs
    assert sorted(f.name for f in out.functions) == ["TestScaleAndDim", "TestScaleAndDim"]
    x = np.array([[1, -2, 3], [4, 5, -6]], np.float32)
    want = [np.maximum(x, 0) * 2.5 * 2.5 * -1.0, np.array([3]), np.array([2])]
    for got in (ort_run(out, {"x": x}), compile_model(m).run({"x": x})):
        for w_, g_ in zip(want, got):
            np.testing.assert_allclose(g_, w_)
    types = inferred_types(m)
    assert type_shape(types["z"]) == ("N", 3)
    # a re-import sees the tvmlite ops again, not the functions
    back = tvmlite.load(out)
    assert [n.op_type for n in back.graph.toposort()].count("TestScaleAndDim") == 3
    assert back.functions == []
    path = tmp_path / "m.onnx"
    tvmlite.save(back, path)
    np.testing.assert_allclose(ort_run(str(path), {"x": x})[0], want[0])
