"""quantize-dynamic(measure=true): int8 kept per layer only where onnxruntime runs it faster.

The decisions are tested with the timing replaced (whether int8 is faster depends on the host: not
on an AVX2-only Zen 1, about 2x on AVX-512 VNNI); one test times real fragments."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
import tvmlite.passes.quantize_dynamic as qd
import tvmlite.passes.quantize_dynamic_timing as qdt
from tvmlite.errors import OptionError
from tvmlite.optimize import optimize
from tvmlite.passes import parse_spec
from tvmlite.runtime.ort import timing_key

from helpers import ort_run
from test_transformer_fusion import _bert, _feeds


def _two_shapes(seed=0):
    """x [N, 16] -> MatMul 16x64 (+bias) -> Relu -> MatMul 64x16 -> y, plus a second 16x64 reader of x."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
             for n, s in [("w_up", (16, 64)), ("b_up", (64,)), ("w_down", (64, 16)), ("w_side", (16, 64))]]
    nodes = [helper.make_node("MatMul", ["x", "w_up"], ["u"], name="up"),
             helper.make_node("Add", ["u", "b_up"], ["ub"], name="up_bias"),
             helper.make_node("Relu", ["ub"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w_down"], ["y"], name="down"),
             helper.make_node("MatMul", ["x", "w_side"], ["z"], name="side")]
    g = helper.make_graph(nodes, "two_shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 64])], inits)
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p.ir_version = 8
    return p


def _calib(n=4):
    return [{"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)} for i in range(n)]


def _fake_timing(monkeypatch, speedup_by_weight):
    """time_layer replaced: float 1 ms, int8 1/speedup ms, by the shape of the layer's weight;
    returns the list of layers actually timed."""
    timed = []

    def fake(model, node, shapes, rewrite, repeats=30, threshold=1.0):
        timed.append(node.name)
        w = model.graph.const_value(node.inputs[1])
        return 1.0, 1.0 / speedup_by_weight[tuple(w.shape)]

    monkeypatch.setattr(qd, "time_layer", fake)
    return timed


def _ops(m):
    return sorted(n.op_type for n in m.graph.nx.nodes)


def test_measure_keeps_int8_only_on_faster_layers(monkeypatch):
    timed = _fake_timing(monkeypatch, {(16, 64): 1.5, (64, 16): 1.02})
    m = tvmlite.load(_two_shapes())
    r = qd.QuantizeDynamic(measure=True, calibration=_calib()).run(m)
    assert sorted(r.rewritten) == ["side", "up"]
    assert _ops(m).count("MatMulInteger") == 2 and _ops(m).count("MatMul") == 1
    # one timing per shape and kind: up and side share (16x64, same input) and are timed once
    assert sorted(timed) == ["down", "up"]
    why = dict(r.skipped)["down"]
    assert "not faster" in why and "1.02x < min_speedup=1.1" in why
    by_layer = {d["layer"]: d for d in r.decisions if "speedup" in d}
    assert by_layer["up"]["int8"] and not by_layer["down"]["int8"] and by_layer["down"]["float_ms"] == 1.0
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    ref, out = ort_run(_two_shapes(), {"x": x}), ort_run(tvmlite.export_model(m), {"x": x})
    for a, b in zip(out, ref):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05


def test_measure_changes_nothing_where_int8_is_not_faster(monkeypatch):
    """Not faster anywhere (an AVX2 host without VNNI): no rewrite, and no int8 tables either."""
    _fake_timing(monkeypatch, {(16, 64): 1.0, (64, 16): 0.9})
    m = tvmlite.load(_two_shapes())
    before = _ops(m)
    r = qd.QuantizeDynamic(measure=True, gather=True, calibration=_calib()).run(m)
    assert not r.changed and not r.rewritten and _ops(m) == before
    assert r.stats["measured_int8"] == 0
    assert dict(r.skipped)["(tables)"].startswith("no layer runs faster in int8")
    # nor the types it inferred to decide: exported as value_info they let onnxruntime fuse
    # SkipLayerNormalization in transformers, which ran slower than the file without them
    assert not tvmlite.export_model(m).graph.value_info


def test_without_measure_every_layer_is_rewritten(monkeypatch):
    timed = _fake_timing(monkeypatch, {(16, 64): 0.5, (64, 16): 0.5})
    r = qd.QuantizeDynamic().run(tvmlite.load(_two_shapes()))
    assert len(r.rewritten) == 3 and not timed


def test_min_speedup_is_the_threshold(monkeypatch):
    _fake_timing(monkeypatch, {(16, 64): 1.5, (64, 16): 1.02})
    r = parse_spec("quantize-dynamic(measure=true,min_speedup=1.01)")[0]
    r.options.calibration = _calib()
    assert len(r.run(tvmlite.load(_two_shapes())).rewritten) == 3


@pytest.mark.parametrize("bad", ["0", "-1", "nan"])
def test_bad_min_speedup_is_refused(bad):
    with pytest.raises(OptionError, match="min_speedup"):
        parse_spec(f"quantize-dynamic(measure=true,min_speedup={bad})")


def test_time_layer_times_real_fragments():
    """The real timing: both fragments run in onnxruntime (CPU time, positive), the int8 one is
    the pass's own rewrite; a layer whose input has no static shape is refused with the reason."""
    m = tvmlite.load(_two_shapes())
    shapes = qdt.example_shapes(m, _calib())
    assert tuple(shapes["r"]) == (1, 64)
    node = next(n for n in m.graph.nx.nodes if n.name == "down")
    seen = []

    def rewrite(frag):
        r = qd.QuantizeDynamic().run(frag)
        seen.append(_ops(frag))
        return r

    got = qdt.time_layer(m, node, shapes, rewrite, repeats=8)
    assert isinstance(got, tuple) and all(t > 0 for t in got), got
    assert "MatMulInteger" in seen[0]
    assert timing_key(m, node, {}) is None  # no shape for r: cannot be timed alone
    assert timing_key(m, node, shapes) != timing_key(m, next(n for n in m.graph.nx.nodes if n.name == "up"), shapes)


def test_timing_key_tells_layers_apart_by_shape_and_dtype_only():
    """Equal keys for layers a pass may time once (same op, attributes, shapes, dtypes; other
    weight values), other keys where a constant's dtype or an input's shape differs (the key the
    quantize and quantize-dynamic passes both cache their timings under)."""
    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array(rng.standard_normal((8, 8)).astype(dt), n)
         for n, dt in [("w0", np.float32), ("w1", np.float32), ("w3", np.float32), ("w2", np.float16)]}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="m0"),
             helper.make_node("MatMul", ["a", "w1"], ["b"], name="m1"),
             helper.make_node("MatMul", ["b", "w3"], ["d"], name="m3"),
             helper.make_node("Cast", ["d"], ["c"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["c", "w2"], ["y"], name="m2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8])], list(w.values()))
    m = tvmlite.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    by = {n.name: n for n in m.graph.nx.nodes}
    shapes = {n: (1, 8) for n in "xabcdy"}
    assert timing_key(m, by["m1"], shapes) == timing_key(m, by["m3"], shapes)
    assert timing_key(m, by["m2"], shapes) != timing_key(m, by["m1"], shapes)  # float16 weights
    assert timing_key(m, by["m3"], {**shapes, "b": (2, 8)}) != timing_key(m, by["m1"], shapes)
    assert timing_key(m, by["m3"], {"x": (1, 8)}) is None  # b's shape unknown


def test_measure_unfuses_attention_that_stays_float(monkeypatch):
    """attention=true fuses first; when no QAttention is faster, the float attention is left as it
    was (not a com.microsoft Attention the pass gained nothing from), its projections timed as MatMuls."""
    timed = []

    def fake(model, node, shapes, rewrite, repeats=30, threshold=1.0):
        timed.append(node.op_type)
        square = node.op_type == "MatMul" and model.graph.const_value(node.inputs[1]).shape == (32, 32)
        return (1.0, 0.5) if square else (1.0, 1.0)

    monkeypatch.setattr(qd, "time_layer", fake)
    proto = _bert()
    feeds = _feeds(batch=1)
    m = tvmlite.load(proto)
    r = qd.QuantizeDynamic(attention=True, measure=True, calibration=[feeds]).run(m)
    assert "Attention" in timed and "MatMul" in timed
    assert "Attention" not in _ops(m) and "QAttention" not in _ops(m) and r.stats["fused"] == 0
    # the 32x32 projections (query, key, value, output: one shape, timed once) in int8, the FFN float
    assert len(r.rewritten) == 8 and all("attention" in n for n in r.rewritten), r.rewritten
    assert timed.count("MatMul") == 3  # 32x32, 32x128, 128x32
    out, ref = ort_run(tvmlite.export_model(m), feeds), ort_run(proto, feeds)
    assert np.linalg.norm(out[0] - ref[0]) / np.linalg.norm(ref[0]) < 0.05


def test_measure_keeps_qattention_where_faster(monkeypatch):
    monkeypatch.setattr(qd, "time_layer", lambda model, node, *a, **k: (1.0, 0.5))
    m = tvmlite.load(_bert())
    r = qd.QuantizeDynamic(attention=True, measure=True, calibration=[_feeds(batch=1)]).run(m)
    assert _ops(m).count("QAttention") == 2 and r.stats["fused"] == 2 and r.stats["measured_int8"] == len(r.rewritten)


def test_optimize_budget_still_undoes_measured_int8(monkeypatch):
    """The checked pipeline: the layers measured faster are rewritten, then a budget they break
    undoes the pass; a budget they meet keeps it."""
    _fake_timing(monkeypatch, {(16, 64): 2.0, (64, 16): 2.0})
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    spec = "quantize-dynamic(measure=true)"
    m, report = optimize(_two_shapes(), passes=spec, inputs={"x": x}, calib=_calib(), max_error=1e-7, repeats=1)
    assert report.rows[-1].status == "undone" and "MatMulInteger" not in _ops(m)
    m, report = optimize(_two_shapes(), passes=spec, inputs={"x": x}, calib=_calib(), max_error=0.1, repeats=1)
    assert report.rows[-1].status == "kept" and _ops(m).count("MatMulInteger") == 3


def test_timed_ratio_clock_takes_cpu_time():
    """time.thread_time counts the calling thread's CPU time: a sleep costs next to nothing in it,
    a busy loop its whole length; the wall clock (the default) sees the whole sleep."""
    import time

    from tvmlite.runtime.ort import timed_ratio

    def busy(s=0.003):
        t0 = time.thread_time()
        while time.thread_time() - t0 < s:
            pass

    def nap():
        time.sleep(0.006)

    wall_nap, _, _ = timed_ratio(nap, busy, max_rounds=4, min_rounds=4, warmup=0)
    cpu_nap, cpu_busy, _ = timed_ratio(nap, busy, max_rounds=4, min_rounds=4, warmup=0, clock=time.thread_time)
    assert wall_nap >= 6.0 and cpu_nap < 1.0 < 2.9 < cpu_busy
