"""tvmlite.runtime.ort: sessions from whole models and from fragments, and the timing loop."""
import time

import numpy as np
import onnx
import pytest

import tvmlite
from tvmlite.errors import TvmliteError, UnsupportedError
from tvmlite.export import export_model
from tvmlite.runtime import ort as rt

from helpers import conv_bn_relu_model


def _with_outputs(model, names):
    """The whole model, with intermediate values as extra outputs (what the fragment must match)."""
    proto = export_model(model)
    for n in names:
        proto.graph.output.append(onnx.ValueInfoProto(name=n))
    return proto


def _node(model, name):
    return next(n for n in model.graph.nx.nodes if n.name == name)


def test_fragment_session_equals_the_whole_model_on_that_fragment():
    m = tvmlite.load(conv_bn_relu_model(seed=3))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    whole = rt.ort_session(_with_outputs(m, ["c", "r", "mm"]))
    c, r, mm = whole.run(["c", "r", "mm"], {"x": x})
    # BatchNormalization -> Relu cut out: "c" comes in at its real shape (its type is not recorded in
    # the graph: given), "r" goes out
    with pytest.raises(UnsupportedError, match="input 'c' has no static shape and type"):
        rt.fragment(m, [_node(m, "bn"), _node(m, "relu")], {"c": c.shape})
    frag = rt.fragment(m, [_node(m, "bn"), _node(m, "relu")], {"c": c.shape}, dtypes={"c": np.float32})
    assert frag.graph.inputs == ["c"] and frag.graph.outputs == ["r"]
    assert set(frag.graph.initializers) == {"scale", "bias", "mean", "var"}
    # weights are shared with the model, not copied
    assert np.shares_memory(frag.graph.const_value("scale"), m.graph.const_value("scale"))
    sess = rt.ort_session(frag)
    np.testing.assert_allclose(sess.run(None, {"c": c})[0], r, rtol=1e-6, atol=1e-6)
    # Constant-fed nodes: the Constants' values become initializers of the fragment
    sess, frag = rt.fragment_session(m, [_node(m, "six"), _node(m, "scale_out")], {"mm": mm.shape},
                                     dtypes={"mm": mm.dtype})
    assert frag.graph.inputs == ["mm"] and set(frag.graph.initializers) == {"two", "three"}
    y = whole.run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"mm": mm})[0], y, rtol=1e-6)


def test_fragments_are_written_with_one_ir_version_and_the_models_opsets():
    m = tvmlite.load(conv_bn_relu_model())
    frag = rt.fragment(m, [_node(m, "conv")], {"x": (1, 3, 4, 4)})
    proto = export_model(frag)
    assert proto.ir_version == rt.FRAGMENT_IR_VERSION
    assert {o.domain: o.version for o in proto.opset_import}[""] == m.opset
    raised = export_model(rt.fragment(m, [_node(m, "conv")], {"x": (1, 3, 4, 4)}, opset=21))
    assert {o.domain: o.version for o in raised.opset_import}[""] == 21
    assert raised.ir_version >= 10  # opset 21 needs IR 10: the exporter raises it, never lowers it
    rt.ort_session(raised)  # and onnxruntime loads it


def test_fragment_refuses_inputs_without_a_static_shape():
    m = tvmlite.load(conv_bn_relu_model())  # x is [N, 3, 4, 4]
    with pytest.raises(UnsupportedError, match="node 'conv': input 'x' has no static shape"):
        rt.fragment(m, [_node(m, "conv")])
    with pytest.raises(UnsupportedError, match="empty fragment"):
        rt.fragment(m, [])
    with pytest.raises(UnsupportedError, match="output 'y' is not produced"):
        rt.fragment(m, [_node(m, "conv")], {"x": (1, 3, 4, 4)}, outputs=["y"])


def test_sessions_register_the_custom_ops_libraries_given(tmp_path):
    lib = tmp_path / "libnotops.so"
    lib.write_bytes(b"not a shared library")
    m = tvmlite.load(conv_bn_relu_model())
    rt.ort_session(m)  # loads without
    with pytest.raises(TvmliteError, match="--custom-ops .*libnotops.so: onnxruntime cannot load it"):
        rt.ort_session(m, custom_ops=[lib])
    with pytest.raises(TvmliteError, match="--custom-ops .*libnotops.so"):
        rt.fragment_session(m, [_node(m, "conv")], {"x": (1, 3, 4, 4)}, custom_ops=[str(lib)])


def test_time_interleaved_gives_medians_and_spread_in_alternating_order():
    calls = []

    def sleeper(i, s):
        def f():
            calls.append(i)
            time.sleep(s)
        return f

    t = rt.time_interleaved([sleeper(0, 0.002), sleeper(1, 0.008)], repeats=6, warmup=1)
    assert t.rounds == 6 and len(t.medians_ms) == len(t.spreads_ms) == 2
    assert 2.0 <= t.medians_ms[0] < t.medians_ms[1] and t.medians_ms[1] >= 8.0
    assert all(s >= 0 for s in t.spreads_ms)
    # warm-up calls, then round 0 in order, round 1 reversed, ...
    assert calls[:2] == [0, 1] and calls[2:6] == [0, 1, 1, 0]
    # a budget stops after min_rounds once it is spent
    t = rt.time_interleaved([sleeper(0, 0.01)], repeats=1000, warmup=0, budget_s=0.03, min_rounds=2)
    assert 2 <= t.rounds < 10
    # the old names give the same medians
    assert len(rt.interleaved_ms([lambda: None, lambda: None], 3)) == 2
    assert rt.median_ms(sleeper(0, 0.003), 3) >= 3.0


def test_time_interleaved_settle_times_each_callable_after_itself(monkeypatch):
    """A callable that runs slow straight after another one (an onnxruntime session after another
    session's spinning pool): with settle, every timed call follows an untimed call of its own.
    A fake clock that only the callables advance keeps the test exact on a loaded host."""
    now, calls, last = [0.0], [], [None]
    monkeypatch.setattr(rt, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: now[0])}))

    def f(i):
        def g():
            now[0] += 0.006 if last[0] not in (None, i) else 0.001  # the neighbour's penalty
            last[0] = i
            calls.append(i)
        return g

    fns = [f(0), f(1), f(2)]
    plain = rt.time_interleaved(fns, repeats=4, warmup=0)
    assert plain.medians_ms[1] == pytest.approx(6.0)  # the middle one always follows another
    calls.clear()
    last[0] = None
    t = rt.time_interleaved(fns, repeats=4, warmup=0, settle=1)
    assert t.rounds == 4 and t.medians_ms == pytest.approx([1.0, 1.0, 1.0])
    assert calls[:6] == [0, 0, 1, 1, 2, 2] and calls[6:12] == [2, 2, 1, 1, 0, 0]
    assert rt.interleaved_ms(fns, 2, 0, settle=1) == pytest.approx([1.0, 1.0, 1.0])


def test_wait_idle_waits_for_spinning_threads_to_stop(monkeypatch):
    """Between timed blocks: a pool worker that spins (burns CPU) for 0.13 s after a run is waited
    out, two calm windows in a row; an idle process waits two windows; ``limit_s`` caps a process
    that never calms. A fake clock keeps it exact on a loaded host."""
    now, cpu, spin_until = [0.0], [0.0], [0.13]

    def sleep(s):
        busy = max(0.0, min(now[0] + s, spin_until[0]) - now[0])
        now[0] += s
        cpu[0] += busy + 1e-5  # the spinner's CPU, and a little of the sleeper's own

    clock = type("Clock", (), {"perf_counter": staticmethod(lambda: now[0]),
                               "process_time": staticmethod(lambda: cpu[0]), "sleep": staticmethod(sleep)})
    monkeypatch.setattr(rt, "time", clock)
    assert rt.wait_idle() == pytest.approx(0.14 + 0.04)  # spins through the 7th window, then 2 calm ones
    now[0], spin_until[0] = 0.0, 0.0
    assert rt.wait_idle() == pytest.approx(0.04)
    now[0], spin_until[0] = 0.0, 10.0
    assert rt.wait_idle(limit_s=0.3) == pytest.approx(0.3)


def test_time_interleaved_reads_the_given_clock():
    """bench/minilm_softmax_ab.py --cpu times in CPU time of the thread (`time.thread_time`)."""
    now = [0.0]

    def tick():
        now[0] += 0.004

    t = rt.time_interleaved([tick, tick], repeats=3, warmup=1, clock=lambda: now[0])
    assert t.medians_ms == pytest.approx([4.0, 4.0])
    assert rt.time_interleaved([lambda: None], repeats=2, warmup=0, clock=lambda: 7.0).medians_ms == [0.0]


def test_block_medians_start_each_block_at_the_next_callable_and_keep_the_callers_order(monkeypatch):
    """bench_quantize_weights and bench_vs_ort_quant time their sessions through this: settle=1 by
    default, each block's round starting one callable later, the medians in ``fns``' order."""
    now, calls = [0.0], []
    monkeypatch.setattr(rt, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: now[0])}))

    def f(i):
        def g():
            now[0] += 0.001 * (i + 1)
            calls.append(i)
        return g

    blocks = rt.block_medians_ms([f(0), f(1), f(2)], repeats=1, blocks=3, warmup=0)
    assert blocks == [pytest.approx([1.0, 2.0, 3.0])] * 3
    assert calls == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 2, 2, 0, 0, 1, 1]  # settled, rotated


def test_timed_ratio_measures_longer_only_when_close():
    fast, slow = (lambda: time.sleep(0.001)), (lambda: time.sleep(0.005))
    _, _, rounds = rt.timed_ratio(fast, slow, 1.0, max_rounds=24, min_rounds=4)
    assert rounds == 4  # 5x apart: decided at once
    same = lambda: time.sleep(0.002)  # noqa: E731
    _, _, rounds = rt.timed_ratio(same, same, 1.0, max_rounds=16, min_rounds=4, margin=10.0)
    assert rounds == 16  # within the margin: doubled up to max_rounds


def test_compare_and_quant_timing_re_export_the_runtime():
    import tvmlite.compare as compare
    import tvmlite.quant.timing as qt

    assert compare.ort_session is rt.ort_session and compare.interleaved_ms is rt.interleaved_ms
    assert qt.timed_ratio is rt.timed_ratio
