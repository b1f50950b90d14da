"""Transformer ops as TVM kernels (issue 15 item 3): LayerNormalization over any axis, with and
without bias, and ReduceL2/L1/LogSum over any axes, each checked against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model, unsupported_ops  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(3)


def _x(*shape):
    return (RNG.standard_normal(shape) * 3 + 1.5).astype(np.float32)


def _check(model, feeds, rtol=1e-4):
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    assert cm.host_ops == []
    for g, r in zip(cm.run(feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * max(1.0, float(np.abs(r).max())))
    return cm


@pytest.mark.parametrize("shape,axis,scale_shape,bias", [
    ((1, 128, 384), -1, (384,), True),       # the encoder's case
    ((2, 3, 5, 7), 1, (3, 5, 7), True),      # normalized over three dims
    ((2, 3, 5, 7), -2, (1, 7), False),       # scale broadcast over the normalized dims, no bias
    ((4, 6), 0, (4, 6), True),               # every dim
])
def test_layer_norm_matches_onnxruntime(shape, axis, scale_shape, bias):
    names = ["x", "g", "b"] if bias else ["x", "g"]
    node = helper.make_node("LayerNormalization", names, ["y"], axis=axis, epsilon=1e-3)
    inits = [("g", _x(*scale_shape))] + ([("b", _x(*shape[axis % len(shape):]))] if bias else [])
    model = make_model([node, helper.make_node("Relu", ["y"], ["z"])], [tensor("x", list(shape))],
                       [tensor("z", list(shape))], inits)
    assert unsupported_ops(load(model), {"x": shape}) == []
    cm = _check(model, {"x": _x(*shape)})
    assert cm.kernel_count == 1  # the Relu rides in the LayerNorm's epilogue


def test_layer_norm_with_stats_outputs_is_left_to_the_host():
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y", "m"], axis=-1)
    model = make_model([node], [tensor("x", [2, 8])], [tensor("y", [2, 8]), tensor("m", [2, 1])],
                       [("g", _x(8))])
    assert unsupported_ops(load(model), {"x": (2, 8)}) == ["LayerNormalization (Mean/InvStdDev outputs)"]


@pytest.mark.parametrize("op", ["ReduceL2", "ReduceL1", "ReduceLogSum"])
@pytest.mark.parametrize("axes,keep", [([-1], 1), ([0, 2], 0), ([1], 0), (None, 1)])
def test_reduce_norms_match_onnxruntime(op, axes, keep):
    shape = (3, 4, 5)
    inputs = ["x", "ax"] if axes is not None else ["x"]
    inits = [("ax", np.array(axes, np.int64))] if axes is not None else []
    ref_shape = np.sum(np.zeros(shape), axis=None if axes is None else tuple(axes), keepdims=bool(keep)).shape
    model = make_model([helper.make_node(op, inputs, ["y"], keepdims=keep)], [tensor("x", list(shape))],
                       [tensor("y", list(ref_shape))], inits, opset=18)
    x = np.abs(_x(*shape)) + 0.1  # ReduceLogSum needs a positive sum
    _check(model, {"x": x})


@pytest.mark.parametrize("sa,sb", [((1, 4, 16, 24), (1, 4, 24, 32)),   # probs @ V: columns vectorized
                                   ((2, 3, 5, 7), (3, 7, 16)),          # broadcast batch, rank 4 x 3
                                   ((4, 6, 32), (32, 48)),              # 2-D right operand, runtime
                                   ((2, 1, 5, 8), (3, 8, 10))])         # N not a multiple of the lanes
def test_batched_matmul_of_two_inputs_matches_onnxruntime(sa, sb):
    so = np.matmul(np.zeros(sa), np.zeros(sb)).shape
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], [tensor("a", list(sa)), tensor("b", list(sb))],
                       [tensor("y", list(so))])
    _check(model, {"a": _x(*sa), "b": _x(*sb)})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_both_forms_match_onnxruntime(approximate):
    """The epilogue computed the erf form whatever `approximate` said; the tanh form differs by up
    to ~1e-3 at |x| ~ 2, well above the tolerance."""
    model = make_model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], [tensor("x", [4, 64])],
                       [tensor("y", [4, 64])], opset=20)
    x = (np.random.default_rng(5).standard_normal((4, 64)) * 3).astype(np.float32)
    cm = compile_model(load(model), {"x": x.shape})
    assert cm.host_ops == []
    (got,), (ref,) = cm.run({"x": x}), ort_run(model, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
