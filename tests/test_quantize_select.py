"""quantize's layer choice (tvmlite.quant.select): no work twice (every int8 set's model error is
measured once per example set, one NumPy run of the timing example serves both the static shapes
and the values fragments read), and the error step's block ranking, which finds the layers
carrying the error wherever they sit."""
from collections import Counter

import numpy as np
import tvmlite
import tvmlite.quant.select as select
from tvmlite.export.shapes import infer_shapes
from tvmlite.passes.quantize import candidate_units
from tvmlite.quant.regions import cut_for_error, edge_orders, sensitive_blocks

from helpers import cpu_has_vnni
from test_quantize_regions import _chain_model, chain_setup, computed_shape_setup


def _measured_sets(monkeypatch):
    """(int8 set, examples) of every model error choose_layers measures."""
    seen, last = [], {}
    real_build, real_err = select.build_variant, select.relative_error

    def build(model, units, *a, **k):
        last["units"] = frozenset(units)
        return real_build(model, units, *a, **k)

    def err(ref, got):
        seen.append((last["units"], ref[0].shape[0]))
        return real_err(ref, got)
    monkeypatch.setattr(select, "build_variant", build)
    monkeypatch.setattr(select, "relative_error", err)
    return seen


def test_no_int8_set_is_measured_twice(monkeypatch):
    """The error after a cut whose error the search already had, and after a whole-model guard
    that dropped nothing, used to be measured again (a whole-model session and run each)."""
    _, _, m, units, spec, calib, full = chain_setup()
    seen = _measured_sets(monkeypatch)
    budget = full[-1]["output_error"] / 3  # the whole chain misses it: the error step cuts
    chosen, decisions = select.choose_layers(m, units, spec, calib, budget=budget)
    assert decisions[-1]["output_error"] <= budget
    assert any(d["precision"] == "float32" for d in decisions[:-1])
    assert seen and max(Counter(seen).values()) == 1, Counter(seen).most_common(2)
    # the final error is the one measured on all examples for the final set
    assert (frozenset(chosen), 8) in seen


def test_one_numpy_run_serves_shapes_and_fragment_values(monkeypatch):
    """A Reshape to a computed shape inside a region and one onnx cannot type at an output: the
    shapes and the region's int64 input both come from a single NumPy run of the example."""
    rng = np.random.default_rng(0)
    m, units, spec, nodes_, keys = computed_shape_setup(rng, side_output=True)
    feeds = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    runs = []
    real = select.capture_values
    monkeypatch.setattr(select, "capture_values", lambda *a: runs.append(a[1]) or real(*a))
    seen: dict = {}
    shapes = select._static_shapes(m, feeds, seen)
    assert shapes["z"] == (1, 8, 256) and len(runs) == 1  # onnx left it unknown: read from the run
    assert seen["s3"].tolist() == [1, 8, -1]
    timer = select._Timer(m, spec, shapes, 1, 6, {u: {"node": u} for u in units}, False, feeds, seen)
    t_f, t_q = timer.region(m, nodes_, keys)
    assert 0 < t_f < float("inf") and 0 < t_q < float("inf")  # fed the model's own shape values
    assert len(runs) == 1


def test_the_layer_carrying_the_error_goes_back_wherever_it_sits():
    """An error carried by one layer in the middle of the chain: cutting from either edge needs two
    or more layers back, the sensitive-blocks order only that one."""
    m = tvmlite.load(_chain_model())
    infer_shapes(m)
    units = candidate_units(m.graph, {"Conv"}, set(), set(), None)
    calls = []

    def error_of(int8):
        calls.append(frozenset(int8))
        return (0.1 if "c2" in int8 else 0.0) + 0.001 * len(int8)
    order, block_err = sensitive_blocks(m, units, error_of, blocks=len(units))
    assert order[0] == "c2" and block_err["c2"] > max(e for u, e in block_err.items() if u != "c2")
    assert len(calls) == len(units)
    orders = {**edge_orders(m, units), "most sensitive blocks first": order}
    name, back, err = cut_for_error(orders, error_of, 0.01)
    assert (name, back) == ("most sensitive blocks first", ["c2"]) and err == 0.003
    # blocks of two: c2 goes back with its block's neighbour, never more than the edge orders
    order2, _ = sensitive_blocks(m, units, error_of, blocks=2)
    assert "c2" in order2[:2]


def test_large_models_rank_blocks_and_meet_the_budget_in_onnxruntime(monkeypatch):
    """The real path with the block ranking forced (as on a model of more than SENSITIVITY_LAYERS
    int8 layers): every layer records its block's error, and the result meets the budget."""
    monkeypatch.setattr(select, "SENSITIVITY_LAYERS", 0)
    monkeypatch.setattr(select, "SENSITIVITY_BLOCKS", 2)
    ranked = []
    monkeypatch.setattr(select, "sensitive_blocks", lambda *a: ranked.append(1) or sensitive_blocks(*a))
    _, _, m, units, spec, calib, full = chain_setup()
    # choose_layers measures the error onnxruntime gives on this CPU. Without VNNI its saturating
    # u8s8 kernels triple the edge layers' errors (c1 alone 0.0096 -> 0.032, z 0.0024 -> 0.026, the
    # chain 0.017 -> 0.044), so no cut from an edge or the first block meets a third of the chain's
    # error there; two thirds of it (c1 back) does
    budget = full[-1]["output_error"] * (1 / 3 if cpu_has_vnni() else 0.7)
    chosen, decisions = select.choose_layers(m, units, spec, calib, budget=budget)
    assert decisions[-1]["output_error"] <= budget
    assert all("block_error_alone" in d for d in decisions[:-1])
    assert len(ranked) == 1  # ranked once, however many cuts the step makes
    assert 0 < len([d for d in decisions[:-1] if d["precision"] == "float32"]) < len(units)
