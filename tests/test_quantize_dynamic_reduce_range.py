"""quantize-dynamic(reduce_range=...): 7-bit weights where onnxruntime's uint8 x int8 MatMul
saturates (x86 without VNNI adds each pair of products in int16), checked against the float model
in onnxruntime and against the NumPy backend, which multiplies exactly."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
import tvmlite.passes.quantize_dynamic as qd
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.passes import parse_spec
from tvmlite.runtime.ort import u8s8_saturates

from helpers import ort_run, refused_passes

K, N = 128, 32


def _matmul(seed=0) -> onnx.ModelProto:
    """x -> MatMul(W) -> Relu with every weight near +-max|W| of its column: quantized, most weights
    are +-127 (or +-63), so two neighbouring products of large uint8 activations overflow int16."""
    rng = np.random.default_rng(seed)
    w = (rng.choice([-1.0, 1.0], (K, N)) * rng.uniform(0.9, 1.0, (K, N))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"), helper.make_node("Relu", ["m"], ["y"])]
    g = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", N])],
                          [numpy_helper.from_array(w, "w")])
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p.ir_version = 8
    return p


def _feeds(seed=1):
    return {"x": np.random.default_rng(seed).uniform(-1, 1, (1, 48, K)).astype(np.float32)}


def _quantized(spec, tmp_path, name):
    m = tvmlite.load(_matmul())
    r = parse_spec(spec)[0].run(m)
    out = tmp_path / f"{name}.onnx"
    tvmlite.save(m, str(out))
    return m, r, str(out)


def _weights(path):
    return [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.data_type == TensorProto.INT8
            and len(t.dims) == 2]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_reduce_range_writes_7bit_weights_that_onnxruntime_multiplies_exactly(tmp_path):
    feeds = _feeds()
    ref = ort_run(_matmul(), feeds)[0]
    m, r, on = _quantized("quantize-dynamic(reduce_range=on)", tmp_path, "on")
    assert r.stats["weight_max"] == 63 and r.stats["rewritten"] == 1
    (wq,) = _weights(on)
    assert np.abs(wq.astype(int)).max() == 63
    got = ort_run(on, feeds)[0]
    # the NumPy backend's integer product is exact: onnxruntime agrees once no pair can overflow
    np.testing.assert_allclose(compile_model(m).run(feeds)[0], got, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    e_on = _rel(got, ref)
    assert e_on < 0.03, e_on
    m_off, r_off, off = _quantized("quantize-dynamic(reduce_range=off)", tmp_path, "off")
    assert r_off.stats["weight_max"] == 127 and np.abs(_weights(off)[0].astype(int)).max() == 127
    got_off = ort_run(off, feeds)[0]
    if u8s8_saturates():  # this host's int8 MatMul overflows with 8-bit weights: far off the exact product
        assert _rel(got_off, compile_model(m_off).run(feeds)[0]) > 0.05
        assert _rel(got_off, ref) > 3 * e_on
    else:
        assert _rel(got_off, ref) < e_on


@pytest.mark.parametrize("saturates,expect", [(True, 63), (False, 127)])
def test_reduce_range_auto_follows_the_host_probe(monkeypatch, saturates, expect):
    monkeypatch.setattr(qd, "u8s8_saturates", lambda: saturates)
    m = tvmlite.load(_matmul())
    r = parse_spec("quantize-dynamic(reduce_range=auto)")[0].run(m)
    assert r.stats["weight_max"] == expect


def test_reduce_range_leaves_the_dq_form_and_unquantized_models_alone():
    # form=dq multiplies in float after DequantizeLinear: nothing saturates, the weights keep 8 bits
    m = tvmlite.load(_matmul())
    r = parse_spec("quantize-dynamic(form=dq,reduce_range=on)")[0].run(m)
    assert r.stats["weight_max"] == 127
    # nothing to quantize: no weight range recorded
    m = tvmlite.load(_matmul())
    r = qd.QuantizeDynamic(reduce_range="on", exclude_names=["fc"]).run(m)
    assert "weight_max" not in r.stats and r.stats["rewritten"] == 0


def test_u8s8_probe_matches_a_direct_product():
    """The probe's answer is what a full-range MatMulInteger does on this host."""
    a = np.full((2, 32), 255, np.uint8)
    b = np.full((32, 4), 127, np.int8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "p",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 4])],
                          [numpy_helper.from_array(b, "b")])
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p.ir_version = 8
    y = ort_run(p, {"a": a})[0]
    assert u8s8_saturates() == (not np.array_equal(y, a.astype(np.int64) @ b.astype(np.int64)))


@pytest.mark.parametrize("bad", ["maybe", "7"])
def test_bad_reduce_range_is_refused(bad):
    with pytest.raises(OptionError, match="reduce_range"):
        parse_spec(f"quantize-dynamic(reduce_range={bad})")


def test_cli_bad_reduce_range_exits_2_and_writes_nothing(tmp_path):
    assert "reduce_range" in refused_passes(tmp_path, _matmul(), "quantize-dynamic(reduce_range=maybe)")
