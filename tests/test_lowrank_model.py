"""lowrank holds the factored model's outputs to the budget, not only each layer's."""
import numpy as np
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.lowrank import LowRank
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

RNG = np.random.default_rng(3)


def _chain(depth: int, width: int = 64, planted: int = 6, noise: float = 0.3):
    """MatMul+Relu layers with decaying spectra (planted rank plus noise), as trained layers have."""
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        w = (RNG.standard_normal((width, planted)) @ RNG.standard_normal((planted, width))
             + RNG.standard_normal((width, width)) * noise) / np.sqrt(width * planted)
        inits.append((f"w{i}", w.astype(np.float32)))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return make_model(nodes, [tensor("x", ["N", width])], [tensor("y", ["N", width])], inits)


def _rel(got, want):
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64)))


def test_model_error_is_reported_and_within_budget():
    proto = _chain(3)
    calib = {"x": RNG.standard_normal((48, 64)).astype(np.float32)}
    m = tvmlite.load(proto)
    (r,) = Pipeline([LowRank(rank="budget", budget=0.3, calib=calib, min_layer_share=0.0)]).run(m)
    assert r.changed, r.skipped
    got, want = ort_run(export_model(m), calib)[0], ort_run(proto, calib)[0]
    # the reported figure is the error onnxruntime sees on the calibration examples
    assert abs(r.stats["model_error"] - _rel(got, want)) < 1e-3
    assert r.stats["model_error"] <= 0.3


def _cancelling_pair(n: int = 64):
    """y = x W + x V with V = -W + small: each layer's output is large, their sum small, so factor
    errors each within budget of their own layer's output are not within budget of the sum."""
    w = (RNG.standard_normal((n, 6)) @ RNG.standard_normal((6, n)) + RNG.standard_normal((n, n)) * 0.3) / 20
    v = -w + RNG.standard_normal((n, n)) * 0.01
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="fa"),
             helper.make_node("MatMul", ["x", "v"], ["b"], name="fb"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", n])], [tensor("y", ["N", n])],
                      [("w", w.astype(np.float32)), ("v", v.astype(np.float32))])


def test_compounded_error_over_budget_undoes_every_layer():
    proto = _cancelling_pair()
    calib = {"x": RNG.standard_normal((48, 64)).astype(np.float32)}
    m = tvmlite.load(proto)
    (r,) = Pipeline([LowRank(rank="budget", budget=0.3, calib=calib, min_layer_share=0.0)]).run(m)
    # each layer met the budget on its own (its figures stay in the report), the model did not
    assert [d["node"] for d in r.decisions] == ["fa", "fb"]
    for d in r.decisions:
        assert not d["kept"] and d["error"] <= 0.3 and "> budget 0.3: all 2 factored layers undone" in d["reason"]
    assert not r.changed and not r.rewritten and r.stats["model_error"] > 0.3
    assert {s[0] for s in r.skipped} == {"fa", "fb"}
    assert [n.op_type for n in m.graph.toposort()] == ["MatMul", "MatMul", "Add"]
    np.testing.assert_array_equal(ort_run(export_model(m), calib)[0], ort_run(proto, calib)[0])
