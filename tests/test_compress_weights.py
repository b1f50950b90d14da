"""compress-weights: binary, ternary and k-means codebook weights."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.compress_weights import kmeans_1d
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

RNG = np.random.default_rng(3)


def _model():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    inits = [("w", RNG.standard_normal((16, 8, 3, 3)).astype(np.float32)),
             ("b", RNG.standard_normal(16).astype(np.float32)),
             ("fc", RNG.standard_normal((10, 16 * 16)).astype(np.float32))]
    return make_model(nodes, [tensor("x", ["N", 8, 4, 4])], [tensor("y", ["N", 10])], inits)


def _weights(m):
    """The weights as the model computes them (rebuild nodes evaluated)."""
    from tvmlite.passes.lowrank import capture_values

    g = m.graph
    names = [n.inputs[1] for n in g.toposort() if n.op_type in ("Conv", "Gemm")]
    feeds = {"x": np.zeros((1, 8, 4, 4), np.float32)}
    return [capture_values(m, [nm], feeds)[nm] if g.const_value(nm) is None else g.const_value(nm) for nm in names]


@pytest.mark.parametrize("spec,levels", [("mode=binary", 2), ("mode=ternary", 3), ("mode=kmeans,bits=3", 8)])
def test_modes_rebuild_weights_with_standard_ops(spec, levels):
    proto = _model()
    m = tvmlite.load(proto)
    (r,) = Pipeline(f"compress-weights({spec},min_size=100)").run(m)
    assert len(r.decisions) == 2
    for d, w in zip(r.decisions, _weights(m)):
        assert d["ratio"] > 3.5  # int8/uint8 storage instead of float32
        assert 0 < d["weight_error"] < 1
        if "kmeans" in spec:
            assert np.unique(w).size <= levels
        else:  # per output channel: `levels` values per channel (0 and +-a, or +-k)
            for row in w.reshape(w.shape[0], -1):
                assert np.unique(row).size <= levels
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    x = RNG.standard_normal((2, 8, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], compile_model(m).run({"x": x})[0], rtol=1e-4, atol=1e-3)
    assert len(out.SerializeToString()) < len(proto.SerializeToString()) / 2.5


def test_binary_scale_is_mean_abs():
    m = tvmlite.load(_model())
    w0 = m.graph.const_value("w")
    Pipeline("compress-weights(mode=binary,min_size=100,per_channel=false)").run(m)
    w = _weights(m)[0]
    np.testing.assert_allclose(np.abs(w), np.mean(np.abs(w0)), rtol=1e-6)
    assert (np.sign(w) == np.where(w0 >= 0, 1, -1)).all()


def test_kmeans_1d_recovers_clusters():
    centers = np.array([-2.0, 0.1, 3.0])
    v = np.concatenate([c + RNG.standard_normal(300) * 0.01 for c in centers])
    book, idx = kmeans_1d(v, 3)
    np.testing.assert_allclose(book, centers, atol=0.01)
    assert (book[idx] - v).std() < 0.02


def test_small_weights_and_bad_options():
    m = tvmlite.load(_model())
    (r,) = Pipeline("compress-weights(mode=kmeans)").run(m)  # conv has 1152 elements, fc 2560
    assert not any("min_size" in why for _, why in r.skipped)
    (r,) = Pipeline("compress-weights(mode=kmeans,min_size=100000)").run(tvmlite.load(_model()))
    assert not r.changed and "min_size" in r.skipped[0][1]
    with pytest.raises(OptionError):
        Pipeline("compress-weights(mode=kmeans,bits=9)").run(tvmlite.load(_model()))
