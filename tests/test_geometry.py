"""WindowGeometry resolves Conv / pooling defaults once, and agrees with onnxruntime's output shapes."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.geometry import WindowGeometry


def _ort_conv_shape(attrs, x_shape, w_shape):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.zeros(x_shape, np.float32)})[0].shape


@pytest.mark.parametrize("attrs", [
    {}, {"strides": [2, 2]}, {"pads": [1, 2, 0, 1]}, {"dilations": [2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {"auto_pad": "SAME_LOWER", "strides": [3, 2]},
    {"auto_pad": "VALID", "strides": [2, 1]}, {"group": 2, "strides": [1, 2], "pads": [1, 1, 1, 1]},
])
def test_conv_geometry_matches_onnxruntime(attrs):
    x_shape, w_shape = (1, 4, 15, 16), (6, 4 // attrs.get("group", 1), 3, 3)
    g = WindowGeometry.conv(attrs, x_shape, w_shape)
    assert (1, 6) + g.out_spatial == _ort_conv_shape(attrs, x_shape, w_shape)
    assert g.group == attrs.get("group", 1) and g.n == 2 and len(g.pads) == 4
    assert g.kernel == (3, 3) and g.effective_kernel == tuple(2 * d + 1 for d in g.dilations)


def test_pool_geometry_ceil_mode_and_pointwise():
    g = WindowGeometry.pool({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (1, 3, 10, 10))
    assert g.out_spatial == (5, 5) and g.ceil_mode
    assert WindowGeometry.pool({"kernel_shape": [3, 3], "strides": [2, 2]}, (1, 3, 10, 10)).out_spatial == (4, 4)
    assert WindowGeometry.conv({}, (1, 3, 8, 8), (4, 3, 1, 1)).pointwise
    assert not WindowGeometry.conv({"pads": [0, 0, 1, 0]}, (1, 3, 8, 8), (4, 3, 1, 1)).pointwise


def test_geometry_refuses_what_does_not_fit():
    with pytest.raises(UnsupportedError):
        WindowGeometry.conv({"kernel_shape": [5, 5]}, (1, 3, 8, 8), (4, 3, 3, 3))
    with pytest.raises(UnsupportedError):
        WindowGeometry.conv({}, (1, 3, 2, 2), (4, 3, 3, 3))  # empty output
    with pytest.raises(UnsupportedError):
        WindowGeometry.pool({}, (1, 3, 8, 8))


def _ort_conv_transpose_shape(attrs, x_shape, w_shape):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.zeros(x_shape, np.float32)})[0].shape


@pytest.mark.parametrize("attrs", [
    {}, {"strides": [2, 2]}, {"strides": [2, 2], "pads": [1, 0, 1, 1]},
    {"strides": [2, 3], "output_padding": [1, 2]}, {"dilations": [2, 1], "group": 2},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {"auto_pad": "SAME_LOWER", "strides": [3, 2]},
    {"strides": [2, 2], "output_shape": [10, 9]},
])
def test_conv_transpose_geometry_matches_onnxruntime(attrs):
    x_shape, w_shape = (1, 4, 5, 4), (4, 6 // attrs.get("group", 1), 3, 3)
    g = WindowGeometry.conv_transpose(attrs, x_shape, w_shape)
    assert (1, 6) + g.out_spatial == _ort_conv_transpose_shape(attrs, x_shape, w_shape)
    assert g.in_spatial == (5, 4) and g.group == attrs.get("group", 1)
    # the NumPy kernel agrees with onnxruntime on values too (it builds the same geometry)
    from tvmlite.ops.conv import conv_transpose
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(w_shape).astype(np.float32)
    assert conv_transpose(x, w, **attrs).shape == (1, 6) + g.out_spatial


def test_empty_window_is_a_shape_error_that_names_the_shapes():
    with pytest.raises(ShapeError, match=r"output spatial shape \[0, 0\] is empty \(input \[1, 3, 2, 2\], "
                                         r"kernel \[3, 3\]"):
        WindowGeometry.conv({}, (1, 3, 2, 2), (4, 3, 3, 3))
    with pytest.raises(ShapeError, match="is empty"):
        WindowGeometry.pool({"kernel_shape": [3, 3]}, (1, 3, 2, 2))
    with pytest.raises(UnsupportedError, match="group=0"):
        WindowGeometry.conv({"group": 0}, (1, 3, 8, 8), (4, 3, 3, 3))


def test_conv_defaults_live_in_the_geometry():
    """Absent attributes and None mean the same thing everywhere (kernels pass None through)."""
    import inspect

    from tvmlite.ops.conv import conv, conv_transpose
    from tvmlite.ops.quant import conv_integer
    for fn in (conv, conv_transpose, conv_integer):
        params = inspect.signature(fn).parameters
        assert all(p.default is None for p in params.values() if p.kind is p.KEYWORD_ONLY), fn.__name__
    explicit = {"auto_pad": "NOTSET", "group": 1, "strides": [1, 1], "dilations": [1, 1], "pads": [0] * 4}
    shapes = (1, 3, 8, 8), (4, 3, 3, 3)
    assert WindowGeometry.conv({k: None for k in explicit}, *shapes) == WindowGeometry.conv(explicit, *shapes) \
        == WindowGeometry.conv({}, *shapes)
