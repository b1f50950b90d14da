"""quantize(reduce_range=...): 7-bit weights (-63..63) for the static QDQ model where onnxruntime's
uint8 x int8 kernels saturate (x86 without VNNI: vpmaddubsw adds each pair of products in int16), so
onnxruntime's fused QLinearConv/QGemm compute the model's own arithmetic; and the pass leaves a
model with no Conv/Gemm/MatMul to quantize alone without calibrating or timing it."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tvmlite
import tvmlite.passes.quantize as qz
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.passes import parse_spec
from tvmlite.passes.quantize import Quantize
from tvmlite.runtime.ort import u8s8_saturates

from conftest import CORPUS, MODELS
from helpers import make_model, ort_qdq, refused_passes, tensor
from test_int8_numpy_vs_ort import _expose_int8, _steps
from test_quantize import _conv_model


def _x(n=16, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _quantize(proto=None, **opts):
    m = tvmlite.load(proto if proto is not None else _conv_model())
    r = Quantize(calibration={"x": _x()}, progress=False, **opts)(m)
    return m, r


def _weight_codes(m) -> dict:
    """Weight name -> int8 codes of the DequantizeLinear that feeds input 1 of a Conv/Gemm/MatMul."""
    g = m.graph
    out = {}
    for n in g.nx.nodes:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.inputs) > 1:
            dq = g.producer(n.inputs[1])
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = g.const_value(dq.inputs[0])
                if q is not None and q.dtype == np.int8:
                    out[n.label] = q
    return out


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_7bit_weights_lie_in_63_and_8bit_in_127(rounding):
    m, r = _quantize(reduce_range="on", weight_rounding=rounding, bias_correction=True)
    codes = _weight_codes(m)
    assert len(codes) == 3 and r.stats["weight_max"] == 63
    for name, q in codes.items():
        assert np.abs(q.astype(int)).max() == 63, name  # each layer's largest weight on the edge of the grid
    m8, r8 = _quantize(reduce_range="off", weight_rounding=rounding, bias_correction=True)
    assert r8.stats["weight_max"] == 127
    assert all(np.abs(q.astype(int)).max() == 127 for q in _weight_codes(m8).values())
    # both compute what the QDQ graph means: the NumPy backend against onnxruntime's plain QDQ ops
    x = _x(2, seed=7)
    for model in (m, m8):
        proto = export_model(model)
        from tvmlite.backends.numpy import compile_model

        np.testing.assert_allclose(compile_model(model).run({"x": x})[0], ort_qdq(proto, {"x": x})[0],
                                   rtol=1e-4, atol=1e-4)


def test_float_layers_keep_8bit_weight_storage():
    """A layer left float stores Cast(int8) * scale, folded to float weights at load: its compute is
    float, so it keeps the 8-bit grid even with reduce_range (and GPTQ codes for the 7-bit grid
    are not used there)."""
    m, r = _quantize(reduce_range="on", layers=["conv"], weight_rounding="gptq")
    g = m.graph
    stored = [g.const_value(n.inputs[0]) for n in g.nx.nodes if n.op_type == "Cast"
              and g.const_value(n.inputs[0]) is not None]
    assert stored and all(np.abs(q.astype(int)).max() == 127 for q in stored)
    assert np.abs(_weight_codes(m)["conv"].astype(int)).max() == 63


@pytest.mark.parametrize("saturates,expect", [(True, 63), (False, 127)])
def test_auto_follows_the_host_probe(monkeypatch, saturates, expect):
    monkeypatch.setattr(qz, "u8s8_saturates", lambda: saturates)
    m, r = _quantize()
    assert r.stats["weight_max"] == expect
    assert max(int(np.abs(q.astype(int)).max()) for q in _weight_codes(m).values()) == expect


def test_auto_mode_times_the_form_it_writes(monkeypatch):
    """mode=auto,measure=true times each layer's int8 fragment with the weights it will write."""
    import tvmlite.quant.select as select

    seen = []
    monkeypatch.setattr(qz, "u8s8_saturates", lambda: True)
    monkeypatch.setattr(select, "_time_layer", lambda model, key, spec, *a, **k: seen.append(spec.weight_max)
                        or (1.0, 0.5))
    monkeypatch.setattr(select, "_whole_model_guard", lambda model, chosen, *a, **k: chosen)
    m, r = _quantize(mode="auto", measure=True, error_budget=1.0)
    assert seen and set(seen) == {63}
    assert r.stats["weight_max"] == 63


def _digits():
    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    calib = np.load(MODELS / "digits_calib.npz")["input"][:16]
    feeds = {"input": np.load(MODELS / "digits_test.npz")["input"][:8]}
    return onnx.load(path), [{"input": calib[i:i + 1]} for i in range(len(calib))], feeds


def _digits_int8(reduce_range):
    proto, calib, _ = _digits()
    m = tvmlite.load(proto)
    for p in parse_spec(f"fold-bn,quantize(mode=all,progress=false,reduce_range={reduce_range})"):
        if p.name == "quantize":
            p.options.calibration = calib
        p.run(m)
    return export_model(m)


def _ort_optimized_steps(q, feeds) -> dict:
    """{int8 tensor: max |onnxruntime - NumPy| in steps}, onnxruntime with its default (fused
    QLinearConv/QGemm) session, whatever the CPU: what a user of the written file gets."""
    from tvmlite.backends.numpy import compile_model

    m = _expose_int8(q, feeds)
    names = [o.name for o in m.graph.output]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    ref = dict(zip(names, ort.InferenceSession(m.SerializeToString(), so,
                                               providers=["CPUExecutionProvider"]).run(None, feeds)))
    got = compile_model(tvmlite.load(m)).run(feeds)
    got = dict(zip(names, got)) if isinstance(got, (list, tuple)) else got
    return {n: int(np.abs(ref[n].astype(np.int32) - np.asarray(got[n]).astype(np.int32)).max())
            for n in names if ref[n].dtype in (np.uint8, np.int8)}


def test_digits_onnxruntime_fused_kernels_within_one_step_of_numpy_with_auto():
    """On this host, whatever it is: with reduce_range=auto onnxruntime's optimized session (its fused
    int8 kernels) runs the written digits model within one quantization step of the NumPy backend
    on every int8 tensor. With 8-bit weights on a saturating host it was 113 steps off."""
    _, _, feeds = _digits()
    q = _digits_int8("auto")
    steps = _ort_optimized_steps(q, feeds)
    assert max(steps.values()) <= 1, steps
    assert max(s for s, _ in _steps(q, feeds).values()) <= 1  # and the plain QDQ semantics too
    if u8s8_saturates():  # what auto avoids: the same model with 8-bit weights, far off
        assert max(_ort_optimized_steps(_digits_int8("off"), feeds).values()) > 10


@pytest.mark.slow
def test_cls_onnxruntime_fused_kernels_each_op_within_one_step_of_numpy_with_auto(monkeypatch):
    """PP-OCR cls all int8 with reduce_range=auto: fed onnxruntime's own int8 tensors, NumPy computes
    every int8 tensor within one step of onnxruntime's optimized session (with 8-bit weights on a
    saturating host: 215 steps off). End to end the one-step near-ties of its QLinearAdds carry
    through the hard-sigmoid squeeze-excite blocks (17 steps at most on an AVX2 EPYC)."""
    import test_int8_numpy_vs_ort as t

    path = CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not path.exists():
        pytest.skip("the PP-OCR corpus is not here")
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 3, 48, 192), dtype=np.float32)} for _ in range(4)]
    feeds = {"x": rng.random((1, 3, 48, 192), dtype=np.float32)}
    monkeypatch.setattr(t, "ort_exact_options", lambda so=None: ort.SessionOptions())  # the fused kernels
    steps = t._steps_per_op(t._quantize(onnx.load(path), calib), feeds)
    assert len(steps) > 40
    assert max(s for s, _ in steps.values()) <= 1, {k: v for k, v in steps.items() if v[0] > 1}
    if u8s8_saturates():
        off = t._steps_per_op(t._quantize(onnx.load(path), calib, reduce_range="off"), feeds)
        assert max(s for s, _ in off.values()) > 10


@pytest.mark.parametrize("bad", ["maybe", "7", "8bit"])
def test_bad_reduce_range_is_refused(bad):
    with pytest.raises(OptionError, match="reduce_range"):
        parse_spec(f"quantize(reduce_range={bad})")


def test_cli_bad_reduce_range_exits_2_and_writes_nothing(tmp_path):
    assert "reduce_range" in refused_passes(tmp_path, _conv_model(), "quantize(reduce_range=maybe)")


def _elementwise_model():
    """x * c + d -> Sigmoid: no Conv/Gemm/MatMul, opset 11 (quantize's prepare would upgrade it)."""
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.5, (1, 8)).astype(np.float32)
    d = rng.standard_normal((1, 8)).astype(np.float32)
    nodes = [onnx.helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             onnx.helper.make_node("Add", ["m", "d"], ["a"], name="add"),
             onnx.helper.make_node("Sigmoid", ["a"], ["y"], name="sig")]
    return make_model(nodes, [tensor("x", ["N", 8])], [tensor("y", ["N", 8])], [("c", c), ("d", d)], opset=11)


def test_nothing_to_quantize_is_left_alone_without_calibrating(monkeypatch):
    def no_calibration(*a, **k):
        raise AssertionError("calibrated a model with nothing to quantize")

    monkeypatch.setattr(qz, "collect_stats", no_calibration)
    monkeypatch.setattr(qz, "choose_layers", no_calibration)
    proto = _elementwise_model()
    m = tvmlite.load(proto)
    before = export_model(m).SerializeToString()
    r = Quantize(calibration={"x": np.ones((4, 8), np.float32)}, mode="auto", measure=True, progress=False)(m)
    assert not r.changed and r.skipped[0][0] == "<model>" and "no Conv, Gemm or MatMul" in r.skipped[0][1]
    assert m.opset == 11 and export_model(m).SerializeToString() == before  # prepare's changes undone


def test_element_wise_op_types_alone_are_still_quantized_when_asked_for():
    m = tvmlite.load(_elementwise_model())
    r = Quantize(calibration={"x": np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)},
                 op_types=["Add", "Mul"], progress=False)(m)
    assert r.changed and any(n.op_type == "QuantizeLinear" for n in m.graph.nx.nodes)


def test_optimize_report_says_why_quantize_did_nothing():
    from tvmlite.optimize import optimize

    proto = _elementwise_model()
    x = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    _, report = optimize(proto, passes="quantize(mode=auto,measure=true)", calib={"x": x}, inputs={"x": x},
                         progress=False)
    row = report.rows[-1]
    assert row.name == "quantize" and row.status == "no change"
    assert "no Conv, Gemm or MatMul" in report.format(verbosity=1)
