"""The lighter check paths that make `optimize` fast still refuse what the full ones refuse: fewer
random examples for large inputs, no per-row timing for clean-ups, sessions reused."""
from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmlite.passes import Pass, PassResult, register_pass
from tvmlite.checkset import RANDOM_SAMPLES, random_check_inputs
from tvmlite.frontend import load
from tvmlite.optimize import optimize

from helpers import conv_bn_relu_model


@register_pass
class DamageGain(Pass):
    """Test clean-up with a bug: scales the constant of the node named ``node`` by ``factor``."""

    name = "test-damage-gain"
    cleanup = True

    @dataclass
    class Options:
        node: str = "gain"
        factor: float = 1.01

    def run(self, model):
        result = PassResult(self.name)
        g = model.graph
        for n in g.toposort():
            if n.name == self.options.node:
                g.set_input(n, 1, g.add_constant(g.const_value(n.inputs[1]) * np.float32(self.options.factor), "g"))
                result.rewrote(n)
        return result


def big_image_model(side=600):
    """x [1, 3, side, side] -> 3x3 Conv to 2 channels -> Mul by a gain: one example is 1.08M elements."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((2, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.float32(2.0), "k")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "k"], ["y"], name="gain")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, side, side])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def test_large_examples_are_fewer_and_still_catch_a_damaged_clean_up():
    m = load(big_image_model())
    batches, notes = random_check_inputs(m)
    assert len(batches) == 2 and "not 16" in notes[0]
    small = load(conv_bn_relu_model())
    (b,) = random_check_inputs(small)[0]
    assert b["x"].shape[0] == RANDOM_SAMPLES  # small examples: all 16, as one batch
    # a 1% error on the output is 10x the clean-up budget: refused on 2 examples as on 16
    out, report = optimize(big_image_model(), passes="test-damage-gain(factor=1.01)", repeats=1)
    row = report.rows[-1]
    assert row.status == "undone" and "rel error" in row.note, row
    assert "2 examples" in report.check_inputs
    assert np.asarray(out.graph.const_value("k")) == np.float32(2.0)
    full = {"x": np.random.default_rng(1).standard_normal((16, 1, 3, 600, 600)).astype(np.float32)}
    _, full_report = optimize(big_image_model(), passes="test-damage-gain(factor=1.01)", repeats=1,
                              inputs={"x": full["x"].reshape(16, 3, 600, 600)})
    assert full_report.rows[-1].status == "undone"
    light = float(row.note.split("rel error ")[1].split()[0])
    heavy = float(full_report.rows[-1].note.split("rel error ")[1].split()[0])
    assert light == pytest.approx(heavy, rel=0.5)  # the same damage, measured alike


def test_a_damaged_clean_up_is_undone_in_the_clean_preset_path():
    """The clean preset's path (no timing, the input row from the reference) checks as before."""
    _, report = optimize(conv_bn_relu_model(), passes="fold-bn,test-damage-gain(node=fc,factor=1.5),dce",
                         repeats=1)
    assert report.latency == "none"
    statuses = {r.name: r.status for r in report.rows}
    assert statuses["fold-bn"] == "kept" and statuses["test-damage-gain"] == "undone"
    assert all(r.latency_ms is None for r in report.rows)
    assert report.rows[0].max_error == 0 and report.rows[0].file_bytes > 0


def test_latency_modes():
    _, report = optimize(conv_bn_relu_model(), preset="clean", repeats=3)
    assert report.latency == "none" and all(r.latency_ms is None for r in report.rows)
    assert "not timed" in report.format()
    _, report = optimize(conv_bn_relu_model(), preset="clean", repeats=3, latency="ends")
    first, *middle, last = report.rows
    assert first.latency_ms > 0 and last.latency_ms > 0 and all(r.latency_ms is None for r in middle)
    assert "side by side" in report.format()
    _, report = optimize(conv_bn_relu_model(), preset="clean", repeats=3, latency="rows")
    assert all(r.latency_ms > 0 for r in report.rows if r.status in ("", "kept"))
    with pytest.raises(Exception, match="latency"):
        optimize(conv_bn_relu_model(), preset="clean", latency="sometimes")


def test_sessions_are_reused(monkeypatch):
    """One session for the original (its outputs and the input row), one per checked change; the
    end timing reuses them, the speed check makes its own one-thread pair (Checker.side_by_side_ms)."""
    import tvmlite.checker as checker

    made = []
    real = checker.Checker._session
    monkeypatch.setattr(checker.Checker, "_session",
                        lambda self, model, threads=2: made.append(threads) or real(self, model, threads))
    _, report = optimize(conv_bn_relu_model(), passes="fold-bn,remove-identity,dce", repeats=1)
    changed = sum(r.status == "kept" for r in report.rows)
    assert changed >= 2 and len(made) == 1 + changed
    made.clear()
    _, report = optimize(conv_bn_relu_model(), passes="fp16", repeats=5, speed_check=True, latency="ends")
    assert report.rows[-1].status in ("kept", "undone") and "side by side" in report.rows[-1].note
    # the original and fp16's check (the end timing reuses them), and the speed check's pair
    assert sorted(made) == [checker.DECIDE_THREADS] * 2 + [2, 2]


def test_layers_that_compute_alike_are_timed_once(monkeypatch):
    """quantize(measure=true) times one of each kind of layer: same op, attributes and shapes."""
    import tvmlite.quant.select as select
    from tvmlite.passes import Pipeline

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), f"w{i}")
             for i in range(3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["y"], name="conv2", strides=[2, 2])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 7, 7])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    timed = []
    real = select._time_layer
    monkeypatch.setattr(select, "_time_layer", lambda model, key, *a: timed.append(key) or real(model, key, *a))
    # the three convs form one region, timed first; when it wins (a matter of timing noise) no layer
    # is timed alone, and the alone path is what this test is about
    monkeypatch.setattr(select, "winning_regions", lambda *a, **k: set())
    m = load(proto)
    calib = [{"x": rng.standard_normal((1, 4, 16, 16)).astype(np.float32)} for _ in range(4)]
    result = Pipeline([select_pass(calib)]).run(m)[0]
    decisions = {d["node"]: d for d in result.decisions if "float_ms" in d}
    assert len(timed) == 2  # conv0 and conv1 compute alike; conv2 has other strides and output shape
    assert decisions["conv1"]["timed_as"] == "conv0" and "timed_as" not in decisions["conv2"]
    assert decisions["conv1"]["float_ms"] == decisions["conv0"]["float_ms"]


def select_pass(calib):
    from tvmlite.passes import parse_spec

    (p,) = parse_spec("quantize(mode=auto,measure=true)")
    p.options.calibration = calib
    return p


def test_an_output_against_itself_is_exact_without_computing():
    from tvmlite.metrics import output_check

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 5, 7)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    fast = output_check("s", [scores], [scores], [mask])
    full = output_check("s", [scores], [scores.copy()], [mask])  # equal arrays, not the same ones
    assert fast == full and fast.masked == 2 * 7 and fast.argmax == 1.0
    moved = scores.copy()
    moved[0, 0, 0] += 1.0
    assert output_check("s", [scores], [moved], [mask]).rel > 0  # a copy that differs is measured
