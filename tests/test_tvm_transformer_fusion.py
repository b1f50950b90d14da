"""Transformer fusions on the TVM backend (issue 15 item 3), each checked against onnxruntime:
Gelu (node or spelled out in Div/Mul/Add/Erf or Pow/Tanh) in the MatMul/Gemm epilogue with a
vectorizable erf, and what must not be taken for a Gelu."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(7)


def _x(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _check(model, feeds, rtol=1e-4):
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    assert cm.host_ops == []
    got, ref = cm.run(feeds), ort_run(model, feeds)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * max(1.0, float(np.abs(r).max())))
    return cm


def _c(name, v):
    return (name, np.array(v, np.float32))


def _gelu_erf_nodes(x, y, variant):
    """The erf Gelu as exporters write it: BERT's (Div sqrt2, Mul x, Mul 0.5) or HF's (Mul 0.5 first,
    Mul 1/sqrt2)."""
    mk = helper.make_node
    if variant == "bert":
        return [mk("Div", [x, "sqrt2"], ["g_s"]), mk("Erf", ["g_s"], ["g_e"]), mk("Add", ["g_e", "one"], ["g_p"]),
                mk("Mul", [x, "g_p"], ["g_m"]), mk("Mul", ["g_m", "half"], [y])]
    return [mk("Mul", [x, "half"], ["g_h"]), mk("Mul", [x, "rsqrt2"], ["g_s"]), mk("Erf", ["g_s"], ["g_e"]),
            mk("Add", ["one", "g_e"], ["g_p"]), mk("Mul", ["g_h", "g_p"], [y])]


def _gelu_tanh_nodes(x, y):
    mk = helper.make_node
    return [mk("Pow", [x, "three"], ["t_c"]), mk("Mul", ["t_c", "k"], ["t_k"]), mk("Add", [x, "t_k"], ["t_a"]),
            mk("Mul", ["t_a", "sqrt2pi"], ["t_u"]), mk("Tanh", ["t_u"], ["t_t"]), mk("Add", ["t_t", "one"], ["t_p"]),
            mk("Mul", ["half", x], ["t_h"]), mk("Mul", ["t_h", "t_p"], [y])]


CONSTS = [_c("sqrt2", math.sqrt(2)), _c("rsqrt2", 1 / math.sqrt(2)), _c("one", 1.0), _c("half", 0.5),
          _c("three", 3.0), _c("k", 0.044715), _c("sqrt2pi", math.sqrt(2 / math.pi))]


@pytest.mark.parametrize("form", ["bert", "hf", "tanh", "node-none", "node-tanh"])
@pytest.mark.parametrize("a_shape,n", [((1, 16, 48), 64), ((3, 7, 37), 45), ((5, 33), 17)])
def test_gelu_fuses_into_the_matmul_epilogue(form, a_shape, n):
    """MatMul + bias + Gelu is one kernel for every spelling, odd sizes and rank 2/3 included."""
    k = a_shape[-1]
    mk = helper.make_node
    nodes = [mk("MatMul", ["a", "w"], ["mm"]), mk("Add", ["mm", "bias"], ["x"])]
    if form in ("bert", "hf"):
        nodes += _gelu_erf_nodes("x", "y", form)
    elif form == "tanh":
        nodes += _gelu_tanh_nodes("x", "y")
    else:
        nodes.append(mk("Gelu", ["x"], ["y"], approximate=form.split("-")[1]))
    out = list(a_shape[:-1]) + [n]
    model = make_model(nodes, [tensor("a", list(a_shape))], [tensor("y", out)],
                       [("w", _x(k, n, scale=0.5)), ("bias", _x(n))] + CONSTS, opset=20)
    cm = _check(model, {"a": _x(*a_shape, scale=1.5)})
    assert cm.kernel_count == 1


def test_gelu_fuses_into_gemm_and_leaves_no_scalar_erf_call():
    mk = helper.make_node
    nodes = [mk("Gemm", ["a", "w", "bias"], ["x"], transB=1)] + _gelu_erf_nodes("x", "y", "bert")
    model = make_model(nodes, [tensor("a", [9, 20])], [tensor("y", [9, 24])],
                       [("w", _x(24, 20)), ("bias", _x(24))] + CONSTS, opset=17)
    cm = _check(model, {"a": _x(9, 20, scale=2.0)})
    assert cm.kernel_count == 1
    asm = cm.lib.inspect_source("asm") if hasattr(cm.lib, "inspect_source") else cm.lib.mod.inspect_source("asm")
    assert "erff" not in asm


@pytest.mark.parametrize("case", ["half-is-0.6", "intermediate-is-an-output", "x-read-elsewhere"])
def test_what_is_not_a_gelu_is_not_fused_as_one(case):
    """A near-Gelu (another constant), or one whose inner value or input is read elsewhere, stays
    as the ops it is, and still matches onnxruntime."""
    mk = helper.make_node
    consts = list(CONSTS)
    nodes = [mk("MatMul", ["a", "w"], ["x"])] + _gelu_erf_nodes("x", "y", "bert")
    outputs = [tensor("y", [4, 8])]
    if case == "half-is-0.6":
        consts[3] = _c("half", 0.6)
    elif case == "intermediate-is-an-output":
        outputs.append(tensor("g_e", [4, 8]))
    else:
        nodes.append(mk("Relu", ["x"], ["r"]))
        outputs.append(tensor("r", [4, 8]))
    model = make_model(nodes, [tensor("a", [4, 6])], outputs, [("w", _x(6, 8))] + consts)
    cm = _check(model, {"a": _x(4, 6, scale=2.0)})
    assert cm.kernel_count > 1


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis,opset", [((1, 4, 32, 32), -1, 13),   # attention rows, vectorized
                                              ((3, 5, 37), -1, 13),        # odd row length
                                              ((2, 6, 5), 1, 13),          # a middle axis
                                              ((2, 3, 4, 5), 1, 11),       # old opset: dims from axis
                                              ((2, 5000), -1, 13)])        # a row too long to keep local
def test_softmax_matches_onnxruntime(op, shape, axis, opset):
    model = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], [tensor("x", list(shape))],
                       [tensor("y", list(shape))], opset=opset)
    _check(model, {"x": _x(*shape, scale=4.0)}, rtol=1e-5)


@pytest.mark.parametrize("mask_value", [-1e4, -3.4e38])
def test_attention_scale_and_mask_fuse_with_the_scores(mask_value):
    """Q @ K^T / sqrt(d) + mask (broadcast over heads and rows) -> Softmax: the scale and the mask
    ride in the scores kernel; masked positions (BERT's -1e4, HF's float32 min) get exactly 0."""
    mk = helper.make_node
    nodes = [mk("MatMul", ["q", "k"], ["s"]), mk("Div", ["s", "sqrt_d"], ["sc"]), mk("Add", ["sc", "mask"], ["m"]),
             mk("Softmax", ["m"], ["p"], axis=-1)]
    model = make_model(nodes, [tensor("q", [1, 3, 20, 8]), tensor("k", [1, 3, 8, 20]), tensor("mask", [1, 1, 1, 20])],
                       [tensor("p", [1, 3, 20, 20])], [_c("sqrt_d", math.sqrt(8))])
    mask = np.zeros((1, 1, 1, 20), np.float32)
    mask[..., 15:] = mask_value
    cm = _check(model, {"q": _x(1, 3, 20, 8, scale=2), "k": _x(1, 3, 8, 20, scale=2), "mask": mask}, rtol=1e-5)
    assert cm.kernel_count == 2
    got = cm.run({"q": _x(1, 3, 20, 8), "k": _x(1, 3, 8, 20), "mask": mask})[0]
    assert (got[..., 15:] == 0).all()


def _ln_nodes(x, y, *, square="pow", gamma=True, beta=True, axes=(-1,), eps_first=False):
    """LayerNorm as exporters spell it out (axes as an input, opset 18)."""
    mk = helper.make_node
    nodes = [mk("ReduceMean", [x, "ln_axes"], ["ln_mean"]), mk("Sub", [x, "ln_mean"], ["ln_d"]),
             mk("Pow", ["ln_d", "two"], ["ln_sq"]) if square == "pow" else mk("Mul", ["ln_d", "ln_d"], ["ln_sq"]),
             mk("ReduceMean", ["ln_sq", "ln_axes"], ["ln_var"]),
             mk("Add", ["eps", "ln_var"] if eps_first else ["ln_var", "eps"], ["ln_ve"]),
             mk("Sqrt", ["ln_ve"], ["ln_std"]), mk("Div", ["ln_d", "ln_std"], ["ln_n" if gamma else y])]
    if gamma:
        nodes.append(mk("Mul", ["ln_n", "gamma"], ["ln_g" if beta else y]))
        if beta:
            nodes.append(mk("Add", ["ln_g", "beta"], [y]))
    return nodes, [("ln_axes", np.array(axes, np.int64)), _c("two", 2.0), _c("eps", 1e-5)]


@pytest.mark.parametrize("shape,axes,square,gamma,beta,g_shape", [
    ((1, 16, 48), (-1,), "pow", True, True, (48,)),        # BERT's
    ((2, 5, 37), (2,), "mul", True, False, (37,)),         # odd width, d*d, no beta
    ((2, 3, 5, 7), (-2, -1), "pow", True, True, (1, 7)),   # two normalized dims, gamma broadcast
    ((4, 9), (-1,), "pow", False, False, None),            # no affine part
])
def test_decomposed_layer_norm_runs_as_one_kernel(shape, axes, square, gamma, beta, g_shape):
    nodes, consts = _ln_nodes("x", "y", square=square, gamma=gamma, beta=beta, axes=axes, eps_first=square == "mul")
    trail = shape[len(shape) - len(axes):]
    inits = consts + ([("gamma", _x(*g_shape))] if gamma else []) + ([("beta", _x(*trail))] if beta else [])
    nodes.append(helper.make_node("Relu", ["y"], ["z"]))
    model = make_model(nodes, [tensor("x", list(shape))], [tensor("z", list(shape))], inits, opset=18)
    cm = _check(model, {"x": _x(*shape, scale=3.0) + 1.0})
    assert cm.kernel_count == 1  # the Relu too


@pytest.mark.parametrize("case", ["mean-read-elsewhere", "leading-axis", "eps-not-constant"])
def test_near_layer_norms_stay_as_they_are(case):
    shape = (3, 4, 8)
    nodes, consts = _ln_nodes("x", "y", axes=(0,) if case == "leading-axis" else (-1,))
    inputs, outputs = [tensor("x", list(shape))], [tensor("y", list(shape))]
    feeds = {"x": _x(*shape, scale=2.0)}
    if case == "mean-read-elsewhere":
        outputs.append(tensor("ln_mean", [3, 4, 1]))
    elif case == "eps-not-constant":
        consts = [c for c in consts if c[0] != "eps"]
        inputs.append(tensor("eps", []))
        feeds["eps"] = np.array(1e-5, np.float32)
    model = make_model(nodes, inputs, outputs, consts + [("gamma", _x(8)), ("beta", _x(8))], opset=18)
    cm = _check(model, feeds)
    assert cm.kernel_count > 1


@pytest.mark.parametrize("q_shape,k_shape,mask_shape", [
    ((1, 4, 32, 16), (1, 4, 16, 32), (1, 1, 1, 32)),     # BERT's mask over keys
    ((2, 3, 20, 8), (2, 3, 8, 64), (2, 1, 20, 64)),      # 20 rows (tiles of 4), a mask per row
    ((3, 7, 5), (5, 48), (7, 48)),                        # rank 3, shared 2-D keys, 7 rows, 3 vectors
    ((1, 2, 16, 8), (1, 1, 8, 16), None),                 # broadcast keys over heads, no mask
])
def test_scores_scale_mask_and_softmax_run_as_one_kernel(q_shape, k_shape, mask_shape):
    """Q @ K^T * scale + mask -> Softmax (-> a scale after) in one kernel when rows are whole
    vectors; masked keys (-1e4) get 0 up to float rounding, as in onnxruntime."""
    mk = helper.make_node
    out = list(np.matmul(np.zeros(q_shape), np.zeros(k_shape)).shape)
    nodes = [mk("MatMul", ["q", "k"], ["s"]), mk("Mul", ["s", "scale"], ["sc"])]
    inputs = [tensor("q", list(q_shape)), tensor("k", list(k_shape))]
    feeds = {"q": _x(*q_shape, scale=2.0), "k": _x(*k_shape, scale=2.0)}
    last = "sc"
    if mask_shape is not None:
        nodes.append(mk("Add", ["sc", "mask"], ["m"]))
        inputs.append(tensor("mask", list(mask_shape)))
        mask = np.where(RNG.random(mask_shape) < 0.3, -1e4, 0.0).astype(np.float32)
        feeds["mask"] = mask
        last = "m"
    nodes += [mk("Softmax", [last], ["p"], axis=-1), mk("Mul", ["p", "two"], ["y"])]
    model = make_model(nodes, inputs, [tensor("y", out)], [_c("scale", 0.35), _c("two", 2.0)])
    cm = _check(model, feeds, rtol=1e-5)
    assert cm.kernel_count == 1


def test_softmax_over_another_axis_is_not_fused_with_the_scores():
    mk = helper.make_node
    nodes = [mk("MatMul", ["q", "k"], ["s"]), mk("Softmax", ["s"], ["p"], axis=-2)]
    model = make_model(nodes, [tensor("q", [2, 16, 8]), tensor("k", [2, 8, 16])], [tensor("p", [2, 16, 16])])
    cm = _check(model, {"q": _x(2, 16, 8), "k": _x(2, 8, 16)}, rtol=1e-5)
    assert cm.kernel_count == 2


@pytest.mark.parametrize("case", ["layer_norm", "decomposed_layer_norm", "softmax", "attention"])
def test_parallel_schedules_build_and_match(case, monkeypatch):
    """With every kernel parallel (as the encoder's big ones are on 2 threads), the row
    reductions and the fused attention still schedule (TVM refuses `parallel` over a reduction
    already split into init and update) and match onnxruntime."""
    monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", "1")
    mk = helper.make_node
    if case == "layer_norm":
        model = make_model([mk("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)], [tensor("x", [2, 8, 64])],
                           [tensor("y", [2, 8, 64])], [("g", _x(64)), ("b", _x(64))])
        feeds = {"x": _x(2, 8, 64, scale=2.0)}
    elif case == "decomposed_layer_norm":
        nodes, consts = _ln_nodes("x", "y")
        model = make_model(nodes, [tensor("x", [2, 8, 64])], [tensor("y", [2, 8, 64])],
                           consts + [("gamma", _x(64)), ("beta", _x(64))], opset=18)
        feeds = {"x": _x(2, 8, 64, scale=2.0)}
    elif case == "softmax":
        model = make_model([mk("Softmax", ["x"], ["y"], axis=-1)], [tensor("x", [2, 6, 48])], [tensor("y", [2, 6, 48])])
        feeds = {"x": _x(2, 6, 48, scale=3.0)}
    else:
        nodes = [mk("MatMul", ["q", "k"], ["s"]), mk("Div", ["s", "sqrt2"], ["sc"]), mk("Softmax", ["sc"], ["y"])]
        model = make_model(nodes, [tensor("q", [1, 3, 24, 8]), tensor("k", [1, 3, 8, 32])], [tensor("y", [1, 3, 24, 32])],
                           [_c("sqrt2", math.sqrt(2))])
        feeds = {"q": _x(1, 3, 24, 8), "k": _x(1, 3, 8, 32)}
    cm = _check(model, feeds, rtol=1e-5)
    assert cm.kernel_count == 1


@pytest.mark.parametrize("lanes", [8, 16])
def test_scores_register_tile_fits_the_accumulator_registers(lanes):
    """The fused scores kernel's register tile is `gemm_rows` rows x 2 vectors: 4 x 2 on AVX2
    (the 8 x 2 tiled for AVX-512 spilled 16 ymm accumulators and ran the kernel 1.19x slower),
    8 x 2 with AVX-512; the numbers hold at either width."""
    from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
    from tvmlite.backends.tvm.kernels.gemm import gemm_rows
    from tvmlite.backends.tvm.kernels.schedules import accumulator_vectors
    from tvmlite.backends.tvm.kernels.transformer import scores_softmax
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    mr = gemm_rows(lanes)
    assert mr == (8 if lanes == 16 else 4) and mr * 2 <= accumulator_vectors(lanes)
    q, k = _x(1, 3, 16, 8, scale=2.0), _x(1, 3, 8, 2 * lanes, scale=2.0)
    mask = np.where(RNG.random((1, 1, 1, 2 * lanes)) < 0.3, -1e4, 0.0).astype(np.float32)
    epi = Epilogue([EwOp("Mul", [("const", np.array(0.35, np.float32))]), EwOp("Add", [("value", "mask", mask.shape)])])
    kd = scores_softmax("s", "q", q.shape, "k", k.shape, out_value="p", out_shape=(1, 3, 16, 2 * lanes),
                        epilogue=epi, after=Epilogue(), lanes=lanes)
    text = kd.func.script()
    assert f"T.unroll({mr})" in text and f"T.vectorized({2 * lanes})" in text
    assert "T.unroll(8)" not in text or lanes == 16
    args, outs = kernel_args(kd, {"q": q, "k": k, "mask": mask})
    build_kernel(kd)["main"](*args)
    s = (q.astype(np.float64) @ k) * 0.35 + mask
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(outs[0].numpy().reshape(s.shape), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
