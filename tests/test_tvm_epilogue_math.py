"""Arithmetic choices inside fused kernels (issue 15, the encoder's speed): a division by a constant
in an epilogue becomes a multiply by its reciprocal (except before a rounding op), and a row's exp
in Softmax runs several vector registers per step; each checked against NumPy / onnxruntime, at
AVX2's 8 lanes and AVX-512's 16."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(11)


def _x(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _dense(ops, lanes=8):
    """The dense GEMM kernel 8x6 @ 6x32 with epilogue ``ops``: (kernel def, run(a) -> y)."""
    from tvmlite.backends.tvm.kernels.gemm import dense_gemm
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    w = _x(6, 32)
    kd = dense_gemm("d", "a", (8, 6), w, None, out_value="y", out_shape=(8, 32), epilogue=Epilogue(ops),
                    lanes=lanes)
    fn = build_kernel(kd)["main"]

    def run(a):
        args, outs = kernel_args(kd, {"a": a})
        fn(*args)
        return outs[0].numpy().reshape(8, 32)
    return kd, run, w


@pytest.mark.parametrize("c", [math.sqrt(32.0), 0.3, -7.0, 4.0])
def test_division_by_a_constant_runs_as_a_multiply(c):
    kd, run, w = _dense([EwOp("Div", [("const", np.array(c, np.float32))])])
    text = kd.func.script()
    assert " / " not in text and "T.float32(%r)" % float(np.float32(1 / np.float32(c))) in text
    a = _x(8, 6, scale=2.0)
    ref = (a.astype(np.float64) @ w) / np.float32(c)
    np.testing.assert_allclose(run(a), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("case", ["inf", "tiny", "divisor-is-the-value", "rounded-after", "tensor"])
def test_division_that_must_stay_a_division(case):
    """x / inf, a divisor whose reciprocal overflows float32,
    c / x (the running value divides) and x / scale before Round (QDQ: a tie could flip) keep the
    division; a per-column constant becomes a reciprocal table instead."""
    c = {"inf": np.inf, "tiny": 1e-39}.get(case, 3.0)
    op = EwOp("Div", [("const", np.array(c, np.float32))], first=1 if case == "divisor-is-the-value" else 0)
    ops = [op] + ([EwOp("Round")] if case == "rounded-after" else [])
    if case == "tensor":
        ops = [EwOp("Div", [("const", _x(32) + 3.0)])]
    kd, run, w = _dense(ops)
    assert (" / " in kd.func.script()) == (case != "tensor")
    a = _x(8, 6, scale=2.0)
    acc = (a.astype(np.float64) @ w).astype(np.float32)
    with np.errstate(all="ignore"):
        if case == "tensor":
            ref = acc / ops[0].operands[0][1]
        elif case == "divisor-is-the-value":
            ref = np.float32(c) / acc
        else:
            ref = acc / np.float32(c)
            if case == "rounded-after":
                ref = np.round(ref)
    got = run(a)
    if case == "divisor-is-the-value":  # c / x: where x is near 0 its own rounding is a large change
        keep = np.abs(acc) > 0.5
        got, ref = got[keep], ref[keep]
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref[finite]).max())


def test_attention_scale_by_division_matches_onnxruntime():
    """BERT's scores / sqrt(d) (a multiply by 1/sqrt(d) in the kernel) + mask -> Softmax."""
    mk = helper.make_node
    nodes = [mk("MatMul", ["q", "k"], ["s"]), mk("Div", ["s", "sqrt_d"], ["sc"]), mk("Add", ["sc", "mask"], ["m"]),
             mk("Softmax", ["m"], ["p"], axis=-1)]
    model = make_model(nodes, [tensor("q", [1, 2, 16, 32]), tensor("k", [1, 2, 32, 64]), tensor("mask", [1, 1, 1, 64])],
                       [tensor("p", [1, 2, 16, 64])], [("sqrt_d", np.array(math.sqrt(32), np.float32))])
    feeds = {"q": _x(1, 2, 16, 32, scale=2.0), "k": _x(1, 2, 32, 64, scale=2.0),
             "mask": np.where(RNG.random((1, 1, 1, 64)) < 0.2, -1e4, 0.0).astype(np.float32)}
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    assert cm.kernel_count == 1
    np.testing.assert_allclose(cm.run(feeds)[0], ort_run(model, feeds)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("red,lanes,run", [(128, 8, 32), (64, 16, 64), (48, 8, 16), (24, 8, 8), (40, 8, 8),
                                           (48, 16, 16)])
def test_exp_runs_up_to_four_registers_that_divide_the_row(red, lanes, run):
    from tvmlite.backends.tvm.kernels.reduce import exp_run

    assert exp_run(red, lanes) == run


@pytest.mark.parametrize("lanes", [8, 16])
def test_scores_softmax_exp_in_chains_matches(lanes):
    """The fused scores kernel at each width: exp vectorized 4 registers a step, the rest one."""
    from tvmlite.backends.tvm.kernels.transformer import scores_softmax
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    n = 8 * lanes
    q, k = _x(1, 2, 8, 16, scale=2.0), _x(1, 2, 16, n, scale=2.0)
    mask = np.where(RNG.random((1, 1, 1, n)) < 0.3, -1e4, 0.0).astype(np.float32)
    epi = Epilogue([EwOp("Div", [("const", np.array(4.0, np.float32))]), EwOp("Add", [("value", "mask", mask.shape)])])
    kd = scores_softmax("s", "q", q.shape, "k", k.shape, out_value="p", out_shape=(1, 2, 8, n), epilogue=epi,
                        after=Epilogue(), lanes=lanes)
    assert f"T.vectorized({4 * lanes})" in kd.func.script()
    args, outs = kernel_args(kd, {"q": q, "k": k, "mask": mask})
    build_kernel(kd)["main"](*args)
    s = (q.astype(np.float64) @ k) / 4.0 + mask
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(outs[0].numpy().reshape(s.shape), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def _vector_map(fn, n: int, lanes: int = 8):
    """x -> fn(x) over n floats as a vectorized kernel (the way epilogues run): run(x) -> y."""
    from tvm import te

    from tvmlite.backends.tvm.kernels import schedules as S
    from tvmlite.backends.tvm.kernels.builder import Builder, schedule
    from tvmlite.backends.tvm.kernels.defs import KernelDef
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    b = Builder("m")
    X = b.input("x", (n,))
    func = b.finish([("y", te.compute((n,), lambda i: fn(X[i]), name="ew"))])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=False)
    kd = KernelDef("m", b.params, sch.mod["main"])
    lib = build_kernel(kd)["main"]

    def run(x):
        args, outs = kernel_args(kd, {"x": x})
        lib(*args)
        return outs[0].numpy()
    return run


SPECIALS = np.array([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 86.9, -86.9, 87.5, -87.5, 88.5, -88.5, 100.0, -100.0,
                     1e30, -1e30, np.inf, -np.inf, np.nan, 3.0, -3.0, 0.5], np.float32)


def _sweep(lo, hi):
    x = np.concatenate([np.linspace(lo, hi, 40000, dtype=np.float32), (RNG.standard_normal(8000) * 4).astype(np.float32)])
    return np.concatenate([x, SPECIALS, np.zeros((-(x.size + SPECIALS.size)) % 16, np.float32)])


@pytest.mark.parametrize("lanes", [8, 16])
def test_fast_exp_relative_error_and_limits(lanes):
    """fast_exp: within 4e-7 relative of e^x over float32's normal results, 0 below -87 (e^-87.5 is
    a denormal), NaN kept; past 88 it saturates at ~1.7e38 (float32's inf is e^88.73)."""
    from tvmlite.backends.tvm.kernels.fastmath import fast_exp

    x = _sweep(-87.0, 88.0)
    got = _vector_map(fast_exp, x.size, lanes)(x).astype(np.float64)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
    normal = (x >= -87.0) & (x <= 88.0)
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) < 4e-7
    assert np.all(got[x < -87.0] == 0.0)
    assert np.isnan(got[np.isnan(x)]).all()
    big = x > 88.0
    assert np.all((got[big] > 1.6e38) & np.isfinite(got[big]))


@pytest.mark.parametrize("lanes", [8, 16])
def test_fast_sigmoid_and_silu_match_float64(lanes):
    """Sigmoid and SiLU (x / (1 + e^-x)): within 4e-7 relative of float64 (SiLU: of its largest value
    near 0, where it crosses zero), exact 0 and 1 far out, NaN kept, +-inf as x * sigmoid(x) gave."""
    from tvmlite.backends.tvm.kernels.fastmath import fast_sigmoid, fast_silu

    x = _sweep(-120.0, 120.0)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        sig = 1.0 / (1.0 + np.exp(-x64))
        silu = x64 * sig
    s = _vector_map(fast_sigmoid, x.size, lanes)(x).astype(np.float64)
    y = _vector_map(fast_silu, x.size, lanes)(x).astype(np.float64)
    fin = np.isfinite(x)
    normal = fin & (x > -80.0)  # below, sigmoid is under 2e-35 (exp(-x) clamped at 87: ~6e-39)
    assert np.max(np.abs(s[fin] - sig[fin])) < 4e-7 and np.max(np.abs(s[normal] - sig[normal]) / sig[normal]) < 4e-7
    assert np.all(s[x > 20.0] <= 1.0) and np.all(s[x >= 87.0] == 1.0) and np.all(s[x <= -80.0] < 2e-35)
    near = fin & (np.abs(x) <= 20)
    assert np.max(np.abs(y[near] - silu[near]) / np.maximum(np.abs(silu[near]), 1.0)) < 4e-7
    far = normal & (np.abs(x) > 20)
    assert np.max(np.abs(y[far] - silu[far]) / np.abs(silu[far])) < 4e-7
    low = fin & (x <= -80.0)  # x times at most sigmoid(-80) (past -87: e^87 clamped), as x * sigmoid(x) was
    assert np.all(np.abs(y[low]) <= np.abs(x64[low]) * 2e-35)
    assert np.isnan(s[np.isnan(x)]).all() and np.isnan(y[np.isnan(x)]).all()
    assert s[x == np.inf][0] == 1.0 and s[x == -np.inf][0] < 1e-38
    assert y[x == np.inf][0] == np.inf and y[x == -np.inf][0] == -np.inf


@pytest.mark.parametrize("rows,red,lanes,log", [(40, 6625, 8, False), (3, 21, 8, True), (4, 37, 16, False),
                                                (2, 13, 8, False), (5, 7, 8, True), (2, 64, 8, False)])
def test_ragged_softmax_rows_run_in_vectors_and_match(rows, red, lanes, log):
    """A row of no whole number of vectors (PP-OCR rec's 6625 classes; 21, 37) reduces and
    exponentiates whole vectors (the padding repeats the last value for the max and adds 0 to the
    sum) and writes its norm as vectors plus a scalar tail; a row under two vectors (13, 7) stays
    scalar, a whole one (64) as before. Large negative and equal values included."""
    from tvmlite.backends.tvm.kernels.reduce import softmax
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    x = _x(rows, red, scale=4.0)
    x[0, -1] = 30.0  # the row's max in its last (ragged) element
    x[-1, :] = -1e4
    kd = softmax("s", "x", x.shape, axis=-1, log=log, opset=13, out_value="y", epilogue=Epilogue(), lanes=lanes)
    text = kd.func.script()
    assert ("vectorize_norm" in kd.steps) == (red >= 2 * lanes)
    if red % lanes and red >= 2 * lanes:
        assert "norm_" in text and "partition" in text  # whole vectors, then the tail
    args, outs = kernel_args(kd, {"x": x})
    build_kernel(kd)["main"](*args)
    x64 = x.astype(np.float64)
    s = x64 - x64.max(-1, keepdims=True)
    ref = s - np.log(np.exp(s).sum(-1, keepdims=True)) if log else np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    np.testing.assert_allclose(outs[0].numpy().reshape(rows, red), ref, rtol=1e-5, atol=1e-6)


def test_long_softmax_rows_match_onnxruntime():
    """Softmax over 6625 classes x 40 steps (PP-OCR rec's head) through the backend, one kernel."""
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=2)]
    model = make_model(nodes, [tensor("x", [1, 40, 6625])], [tensor("y", [1, 40, 6625])])
    feeds = {"x": _x(1, 40, 6625, scale=5.0)}
    cm = compile_model(load(model), {"x": feeds["x"].shape})
    assert cm.kernel_count == 1
    np.testing.assert_allclose(cm.run(feeds)[0], ort_run(model, feeds)[0], rtol=1e-5, atol=1e-7)
