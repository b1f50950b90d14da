"""quantize-dynamic(smooth=...): SmoothQuant scaling in front of the dynamic int8 MatMuls, checked
against the float model in onnxruntime and against the NumPy backend."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.passes import parse_spec
from tvmlite.quant.smooth import choose_alpha, smooth_scales

from helpers import ort_exact, ort_run, refused_passes

H, F = 64, 128


def _outlier_mlp(seed=0) -> onnx.ModelProto:
    """x -> LayerNorm (one channel's gamma 25x: a transformer's outlier channel) -> {up, side}
    MatMuls sharing it -> Relu -> down MatMul (+ bias). Q/K/V-like sharing and an FFN in one."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(H, np.float32)
    gamma[5] = 25.0
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(H, np.float32), "beta")]
    for name, shape in (("w_up", (H, F)), ("w_side", (H, H)), ("w_down", (F, H))):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name))
    inits.append(numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "b_down"))
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w_up"], ["up"], name="up"),
             helper.make_node("MatMul", ["ln", "w_side"], ["side"], name="side"),
             helper.make_node("Relu", ["up"], ["act"]),
             helper.make_node("MatMul", ["act", "w_down"], ["down"], name="down"),
             helper.make_node("Add", ["down", "b_down"], ["y"]),
             helper.make_node("Add", ["y", "side"], ["out"])]
    g = helper.make_graph(nodes, "outlier_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", H])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "S", H])], inits)
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p.ir_version = 8
    return p


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 48, H)).astype(np.float32)} for _ in range(n)]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _quantized(spec, src, tmp_path, name, calib=None):
    m = tvmlite.load(src)
    p = parse_spec(spec)[0]
    p.options.calibration = calib
    r = p.run(m)
    out = tmp_path / f"{name}.onnx"
    tvmlite.save(m, str(out))
    return m, r, str(out)


def test_smooth_lowers_the_error_and_onnxruntime_and_numpy_agree(tmp_path):
    src = _outlier_mlp()
    calib, feeds = _data(4, 1), _data(1, 2)[0]
    ref = ort_run(src, feeds)[0]
    _, _, plain = _quantized("quantize-dynamic", src, tmp_path, "plain")
    m, r, smooth = _quantized("quantize-dynamic(smooth=0.7)", src, tmp_path, "smooth", calib)
    assert r.stats["smoothed"] == 2 and r.stats["rewritten"] == 3  # ln (shared by up, side) and act
    onnx.checker.check_model(smooth)
    # one Mul by a constant 1/s in front of each activation's DynamicQuantizeLinear, shared by its readers
    proto = onnx.load(smooth)
    dql = [n for n in proto.graph.node if n.op_type == "DynamicQuantizeLinear"]
    muls = {n.output[0]: n for n in proto.graph.node if n.op_type == "Mul"}
    assert len(dql) == 2 and all(d.input[0] in muls for d in dql)
    # the int8 models' exact arithmetic: u8u8 where onnxruntime's u8s8 MatMulInteger would saturate
    e_plain = _rel(ort_exact(plain, feeds)[0], ref)
    got = ort_exact(smooth, feeds)[0]
    e_smooth = _rel(got, ref)
    assert e_smooth < 0.5 * e_plain, (e_smooth, e_plain)
    np.testing.assert_allclose(compile_model(m).run(feeds)[0], got, atol=2e-2 * np.abs(ref).max())


def test_smooth_keeps_the_product_exact_before_rounding():
    """(X / s) @ (diag(s) W) == X @ W: the scaling alone changes nothing but rounding."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, H)).astype(np.float32) * np.linspace(0.1, 30, H, dtype=np.float32)
    w = rng.standard_normal((H, F)).astype(np.float32)
    s = smooth_scales(np.abs(x).max(0), w, 0.6)
    np.testing.assert_allclose((x / s) @ (w * s[:, None]), x @ w, rtol=1e-4, atol=1e-3)
    assert abs(float(np.mean(np.log(s)))) < 1e-5  # geometric mean 1
    # a dead channel (all-zero activation) keeps s = 1
    x[:, 3] = 0
    assert smooth_scales(np.abs(x).max(0), w, 0.6)[3] == 1.0


def test_auto_picks_per_activation_and_never_loses_to_plain():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((H, F)) / 8).astype(np.float32)
    flat = [rng.standard_normal((48, H)).astype(np.float32) for _ in range(3)]
    spiky = [x * np.where(np.arange(H) == 7, 40.0, 1.0).astype(np.float32) for x in flat]
    a_flat, _, e_flat = choose_alpha(flat, w)
    a_spiky, s, e_spiky = choose_alpha(spiky, w)
    assert e_spiky[a_spiky] <= e_spiky[0.0] and e_flat[a_flat] <= e_flat[0.0]
    assert a_spiky > 0 and e_spiky[a_spiky] < 0.5 * e_spiky[0.0]
    assert s[7] == s.max()  # the outlier channel is divided most


def test_auto_records_its_choice_per_activation():
    m = tvmlite.load(_outlier_mlp())
    p = parse_spec("quantize-dynamic(smooth=auto)")[0]
    p.options.calibration = _data(3, 4)
    r = p.run(m)
    rows = [d for d in r.decisions if "activation" in d]
    assert {d["activation"] for d in rows} == {"ln", "act"}
    ln = next(d for d in rows if d["activation"] == "ln")
    assert sorted(ln["layers"]) == ["side", "up"] and ln["smooth_alpha"] > 0 and "alpha" in ln["why"]
    assert min(ln["errors"].values()) == ln["errors"][f"{ln['smooth_alpha']:g}"]


def test_dq_form_ignores_smooth():
    m = tvmlite.load(_outlier_mlp())
    r = parse_spec("quantize-dynamic(form=dq,smooth=0.7)")[0].run(m)
    assert "smoothed" not in r.stats and "Mul" not in [n.op_type for n in m.graph.nx.nodes
                                                        if n.outputs[0].endswith("_x_smoothed")]


@pytest.mark.parametrize("bad", ["2", "-0.5", "maybe", "nan"])
def test_bad_smooth_is_refused(bad):
    with pytest.raises(OptionError, match="smooth"):
        parse_spec(f"quantize-dynamic(smooth={bad})")


def test_cli_bad_smooth_exits_2_and_writes_nothing(tmp_path):
    assert "smooth" in refused_passes(tmp_path, _outlier_mlp(), "quantize-dynamic(smooth=1.5)")


def test_calibration_that_cannot_run_leaves_smoothing_out_with_a_reason():
    """Random calibration ids past a vocabulary fail on the NumPy backend: the pass still quantizes,
    unsmoothed, and says why."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((4, H)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]),
                           helper.make_node("MatMul", ["e", "w"], ["y"], name="fc")], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, H])], [table, w])
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p.ir_version = 8
    m = tvmlite.load(p)
    q = parse_spec("quantize-dynamic(smooth=0.7)")[0]
    q.options.calibration = [{"ids": np.full((1, 8), 99, np.int64)}]
    r = q.run(m)
    assert r.stats["rewritten"] == 1 and "smoothed" not in r.stats
    assert any(where == "(smooth)" and "calibration run failed" in why for where, why in r.skipped)


def test_min_gain_keeps_only_the_muls_that_pay():
    """smooth_min_gain: an activation is smoothed only where its simulated error falls that many
    times; the LayerNorm output with a 25x channel gains far more than the Relu output."""
    src = _outlier_mlp()

    def run(gain):
        m = tvmlite.load(src)
        p = parse_spec(f"quantize-dynamic(smooth=0.7,smooth_min_gain={gain})")[0]
        p.options.calibration = _data(4, 1)
        r = p.run(m)
        return {d["activation"]: d for d in r.decisions if "activation" in d}, r, m

    rows, r, _ = run(1.001)  # > 1: every activation simulated, smoothed when it gains at all
    g_ln = rows["ln"]["errors"]["0"] / rows["ln"]["errors"]["0.7"]
    g_act = rows["act"]["errors"]["0"] / rows["act"]["errors"]["0.7"]
    assert g_ln > 3 and g_ln > 2 * g_act  # the outlier channel is what smoothing is for
    cut = (g_ln + g_act) / 2 if g_act > 1 else 1.5
    rows, r, m = run(cut)
    assert rows["ln"]["smooth_alpha"] == 0.7 and rows["act"]["smooth_alpha"] == 0.0
    assert "smooth_min_gain" in rows["act"]["why"] or "no alpha" in rows["act"]["why"]
    assert r.stats["smoothed"] == 1
    assert sum(n.outputs[0].endswith("_x_smoothed") for n in m.graph.nx.nodes) == 1
    rows, r, _ = run(1e6)
    assert r.stats["smoothed"] == 0


@pytest.mark.parametrize("bad", ["0.5", "-3", "nan"])
def test_bad_min_gain_is_refused(bad):
    with pytest.raises(OptionError, match="smooth_min_gain"):
        parse_spec(f"quantize-dynamic(smooth=0.7,smooth_min_gain={bad})")
