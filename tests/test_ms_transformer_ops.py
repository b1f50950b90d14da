"""The NumPy kernels of onnxruntime's fused transformer ops (tvmlite/ops/ms_transformer.py) against
onnxruntime's own CPU kernels on random data: Attention, QAttention (per tensor and per column),
SkipLayerNormalization, BiasGelu, Gelu; masks raw 2-D, 3-D and end positions."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from helpers import u8u8_inputs
from tvmlite.errors import UnsupportedError
from tvmlite.ops import ms_transformer as mt

MS = "com.microsoft"


def _run_ort(op, inputs: dict, outputs: int = 1, **attrs):
    names = list(inputs)
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for n, v in inputs.items() if v is not None]
    ins = [n if inputs[n] is not None else "" for n in names]
    while ins and not ins[-1]:
        ins.pop()
    outs = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, ins, outs, domain=MS, **attrs)
    graph = helper.make_graph([node], "g", vis, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                 for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {n: v for n, v in inputs.items() if v is not None})


def _mask(kind, rng, B, S):
    if kind == "none":
        return None
    if kind == "2d":
        m = np.ones((B, S), np.int32)
        m[0, S - 3:] = 0
        return m
    if kind == "3d":
        return (rng.random((B, S, S)) > 0.3).astype(np.int32) | np.eye(S, dtype=np.int32)[None]
    return np.array([S - 2, S][:B], np.int32)  # end positions


@pytest.mark.parametrize("mask", ["none", "2d", "3d", "1d"])
@pytest.mark.parametrize("heads,scale", [(4, None), (2, 0.3)])
def test_attention_matches_onnxruntime(mask, heads, scale):
    rng = np.random.default_rng(0)
    B, S, D = 2, 7, 16
    x = rng.standard_normal((B, S, D)).astype(np.float32)
    w = (rng.standard_normal((D, 3 * D)) * 0.3).astype(np.float32)
    b = rng.standard_normal(3 * D).astype(np.float32)
    m = _mask(mask, rng, B, S)
    attrs = {"num_heads": heads, **({"scale": scale} if scale else {})}
    ref = _run_ort("Attention", {"x": x, "w": w, "b": b, "m": m}, **attrs)[0]
    got = mt.attention(x, w, b, m, **attrs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_attention_mask_filter_value_is_used():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    w = rng.standard_normal((8, 24)).astype(np.float32)
    b = np.zeros(24, np.float32)
    m = np.array([[1, 1, 0, 1, 0]], np.int32)
    for f in (-10000.0, -1.0):
        ref = _run_ort("Attention", {"x": x, "w": w, "b": b, "m": m}, num_heads=2, mask_filter_value=f)[0]
        np.testing.assert_allclose(mt.attention(x, w, b, m, num_heads=2, mask_filter_value=f), ref,
                                   rtol=1e-4, atol=1e-5)
    # -1 leaves masked keys some weight: the two filters must give different results
    assert not np.allclose(mt.attention(x, w, b, m, num_heads=2, mask_filter_value=-1.0),
                           mt.attention(x, w, b, m, num_heads=2))


@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("mask", ["none", "2d"])
def test_qattention_matches_onnxruntime(per_column, mask):
    rng = np.random.default_rng(2)
    B, S, D = 2, 6, 16
    x = rng.integers(0, 256, (B, S, D)).astype(np.uint8)
    w = rng.integers(-127, 128, (D, 3 * D)).astype(np.int8)
    b = rng.standard_normal(3 * D).astype(np.float32)
    xs = np.array(0.02, np.float32)
    ws = (rng.random(3 * D) * 0.01 + 0.001).astype(np.float32) if per_column else np.array(0.004, np.float32)
    xz = np.array(117, np.uint8)
    wz = np.zeros(ws.shape, np.int8)
    m = _mask(mask, rng, B, S)
    ins = {"x": x, "w": w, "b": b, "xs": xs, "ws": ws, "m": m, "xz": xz, "wz": wz}
    # without VNNI onnxruntime's u8s8 kernel saturates (up to 9 off): the reference runs as u8u8 there
    ref = _run_ort("QAttention", dict(zip(ins, u8u8_inputs("QAttention", list(ins.values())))), num_heads=4)[0]
    got = mt.qattention(x, w, b, xs, ws, m, xz, wz, num_heads=4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_skip_layer_normalization_matches_onnxruntime():
    rng = np.random.default_rng(3)
    x, s = rng.standard_normal((2, 5, 32)).astype(np.float32), rng.standard_normal((2, 5, 32)).astype(np.float32)
    g, be, bi = (rng.standard_normal(32).astype(np.float32) for _ in range(3))
    ref = _run_ort("SkipLayerNormalization", {"x": x, "s": s, "g": g, "be": be, "bi": bi}, outputs=4,
                   epsilon=1e-5)
    got = mt.skip_layer_normalization(x, s, g, be, bi, epsilon=1e-5)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-6, atol=1e-6)
    ref2 = _run_ort("SkipLayerNormalization", {"x": x, "s": s, "g": g}, epsilon=1e-12)[0]
    np.testing.assert_allclose(mt.skip_layer_normalization(x, s, g)[0], ref2, rtol=1e-4, atol=1e-5)


def test_bias_gelu_and_gelu_match_onnxruntime():
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((3, 64)) * 3).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(mt.bias_gelu(a, b), _run_ort("BiasGelu", {"a": a, "b": b})[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mt.ms_gelu(a), _run_ort("Gelu", {"a": a})[0], rtol=1e-5, atol=1e-6)


def test_unsupported_attention_inputs_are_refused():
    x = np.zeros((1, 4, 8), np.float32)
    w = np.zeros((8, 24), np.float32)
    with pytest.raises(UnsupportedError, match="unidirectional"):
        mt.attention(x, w, num_heads=2, unidirectional=1)
    with pytest.raises(UnsupportedError, match="mask_index of shape"):
        mt.attention(x, w, None, np.ones((2, 1, 4, 4), np.int32), num_heads=2)
    with pytest.raises(UnsupportedError, match="num_heads=3"):
        mt.attention(x, w, num_heads=3)
