"""Data-aware int8 weight rounding (tvmlite/quant/rounding.py): GPTQ on the per-channel int8 grid,
bias correction, im2col rows, and the quantize pass's weight_rounding / bias_correction options."""
import numpy as np
import pytest
from onnx import helper

import tvmlite
from tvmlite.errors import OptionError
from tvmlite.ir.graph import Node
from tvmlite.passes import Pipeline
from tvmlite.passes.quantize import Quantize
from tvmlite.quant import rounding
from tvmlite.quant.params import quantize_weight, weight_scales

from helpers import make_model, ort_run, refused_passes, tensor


def _correlated(rng, m, k):
    """Rows whose columns are strongly correlated (as neighbouring channels of real activations)."""
    return (rng.standard_normal((m, 4)) @ rng.standard_normal((4, k)) + 0.05 * rng.standard_normal((m, k)))


def test_gptq_lowers_output_error_on_the_same_grid():
    rng = np.random.default_rng(0)
    x = _correlated(rng, 512, 32)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    scales = weight_scales(w, 1)
    near = quantize_weight(w, scales, 1).astype(np.float64) * scales
    q = rounding.gptq_int8(w, x.T @ x, scales)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
    gptq = q.astype(np.float64) * scales
    err_near = np.linalg.norm(x @ (near - w))
    err_gptq = np.linalg.norm(x @ (gptq - w))
    assert err_gptq < 0.6 * err_near
    # with uncorrelated, equal-variance inputs there is nothing to compensate: nearest rounding
    eye = np.eye(32) * 100.0
    np.testing.assert_array_equal(rounding.gptq_int8(w, eye, scales, damp=0.0), quantize_weight(w, scales, 1))


def _naive_conv(x, w, pads, strides, dilations):
    t, l_, b, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l_, r)))
    kh, kw = w.shape[2:]
    ho = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * strides[0]:i * strides[0] + (kh - 1) * dilations[0] + 1:dilations[0],
                       j * strides[1]:j * strides[1] + (kw - 1) * dilations[1] + 1:dilations[1]]
            y[:, :, i, j] = np.einsum("bckl,ockl->bo", patch, w)
    return y


@pytest.mark.parametrize("pads,strides,dilations", [([1, 1, 1, 1], [1, 1], [1, 1]),
                                                    ([0, 1, 2, 0], [2, 1], [1, 2])])
def test_im2col_rows_times_weight_matrix_is_the_conv(pads, strides, dilations):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    node = Node("Conv", ["x", "w"], ["y"], attrs=dict(pads=pads, strides=strides, dilations=dilations))
    rows = rounding.input_rows(node, x, w.shape)
    y = _naive_conv(x, w, pads, strides, dilations)
    np.testing.assert_allclose(rows @ rounding.as_matrix(node, w), np.moveaxis(y, 1, -1).reshape(-1, 4),
                               rtol=1e-10, atol=1e-10)


def test_why_not_refuses_what_it_cannot_round():
    g = tvmlite.load(_model()).graph
    by_name = {n.name: n for n in g.nx.nodes}
    assert rounding.why_not(g, by_name["conv"]) is None
    assert rounding.why_not(g, by_name["dw"]) is None  # depthwise: bias correction only
    grouped = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="g", group=2)],
                         [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 3, 3])],
                         [("w", np.ones((4, 2, 3, 3), np.float32))])
    gg = tvmlite.load(grouped).graph
    assert "not depthwise" in rounding.why_not(gg, next(iter(gg.nx.nodes)))


def _model(seed=0, bias=True):
    """conv (3x3, bias or not) -> Relu -> depthwise conv -> Relu -> 1x1 conv, on inputs with a mean."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    w[:, 0] *= 8  # an outlier input channel: a coarse grid for every output channel
    dw = (rng.standard_normal((16, 1, 3, 3)) * 0.3).astype(np.float32)
    pw = (rng.standard_normal((8, 16, 1, 1)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "dw_w", "dw_b"], ["d"], name="dw", group=16, pads=[1] * 4),
             helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "pw"], ["y"], name="pw")]
    inits = [("w", w), ("dw_w", dw), ("dw_b", np.zeros(16, np.float32)), ("pw", pw)]
    if bias:
        inits.append(("b", (rng.standard_normal(16) * 0.1).astype(np.float32)))
    return make_model(nodes, [tensor("x", ["N", 8, 10, 10])], [tensor("y", ["N", 8, 10, 10])], inits, opset=13)


def _inputs(seed, n=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 10, 10)).astype(np.float32)
    x += np.linspace(-1, 2, 8, dtype=np.float32)[:, None, None]  # per-channel means
    x[:, 1:] = 0.7 * x[:, :1] + 0.3 * x[:, 1:]  # correlated channels
    return x


def _weights_only_error(proto, **opts):
    x, x_eval = _inputs(3), _inputs(4, 8)
    m = tvmlite.load(proto)
    r = Quantize(calibration={"x": x}, progress=False, layers=[], **opts)(m)
    ref = ort_run(proto, {"x": x_eval})[0]
    got = ort_run(tvmlite.export_model(m), {"x": x_eval})[0]
    err = got.astype(np.float64) - ref
    return np.linalg.norm(err) / np.linalg.norm(ref), np.abs(err.mean(axis=(0, 2, 3))).max(), r


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_and_gptq_lower_the_weight_only_error(bias):
    proto = _model(bias=bias)
    near, near_mean, r0 = _weights_only_error(proto)
    assert r0.stats["int8_weight_only"] == 3 and "weights_rounded_from_data" not in r0.stats
    bc, bc_mean, r1 = _weights_only_error(proto, bias_correction=True)
    assert r1.stats["weights_rounded_from_data"] == 3
    assert bc_mean < 0.5 * near_mean and bc < near
    gp, _, _ = _weights_only_error(proto, weight_rounding="gptq", bias_correction=True)
    assert gp < 0.8 * bc, (near, bc, gp)


def test_bias_correction_in_qdq_layers_matches_onnxruntime_int8():
    proto = _model(bias=False)
    x, x_eval = _inputs(5), _inputs(6, 8)
    errs = {}
    for opts in ({}, {"weight_rounding": "gptq", "bias_correction": True}):
        m = tvmlite.load(proto)
        r = Quantize(calibration={"x": x}, progress=False, mode="all", **opts)(m)
        assert r.stats["int8_nodes"] >= 3
        out = tvmlite.export_model(m)
        ref = ort_run(proto, {"x": x_eval})[0]
        errs[bool(opts)] = np.linalg.norm(ort_run(out, {"x": x_eval})[0] - ref) / np.linalg.norm(ref)
        conv = next(n for n in out.graph.node if n.op_type == "Conv" and n.name == "conv")
        assert (len(conv.input) == 3 and conv.input[2] != "") == bool(opts)  # a corrected bias was added
    assert errs[True] < errs[False]


def test_bias_not_corrected_where_it_cannot_be():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    stats = rounding.InputStats(6)
    stats.update(rng.standard_normal((100, 6)) + 1)
    mm = Node("MatMul", ["x", "w"], ["y"])
    assert rounding.round_weight(mm, w, None, stats, "nearest", True).bias is None  # no bias input
    gemm = Node("Gemm", ["x", "w", "c"], ["y"], attrs={"alpha": 0.5})
    assert not rounding._bias_correctable(gemm, w, np.zeros(4, np.float32))
    plain = Node("Gemm", ["x", "w", "c"], ["y"])
    assert not rounding._bias_correctable(plain, w, np.zeros((3, 4), np.float32))  # [M, N] C
    assert rounding._bias_correctable(plain, w, np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        rounding.round_weight(mm, w, None, stats, "adaround", False)


def test_replay_reuses_the_rounded_weights(monkeypatch):
    proto = _model()
    m = tvmlite.load(proto)
    p = Quantize(calibration={"x": _inputs(3)}, progress=False, mode="all", weight_rounding="gptq",
                 bias_correction=True)
    r = p(m)
    called = []
    monkeypatch.setattr("tvmlite.passes.quantize.round_weights", lambda *a, **k: called.append(1) or {})
    again = p.replay(r, ["pw"])
    m2 = tvmlite.load(proto)
    again(m2)
    assert not called and again.options.rounded_weights


def test_bad_weight_rounding_option():
    with pytest.raises(OptionError):
        Pipeline("quantize(weight_rounding=adaround)").run(tvmlite.load(_model()))
    with pytest.raises(OptionError):
        Pipeline("quantize(rounded_weights=x)").run(tvmlite.load(_model()))


def test_cli_refuses_a_bad_weight_rounding(tmp_path):
    line = refused_passes(tmp_path, _model(), "quantize(weight_rounding=adaround)")
    assert "weight_rounding" in line and "gptq" in line
