"""tvmlite.optimize: presets, checked passes that are undone (whole or per layer) when they break the budget."""
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest

import tvmlite
from tvmlite.passes import Pass, PassResult, register_pass
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.optimize import optimize

from conftest import corpus_model
from helpers import conv_bn_relu_model, ort_run


@register_pass
class ScaleWeights(Pass):
    """Test pass: scales each constant MatMul/Conv weight by `factor` (a per-layer decision)."""

    name = "test-scale-weights"
    exclude_option = "exclude"

    @dataclass
    class Options:
        factor: float = 1.5
        exclude: list = field(default_factory=list)

    def run(self, model):
        result = PassResult(self.name)
        g = model.graph
        for node in g.toposort():
            if node.op_type in ("MatMul", "Conv") and node.label not in self.options.exclude:
                w = g.const_value(node.inputs[1])
                scale = self.options.factor if node.op_type == "MatMul" else 1.0 + 1e-9
                g.set_input(node, 1, g.add_constant(w * np.float32(scale), "scaled"))
                result.rewrote(node)
        return result


def test_exact_preset_is_bit_identical():
    path = corpus_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    m, report = optimize(str(path), preset="exact", shapes={"x": (1, 3, 48, 192)}, repeats=2)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)
    assert np.array_equal(ort_run(str(path), {"x": x})[0], ort_run(export_model(m), {"x": x})[0])
    assert report.rows[-1].max_error == 0.0


def test_pass_breaking_budget_is_undone_per_layer():
    proto = conv_bn_relu_model()
    m, report = optimize(proto, passes="test-scale-weights(factor=1.5)", shapes={"x": (4, 3, 4, 4)},
                         max_error=1e-3, repeats=1)
    row = report.rows[-1]
    # the MatMul scaling breaks the budget; the (harmless) Conv change is kept
    assert row.kept and row.excluded == ["fc"], row
    assert "kept without 1 layer" in row.note
    assert row.max_error < 1e-3
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-5)


def test_pass_without_exclude_is_undone_whole():
    proto = conv_bn_relu_model()

    @register_pass
    class Break(Pass):
        name = "test-break-output"

        def run(self, model):
            r = PassResult(self.name)
            g = model.graph
            node = g.producer("y")
            g.set_input(node, 1, g.add_constant(np.float32(-1.0), "minus"))
            r.rewrote(node)
            return r

    m, report = optimize(proto, passes="fold-bn,test-break-output,dce", shapes={"x": (2, 3, 4, 4)}, repeats=1)
    names = [(r.name, r.kept) for r in report.rows]
    assert names == [("(input)", True), ("fold-bn", True), ("test-break-output", False), ("dce", True)]
    assert "undone" in report.rows[2].note
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-4,
                               atol=1e-5)


def test_accuracy_budget_with_labels():
    proto = conv_bn_relu_model()
    x = np.random.default_rng(5).standard_normal((32, 3, 4, 4)).astype(np.float32)
    labels = ort_run(proto, {"x": x})[0].argmax(1)
    m, report = optimize(proto, passes="test-scale-weights(factor=-1.0)", inputs={"x": x}, labels=labels,
                         max_error=10.0, max_accuracy_drop=0.5, repeats=1)
    assert report.rows[0].accuracy == 1.0
    # flipping the classifier's weights costs all accuracy: that layer is undone, the Conv kept
    last = report.rows[-1]
    assert last.kept and last.excluded == ["fc"] and last.accuracy == 1.0
    assert "accuracy" in last.note


def test_bad_preset():
    with pytest.raises(OptionError, match="unknown preset"):
        optimize(conv_bn_relu_model(), preset="fastest")


def _digits():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "models"
    return str(root / "digits_cnn.onnx"), np.load(root / "digits_calib.npz")["input"][:16]


@pytest.mark.parametrize("spec", ["quantize(mode=auto,measure=true,progress=false)",
                                  "lowrank(budget=0.25,measure=true)"])
def test_replay_redoes_the_decisions_without_measuring(spec, monkeypatch):
    """Per-layer undo replays a measuring pass: same layers, same model, and no timing at all."""
    from tvmlite.passes import parse_spec

    path, calib = _digits()
    p = parse_spec(spec)[0]
    setattr(p.options, p.calibration_option, {"input": calib})
    first = tvmlite.load(path)
    result = p(first)
    assert result.changed
    replay = p.replay(result, [])
    assert replay.options.measure is False
    import tvmlite.quant.select as select
    from tvmlite.passes.lowrank import LowRank

    def no_timing(*a, **k):
        raise AssertionError("replay measured again")

    monkeypatch.setattr(select, "timed_ratio", no_timing)
    monkeypatch.setattr(LowRank, "_measure", no_timing)
    again = tvmlite.load(path)
    replay(again)
    x = np.load(pathlib_models() / "digits_test.npz")["input"][:8]
    np.testing.assert_array_equal(ort_run(export_model(first), {"input": x})[0],
                                  ort_run(export_model(again), {"input": x})[0])
    # excluding a layer leaves exactly that layer alone
    layer = result.rewritten[0]
    fewer = tvmlite.load(path)
    redone = p.replay(result, [layer])(fewer)
    assert layer not in redone.rewritten and redone.rewritten
    assert set(redone.rewritten) <= set(result.rewritten) - {layer}


def pathlib_models():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1] / "models"


@register_pass
class BreakRanked(Pass):
    """Test pass: scales 12 MatMul-like layers; only `bad` ones break the budget; knows its costs."""

    name = "test-break-ranked"
    exclude_option = "exclude"
    trials = 0

    @dataclass
    class Options:
        bad: list = field(default_factory=list)
        exclude: list = field(default_factory=list)

    def run(self, model):
        type(self).trials += 1
        result = PassResult(self.name)
        g = model.graph
        for node in g.toposort():
            if node.op_type == "Mul" and node.label not in self.options.exclude:
                factor = 2.0 if node.label in self.options.bad else 1.0 + 1e-7
                g.set_input(node, 1, g.add_constant(np.float32(factor), "f"))
                result.rewrote(node)
        return result

    def layer_costs(self, result):
        return {x: (1.0 if x in self.options.bad else 0.0) for x in result.rewritten}


def test_undo_uses_the_pass_costs_and_few_trials():
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for i in range(12):
        nodes.append(helper.make_node("Mul", [prev, f"one{i}"], [f"h{i}"], name=f"mul{i}"))
        prev = f"h{i}"
    inits = [onnx.numpy_helper.from_array(np.float32(1.0), f"one{i}") for i in range(12)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2, 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    BreakRanked.trials = 0
    m, report = optimize(proto, passes="test-break-ranked(bad=mul3|mul8)", max_error=1e-3, repeats=1)
    row = report.rows[-1]
    assert row.kept and sorted(row.excluded) == ["mul3", "mul8"], row
    # 1 run + doubling (1, 2) + no bisection needed: far fewer than one trial per layer
    assert BreakRanked.trials <= 4


@register_pass
class SlowDown(Pass):
    """Test pass: multiplies the output by the identity matrix 40 times (exact, but slower)."""

    name = "test-slow-down"

    def run(self, model):
        result = PassResult(self.name)
        g = model.graph
        node = g.producer(g.outputs[0])
        eye = g.add_constant(np.eye(256, dtype=np.float32), "eye")
        x = node.inputs[0]
        for i in range(40):
            y = g.fresh_name("slow")
            g.add_node("MatMul", [x, eye], [y], name=f"slow_mm{i}")
            x = y
        g.set_input(node, 0, x)
        result.rewrote(node)
        return result


def _relu_model():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def test_speed_check_undoes_a_slower_pass():
    m, report = optimize(_relu_model(), passes="test-slow-down", speed_check=True, repeats=20)
    row = report.rows[-1]
    assert not row.kept and "not faster" in row.note, row
    assert len(m.graph.nx.nodes) == 1
    m, report = optimize(_relu_model(), passes="test-slow-down", repeats=1)  # no speed check for --passes
    assert report.rows[-1].kept and len(m.graph.nx.nodes) == 41


def test_speed_check_times_one_thread_sessions_in_cpu_time(monkeypatch):
    """The decision's sessions run one thread (in the calling thread, whose CPU time the load on
    the host barely moves); the checks' and the report's sessions keep two."""
    import tvmlite.checker as ck

    threads = []
    real = ck.Checker._session
    monkeypatch.setattr(ck.Checker, "_session", lambda self, model, t=2: threads.append(t) or real(self, model, t))
    m, report = optimize(_relu_model(), passes="test-slow-down", speed_check=True, repeats=20)
    row = report.rows[-1]
    assert "CPU time at one thread" in row.note and not row.kept, row.note
    assert threads.count(ck.DECIDE_THREADS) == 2 and ck.DECIDE_THREADS == 1
    assert 2 in threads


def test_fast_preset_speed_checks_by_default(monkeypatch):
    import tvmlite.optimize as opt

    seen = []
    monkeypatch.setattr(opt._Checker, "side_by_side_ms", lambda self, new, old: seen.append(1) or (1.0, 2.0))
    path, calib = _digits()
    optimize(path, preset="fast", calib={"input": calib}, inputs={"input": calib[:8]}, repeats=1)
    assert seen  # lowrank/quantize were timed side by side; clean-ups were not


@register_pass
class BreakEvery(BreakRanked):
    """BreakRanked without known costs: the optimizer measures each layer alone."""

    name = "test-break-every"

    def layer_costs(self, result):
        return None


def test_every_layer_alone_over_budget_is_undone_after_the_cost_trials():
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for i in range(4):
        nodes.append(helper.make_node("Mul", [prev, f"one{i}"], [f"h{i}"], name=f"mul{i}"))
        prev = f"h{i}"
    inits = [onnx.numpy_helper.from_array(np.float32(1.0), f"one{i}") for i in range(4)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2, 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    BreakEvery.trials = 0
    m, report = optimize(proto, passes="test-break-every(bad=mul0|mul1|mul2|mul3)", max_error=1e-3, repeats=1)
    row = report.rows[-1]
    assert row.status == "undone" and "even layer by layer" in row.note, row
    assert BreakEvery.trials == 1 + 4  # the run, then each layer alone; no doubling over sets that hold one
    BreakEvery.trials = 0
    m, report = optimize(proto, passes="test-break-every(bad=mul1|mul2)", max_error=1e-3, repeats=1)
    assert sorted(report.rows[-1].excluded) == ["mul1", "mul2"]
