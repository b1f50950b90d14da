"""The prune pass: magnitude (layer/global), N:M, blocks, and structured channel pruning."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model

from helpers import cli_main, make_model, ort_run, tensor

RNG = np.random.default_rng(1)


def _f(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _mlp():
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return make_model(nodes, [tensor("x", ["N", 32])], [tensor("y", ["N", 8])],
                      [("w1", _f(64, 32)), ("b1", _f(64)), ("w2", _f(64, 8))])


def _weights(m):
    g = m.graph
    return {n.name: g.const_value(n.inputs[1]) for n in g.toposort() if n.op_type in ("Gemm", "MatMul", "Conv")}


def test_magnitude_per_layer_and_global():
    m = tvmlite.load(_mlp())
    (r,) = Pipeline("prune(mode=magnitude,sparsity=0.75)").run(m)
    for d in r.decisions:
        assert d["sparsity"] == pytest.approx(0.75, abs=0.01)
    proto = _mlp()
    m2 = tvmlite.load(proto)
    Pipeline("prune(mode=magnitude,sparsity=0.75,scope=global)").run(m2)
    ws = _weights(m2)
    total = sum(w.size for w in ws.values())
    zeros = sum((w == 0).sum() for w in ws.values())
    assert zeros / total == pytest.approx(0.75, abs=0.01)
    # one threshold: every kept weight is at least as large as every removed one
    orig = _weights(tvmlite.load(proto))
    kept = np.concatenate([np.abs(ws[k][ws[k] != 0]) for k in ws])
    dropped = np.concatenate([np.abs(orig[k][ws[k] == 0]) for k in ws])
    assert kept.min() >= dropped.max()


def test_n_of_m_along_the_input_axis():
    m = tvmlite.load(_mlp())
    Pipeline("prune(mode=nm,n=2,m=4)").run(m)
    w1 = _weights(m)["fc1"]  # stored [out, in] (transB): groups run along the input axis
    groups = (w1 != 0).reshape(64, 8, 4)
    assert (groups.sum(-1) == 2).all()
    w2 = _weights(m)["fc2"]  # [in, out]
    assert ((w2 != 0).reshape(16, 4, 8).sum(1) == 2).all()


def test_block_sparsity_zeroes_whole_blocks():
    m = tvmlite.load(_mlp())
    Pipeline("prune(mode=block,block=8x4,sparsity=0.5)").run(m)
    w2 = _weights(m)["fc2"]  # [64, 8] -> 8x2 blocks of 8x4
    blocks = (w2 != 0).reshape(8, 8, 2, 4).any(axis=(1, 3))
    assert blocks.sum() == 8
    assert ((w2 != 0).reshape(8, 8, 2, 4).all(axis=(1, 3)) == blocks).all()


def _residual_cnn():
    """conv1 -> BN -> relu -> (conv2 -> relu) + (conv3) -> depthwise -> concat(with conv4) -> pool
    -> flatten -> gemm: channel pruning must keep conv2/conv3 together and fix every reader."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Add", ["r2", "c3"], ["a"], name="add"),
        helper.make_node("Conv", ["a", "wd", "bd"], ["d"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w4"], ["c4"], name="conv4", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["c4", "d"], ["cat"], name="cat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [("w1", _f(12, 3, 3, 3)), ("b1", _f(12)), ("s", np.abs(_f(12)) + 0.5), ("bb", _f(12)),
             ("mu", _f(12)), ("var", np.abs(_f(12)) + 0.5), ("w2", _f(16, 12, 3, 3)), ("w3", _f(16, 12, 1, 1)),
             ("b3", _f(16)), ("wd", _f(16, 1, 3, 3)), ("bd", _f(16)), ("w4", _f(6, 3, 3, 3)),
             ("wf", _f(5, 22 * 4 * 4, scale=0.1)), ("bf", _f(5))]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 5])], inits)


def test_channel_pruning_fixes_every_reader():
    proto = _residual_cnn()
    m = tvmlite.load(proto)
    (r,) = Pipeline("prune(mode=channel,sparsity=0.5)").run(m)
    by_node = {d["node"]: d for d in r.decisions}
    assert by_node["conv1"]["channels_after"] == 6
    assert sorted(["conv2", "conv3"]) == sorted([by_node["conv2"]["node"]] + by_node["conv2"]["joined"])
    assert by_node["conv2"]["channels_after"] == 8 and by_node["conv4"]["channels_after"] == 3
    ws = _weights(m)
    assert ws["conv2"].shape == (8, 6, 3, 3) and ws["conv3"].shape == (8, 6, 1, 1)
    assert ws["dw"].shape == (8, 1, 3, 3) and ws["fc"].shape == (5, 11 * 16)
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = ort_run(out, {"x": x})[0]
    np.testing.assert_allclose(compile_model(m).run({"x": x})[0], got, rtol=1e-4, atol=1e-4)
    # the kept channels compute exactly what they computed before: zeroing the removed channels'
    # weights in the original gives the same output
    assert got.shape == (2, 5)
    assert len(out.SerializeToString()) < len(proto.SerializeToString())


def test_channel_pruning_refit_reduces_error():
    proto = _residual_cnn()
    x = RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)
    want = ort_run(proto, {"x": x})[0]
    errs = []
    for spec in ("prune(mode=channel,sparsity=0.5)", None):
        m = tvmlite.load(proto)
        p = spec or __import__("tvmlite.passes.prune", fromlist=["Prune"]).Prune(mode="channel", sparsity=0.5, calib={"x": x})
        Pipeline(spec if spec else [p]).run(m)
        got = ort_run(export_model(m), {"x": x})[0]
        errs.append(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert errs[1] < errs[0] * 0.7


def test_channel_pruning_refuses_what_it_cannot_fix():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["y"], name="reshape")]
    proto = make_model(nodes, [tensor("x", ["N", 3, 4, 4])], [tensor("y", ["N", 128])],
                       [("w", _f(8, 3, 1, 1)), ("shape", np.array([0, -1], np.int64))])
    m = tvmlite.load(proto)
    (r,) = Pipeline("prune(mode=channel,sparsity=0.5)").run(m)
    assert not r.changed and "Reshape" in r.skipped[0][1]


def test_bad_options():
    with pytest.raises(OptionError):
        Pipeline("prune(mode=random)").run(tvmlite.load(_mlp()))
    with pytest.raises(OptionError):
        Pipeline("prune(mode=block,block=4)").run(tvmlite.load(_mlp()))
    with pytest.raises(OptionError):
        Pipeline("prune(sparsity=1.5)").run(tvmlite.load(_mlp()))
    for spec in ("prune(mode=channel,budget=-1)", "prune(mode=channel,budget=nan)",
                 "prune(mode=magnitude,budget=0.1)", "prune(mode=magnitude,measure=true)",
                 "prune(mode=channel,measure=true,repeats=0)"):
        with pytest.raises(OptionError, match="prune"):
            Pipeline(spec).run(tvmlite.load(_mlp()))


def _budget_run(budget, *, measure=False):
    proto = _residual_cnn()
    x = RNG.standard_normal((8, 3, 8, 8)).astype(np.float32)
    m = tvmlite.load(proto)
    from tvmlite.passes.prune import Prune
    (r,) = Pipeline([Prune(mode="channel", sparsity=0.5, calib={"x": x}, budget=budget, measure=measure)]).run(m)
    want = ort_run(proto, {"x": x})[0]
    got = ort_run(export_model(m), {"x": x})[0]
    return r, float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_channel_pruning_budget_keeps_only_groups_within_it():
    r, err = _budget_run(0.0)
    assert not r.changed and err < 1e-5
    rows = [d for d in r.decisions if "kept" in d]
    assert rows and not any(d["kept"] for d in rows)
    assert all("> budget 0" in d["reason"] and d["model_error"] > 0 for d in rows)
    r, err = _budget_run(10.0)
    kept = [d for d in r.decisions if d.get("kept")]
    assert r.changed and kept and all(d["channels_after"] < d["channels_before"] for d in kept)
    assert abs(r.stats["model_error"] - err) < 1e-3 * max(err, 1)  # the error the pass reports is the model's
    # in between, the greedy pass stops at the budget: the model's error stays within it
    r, err = _budget_run(0.5 * err)
    assert err <= 0.5 * _budget_run(10.0)[1] + 1e-6


def test_channel_pruning_budget_prunes_a_joined_group_once():
    """conv2 and conv3 meet at an Add (a residual join): in budget mode they are one group, tried
    once (a group started at one layer may take in the layers joined with it)."""
    r, err = _budget_run(10.0)
    rows = {d["node"]: d for d in r.decisions if d.get("kept")}
    assert set(rows) == {"conv1", "conv2", "conv4"}, r.skipped
    assert rows["conv2"]["joined"] == ["conv3"] and rows["conv2"]["channels_after"] == 8
    assert not any(s[0] in ("conv2", "conv3") for s in r.skipped)


def test_channel_pruning_budget_copies_and_measures_once_per_attempt(monkeypatch):
    """One copy of the model per attempt (the undo copy is also the refit's original), one model
    error per attempt (the pass's reported error is the last kept row's, not measured again)."""
    import tvmlite.passes.prune_channels as pc
    from tvmlite.ir.model import Model

    n = {"copy": 0, "try": 0, "err": 0}
    copy, try_group, error = Model.copy, pc._try_group, pc.output_error

    def counted(key, f):
        def call(*a, **k):
            n[key] += 1
            return f(*a, **k)
        return call

    monkeypatch.setattr(Model, "copy", counted("copy", copy))
    monkeypatch.setattr(pc, "_try_group", counted("try", try_group))
    monkeypatch.setattr(pc, "output_error", counted("err", error))
    r, err = _budget_run(10.0)
    rows = [d for d in r.decisions if "kept" in d]
    assert n["try"] >= len(rows) >= 3 and n["copy"] == n["try"] and n["err"] == len(rows)
    assert r.stats["model_error"] == [d for d in rows if d["kept"]][-1]["model_error"]
    assert abs(r.stats["model_error"] - err) < 1e-3 * max(err, 1)


def test_channel_pruning_measure_keeps_only_what_onnxruntime_runs_faster(monkeypatch):
    import tvmlite.passes.prune_channels as pc

    monkeypatch.setattr(pc, "timed_ratio", lambda fa, fb, *a, **k: (fa(), fb(), 0) and (1.0, 2.0, 6))
    r, err = _budget_run(None, measure=True)
    rows = [d for d in r.decisions if "kept" in d]
    assert rows and not r.changed and err < 1e-5
    assert all(not d["kept"] and d["reason"].startswith("not faster in onnxruntime") for d in rows)
    monkeypatch.setattr(pc, "timed_ratio", lambda fa, fb, *a, **k: (2.0, 1.0, 6))
    r, err = _budget_run(None, measure=True)
    assert r.changed and all(d["kept"] and "faster: 1 vs 2 ms" in d["reason"] for d in r.decisions if "kept" in d)


def test_channel_pruning_goes_through_decomposed_hardswish():
    """x * clip(x + 3, 0, 6) / 6 (PP-OCR's HardSwish): the Mul joins the conv's channels with a
    per-channel function of the same channels, so they are pruned together."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1"),
             helper.make_node("Add", ["c", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["k"]),
             helper.make_node("Div", ["k", "six"], ["h"]),
             helper.make_node("Mul", ["c", "h"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2")]
    consts = [("w1", _f(8, 3, 3, 3)), ("b1", _f(8)), ("three", np.array(3, np.float32)),
              ("zero", np.array(0, np.float32)), ("six", np.array(6, np.float32)), ("w2", _f(4, 8, 1, 1))]
    proto = make_model(nodes, [tensor("x", ["N", 3, 6, 6])], [tensor("y", ["N", 4, 4, 4])], consts)
    m = tvmlite.load(proto)
    (r,) = Pipeline("prune(mode=channel,sparsity=0.5)").run(m)
    assert r.changed, r.skipped
    assert _weights(m)["conv1"].shape[0] == 4 and _weights(m)["conv2"].shape[1] == 4
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(compile_model(m).run({"x": x})[0], ort_run(export_model(m), {"x": x})[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec,needle", [("prune(mode=channel,budget=-1)", "budget=-1"),
                                         ("prune(mode=channel,budget=abc)", "budget"),
                                         ("prune(mode=nm,measure=true)", "for mode=channel"),
                                         ("prune(mode=channel,measure=true,repeats=0)", "repeats=0")])
def test_cli_refuses_bad_budget_options(tmp_path, spec, needle):
    src = tmp_path / "m.onnx"
    onnx.save(_residual_cnn(), src)
    before = src.read_bytes()
    rc, out, err = cli_main("optimize", src, "-o", tmp_path / "o.onnx", "--passes", spec)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], (rc, err)
    assert "Traceback" not in err + out
    assert not (tmp_path / "o.onnx").exists() and src.read_bytes() == before
