"""The pass protocol: capabilities the optimizer reads, replay without state, options checked at
construction."""
import pathlib
from dataclasses import dataclass, field

import numpy as np
import pytest

import tvmlite
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.passes import Pass, PassResult, parse_spec
from tvmlite.passes.capabilities import (Calibrated, Cleanup, LayerwisePass, calibration_option, is_cleanup,
                                         layerwise)

from helpers import ort_run

MODELS = pathlib.Path(__file__).resolve().parents[1] / "models"


def _digits():
    calib = np.load(MODELS / "digits_calib.npz")["input"]
    return str(MODELS / "digits_cnn.onnx"), calib, np.load(MODELS / "digits_test.npz")["input"][:8]


def _weights(m):
    g = m.graph
    return {n: np.asarray(g.const_value(n)) for n in g.initializers}


def _same_model(a, b, x):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa) and np.array_equal(
        ort_run(export_model(a), {"input": x})[0], ort_run(export_model(b), {"input": x})[0])


@pytest.mark.parametrize("spec", ["quantize(mode=auto,error_budget=1.0,progress=false)",
                                  "lowrank(rank=budget,budget=0.25)"])
def test_replaying_the_first_of_two_runs_gives_the_first_model(spec):
    """The pass keeps nothing between runs: a second run on other calibration data does not change
    what replaying the first run's result builds."""
    path, calib, x = _digits()
    p = parse_spec(spec)[0]
    state = dict(vars(p))
    opt = calibration_option(p)
    setattr(p.options, opt, {"input": calib[:16]})
    first = tvmlite.load(path)
    r1 = p(first)
    setattr(p.options, opt, {"input": calib[16:32] * 3.0})  # other data: other ranges / other fits
    second = tvmlite.load(path)
    r2 = p(second)
    assert r1.changed and r2.changed and r1.replay is not None
    assert not _same_model(first, second, x), "the two runs must differ for this test to mean anything"
    assert vars(p).keys() == state.keys()  # no attribute was added by running
    lw = layerwise(p)
    assert lw is p and lw.layers(r1) == list(dict.fromkeys(r1.rewritten))
    again = tvmlite.load(path)
    lw.replay(r1, [])(again)
    assert _same_model(first, again, x)
    # and the second result replays the second model
    again2 = tvmlite.load(path)
    lw.replay(r2, [])(again2)
    assert _same_model(second, again2, x)


def test_quantize_layer_costs_come_from_the_result():
    path, calib, _ = _digits()

    def run(budget):
        p = parse_spec(f"quantize(mode=auto,error_budget={budget},progress=false)")[0]
        p.options.calibration = {"input": calib[:16]}
        return p, p(tvmlite.load(path))

    _, whole = run(1.0)  # everything int8: no layer had to be ranked, so no costs
    full_error = next(d["output_error"] for d in whole.decisions if d["node"] == "<model>")
    # half that error forces the error step to send some layers back; the ones it leaves in int8
    # carry the costs optimize's per-layer undo would take them back by
    p, r = run(full_error / 2)
    costs = p.layer_costs(r)
    int8 = {d["node"] for d in r.decisions if d.get("precision") == "int8"}
    assert costs and all(v >= 0 for v in costs.values()) and set(costs) <= int8
    assert p.layer_costs(PassResult("quantize")) is None  # a result without a token has none


def test_capabilities_are_declared_not_inherited_from_pass():
    for attr in ("exclude_option", "calibration_option", "cleanup", "replay", "layer_costs"):
        assert not hasattr(Pass, attr), attr
    reg = {p.name: p for p in parse_spec("lowrank,quantize,prune,fold-bn,dce,fp16")}
    assert layerwise(reg["lowrank"]).exclude_option == "exclude"
    assert layerwise(reg["quantize"]).exclude_option == "exclude_names"
    assert layerwise(reg["prune"]) is None and layerwise(reg["fold-bn"]) is None
    assert calibration_option(reg["quantize"]) == "calibration" and calibration_option(reg["prune"]) == "calib"
    assert calibration_option(reg["fp16"]) is None
    assert is_cleanup(reg["fold-bn"]) and is_cleanup(reg["dce"]) and not is_cleanup(reg["lowrank"])


def test_a_pass_declares_capabilities_by_mixin_or_plain_attribute():
    @dataclass
    class Opts:
        exclude: list = field(default_factory=list)
        calib: object = None

    class Mixed(LayerwisePass, Calibrated, Cleanup, Pass):
        name = "test-mixed"
        Options = Opts

    class Plain(Pass):
        name = "test-plain"
        exclude_option = "exclude"
        Options = Opts

        def layer_costs(self, result):
            return {"a": 1.0}

    m, p = Mixed(), Plain()
    assert calibration_option(m) == "calib" and is_cleanup(m) and not is_cleanup(p)
    r = PassResult("x", rewritten=["a", "b", "a"])
    assert layerwise(m).layers(r) == ["a", "b"] and layerwise(m).layer_costs(r) is None
    assert layerwise(p).layer_costs(r) == {"a": 1.0}
    assert layerwise(p).replay(r, ["b"]).options.exclude == ["b"]
    assert layerwise(m).replay(r, ["a"]).options.exclude == ["a"]


def test_replay_token_stays_out_of_the_json_result():
    r = PassResult("x", replay={"plans": {"a": np.zeros(3)}})
    assert "replay" not in r.to_dict()


@pytest.mark.parametrize("spec, match", [
    ("lowrank(method=svd)", "lowrank: method='svd'"),
    ("lowrank(ratio=1.5)", "lowrank: ratio=1.5"),
    ("lowrank(calib_count=1)", "lowrank: .*calib_count"),
    ("prune(mode=random)", "prune: mode='random'"),
    ("prune(block=4x0)", "prune: block='4x0'"),
    ("prune(n=4,m=2)", "prune: need 0 < n < m"),
    ("sparsify(blocks=8x8|3)", "sparsify: block '3'"),
    ("sparsify(repeats=0)", "sparsify: .*repeats=0"),
    ("quantize(method=median)", "'quantize': method 'median'"),
    ("quantize(mode=some)", "'quantize': mode 'some'"),
    ("quantize(activation_type=int4)", "'quantize': activation_type 'int4'"),
    ("quantize(error_budget=-1)", "'quantize': error_budget=-1"),
    ("quantize(percentile=0)", "'quantize': percentile=0"),
    ("quantize-dynamic(form=fast)", "'quantize-dynamic': form 'fast'"),
    ("compress-weights(bits=9)", "compress-weights: bits=9"),
    ("compress-weights(mode=pq)", "compress-weights: mode='pq'"),
    ("choose-conv(allow=fft)", "'choose-conv': unknown candidate"),
    ("winograd(m=5)", "'winograd': m=5"),
    ("lower-conv(layout=nhwc)", "'lower-conv': layout='nhwc'"),
])
def test_bad_options_raise_at_construction(spec, match):
    with pytest.raises(OptionError, match=match):
        parse_spec(spec)


def test_good_options_construct_and_construction_does_no_work():
    # no model, no calibration: construction only checks the options
    for spec in ("lowrank(method=cp,rank=ratio,ratio=0.5)", "prune(mode=block,block=8x8)",
                 "sparsify(blocks=4x4|1x1)", "quantize(mode=auto,method=entropy)", "compress-weights(bits=2)"):
        assert parse_spec(spec)


def test_a_pass_and_a_tvm_build_make_their_arrays_on_small_pages(monkeypatch):
    """Inside a pass run and a TVM build NumPy does not advise huge pages (limits.small_pages: the
    kernel's compaction for them cost a build 5.5 s of system time per fresh 400 MB); the setting
    comes back after, an exception too."""
    from numpy._core import multiarray as ma

    from tvmlite.limits import small_pages
    from tvmlite.passes.base import Pass, PassResult

    seen = []

    class Probe(Pass):
        name = "probe-pages"

        def run(self, model):
            seen.append(ma._get_madvise_hugepage())
            return PassResult(self.name)

    before = ma._set_madvise_hugepage(True)
    try:
        Probe()(tvmlite.load(_digits()[0]))
        assert seen == [False] and ma._get_madvise_hugepage()
        with pytest.raises(ZeroDivisionError):
            with small_pages():
                1 / 0
        assert ma._get_madvise_hugepage()
        try:
            from tvmlite.backends.tvm import compile as tvm_compile
        except Exception:  # noqa: BLE001 - no TVM here: the pass side is checked
            return
        monkeypatch.setattr(tvm_compile, "_compile_model", lambda *a, **k: ma._get_madvise_hugepage())
        assert tvm_compile.compile_model(None) is False and ma._get_madvise_hugepage()
    finally:
        ma._set_madvise_hugepage(before)


def test_a_pass_runs_its_linear_algebra_on_one_blas_thread():
    """Every pass run caps NumPy's BLAS at one thread (limits.blas_limit): a second OpenBLAS thread
    spin-waits, and lowrank's eigendecompositions ran 10-40x slower beside other jobs."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from tvmlite.passes.base import Pass, PassResult

    seen = []

    class Probe(Pass):
        name = "probe-blas"

        def run(self, model):
            seen.extend(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
            return PassResult(self.name)

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        Probe()(tvmlite.load(_digits()[0]))
        assert seen and set(seen) == {1}
        assert blas_threads() == before  # restored after the run
