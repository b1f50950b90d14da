"""Conv lowering (im2col, MEC, Winograd): the ops, the passes, and accuracy in NumPy and onnxruntime.

Bounds (issue 3), as max |error| / max |reference| per output: im2col and MEC <= 1e-5, Winograd
F(2) <= 1e-5, F(4) <= 1e-4, F(6) <= 1e-3.
"""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.lowering import ConvInfo, conv_info
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.ir.graph import tensor_type
from tvmlite.ops.lowered import winograd_matrices

from conftest import corpus_model
from helpers import make_model, ort_run, tensor
from models_under_test import example_model

BOUND = {"lower-conv": 1e-5, "lower-conv(layout=mec)": 1e-5, "winograd(m=2)": 1e-5, "winograd(m=4)": 1e-4,
         "winograd(m=6)": 1e-3}
LOWERINGS = ["lower-conv", "lower-conv(layout=mec)"]
WINOGRADS = ["winograd(m=2)", "winograd(m=4)", "winograd(m=6)"]


def rel_err(ref, got):
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def conv_model(x_shape, w_shape, bias=True, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    inits = [("w", w)]
    ins = ["x", "w"]
    if bias:
        inits.append(("b", rng.standard_normal(w_shape[0]).astype(np.float32)))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], name="conv", **attrs)
    out = tensor("y", ["N", w_shape[0]] + [None] * (len(x_shape) - 2))
    return make_model([node], [tensor("x", ["N"] + list(x_shape[1:]))], [out], inits)


def check_lowering(proto, spec, x, *, expect_rewritten=1):
    """Lower with ``spec``; the NumPy backend and onnxruntime (exported model) both match the
    original model in onnxruntime within the spec's bound. Returns the pass result."""
    ref = ort_run(proto, {"x": x})[0].astype(np.float64)
    m = tvmlite.load(proto)
    result = Pipeline(spec).run(m)[0]
    assert len(result.rewritten) == expect_rewritten, result.skipped
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    got_np = compile_model(m).run({"x": x})[0]
    got_ort = ort_run(out, {"x": x})[0]
    assert got_np.shape == ref.shape and got_ort.shape == ref.shape
    assert got_np.dtype == np.float32
    for where, got in (("numpy", got_np), ("onnxruntime", got_ort)):
        err = rel_err(ref, got)
        assert err <= BOUND[spec], f"{spec} in {where}: relative error {err:.3g}"
    return result, m


# ----------------------------------------------------------------------------------- Cook–Toom
def test_f23_matches_the_seed_matrices_up_to_scaling():
    seed_at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    seed_g = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    seed_bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
    at, g, bt = winograd_matrices(2, 3)
    for k in range(4):  # each evaluation point's triple is the seed's up to scale factors multiplying to 1
        sa = at[:, k] @ seed_at[:, k] / (seed_at[:, k] @ seed_at[:, k])
        sg = g[k] @ seed_g[k] / (seed_g[k] @ seed_g[k])
        sb = bt[k] @ seed_bt[k] / (seed_bt[k] @ seed_bt[k])
        np.testing.assert_allclose(at[:, k], sa * seed_at[:, k], atol=1e-12)
        np.testing.assert_allclose(g[k], sg * seed_g[k], atol=1e-12)
        np.testing.assert_allclose(bt[k], sb * seed_bt[k], atol=1e-12)
        assert sa * sg * sb == pytest.approx(1.0)


@pytest.mark.parametrize("m", [2, 3, 4, 5, 6])
def test_cook_toom_computes_correlation_exactly(m):
    at, g, bt = winograd_matrices(m, 3)
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    want = np.array([d[i:i + 3] @ w for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), want, rtol=1e-12, atol=1e-12)
    # 2-D nesting: Aᵀ[(G w Gᵀ) ⊙ (Bᵀ d B)]A is the 2-D correlation of a tile
    d2, w2 = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    want2 = np.array([[np.sum(d2[i:i + 3, j:j + 3] * w2) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w2 @ g.T) * (bt @ d2 @ bt.T)) @ at.T, want2, atol=1e-11)


def test_cook_toom_rejects_wrong_point_counts():
    with pytest.raises(tvmlite.errors.UnsupportedError):
        winograd_matrices(4, 3, (0, 1, -1))


# ------------------------------------------------------------------------- im2col / MEC on all convs
CONV_CASES = {
    "2d_pad1": ((2, 6, 9, 11), (8, 6, 3, 3), {"pads": [1, 1, 1, 1]}),
    "2d_valid_nobias": ((2, 6, 9, 11), (8, 6, 3, 3), {"auto_pad": "VALID"}),
    "2d_same_upper_s2": ((1, 5, 10, 9), (7, 5, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "2d_same_lower_s2_k4": ((1, 5, 10, 9), (7, 5, 4, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    "2d_dilated_asym_pads": ((2, 4, 12, 13), (6, 4, 3, 3), {"dilations": [2, 3], "pads": [0, 2, 3, 1]}),
    "2d_stride_and_dilation": ((1, 4, 15, 15), (6, 4, 3, 5), {"dilations": [2, 1], "strides": [3, 2]}),
    "2d_groups": ((2, 8, 7, 7), (12, 2, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    "2d_depthwise": ((2, 6, 8, 9), (6, 1, 5, 5), {"group": 6, "pads": [2, 2, 2, 2], "strides": [2, 1]}),
    "2d_depthwise_mult2": ((1, 3, 8, 8), (6, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    "2d_1x1_strided": ((2, 8, 9, 9), (4, 8, 1, 1), {"strides": [2, 2]}),
    "1d": ((2, 5, 20), (7, 5, 3), {"pads": [1, 2], "strides": [2]}),
    "1d_same_groups": ((1, 6, 17), (6, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [2], "group": 2}),
    "1d_dilated_groups": ((1, 6, 17), (6, 3, 3), {"pads": [2, 1], "dilations": [2], "group": 2}),
}


@pytest.mark.parametrize("spec", LOWERINGS)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_lower_conv_matches_onnxruntime(case, spec):
    x_shape, w_shape, attrs = CONV_CASES[case]
    proto = conv_model(x_shape, w_shape, bias="nobias" not in case, **attrs)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    result, m = check_lowering(proto, spec, x)
    ops = {n.op_type for n in m.graph.nx.nodes}
    assert "Conv" not in ops
    dec = result.decisions[0]
    mec_ok = len(x_shape) == 4 and attrs.get("group", 1) == 1
    if spec.endswith("mec)") and mec_ok:
        assert {"MecLower", "MecMatMul"} <= ops and dec["choice"] == "mec"
    else:
        assert "Im2Col" in ops and dec["choice"] == "im2col"
    assert dec["im2col_bytes"] > 0 and dec["mec_bytes"] > 0


def test_mec_lowered_matrix_is_smaller_and_reported():
    proto = conv_model((1, 16, 28, 28), (16, 16, 3, 3), pads=[1, 1, 1, 1])
    m = tvmlite.load(proto)
    r = Pipeline("lower-conv(layout=mec)").run(m)[0]
    # im2col: C*9 x 28*28 floats; MEC: 28 columns x 30 padded rows x C*3
    assert r.stats["im2col_bytes"] == 16 * 9 * 28 * 28 * 4
    assert r.stats["mec_bytes"] == 28 * 30 * 16 * 3 * 4
    assert r.decisions[0]["mec_saving"] == pytest.approx(2.8, abs=0.01)


def test_lowering_skips_what_it_cannot_do():
    rng = np.random.default_rng(0)
    w3 = rng.standard_normal((4, 2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x3", "w3"], ["y3"], name="conv3d"),
             helper.make_node("Conv", ["x", "wdyn"], ["y"], name="dynamic_w")]
    proto = make_model(nodes, [tensor("x3", [1, 2, 5, 5, 5]), tensor("x", [1, 2, 5, 5]), tensor("wdyn", [3, 2, 3, 3])],
                       [tensor("y3", [1, 4, 3, 3, 3]), tensor("y", [1, 3, 3, 3])], [("w3", w3)])
    for spec in ("lower-conv", "lower-conv(layout=mec)", "winograd"):
        m = tvmlite.load(proto)
        r = Pipeline(spec).run(m)[0]
        assert not r.changed
        reasons = dict(r.skipped)
        assert "3-D" in reasons["conv3d"] and "not constant" in reasons["dynamic_w"]


def test_bad_options_are_option_errors():
    with pytest.raises(OptionError):
        Pipeline("lower-conv(layout=nhwc)")
    with pytest.raises(OptionError):
        Pipeline("winograd(m=3)")


# ------------------------------------------------------------------------------------- Winograd
WINO_CASES = {
    "pad1_ragged": ((2, 6, 13, 11), {"pads": [1, 1, 1, 1]}),
    "valid_ragged": ((1, 6, 9, 14), {}),
    "same_lower": ((1, 6, 10, 7), {"auto_pad": "SAME_LOWER"}),
    "asym_pads": ((1, 6, 8, 8), {"pads": [0, 2, 1, 0]}),
    "exact_tiles_nobias": ((1, 6, 14, 14), {"pads": [1, 1, 1, 1]}),
    "tiny": ((3, 2, 3, 3), {"pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("spec", WINOGRADS)
@pytest.mark.parametrize("case", sorted(WINO_CASES))
def test_winograd_matches_onnxruntime(case, spec):
    x_shape, attrs = WINO_CASES[case]
    proto = conv_model(x_shape, (5, x_shape[1], 3, 3), bias="nobias" not in case, **attrs)
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    result, m = check_lowering(proto, spec, x)
    assert {"WinogradInput", "WinogradOutput", "MatMul"} == {n.op_type for n in m.graph.nx.nodes}


@pytest.mark.parametrize("spec", WINOGRADS)
def test_winograd_accuracy_on_wide_layers(spec):
    """Error grows with the channel count reduced in the GEMM: check at ResNet-like widths."""
    proto = conv_model((1, 128, 14, 14), (64, 128, 3, 3), pads=[1, 1, 1, 1], seed=3)
    x = np.abs(np.random.default_rng(3).standard_normal((1, 128, 14, 14))).astype(np.float32)  # post-ReLU
    check_lowering(proto, spec, x)


def test_winograd_multiplication_counts_and_skips():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="s1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w"], ["b"], name="s2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["b", "w"], ["c"], name="dil", pads=[2, 2, 2, 2], dilations=[2, 2]),
             helper.make_node("Conv", ["c", "w5"], ["d"], name="k5", pads=[2, 2, 2, 2]),
             helper.make_node("Conv", ["d", "wg"], ["y"], name="grp", pads=[1, 1, 1, 1], group=2)]
    inits = [("w", rng.standard_normal((4, 4, 3, 3)).astype(np.float32)),
             ("w5", rng.standard_normal((4, 4, 5, 5)).astype(np.float32)),
             ("wg", rng.standard_normal((4, 2, 3, 3)).astype(np.float32))]
    proto = make_model(nodes, [tensor("x", [1, 4, 16, 16])], [tensor("y", [1, 4, 8, 8])], inits)
    m = tvmlite.load(proto)
    r = Pipeline("winograd(m=4)").run(m)[0]
    assert r.rewritten == ["s1"]
    reasons = dict(r.skipped)
    assert "stride" in reasons["s2"] and "dilation" in reasons["dil"] and "3x3" in reasons["k5"]
    assert "group" in reasons["grp"]
    dec = r.decisions[0]
    assert dec["macs_direct"] / dec["macs_winograd"] == pytest.approx(4.0)  # 16x16 is 4x4 tiles exactly
    assert r.after["macs"] < r.before["macs"]


# ------------------------------------------------------------------------------- real models
def _all_conv_outputs(model):
    g = model.graph
    names = [n.outputs[0] for n in g.toposort() if n.op_type == "Conv"]
    for n in names:
        if n not in g.outputs:
            g.outputs.append(n)
    return names


def _check_real_model(path, feeds, specs, fixed_shapes=None):
    """Every Conv output of the lowered model (NumPy and onnxruntime) against the original model in
    onnxruntime, relative to that output's magnitude."""
    base = tvmlite.load(path)
    for name, shape in (fixed_shapes or {}).items():  # lowering specializes on spatial dims
        base.graph.value(name).type = tensor_type(np.float32, shape)
    conv_outs = _all_conv_outputs(base)
    ref_proto = export_model(base)
    ref = dict(zip([o.name for o in ref_proto.graph.output], ort_run(ref_proto, feeds)))
    for spec in specs:
        m = tvmlite.load(ref_proto)
        r = Pipeline(spec).run(m)[0]
        assert r.rewritten and not r.skipped, (spec, r.skipped)
        out = export_model(m)
        onnx.checker.check_model(out, full_check=True)
        got_ort = dict(zip([o.name for o in out.graph.output], ort_run(out, feeds)))
        plan = compile_model(m)
        got_np = dict(zip(plan.output_names, plan.run(feeds)))
        for name in conv_outs + list(base.graph.outputs[:1]):
            for where, got in (("numpy", got_np), ("onnxruntime", got_ort)):
                err = rel_err(ref[name].astype(np.float64), got[name])
                assert err <= BOUND[spec], f"{spec} {where} {name}: relative error {err:.3g}"


@pytest.mark.parametrize("name", ["digits_cnn.onnx", "digits_vgg.onnx"])
def test_example_models_all_lowerings(name):
    path = example_model().parent / name
    if not path.exists():
        pytest.skip(f"{path} not found (train it with models/train_digits.py)")
    x = np.load(path.parent / "digits_test.npz")["input"][:8].astype(np.float32)
    _check_real_model(str(path), {"input": x}, LOWERINGS + WINOGRADS)


def test_ppocr_cls_lowerings():
    path = corpus_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    _check_real_model(str(path), {"x": x}, LOWERINGS, {"x": ("N", 3, 48, 192)})


def test_conv_info_resolves_auto_pad():
    proto = conv_model((1, 3, 10, 9), (4, 3, 4, 3), auto_pad="SAME_LOWER", strides=[3, 2])
    m = tvmlite.load(proto)
    info = conv_info(m, next(iter(m.graph.nx.nodes)))
    assert isinstance(info, ConvInfo)
    assert info.out_spatial == (4, 5) and info.pads == [2, 1, 1, 1]


# ---------------------------------------------------------------------------------- choose-conv
def _two_layer_model():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="wide", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="depthwise", pads=[1, 1, 1, 1], group=32)]
    inits = [("w1", (rng.standard_normal((32, 32, 3, 3)) * 0.06).astype(np.float32)),
             ("b1", rng.standard_normal(32).astype(np.float32)),
             ("w2", (rng.standard_normal((32, 1, 3, 3)) * 0.3).astype(np.float32))]
    return make_model(nodes, [tensor("x", ["N", 32, 40, 40])], [tensor("y", ["N", 32, 40, 40])], inits)


@pytest.mark.parametrize("measure", [False, True])
def test_choose_conv_decides_per_layer_and_stays_accurate(measure):
    proto = _two_layer_model()
    x = np.random.default_rng(5).standard_normal((2, 32, 40, 40)).astype(np.float32)
    ref = ort_run(proto, {"x": x})[0]
    m = tvmlite.load(proto)
    r = Pipeline(f"choose-conv(measure={str(measure).lower()},repeats=2)").run(m)[0]
    decisions = {d["node"]: d for d in r.decisions}
    assert set(decisions) == {"wide", "depthwise"}
    assert {"winograd4", "mec", "im2col", "direct"} <= {k[3:] for k in decisions["wide"] if k.startswith("ms_")}
    assert not any(k.endswith("winograd4") for k in decisions["depthwise"])  # grouped: not a candidate
    for d in decisions.values():
        assert ("measured" if measure else "estimated") in d["reason"]
        assert d[f"ms_{d['choice']}"] == min(v for k, v in d.items() if k.startswith("ms_"))
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    for got in (compile_model(m).run({"x": x})[0], ort_run(out, {"x": x})[0]):
        assert rel_err(ref.astype(np.float64), got) <= 1e-3


def test_choose_conv_allow_list_and_cost_rule_prefers_winograd_on_big_layers():
    proto = conv_model((1, 64, 56, 56), (64, 64, 3, 3), pads=[1, 1, 1, 1])
    m = tvmlite.load(proto)
    r = Pipeline("choose-conv(allow=im2col|winograd4)").run(m)[0]
    assert r.decisions[0]["choice"] == "winograd4"
    assert {k for k in r.decisions[0] if k.startswith("ms_")} == {"ms_im2col", "ms_winograd4"}
    with pytest.raises(OptionError):
        Pipeline("choose-conv(allow=fft)")


def test_strassen_matches_blas_and_is_off_by_default(monkeypatch):
    from tvmlite.ops import nn, strassen

    rng = np.random.default_rng(6)
    a = rng.standard_normal((97, 130)).astype(np.float32)
    b = rng.standard_normal((130, 111)).astype(np.float32)
    want = a.astype(np.float64) @ b
    got = strassen.strassen_matmul(a, b, leaf=16)  # odd sizes: padded at every level
    assert got.dtype == np.float32 and rel_err(want, got) < 1e-5
    assert strassen.STRASSEN_MIN_DIM == 0 and not strassen.wants_strassen(a, b)
    monkeypatch.setattr(strassen, "STRASSEN_MIN_DIM", 64)
    monkeypatch.setattr(strassen, "STRASSEN_LEAF", 32)
    assert strassen.wants_strassen(a, b) and not strassen.wants_strassen(a, b[:, :20])
    assert rel_err(want, nn.matmul(a, b)) < 1e-5
