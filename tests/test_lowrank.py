"""The lowrank pass: SVD of Gemm/MatMul, Tucker-2 and CP of Conv, rank rules, data-aware refit."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.lowrank import LowRank, evbmf_rank, reduced_rank_fit, LinearStats, split_singular_values
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

RNG = np.random.default_rng(0)


def _conv_model(w, b=None, x_shape=(2, 8, 11, 13), opset=17, **attrs):
    ins = ["x", "w"] + (["b"] if b is not None else [])
    inits = [("w", w)] + ([("b", b)] if b is not None else [])
    node = helper.make_node("Conv", ins, ["y"], name="conv", **attrs)
    relu = helper.make_node("Relu", ["y"], ["out"], name="relu")
    return make_model([node, relu], [tensor("x", ["N", *x_shape[1:]])], [tensor("out", ["N", "C", "H", "W"])], inits,
                      opset=opset)


def _run_all(proto, model, feeds):
    """Original in onnxruntime vs rewritten model in onnxruntime and on the NumPy backend."""
    out = export_model(model)
    onnx.checker.check_model(out, full_check=True)
    want = ort_run(proto, feeds)[0]
    return want, ort_run(out, feeds)[0], compile_model(model).run(feeds)[0]


def _tucker_weight(T, S, k, r4, r3):
    core = RNG.standard_normal((r4, r3) + k)
    ut = np.linalg.qr(RNG.standard_normal((T, r4)))[0]
    us = np.linalg.qr(RNG.standard_normal((S, r3)))[0]
    return np.einsum("ab...,ta,sb->ts...", core, ut, us).astype(np.float32)


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(),
])
def test_tucker2_exact_ranks_reproduce_conv(attrs):
    w = _tucker_weight(12, 8, (3, 3), 4, 3)
    b = RNG.standard_normal(12).astype(np.float32)
    proto = _conv_model(w, b, **attrs)
    m = tvmlite.load(proto)
    # ratio 0.375 of S=8 -> 3 and of T=12 -> 5 >= 4: the exact ranks are covered
    (r,) = Pipeline([LowRank(rank="ratio", ratio=0.375, refit=False, min_mac_ratio=0.01)]).run(m)
    assert [n.op_type for n in m.graph.toposort()] == ["Conv", "Conv", "Conv", "Relu"]
    d = r.decisions[0]
    assert d["method"] == "tucker2" and d["ranks"] == [3, 5] and d["weight_error"] < 1e-5
    feeds = {"x": RNG.standard_normal((2, 8, 11, 13)).astype(np.float32)}
    want, got_ort, got_np = _run_all(proto, m, feeds)
    np.testing.assert_allclose(got_ort, want, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(got_np, want, atol=1e-3, rtol=1e-3)


def test_cp_exact_rank_reproduces_conv():
    R, T, S = 4, 10, 6
    f = [RNG.standard_normal((n, R)) for n in (T, S, 3, 3)]
    w = np.einsum("tr,sr,ir,jr->tsij", *f).astype(np.float32)
    b = RNG.standard_normal(T).astype(np.float32)
    proto = _conv_model(w, b, x_shape=(1, 6, 9, 10), pads=[1, 2, 0, 1], strides=[2, 1], dilations=[1, 2])
    m = tvmlite.load(proto)
    (r,) = Pipeline([LowRank(method="cp", rank="ratio", ratio=4 / 6, refit=False, min_mac_ratio=0.01)]).run(m)
    ops = [(n.op_type, n.attrs.get("group", 1)) for n in m.graph.toposort()]
    assert ops == [("Conv", 1), ("Conv", 4), ("Conv", 4), ("Conv", 1), ("Relu", 1)]
    assert r.decisions[0]["ranks"] == [4] and r.decisions[0]["weight_error"] < 1e-3
    feeds = {"x": RNG.standard_normal((1, 6, 9, 10)).astype(np.float32)}
    want, got_ort, got_np = _run_all(proto, m, feeds)
    np.testing.assert_allclose(got_ort, want, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(got_np, want, atol=1e-2, rtol=1e-2)


def _fc_model(w, c=None, op="Gemm", x_shape=("N", 24), **attrs):
    if op == "Gemm":
        ins = ["x", "w"] + (["c"] if c is not None else [])
        node = helper.make_node("Gemm", ins, ["y"], name="fc", **attrs)
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    inits = [("w", w)] + ([("c", c)] if c is not None else [])
    out_shape = list(x_shape[:-1]) + [w.shape[0] if attrs.get("transB") else w.shape[1]]
    return make_model([node], [tensor("x", list(x_shape))], [tensor("y", out_shape)], inits)


@pytest.mark.parametrize("case", ["gemm_transB", "gemm_plain_opset", "matmul_3d"])
def test_svd_full_rank_is_exact(case):
    low = RNG.standard_normal((24, 5)) @ RNG.standard_normal((5, 16))
    w = low.astype(np.float32)
    if case == "gemm_transB":
        proto = _fc_model(w.T.copy(), RNG.standard_normal(16).astype(np.float32), transB=1, alpha=0.5, beta=2.0)
        x = RNG.standard_normal((3, 24)).astype(np.float32)
    elif case == "gemm_plain_opset":
        proto = _fc_model(w, RNG.standard_normal((1, 16)).astype(np.float32))
        x = RNG.standard_normal((3, 24)).astype(np.float32)
    else:
        proto = _fc_model(w, op="MatMul", x_shape=("N", 7, 24))
        x = RNG.standard_normal((2, 7, 24)).astype(np.float32)
    m = tvmlite.load(proto)
    (r,) = Pipeline([LowRank(rank="energy", energy=0.999999, refit=False)]).run(m)
    d = r.decisions[0]
    assert d["ranks"] == [5] and d["macs_after"] < d["macs_before"]
    want, got_ort, got_np = _run_all(proto, m, {"x": x})
    np.testing.assert_allclose(got_ort, want, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(got_np, want, atol=1e-3, rtol=1e-3)


def test_singular_values_split_between_factors():
    a, b = RNG.standard_normal((20, 4)) * 100, RNG.standard_normal((4, 9)) * 0.01
    a2, b2 = split_singular_values(a, b)
    np.testing.assert_allclose(a2 @ b2, a @ b, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(a2, axis=0), np.linalg.norm(b2, axis=1), rtol=1e-9)


def test_evbmf_finds_planted_rank():
    L, M, r = 60, 90, 6
    y = RNG.standard_normal((L, r)) @ RNG.standard_normal((r, M)) * 3 + RNG.standard_normal((L, M)) * 0.5
    assert evbmf_rank(y) == r
    assert evbmf_rank(y.T) == r


def test_reduced_rank_fit_matches_data_not_weights():
    # inputs living in 3 directions: the best rank-3 map for the data is exact there, while the
    # weight-only SVD of a full-rank W is not
    n, d, out = 400, 10, 8
    basis = RNG.standard_normal((3, d))
    f = RNG.standard_normal((n, 3)) @ basis
    w = RNG.standard_normal((d, out))
    y = f @ w + 1.5
    st = LinearStats(d, out)
    st.add(f, y)
    a, b, c = reduced_rank_fit(st, w, 3, ridge=1e-6)
    assert st.rel_error(a @ b, c) < 1e-3
    u, s, vt = np.linalg.svd(w)
    assert st.rel_error((u[:, :3] * s[:3]) @ vt[:3], np.full(out, 1.5)) > 0.1


def _two_conv_model():
    w1 = (RNG.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    # trained layers have decaying spectra: planted low rank plus noise
    w2 = (_tucker_weight(32, 16, (3, 3), 6, 4) * 0.1 + RNG.standard_normal((32, 16, 3, 3)) * 0.01).astype(np.float32)
    fc = (RNG.standard_normal((512, 3)) @ RNG.standard_normal((3, 10)) * 0.05
          + RNG.standard_normal((512, 10)) * 0.005).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 10])],
                      [("w1", w1), ("w2", w2), ("b2", RNG.standard_normal(32).astype(np.float32)),
                       ("fc", fc)])


def test_budget_with_refit_keeps_each_layer_within_budget():
    proto = _two_conv_model()
    calib = {"x": np.abs(RNG.standard_normal((24, 3, 8, 8))).astype(np.float32)}
    m = tvmlite.load(proto)
    (r,) = Pipeline([LowRank(rank="budget", budget=0.3, calib=calib)]).run(m)
    kept = [d for d in r.decisions if d.get("kept")]
    assert kept, r.skipped
    for d in kept:
        assert d["error"] <= 0.3 + 1e-9
        assert d["error"] <= d["error_weights_only"] + 1e-9
        assert d["macs_after"] * 1.25 <= d["macs_before"]
    assert r.after["macs"] < r.before["macs"]
    # the first conv has 3 input channels: nothing of 27 taps x 16 outputs pays for itself
    want, got_ort, _ = _run_all(proto, m, calib)
    rel = np.linalg.norm(got_ort - want) / np.linalg.norm(want - want.mean(0))
    assert rel < 0.6


def test_budget_without_calibration_warns_and_uses_random_inputs():
    m = tvmlite.load(_two_conv_model())
    with pytest.warns(UserWarning, match="random inputs"):
        (r,) = Pipeline([LowRank(rank="budget", budget=0.5)]).run(m)
    assert all("error" in d for d in r.decisions if d.get("kept"))


def test_skips_are_explained():
    w = (RNG.standard_normal((8, 2, 3, 3))).astype(np.float32)
    m = tvmlite.load(_conv_model(w, x_shape=(1, 8, 6, 6), group=4, pads=[1, 1, 1, 1]))
    (r,) = Pipeline([LowRank(rank="ratio", refit=False)]).run(m)
    assert not r.changed and "grouped conv" in r.skipped[0][1]
    small = tvmlite.load(_fc_model(RNG.standard_normal((24, 3)).astype(np.float32)))
    (r,) = Pipeline([LowRank(rank="ratio", ratio=1.0, refit=False)]).run(small)
    assert not r.changed and "min_mac_ratio" in r.skipped[0][1]


def test_measure_times_layers_in_onnxruntime():
    w = _tucker_weight(64, 64, (3, 3), 8, 8)
    m = tvmlite.load(_conv_model(w, x_shape=(1, 64, 16, 16), pads=[1, 1, 1, 1]))
    (r,) = Pipeline([LowRank(rank="ratio", ratio=0.125, refit=False, measure=True, min_speedup=0.0)]).run(m)
    assert r.decisions[0]["speedup"] > 0


def test_bad_options():
    with pytest.raises(OptionError):
        Pipeline("lowrank(rank=magic)").run(tvmlite.load(_two_conv_model()))
    with pytest.raises(OptionError):
        Pipeline("lowrank(method=svd)").run(tvmlite.load(_two_conv_model()))
    with pytest.raises(OptionError):
        Pipeline("lowrank(budgett=1)")


def test_layers_too_small_to_matter_are_left_alone():
    m = tvmlite.load(_two_conv_model())
    (r,) = Pipeline([LowRank(rank="ratio", ratio=0.1, refit=False, min_mac_ratio=0.01, min_layer_share=0.2)]).run(m)
    reasons = dict(r.skipped)
    assert "min_layer_share" in reasons["fc"]  # 5,120 of ~150k MACs
    assert "c2" in r.rewritten


def test_time_budget_stops_planning_and_says_so(monkeypatch):
    """Layers not reached within time_budget are left alone with that reason (a fake clock: each
    look at it is 10 s later, so the first layer is planned and the budget is spent after it)."""
    import types

    from tvmlite.passes import lowrank as lowrank_mod

    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(lowrank_mod, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    m = tvmlite.load(_two_conv_model())
    (r,) = Pipeline([LowRank(rank="ratio", ratio=0.1, refit=False, min_mac_ratio=0.01, min_layer_share=0.0,
                             time_budget=15)]).run(m)
    reasons = dict(r.skipped)
    assert "time_budget 15" not in reasons.get("c1", "")  # planned (kept or skipped on its merits)
    assert "time_budget 15 s spent" in reasons["c2"] and "time_budget 15 s spent" in reasons["fc"]
    unlimited = tvmlite.load(_two_conv_model())
    (r0,) = Pipeline([LowRank(rank="ratio", ratio=0.1, refit=False, min_mac_ratio=0.01,
                              min_layer_share=0.0)]).run(unlimited)
    assert len(r0.rewritten) > len(r.rewritten)
    with pytest.raises(OptionError, match="time_budget"):
        Pipeline("lowrank(time_budget=-1)").run(tvmlite.load(_two_conv_model()))
