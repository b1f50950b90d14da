"""SiLU (x * Sigmoid(x), either operand order) fuses into the epilogue of whatever kernel makes x
(`fusion.absorb`): conv, MatMul/Gemm, the lowered convs of `lower-conv`, an elementwise kernel,
behind a view; near misses (another Sigmoid input, a value read by a third node or written as
a graph output, a broadcasting Mul) stay as they are. Every case is checked against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.passes import Pipeline  # noqa: E402

RNG = np.random.default_rng(15)
mk = helper.make_node


def _x(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _silu(x, y, tag="s", order=(0, 1)):
    names = [x, f"{tag}_sig"]
    return [mk("Sigmoid", [x], [f"{tag}_sig"], name=f"{tag}_sig"),
            mk("Mul", [names[order[0]], names[order[1]]], [y], name=f"{tag}_mul")]


def _build(model, feeds, passes=None):
    m = load(model)
    if passes:
        Pipeline(passes).run(m)
    cm = compile_model(m, {k: v.shape for k, v in feeds.items()}, cache=False)
    assert cm.host_ops == []
    got, ref = cm.run(feeds), ort_run(model, feeds)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(r).max())))
    return cm


def _kernel_of(cm, node_name):
    """The nodes of the kernel call that runs ``node_name``."""
    calls = [c for c in cm.plan["calls"] if node_name in c.get("nodes", ())]
    assert len(calls) == 1, (node_name, cm.plan["calls"])
    return set(calls[0]["nodes"])


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("a_shape,n", [((6, 20), 24), ((1, 9, 33), 17)])
def test_silu_fuses_after_matmul_and_bias(order, a_shape, n):
    nodes = [mk("MatMul", ["a", "w"], ["mm"], name="mm"), mk("Add", ["mm", "b"], ["x"], name="bias")]
    nodes += _silu("x", "y", order=order)
    out = list(a_shape[:-1]) + [n]
    model = make_model(nodes, [tensor("a", list(a_shape))], [tensor("y", out)],
                       [("w", _x(a_shape[-1], n, scale=0.5)), ("b", _x(n))])
    cm = _build(model, {"a": _x(*a_shape, scale=2.0)})
    assert cm.kernel_count == 1
    assert {"mm", "bias", "s_sig", "s_mul"} <= _kernel_of(cm, "mm")


def test_silu_fuses_after_gemm_and_goes_on_fusing():
    """Gemm -> SiLU -> Add residual -> SiLU again: one kernel."""
    nodes = [mk("Gemm", ["a", "w", "b"], ["x"], name="gemm", transB=1)] + _silu("x", "s1", "p")
    nodes += [mk("Add", ["s1", "r"], ["x2"], name="res")] + _silu("x2", "y", "q", order=(1, 0))
    model = make_model(nodes, [tensor("a", [7, 12]), tensor("r", [7, 10])], [tensor("y", [7, 10])],
                       [("w", _x(10, 12)), ("b", _x(10))])
    cm = _build(model, {"a": _x(7, 12, scale=2.0), "r": _x(7, 10)})
    assert cm.kernel_count == 1
    assert {"gemm", "p_sig", "p_mul", "res", "q_sig", "q_mul"} <= _kernel_of(cm, "gemm")


def test_silu_behind_a_reshape_fuses_in_the_views_index_space():
    nodes = [mk("MatMul", ["a", "w"], ["mm"], name="mm"), mk("Reshape", ["mm", "shape"], ["x"], name="view")]
    nodes += _silu("x", "y")
    model = make_model(nodes, [tensor("a", [4, 6])], [tensor("y", [2, 2, 8])],
                       [("w", _x(6, 8)), ("shape", np.array([2, 2, 8], np.int64))])
    cm = _build(model, {"a": _x(4, 6, scale=2.0)})
    assert {"mm", "s_sig", "s_mul"} <= _kernel_of(cm, "mm")


def test_silu_fuses_after_an_elementwise_kernel():
    nodes = [mk("Add", ["a", "c"], ["x"], name="add")] + _silu("x", "y")
    model = make_model(nodes, [tensor("a", [2, 3, 5, 7]), tensor("c", [2, 3, 5, 7])], [tensor("y", [2, 3, 5, 7])])
    cm = _build(model, {"a": _x(2, 3, 5, 7, scale=3.0), "c": _x(2, 3, 5, 7)})
    assert cm.kernel_count == 1


@pytest.mark.parametrize("passes,op", [("lower-conv", "Im2Col"), ("lower-conv(layout=mec)", "MecLower")])
def test_silu_fuses_after_lowered_convs(passes, op):
    nodes = [mk("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])] + _silu("c", "y")
    model = make_model(nodes, [tensor("x", [1, 3, 10, 9])], [tensor("y", [1, 8, 10, 9])],
                       [("w", _x(8, 3, 3, 3, scale=0.4)), ("b", _x(8))])
    cm = _build(model, {"x": _x(1, 3, 10, 9, scale=2.0)}, passes)
    fused = [c for c in cm.plan["calls"] if {"s_sig", "s_mul"} <= set(c.get("nodes", ()))]
    assert len(fused) == 1
    assert not any(c.get("nodes") == ["s_sig"] or c.get("nodes") == ["s_mul"] for c in cm.plan["calls"])


def test_silu_fuses_into_both_conv_kernels():
    """Direct (long K) and im2col (short K) convs both take SiLU into their epilogues."""
    nodes = [mk("Conv", ["x", "w1"], ["c1"], name="direct", pads=[1, 1, 1, 1])] + _silu("c1", "s1", "p")
    nodes += [mk("Conv", ["s1", "w2"], ["c2"], name="gemm")] + _silu("c2", "y", "q")
    model = make_model(nodes, [tensor("x", [1, 32, 12, 12])], [tensor("y", [1, 8, 12, 12])],
                       [("w1", _x(16, 32, 3, 3, scale=0.2)), ("w2", _x(8, 16, 1, 1, scale=0.3))])
    cm = _build(model, {"x": _x(1, 32, 12, 12)})
    assert cm.kernel_count == 2
    assert {"p_sig", "p_mul"} <= _kernel_of(cm, "direct") and {"q_sig", "q_mul"} <= _kernel_of(cm, "gemm")


def _near_miss(case):
    nodes = [mk("MatMul", ["a", "w"], ["x"], name="mm")]
    outputs = [tensor("y", [5, 8])]
    inits = [("w", _x(6, 8))]
    if case == "sigmoid-of-another-value":
        nodes += [mk("Relu", ["x"], ["r"], name="relu"), mk("Sigmoid", ["r"], ["s_sig"], name="s_sig"),
                  mk("Mul", ["x", "s_sig"], ["y"], name="s_mul")]
    elif case == "sigmoid-is-an-output":
        nodes += _silu("x", "y")
        outputs.append(tensor("s_sig", [5, 8]))
    elif case == "x-is-an-output":
        nodes += _silu("x", "y")
        outputs.append(tensor("x", [5, 8]))
    elif case == "x-read-by-a-third-node":
        nodes += _silu("x", "m") + [mk("Add", ["m", "x"], ["y"], name="again")]
    elif case == "sigmoid-squared":
        nodes += [mk("Sigmoid", ["x"], ["s_sig"], name="s_sig"), mk("Mul", ["s_sig", "s_sig"], ["y"], name="s_mul")]
    elif case == "broadcasting-mul":
        # Mul(x[5,1] , Sigmoid(x)[5,1]) is SiLU, but here the Mul also broadcasts against v
        nodes = [mk("MatMul", ["a", "w1"], ["x"], name="mm"), mk("Sigmoid", ["x"], ["s_sig"], name="s_sig"),
                 mk("Mul", ["x", "s_sig"], ["xs"], name="s_mul"), mk("Mul", ["xs", "v"], ["y"], name="scale")]
        inits = [("w1", _x(6, 1)), ("v", _x(5, 8))]
    return make_model(nodes, [tensor("a", [5, 6])], outputs, inits)


@pytest.mark.parametrize("case", ["sigmoid-of-another-value", "sigmoid-is-an-output", "x-is-an-output",
                                  "x-read-by-a-third-node", "sigmoid-squared"])
def test_what_is_not_a_silu_is_not_fused_as_one(case):
    cm = _build(_near_miss(case), {"a": _x(5, 6, scale=2.0)})
    # (a lone Sigmoid may still join as a plain unary op: sigmoid-squared's)
    assert "s_mul" not in _kernel_of(cm, "mm")


def test_a_silu_whose_mul_is_followed_by_a_broadcast_still_matches():
    """The SiLU fuses; the broadcasting Mul after it (it would grow the kernel's output) does not."""
    cm = _build(_near_miss("broadcasting-mul"), {"a": _x(5, 6, scale=2.0)})
    fused = _kernel_of(cm, "mm")
    assert {"s_sig", "s_mul"} <= fused and "scale" not in fused
