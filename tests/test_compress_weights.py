"""compress-weights: binary, ternary and k-means codebook weights."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.compress_weights import REBUILD_BYTES, kmeans_1d, pack_nibbles
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model

from helpers import make_model, ort_qdq, ort_run, tensor

RNG = np.random.default_rng(3)


def _model(cout=16):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    inits = [("w", RNG.standard_normal((cout, 8, 3, 3)).astype(np.float32)),
             ("b", RNG.standard_normal(cout).astype(np.float32)),
             ("fc", RNG.standard_normal((10, cout * 16)).astype(np.float32))]
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


def test_pack_nibbles_roundtrip_and_odd_counts():
    idx = RNG.integers(0, 16, size=(6, 5))
    packed = pack_nibbles(idx)
    assert packed.dtype == np.uint8 and packed.size == 15
    flat = np.concatenate([packed // 16, packed % 16])  # what the rebuild's Div/Mod/Concat computes
    np.testing.assert_array_equal(flat.reshape(idx.shape), idx)
    assert pack_nibbles(np.zeros(7, np.uint8)) is None


def test_kmeans_4bit_is_8x_smaller_than_float():
    m = tvmlite.load(_model())
    (r,) = Pipeline("compress-weights(mode=kmeans,bits=4,min_size=100)").run(m)
    for d in r.decisions:
        assert d["ratio"] > 7  # two indices a byte + a 16-entry float codebook


def _quantized(calib_n=8, spec="quantize(mode=all)", **options):
    m = tvmlite.load(_model(cout=64))
    calib = [{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(calib_n)]
    from tvmlite.passes import parse_spec

    (q,) = parse_spec(spec)
    q.options.calibration = calib
    for k, v in options.items():
        setattr(q.options, k, v)
    assert q.run(m).changed
    return m


def _ort_ops_after_optimization(proto, tmp_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_int8_weights_from_quantize_get_a_palette_and_stay_fused(tmp_path):
    """Weights quantize stored as int8 (behind DequantizeLinear) become 4-bit palettes: the file
    shrinks, the rebuild is folded by onnxruntime so QLinearConv/QGemm still run, and NumPy and
    onnxruntime agree on the result."""
    m = _quantized()
    before = export_model(m)
    codes = {n.inputs[0]: m.graph.const_value(n.inputs[0]) for n in m.graph.nodes
             if n.op_type == "DequantizeLinear" and m.graph.const_value(n.inputs[0]) is not None
             and m.graph.const_value(n.inputs[0]).dtype == np.int8}
    assert len(codes) == 2  # conv and fc weights
    (r,) = Pipeline("compress-weights(min_size=100)").run(m)
    saved = sum(d["bytes_before"] - d["bytes_after"] for d in r.decisions)
    assert [d["stored_as"] for d in r.decisions] == ["int8", "int8"]
    for d in r.decisions:
        assert d["distinct_values"] <= 16 and 1.8 < d["ratio"] < 2.0 and 0 < d["weight_error"] < 0.2
    after = export_model(m)
    onnx.checker.check_model(after, full_check=True)
    # the file shrinks by what the palettes save, less the rebuild nodes (REBUILD_BYTES a layer at most)
    assert len(after.SerializeToString()) < len(before.SerializeToString()) - saved + 2 * REBUILD_BYTES
    assert saved > 4 * REBUILD_BYTES
    ops = _ort_ops_after_optimization(after, tmp_path)
    assert "QLinearConv" in ops and "Gather" not in ops and "Mod" not in ops, ops
    x = RNG.standard_normal((2, 8, 4, 4)).astype(np.float32)
    ref = ort_qdq(before, {"x": x})[0]  # the fused kernels where the CPU has VNNI, else the exact QDQ graph
    out = ort_qdq(after, {"x": x})[0]
    np.testing.assert_allclose(compile_model(m).run({"x": x})[0], out, rtol=1e-5, atol=1e-4)
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.3  # 4-bit palettes change the result, but not beyond recognition


def test_int8_palette_needs_kmeans_of_at_most_4_bits():
    m = _quantized()
    (r,) = Pipeline("compress-weights(bits=5,min_size=100)").run(m)
    assert not r.changed and all("<= 4 bits" in why for _, why in r.skipped)
    (r,) = Pipeline("compress-weights(int8=false,min_size=100)").run(m)
    assert not r.changed
    with pytest.raises(OptionError):
        Pipeline("compress-weights(min_size=-1)")


def test_int8_weights_too_small_to_pay_for_the_rebuild_are_left():
    m = tvmlite.load(_model())
    from tvmlite.passes import parse_spec

    (q,) = parse_spec("quantize(mode=all)")
    q.options.calibration = [{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(4)]
    q.run(m)
    (r,) = Pipeline("compress-weights(min_size=100)").run(m)  # conv: 1152 int8 codes save 560 bytes
    assert "conv" not in r.rewritten and any("rebuild" in why for _, why in r.skipped)


def test_exclude_names_leaves_a_layer_float():
    m = tvmlite.load(_model())
    from tvmlite.passes.compress_weights import CompressWeights

    r = CompressWeights(min_size=100, exclude_names=["conv"]).run(m)
    assert set(r.rewritten) == {"fc"}


def test_int8_storage_of_float_layers_gets_a_palette():
    """quantize stores the weights of the layers it leaves in float as Cast(int8) * scales: those
    int8 codes get a palette too, and the layer's float weight is the palette's dequantized."""
    m = _quantized(layers=["fc"])  # conv: a float layer
    cast = [n for n in m.graph.nodes if n.op_type == "Cast"]
    assert cast and m.graph.const_value(cast[0].inputs[0]).dtype == np.int8
    x = RNG.standard_normal((2, 8, 4, 4)).astype(np.float32)
    before = ort_run(export_model(m), {"x": x})[0]
    (r,) = Pipeline("compress-weights(min_size=100)").run(m)
    assert set(r.rewritten) == {"conv", "fc"} and {d["stored_as"] for d in r.decisions} == {"int8"}
    conv = next(d for d in r.decisions if d["weight"].startswith("conv"))
    assert 0 < conv["weight_error"] < 0.2
    np.testing.assert_allclose(compile_model(m).run({"x": x})[0], ort_run(export_model(m), {"x": x})[0],
                               rtol=1e-5, atol=1e-4)
    out = compile_model(m).run({"x": x})[0]
    assert 0 < np.abs(out - before).max() / np.abs(before).max() < 0.3


def test_kmeans_keeps_centroids_for_heavy_tails():
    """Weights with a few large outliers (PP-OCR rec after fold-bn: max |w| ~20 standard deviations):
    started at the quantiles alone, 256 centroids left the tail one centroid (error ~0.1)."""
    from tvmlite.passes.compress_weights import kmeans_1d

    rng = np.random.default_rng(0)
    w = rng.standard_normal(8192)
    w[rng.choice(w.size, 40, replace=False)] *= 20
    for k, limit in ((256, 0.03), (16, 0.2)):
        book, idx = kmeans_1d(w, k)
        assert book.size <= k
        assert np.linalg.norm(book[idx] - w) / np.linalg.norm(w) < limit


def test_int8_weight_whose_scale_does_not_fit_is_skipped():
    """The palette's error is measured with DequantizeLinear's own broadcast of the scale
    (ops.quant.bcast_param): a per-axis scale that does not fit the weight is a skip naming it,
    not a NumPy broadcast error out of the pass."""
    m = _quantized()
    g = m.graph
    dq = next(n for n in g.nodes if n.op_type == "DequantizeLinear" and g.const_value(n.inputs[0]) is not None
              and g.const_value(n.inputs[0]).dtype == np.int8 and g.const_value(n.inputs[1]).size > 1)
    s = g.const_value(dq.inputs[1])
    g.values[dq.inputs[1]].const = np.concatenate([s, s[:1]])  # one scale too many for the axis
    (r,) = Pipeline("compress-weights(min_size=100)").run(m)
    assert any("does not fit axis" in why for _, why in r.skipped), r.skipped
