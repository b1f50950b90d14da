"""Static shapes after a host-run Loop (backends/tvm/loop_shapes.py): a Loop with a fixed step
count whose state keeps its shape gives its readers static shapes, so they build as kernels; a
computed condition or a growing state leaves them on the host. Each case matches onnxruntime."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402

def _loop_model(trips, body_nodes, cond_out_node):
    """y = Relu(final state), Neg(per-step outputs) after a Loop over a [1, 4] state, its condition
    input a constant true; the body's condition output comes from ``cond_out_node``."""
    vi = h.make_tensor_value_info
    body = h.make_graph(body_nodes + [cond_out_node], "body",
                        [vi("i", T.INT64, []), vi("cond", T.BOOL, []), vi("s_in", T.FLOAT, None)],
                        [vi("cond_out", T.BOOL, []), vi("s_out", T.FLOAT, None), vi("scan", T.FLOAT, None)],
                        [nh.from_array(np.array(0.5, np.float32), "half"), nh.from_array(np.array(3, np.int64), "three")])
    nodes = [h.make_node("Loop", ["trips", "yes", "x"], ["s", "ys"], body=body),
             h.make_node("Relu", ["s"], ["y"]), h.make_node("Neg", ["ys"], ["ny"])]
    outs = [vi("y", T.FLOAT, ["a", "b"]), vi("ny", T.FLOAT, ["c", "d", "e"])]
    g = h.make_graph(nodes, "loop", [vi("x", T.FLOAT, [1, 4])], outs,
                     [nh.from_array(np.array(trips, np.int64), "trips"), nh.from_array(np.array(True), "yes")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


_STEP = [h.make_node("Mul", ["s_in", "half"], ["s_out"]), h.make_node("Identity", ["s_out"], ["scan"])]
_GROW = [h.make_node("Concat", ["s_in", "s_in"], ["s_out"], axis=1), h.make_node("ReduceMax", ["s_in"], ["scan"], keepdims=0)]


@pytest.mark.parametrize("case, host", [
    # the body keeps its shapes in the first two: it is compiled (tests/test_tvm_control.py)
    ("fixed", ["Loop: control flow, body compiled to 1 TVM kernel"]),
    # the condition is computed: the step count depends on values, so the shapes are not static
    ("computed condition", ["Loop: control flow, body compiled to 2 TVM kernels",
                            "Relu: an input shape is not static", "Neg: an input shape is not static"]),
    # the state changes shape from step to step: only its first step's shape is known
    ("growing state", ["Loop: control flow (body not compiled: loop-carried 'x' changes shape from step to step)",
                       "Relu: an input shape is not static", "Neg: an input shape is not static"]),
])
def test_a_loops_outputs_are_static_only_when_no_value_decides_them(case, host):
    if case == "fixed":
        proto = _loop_model(3, _STEP, h.make_node("Identity", ["cond"], ["cond_out"]))
    elif case == "computed condition":
        proto = _loop_model(5, _STEP, h.make_node("Less", ["i", "three"], ["cond_out"]))
    else:
        proto = _loop_model(2, _GROW, h.make_node("Identity", ["cond"], ["cond_out"]))
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    cm = compile_model(import_model(proto), {"x": (1, 4)})
    assert cm.host_ops == host
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, r in zip(cm.run({"x": x}), ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-7)


def _shape_arith(src, x_out, y_out):
    """ConstantOfShape(Shape(src)) + Range(0, Shape(src)[1]) + src, all shapes fixed by src's."""
    return [h.make_node("Shape", [src], [f"{src}_s"]),
            h.make_node("ConstantOfShape", [f"{src}_s"], [f"{src}_z"], value=nh.from_array(np.array([2.0], np.float32))),
            h.make_node("Gather", [f"{src}_s", "one"], [f"{src}_n"], axis=0),
            h.make_node("Range", ["zero", f"{src}_n", "one"], [f"{src}_r"]),
            h.make_node("Cast", [f"{src}_r"], [f"{src}_rf"], to=T.FLOAT),
            h.make_node("Add", [src, f"{src}_z"], [x_out]), h.make_node("Add", [x_out, f"{src}_rf"], [y_out])]


@pytest.mark.parametrize("where", ["graph input", "after a Loop"])
def test_range_and_constant_of_shape_of_static_shapes_fold(where):
    """Item 2: a Range/ConstantOfShape whose inputs the static shapes fix is folded, also when
    those shapes are known only after a Loop (its output shapes come from loop_shapes, after
    prepare's folding: prepared_model folds again)."""
    proto = _loop_model(3, _STEP, h.make_node("Identity", ["cond"], ["cond_out"]))
    g = proto.graph
    src = "x" if where == "graph input" else "s"
    g.node.extend(_shape_arith(src, "sa", "sy"))
    g.initializer.extend([nh.from_array(np.array(0, np.int64), "zero"), nh.from_array(np.array(1, np.int64), "one")])
    g.output.append(h.make_tensor_value_info("sy", T.FLOAT, ["p", "q"]))
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    cm = compile_model(import_model(proto), {"x": (1, 4)})
    assert [line.split(":")[0] for line in cm.host_ops] == ["Loop"], cm.host_ops
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for got, r in zip(cm.run({"x": x}), ref):
        np.testing.assert_allclose(got, r, rtol=1e-6, atol=1e-7)
