"""TVM backend, int8: the GEMM's dot step (kernels/qintrin.py). Without VNNI, AVX2's byte step
(`vpmaddubsw` + `vpmaddwd` by ones) runs only where no int16 pair sum can saturate: every pair of
weights it multiplies has positive parts summing to at most 128 and negative parts to at least
-128. At the bound it is exact with activations of 255; one over, the kernel keeps the exact int16
step (and the byte step, forced, would be wrong: the check is needed)."""
from __future__ import annotations

import numpy as np
import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm.kernels import qgemm, target  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, window_2d  # noqa: E402
from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, conv2d_int8, dense_int8  # noqa: E402
from tvmlite.backends.tvm.kernels.qintrin import DotStep, bytes_exact, dot_step  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402

RNG = np.random.default_rng(3)


def _col(*pairs) -> np.ndarray:
    return np.array(pairs, np.int8).reshape(-1, 1)


@pytest.mark.parametrize("pairs, ok", [
    (((64, 64), (127, 1), (1, 127)), True),      # positive parts at 128
    (((-64, -64), (-128, 0), (0, -128)), True),  # negative parts at -128
    (((127, -127), (-128, 127)), True),          # mixed signs: each part within 128
    (((65, 64),), False), (((-65, -64),), False), (((127, 2),), False), (((-128, -1),), False),
])
def test_bytes_exact_checks_each_pair(pairs, ok):
    assert bytes_exact(_col(*pairs)) is ok


def test_bytes_exact_pairs_as_the_step_does():
    # (1, 127), (127, 1): the neighbours 127, 127 are in different pairs, so exact
    assert bytes_exact(np.array([[1], [127], [127], [1]], np.int8))
    assert not bytes_exact(np.array([[127], [127], [1], [1]], np.int8))
    # odd K: the last weight pairs with the zero padding
    assert bytes_exact(np.array([[64], [64], [-128]], np.int8))
    # columns are separate: one bad column refuses the whole matrix (one step per kernel)
    w = np.zeros((4, 3), np.int8)
    w[:2, 1] = (100, 29)
    assert not bytes_exact(w)
    assert bytes_exact(RNG.integers(-63, 64, (256, 64), dtype=np.int8))  # 7-bit weights: always


@pytest.mark.parametrize("vnni", [True, False])
def test_dot_step_choice(vnni, monkeypatch):
    monkeypatch.setattr(target, "has_vnni", lambda: vnni)
    w7 = RNG.integers(-63, 64, (64, 16), dtype=np.int8)
    w8 = w7.copy()
    w8[0, 0], w8[1, 0] = 127, 2
    assert dot_step(w7).step == ("int8_vnni" if vnni else "int8_avx2_u8")
    assert dot_step(w8).step == ("int8_vnni" if vnni else "int8_avx2")
    assert dot_step().step == ("int8_vnni" if vnni else "int8_avx2")
    step = dot_step(w7)
    assert (step.lanes, step.group, np.dtype(step.w_dtype), step.a_dtype) == (
        (16, 4, np.int8, "uint8") if vnni else (8, 4, np.int8, "uint8"))
    assert (dot_step(w8).lanes, np.dtype(dot_step(w8).w_dtype)) == ((16, np.int8) if vnni else (8, np.int16))


def _weights_at(top: int, n: int = 24, k: int = 64) -> np.ndarray:
    """int8 [K, N] whose pairs reach ``top`` (positive in even columns, negative in odd ones)."""
    w = RNG.integers(-20, 21, (k, n)).astype(np.int8)
    lo = top // 2
    w[0::2, 0::2], w[1::2, 0::2] = lo, top - lo
    w[0::2, 1::2], w[1::2, 1::2] = -lo, -(top - lo)
    w[:4, 2] = (127, top - 127, top - 127, 127)
    return w


def _run_dense(wq, step=None, monkeypatch=None):
    from tvmlite.backends.tvm.kernels.target import host_target
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    if step is not None:
        monkeypatch.setattr(qgemm, "dot_step", lambda w2=None: step)
    k, n = wq.shape
    ws = RNG.uniform(0.01, 0.02, n).astype(np.float32)
    spec = QuantSpec(0.05, 3, 1)  # int8 activations: uint8 = q + 128
    kd = dense_int8("g", "a", (6, k), wq, ws, None, spec, out_value="c", out_shape=(6, n), epilogue=Epilogue())
    a = RNG.standard_normal((6, k)).astype(np.float32)
    a[0], a[1] = 100.0, -100.0  # uint8 255 and 0 in every column
    a[2, 0::2], a[2, 1::2] = 100.0, -100.0
    lib = build_kernel(kd, host_target())
    args, (out,) = kernel_args(kd, {"a": a})
    lib["main"](*args)
    aq = np.clip(np.rint(a / np.float32(0.05)) + 3, -128, 127) - 3
    ref = (aq @ wq.astype(np.float64)) * np.float32(0.05) * ws
    return kd, out.numpy(), ref


def _asm(kd) -> str:
    import tvm

    from tvmlite.backends.tvm.kernels.target import host_target

    mod = tvm.compile(kd.func, target=host_target())
    return mod.mod.inspect_source("asm") if hasattr(mod, "mod") else mod.inspect_source("asm")


def test_byte_step_is_exact_at_the_bound(monkeypatch):
    monkeypatch.setattr(target, "has_vnni", lambda: False)
    wq = _weights_at(128)
    kd, got, ref = _run_dense(wq)
    assert kd.steps == ["int8_avx2_u8"]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    asm = _asm(kd)
    assert "vpmaddubsw" in asm and "vpdpbusd" not in asm


def test_one_over_the_bound_keeps_the_exact_step(monkeypatch):
    monkeypatch.setattr(target, "has_vnni", lambda: False)
    wq = _weights_at(129)
    kd, got, ref = _run_dense(wq)
    assert kd.steps == ["int8_avx2"]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    # the byte step forced on these weights saturates: what the check prevents
    kd, got, ref = _run_dense(wq, DotStep(False, u8=True), monkeypatch)
    assert kd.steps == ["int8_avx2_u8"]
    assert np.abs(got - ref).max() > 1e-3 * np.abs(ref).max()


def _conv_ref(xq, wq, pads):
    """int conv NCHW (stride 1) of integer xq [N, C, H, W] (already minus its zero point)."""
    xp = np.pad(xq, ((0, 0), (0, 0), (pads, pads), (pads, pads)))
    co, ci, kh, kw = wq.shape
    n, _, hp, wp = xp.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    cols = np.stack([xp[:, :, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)], axis=2)
    return np.einsum("nctyx,oct->noyx", cols, wq.reshape(co, ci, kh * kw).astype(np.float64))


def test_stem_quantizes_its_float_input_in_its_own_layout_first():
    """A 3-channel float NCHW input (a stem conv, stride 2) is quantized plane by plane, contiguous
    and vectorized (stage "xu"), before the channels-last padded copy; the integers are the same."""
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    ci, co, h = 3, 16, 14
    wq = RNG.integers(-127, 128, (co, ci, 3, 3)).astype(np.int8)
    ws = RNG.uniform(0.01, 0.02, co).astype(np.float32)
    x = (RNG.standard_normal((1, ci, h, h)) * 3).astype(np.float32)
    geom = window_2d(WindowGeometry.conv({"pads": [1, 1, 1, 1], "strides": [2, 2]}, x.shape, wq.shape))
    kd = conv2d_int8("c", "x", x.shape, wq, ws, None, QuantSpec(0.04, 130, 0), geom, out_value="y",
                     out_shape=(1, co, 7, 7), epilogue=Epilogue())
    assert 'T.sblock("xu")' in kd.func.script()
    lib = build_kernel(kd)
    args, (out,) = kernel_args(kd, {"x": x})
    lib["main"](*args)
    xq = np.clip(np.rint(x / np.float32(0.04)) + 130, 0, 255) - 130
    ref = _conv_ref(xq, wq, 1)[:, :, ::2, ::2] * np.float32(0.04) * ws.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(out.numpy().reshape(ref.shape), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("batch, bits", [(1, 7), (2, 7), (1, 8)])
def test_conv_takes_the_byte_step_with_7bit_weights(batch, bits, monkeypatch):
    from tvmlite.backends.tvm.kernels.target import host_target
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    monkeypatch.setattr(target, "has_vnni", lambda: False)
    top = 63 if bits == 7 else 127
    ci, co, h = 6, 16, 9
    wq = RNG.integers(-top, top + 1, (co, ci, 3, 3)).astype(np.int8)
    wq[0, :2, 0, 0] = top  # channel pairs (0, 1) at the top: 8-bit weights exceed the bound
    ws = RNG.uniform(0.01, 0.02, co).astype(np.float32)
    x = (RNG.standard_normal((batch, ci, h, h)) * 3).astype(np.float32)
    x[:, :2] = 100.0  # uint8 255
    geom = window_2d(WindowGeometry.conv({"pads": [1, 1, 1, 1]}, x.shape, wq.shape))
    kd = conv2d_int8("c", "x", x.shape, wq, ws, None, QuantSpec(0.04, 130, 0), geom, out_value="y",
                     out_shape=(batch, co, h, h), epilogue=Epilogue())
    assert kd.steps == ["int8_avx2_u8" if bits == 7 else "int8_avx2"]
    lib = build_kernel(kd, host_target())
    args, (out,) = kernel_args(kd, {"x": x})
    lib["main"](*args)
    xq = np.clip(np.rint(x / np.float32(0.04)) + 130, 0, 255) - 130
    ref = _conv_ref(xq, wq, 1) * np.float32(0.04) * ws.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(out.numpy().reshape(ref.shape), ref, rtol=1e-6, atol=1e-5)


def test_reduce_range_model_runs_the_byte_step_and_matches_onnxruntime(tmp_path, monkeypatch):
    """onnxruntime's quantize_static with reduce_range writes 7-bit weights: without VNNI every
    int8 kernel of the model takes the byte step, within one output step of onnxruntime."""
    ortq = pytest.importorskip("onnxruntime.quantization")
    from onnx import helper

    from helpers import make_model, ort_qdq, tensor
    from test_tvm_int8 import _ort_quantize_static, _output_step

    from tvmlite.backends.tvm import compile_model
    from tvmlite.frontend import load

    monkeypatch.setattr(target, "has_vnni", lambda: False)
    chosen = []
    monkeypatch.setattr(qgemm, "dot_step", lambda w2=None: chosen.append(dot_step(w2)) or chosen[-1])
    w1 = (RNG.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((24, 16, 1, 1)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 8, 10, 10])], [tensor("y", [1, 24, 10, 10])],
                       [("w1", w1), ("b1", RNG.standard_normal(16).astype(np.float32)), ("w2", w2)], opset=17)
    dst = _ort_quantize_static(ortq, model, tmp_path, (1, 8, 10, 10), reduce_range=True)
    cm = compile_model(load(str(dst)), {"x": (1, 8, 10, 10)}, cache=False)
    assert [s.step for s in chosen] == ["int8_avx2_u8"] * 2
    step = _output_step(dst)
    for _ in range(2):
        x = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
        (got,), (ref,) = cm.run({"x": x}), ort_qdq(str(dst), {"x": x})
        np.testing.assert_array_less(np.abs(got - ref), step + 1e-6)
