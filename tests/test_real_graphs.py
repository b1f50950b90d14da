"""Every preset of `tvmlite.optimize` on models shaped like the real graphs that crashed it (issue 11):
a YOLO-style detector with int64 shape arithmetic, a model with scalar inputs, a conv net with
symbolic H/W, a VAD-like model with If, Loop and a recurrent state (see tests/real_graphs.py).

Each run must complete, write a model onnxruntime loads, stay within the preset's error budget, and
leave integer/bool tensors and subgraphs alone."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import real_graphs as rg
from tvmlite.export import export_model
from tvmlite.passes import parse_spec
from tvmlite.checker import pass_budget
from tvmlite.optimize import PRESETS, optimize

FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
#: model x preset runs that take over ~20 s on the 2-core machine
SLOW = {("detector", "fast"), ("detector", "small")}


def _cases():
    for name in rg.BUILDERS:
        for preset in PRESETS:
            marks = [pytest.mark.slow] if (name, preset) in SLOW else []
            yield pytest.param(name, preset, id=f"{name}-{preset}", marks=marks)


def _feeds(model, shapes, seed=5):
    """Fresh random inputs from the same distribution as the check inputs (another seed)."""
    from tvmlite.compare import prepare_inputs
    from tvmlite.frontend import import_model

    return prepare_inputs(import_model(model), None, shapes, seed=seed)


def _elem_types(proto) -> dict:
    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _integer_nodes(proto) -> dict:
    """First output -> (op, inputs, outputs) of the nodes that write only integer or bool tensors."""
    types = _elem_types(proto)
    out = {}
    for n in proto.graph.node:
        kinds = [types.get(o) for o in n.output if o]
        if kinds and all(k and k not in FLOATS for k in kinds):
            out[n.output[0]] = (n.op_type, list(n.input), list(n.output))
    return out


def _subgraphs(proto) -> dict:
    return {n.output[0]: [a.g.SerializeToString(deterministic=True) for a in n.attribute if a.type == a.GRAPH]
            for n in proto.graph.node if any(a.type == a.GRAPH for a in n.attribute)}


@pytest.mark.parametrize("name,preset", list(_cases()))
def test_preset_completes_on_real_graph(name, preset):
    original, shapes = rg.BUILDERS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random calibration data
        model, report = optimize(original, preset=preset, shapes=shapes, repeats=3, progress=False)
    proto = export_model(model)
    onnx.checker.check_model(proto)
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names)), "duplicate node names"

    ref = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(original, shapes)
    # the preset's default budget on the checker's metric: max error over each output's spread
    budget = max(pass_budget(p) for p in parse_spec(PRESETS[preset]))
    for r, c in zip(ref.run(None, feeds), got.run(None, feeds)):
        assert r.shape == c.shape
        if r.dtype.kind != "f":
            assert np.array_equal(r, c), f"{name} {preset}: integer output changed"
            continue
        # against the spread, as the checker measures, but one fresh example (a [1, 1] probability)
        # has no spread: then against its magnitude
        err = float(np.max(np.abs(r - c))) / max(float(np.ptp(r)), float(np.max(np.abs(r))), 1e-12)
        # fresh inputs, not the ones the passes were checked on: allow a margin over the budget
        assert err <= 2 * budget + 1e-6, f"{name} {preset}: relative error {err:.3g}"
    assert all(row.max_error is None or row.max_error <= budget + 1e-9 for row in report.rows if row.kept)

    # integer shape arithmetic and bool conditions are never quantized, factorized or cast
    before, after = _integer_nodes(original), _integer_nodes(proto)
    for key, node in after.items():
        if key in before:
            assert node == before[key], f"{name} {preset}: integer node {key} was rewritten"
    types = _elem_types(proto)
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast"):
            src = types.get(n.input[0])
            if n.op_type == "QuantizeLinear" or n.op_type == "Cast" and src == onnx.TensorProto.FLOAT:
                assert src == onnx.TensorProto.FLOAT, f"{n.op_type} {n.name} reads a non-float tensor"
    # subgraphs (If/Loop bodies) survive as they were
    subs_before, subs_after = _subgraphs(original), _subgraphs(proto)
    assert set(subs_before) == set(subs_after)
    assert all(subs_after[k] == v for k, v in subs_before.items())


def test_detector_integer_arithmetic_is_skipped_with_reason():
    original, shapes = rg.detector(size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = optimize(original, passes="quantize(mode=all)", shapes=shapes, max_error=0.2,
                                 repeats=1, progress=False)
    row = next(r for r in report.rows if r.name == "quantize")
    assert row.kept
    reasons = dict(row.skipped)
    int_muls = [n.name for n in original.graph.node if n.op_type == "Mul" and n.output[0].startswith("hw_")]
    assert int_muls and all("not float32 arithmetic (int64)" in reasons[n] for n in int_muls)
    assert any(n.op_type == "QuantizeLinear" for n in export_model(model).graph.node)


def test_vad_subgraphs_are_reported_and_calibration_keeps_state_axis():
    from tvmlite.calibration import batch_axes, load_calibration
    from tvmlite.frontend import import_model

    original, shapes = rg.vad()
    m = import_model(original)
    assert batch_axes(m) == {"audio": 0, "state": 1, "sr": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calib = load_calibration(None, m, shapes=shapes, random_count=3)
    batch = calib.first(3)
    assert batch["audio"].shape == (3, 512) and batch["state"].shape == (2, 3, 64) and batch["sr"].ndim == 0
    assert len(calib) == 3 and calib.take(batch, 1)["state"].shape == (2, 1, 64)
    sess = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    prob, state = sess.run(None, batch)  # the merged batch is one the model accepts
    assert prob.shape == (3, 1) and state.shape == (2, 3, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = optimize(original, preset="small", shapes=shapes, repeats=1, progress=False)
    for pass_name in ("lowrank", "quantize"):
        row = next(r for r in report.rows if r.name == pass_name)
        why = " ".join(w for _, w in row.skipped)
        assert "If subgraph not looked into" in why and "Loop subgraph not looked into" in why


def test_calibration_never_merges_samples_with_different_scalars():
    from tvmlite.calibration import load_calibration
    from tvmlite.frontend import import_model

    m = import_model(rg.scalar_input()[0])
    samples = [{"audio": np.full((1, 1600), i, np.float32), "sample_rate": np.array(sr, np.int64),
                "gain": np.array(1.0, np.float32)} for i, sr in enumerate((16000, 16000, 8000))]
    calib = load_calibration(samples, m)
    batches = list(calib.batches(16))
    assert [b["audio"].shape[0] for b in batches] == [2, 1]
    assert [int(b["sample_rate"]) for b in batches] == [16000, 8000]
    assert len(calib) == 3


def test_symbolic_hw_lowrank_times_layers_at_the_given_shape():
    original, shapes = rg.symbolic_hw()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = optimize(original, passes="lowrank(budget=0.25,measure=true)", shapes=shapes,
                             max_error=0.2, repeats=1, progress=False)
    row = next(r for r in report.rows if r.name == "lowrank")
    measured = [d for d in row.decisions if "speedup" in d]
    assert measured, row.decisions
    assert all(np.isfinite(d["speedup"]) and d["speedup"] > 0 for d in measured)
    # MACs counted at 64x64 (not 1x1): the classifier is a negligible share
    assert any("fc" == n and "0.00%" in w for n, w in row.skipped)


@pytest.mark.parametrize("spec", ["fp16(activations=true)", "fp16", "compress-weights", "prune",
                                  "quantize-dynamic", "lower-conv"])
def test_other_passes_leave_vad_subgraphs_intact(spec):
    original, shapes = rg.vad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = optimize(original, passes=spec, shapes=shapes, max_error=0.5, repeats=1, progress=False)
    proto = export_model(model)
    ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert _subgraphs(proto) == _subgraphs(original)


def test_lowrank_without_data_on_symbolic_hw_skips_what_it_cannot_time():
    """rank=ratio needs no data, so nothing gives H and W: layers are sized at 1x1, where an
    unpadded 3x3 conv has no output. The pass says so per layer (the layer's geometry refuses the
    size before anything is timed) instead of failing."""
    from tvmlite.passes import parse_spec
    from tvmlite.frontend import import_model

    m = import_model(rg.symbolic_hw()[0])
    result = parse_spec("lowrank(rank=ratio,ratio=0.5,measure=true,min_layer_share=0)")[0](m)
    reasons = dict(result.skipped)
    assert any("at the input sizes known here: output spatial shape" in w and "is empty" in w
               for w in reasons.values()), reasons


def test_lowrank_replay_reuses_the_planned_factors(monkeypatch):
    """Undo trials replay lowrank: the factors come from the first run, not from new fits."""
    from tvmlite.passes import parse_spec
    from tvmlite.passes.lowrank import LowRank
    from tvmlite.frontend import import_model

    original, shapes = rg.symbolic_hw()
    p = parse_spec("lowrank(budget=0.25,min_layer_share=0)")[0]
    from tvmlite.calibration import load_calibration

    first = import_model(original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.options.calib = load_calibration(None, first, shapes=shapes)
    result = p(first)
    assert result.rewritten, result.skipped

    def no_fit(*a, **k):
        raise AssertionError("replay planned again")

    monkeypatch.setattr(LowRank, "_plan", no_fit)
    again = import_model(original)
    p.replay(result, [])(again)
    feeds = _feeds(original, shapes)
    a = ort.InferenceSession(export_model(first).SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(export_model(again).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(a.run(None, feeds)[0], b.run(None, feeds)[0])
    fewer = import_model(original)
    assert p.replay(result, result.rewritten[:1])(fewer).rewritten == result.rewritten[1:]


def test_parameters_inside_subgraphs_are_counted():
    """inspect/optimize reported 0 parameters for a model whose weights live in its Loop body."""
    from tvmlite.analysis import param_count
    from tvmlite.frontend import load

    original, _ = rg.BUILDERS["vad"]()
    m = load(original)
    outer = sum(int(np.prod(t.dims)) for t in original.graph.initializer if int(np.prod(t.dims)) > 1)
    inner = sum(int(np.prod(t.dims)) for n in original.graph.node for a in n.attribute if a.type == a.GRAPH
                for t in a.g.initializer if int(np.prod(t.dims)) > 1)
    assert inner > 0, "the VAD model should keep weights in a body"
    assert param_count(m) >= outer + inner
