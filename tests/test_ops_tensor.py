"""Focused unit tests of the element-wise, reduction and tensor kernels (edge cases that ONNX's node
conformance cases miss)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from tvmlite.errors import UnsupportedError
from tvmlite.ops.registry import lookup
from tvmlite.ops.testing import run_node


def node(op, n_in=1, n_out=1, **attrs):
    return helper.make_node(op, [f"i{k}" for k in range(n_in)], [f"o{k}" for k in range(n_out)], **attrs)


def run1(op, inputs, opset=21, n_out=1, **attrs):
    return run_node(node(op, len(inputs), n_out, **attrs), inputs, opset)


f32 = np.float32


# ---------------------------------------------------------------- dtype preservation / broadcasting

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"])
def test_binary_broadcast_keeps_float32(op):
    a = np.random.rand(2, 3, 4).astype(f32) + 0.5
    b = np.random.rand(4).astype(f32) + 0.5
    (y,) = run1(op, [a, b])
    assert y.dtype == f32 and y.shape == (2, 3, 4)


def test_pow_keeps_base_dtype():
    (y,) = run1("Pow", [np.array([1.5, 2.0], f32), np.array([2, 3], np.int64)])
    assert y.dtype == f32
    np.testing.assert_allclose(y, [2.25, 8.0])
    (y,) = run1("Pow", [np.array([2, 3], np.int32), np.array([2.0, -1.0], f32)])
    assert y.dtype == np.int32


def test_float_attributes_do_not_promote():
    x = np.linspace(-3, 3, 13, dtype=f32)
    for op, attrs in [("LeakyRelu", {"alpha": 0.1}), ("Elu", {"alpha": 0.7}), ("Selu", {}),
                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Celu", {"alpha": 2.0}),
                      ("ThresholdedRelu", {"alpha": 0.5}), ("Shrink", {"lambd": 1.0, "bias": 0.5}),
                      ("Gelu", {"approximate": "tanh"}), ("Gelu", {}), ("Sigmoid", {}), ("Mish", {})]:
        (y,) = run1(op, [x], **attrs)
        assert y.dtype == f32, op
    (y,) = run1("Clip", [x, np.array(-1.0, f32), np.array(1.0, f32)])
    assert y.dtype == f32 and y.min() == -1 and y.max() == 1


def test_int_div_truncates_toward_zero():
    (y,) = run1("Div", [np.array([7, -7, 7, -7], np.int32), np.array([2, 2, -2, -2], np.int32)])
    assert y.dtype == np.int32
    assert y.tolist() == [3, -3, -3, 3]


def test_mod_sign_rules():
    a, b = np.array([-7, 7], np.int64), np.array([3, -3], np.int64)
    assert run1("Mod", [a, b])[0].tolist() == [2, -2]
    assert run1("Mod", [a, b], fmod=1)[0].tolist() == [-1, 1]


def test_sigmoid_is_stable():
    (y,) = run1("Sigmoid", [np.array([-1000, 0, 1000], f32)])
    np.testing.assert_array_equal(y, [0, 0.5, 1])


def test_erf_accuracy():
    import math

    x = np.linspace(-5, 5, 2001)
    (y,) = run1("Erf", [x])
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(y - ref).max() < 1e-7


def test_round_half_to_even():
    (y,) = run1("Round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5], f32)])
    assert y.tolist() == [0, 2, 2, -0.0, -2]


def test_comparisons_give_bool():
    (y,) = run1("Less", [np.array([1, 2], f32), np.array(1.5, f32)])
    assert y.dtype == np.bool_ and y.tolist() == [True, False]


def test_cast_saturates_fp8_and_refuses_bad_round_mode():
    (y,) = run1("Cast", [np.array([1000.0, -np.inf], f32)], to=TensorProto.FLOAT8E4M3FN)
    assert y.astype(f32).tolist() == [448.0, -448.0]
    with pytest.raises(UnsupportedError):
        run1("Cast", [np.array([1.0], f32)], opset=24, to=TensorProto.FLOAT8E8M0,
             round_mode="sideways")


def test_cast_string_roundtrip():
    (s,) = run1("Cast", [np.array([1.5, -2.0], f32)], to=TensorProto.STRING)
    (y,) = run1("Cast", [s], to=TensorProto.FLOAT)
    assert y.dtype == f32 and y.tolist() == [1.5, -2.0]


# ---------------------------------------------------------------- softmax coercion

def test_softmax_11_coerces_to_2d():
    x = np.random.rand(2, 3, 4).astype(f32)
    (y,) = run1("Softmax", [x], opset=11, axis=1)
    flat = x.reshape(2, 12)
    ref = np.exp(flat) / np.exp(flat).sum(1, keepdims=True)
    np.testing.assert_allclose(y, ref.reshape(2, 3, 4), rtol=1e-6)
    (y13,) = run1("Softmax", [x], opset=13, axis=1)
    np.testing.assert_allclose(y13.sum(1), np.ones((2, 4)), rtol=1e-6)
    assert not np.allclose(y, y13)


def test_logsoftmax_negative_axis_and_hardmax():
    x = np.array([[1, 3, 3], [2, 1, 0]], f32)
    (y,) = run1("LogSoftmax", [x], opset=13, axis=-1)
    np.testing.assert_allclose(np.exp(y).sum(-1), [1, 1], rtol=1e-6)
    (h,) = run1("Hardmax", [x], opset=13, axis=-1)
    assert h.tolist() == [[0, 1, 0], [1, 0, 0]] and h.dtype == f32


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("shape", [(2, 0), (0, 3), (2, 0, 3)])
def test_softmax_family_on_empty_tensors_returns_them(op, opset, shape):
    """An empty axis has no max (NumPy's reduction raised); onnxruntime returns the empty tensor."""
    (y,) = run1(op, [np.zeros(shape, f32)], opset=opset, axis=1)
    assert y.shape == shape and y.dtype == f32


def test_softmax_axis_out_of_range_is_refused():
    with pytest.raises(UnsupportedError, match="axis 7 out of range for rank 2"):
        run1("Softmax", [np.zeros((2, 0), f32)], opset=13, axis=7)


# ---------------------------------------------------------------- reductions

def test_reduce_negative_axes_and_empty_axes():
    x = np.arange(24, dtype=f32).reshape(2, 3, 4)
    (y,) = run1("ReduceSum", [x, np.array([-1], np.int64)], keepdims=0)
    np.testing.assert_array_equal(y, x.sum(-1))
    (y,) = run1("ReduceSum", [x, np.array([], np.int64)], noop_with_empty_axes=1)
    np.testing.assert_array_equal(y, x)
    (y,) = run1("ReduceMean", [x], opset=13, axes=[-2, 0], keepdims=1)
    assert y.shape == (1, 1, 4) and y.dtype == f32


def test_reduce_int32_keeps_dtype_and_empty_set():
    x = np.ones((3, 0), np.int32)
    (y,) = run1("ReduceSum", [x, np.array([1], np.int64)], keepdims=0)
    assert y.dtype == np.int32 and y.tolist() == [0, 0, 0]
    (y,) = run1("ReduceMax", [np.ones((2, 0), f32), np.array([1], np.int64)], keepdims=0)
    assert y.tolist() == [-np.inf, -np.inf]


def test_argmax_select_last_index():
    x = np.array([[1, 5, 5], [7, 7, 0]], f32)
    (y,) = run1("ArgMax", [x], axis=-1, keepdims=0, select_last_index=1)
    assert y.dtype == np.int64 and y.tolist() == [2, 1]


def test_topk_ties_lower_index_first():
    x = np.array([3, 1, 3, 2, 3], np.int64)
    v, i = run1("TopK", [x, np.array([2], np.int64)], n_out=2)
    assert v.tolist() == [3, 3] and i.tolist() == [0, 2]
    v, i = run1("TopK", [x, np.array([2], np.int64)], n_out=2, largest=0)
    assert v.tolist() == [1, 2] and i.tolist() == [1, 3]


# ---------------------------------------------------------------- shape ops

def test_reshape_zero_and_minus_one():
    x = np.arange(24, dtype=f32).reshape(2, 3, 4)
    (y,) = run1("Reshape", [x, np.array([0, -1], np.int64)])
    assert y.shape == (2, 12)
    assert np.shares_memory(y, x)  # a view, no copy
    (y,) = run1("Reshape", [np.zeros((0, 3), f32), np.array([0, 3], np.int64)], allowzero=1)
    assert y.shape == (0, 3)


def test_slice_clamping_and_negative_steps():
    x = np.arange(10)
    s = lambda *a: run1("Slice", [x] + [np.array(v, np.int64) for v in a])[0].tolist()  # noqa: E731
    assert s([-100], [100]) == list(range(10))
    assert s([2**63 - 1], [-(2**63)], [0], [-1]) == list(range(9, -1, -1))
    assert s([-1], [-100], [0], [-3]) == [9, 6, 3, 0]
    assert s([5], [2]) == []
    assert run1("Slice", [x], opset=9, starts=[1], ends=[1000])[0].tolist() == list(range(1, 10))


def test_squeeze_unsqueeze_negative_axes():
    x = np.zeros((1, 3, 1), f32)
    (y,) = run1("Squeeze", [x, np.array([-1], np.int64)])
    assert y.shape == (1, 3)
    (y,) = run1("Unsqueeze", [np.zeros((3, 4)), np.array([-1, 0], np.int64)])
    assert y.shape == (1, 3, 4, 1)
    (y,) = run1("Unsqueeze", [np.zeros((3,)), ], opset=11, axes=[-1])
    assert y.shape == (3, 1)


def test_split_num_outputs_uneven():
    x = np.arange(7)
    ys = run1("Split", [x], opset=18, n_out=3, num_outputs=3)
    assert [y.tolist() for y in ys] == [[0, 1, 2], [3, 4, 5], [6]]
    ys = run1("Split", [x, np.array([2, 5], np.int64)], n_out=2)
    assert [len(y) for y in ys] == [2, 5]


def test_gather_negative_indices_and_scalar_index():
    x = np.arange(12).reshape(3, 4)
    assert run1("Gather", [x, np.array([-1, 0])], axis=1)[0].tolist() == [[3, 0], [7, 4], [11, 8]]
    assert run1("Gather", [x, np.array(-1)], axis=0)[0].shape == (4,)


def test_scatter_elements_reduction_with_duplicates():
    data = np.zeros((1, 3), f32)
    (y,) = run1("ScatterElements", [data, np.array([[0, 0, -1]]), np.array([[1, 2, 3]], f32)],
                axis=1, reduction="add")
    assert y.tolist() == [[3, 0, 3]]
    assert data.tolist() == [[0, 0, 0]]  # input untouched


def test_pad_negative_and_axes():
    x = np.arange(6, dtype=f32).reshape(2, 3)
    (y,) = run1("Pad", [x, np.array([1, -1], np.int64), np.array(9, f32), np.array([-1], np.int64)])
    assert y.tolist() == [[9, 0, 1], [9, 3, 4]]
    (y,) = run1("Pad", [x, np.array([0, 1, 0, 1], np.int64)], mode="reflect")
    assert y.tolist() == [[1, 0, 1, 2, 1], [4, 3, 4, 5, 4]]


def test_shape_start_end_and_expand():
    x = np.zeros((2, 3, 4))
    assert run1("Shape", [x], start=-2)[0].tolist() == [3, 4]
    assert run1("Shape", [x], start=1, end=-1)[0].dtype == np.int64
    (y,) = run1("Expand", [np.array([[1], [2]], f32), np.array([1, 3], np.int64)])
    assert y.shape == (2, 3) and y.dtype == f32


def test_onehot_negative_axis_and_indices():
    (y,) = run1("OneHot", [np.array([0, -1, 5]), np.array(3), np.array([0, 1], f32)], axis=0)
    assert y.shape == (3, 3) and y.dtype == f32
    assert y.T.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_split_without_count_is_refused():
    with pytest.raises(UnsupportedError):
        run1("Split", [np.arange(4)], opset=13, n_out=2)


def test_every_kernel_is_registered_for_old_and_new_opsets():
    for op, opset in [("Reshape", 1), ("Slice", 1), ("Pad", 2), ("Clip", 6), ("Split", 2),
                      ("ReduceMean", 1), ("Softmax", 1), ("Cast", 24), ("Squeeze", 21)]:
        assert lookup(op, "", opset) is not None, op


@pytest.mark.parametrize("keepdims", [0, 1, 7, -1])
@pytest.mark.parametrize("op,attrs", [("ReduceSum", {}), ("ReduceMax", {"axes": [1]}), ("ArgMax", {"axis": 1})])
def test_keepdims_other_than_0_or_1_drops_the_axes_as_in_onnxruntime(op, attrs, keepdims):
    """Found by fuzzing: keepdims=7 kept the axes here, onnxruntime (and onnx's shape inference)
    keep them only for 1."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3)).astype(f32)
    n = helper.make_node(op, ["x"], ["y"], keepdims=keepdims, **attrs)
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64 if op == "ArgMax" else TensorProto.FLOAT,
                                                         None)])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    (ref,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (y,) = run_node(n, [x], 13)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-6)


# ---------------------------------------------------------------- BatchNormalization parameters

def test_batchnorm_refuses_2d_params_with_default_spatial():
    """A [C, 1] scale (opset 15, or opset 7 with spatial=1): onnxruntime refuses it ('NumDimensions()
    != 1'); the kernel broadcast it into [N, C, H, W] where H happened to equal C, and the TVM
    backend read it differently (found by fuzzing the TVM backend)."""
    from tvmlite.errors import ShapeError

    x = np.ones((1, 4, 4, 4), f32)
    p = [np.ones((4, 1), f32)] + [np.ones(4, f32)] * 3
    for opset, attrs in ((15, {}), (7, {"spatial": 1})):
        with pytest.raises(ShapeError, match=r"scale of shape \[4, 1\] does not fit input"):
            run1("BatchNormalization", [x] + p, opset=opset, **attrs)


def test_batchnorm_spatial_0_takes_params_per_channel_and_position():
    """Opset 7-8 spatial=0: parameters of shape [C, H, W], as onnxruntime computes them."""
    from helpers import ort_run
    from onnx import helper as oh

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 2, 2)).astype(f32)
    p = [rng.uniform(0.5, 2, (3, 2, 2)).astype(f32) for _ in range(4)]
    (y,) = run1("BatchNormalization", [x] + p, opset=7, spatial=0)
    model = oh.make_model(oh.make_graph(
        [oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0)], "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        [oh.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in zip("sbmv", p)]),
        opset_imports=[oh.make_opsetid("", 7)], ir_version=8)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
