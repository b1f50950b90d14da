"""TVM backend: each schedule step keeps results exact, each emitter agrees with NumPy or
onnxruntime on small shapes, whole models agree with onnxruntime, unsupported ops are listed,
and a saved .so runs again without the ONNX model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from helpers import conv_bn_relu_model, make_model, ort_run, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from tvmlite.backends.tvm import compile_model, emit_tvmscript, load_module, unsupported_ops  # noqa: E402
from tvmlite.backends.tvm.kernels import conv as KC  # noqa: E402
from tvmlite.backends.tvm.kernels import gemm as KG  # noqa: E402
from tvmlite.backends.tvm.kernels import pool as KP  # noqa: E402
from tvmlite.backends.tvm.kernels import schedules as S  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.errors import InputError, UnsupportedError  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.ops.conv import conv  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402
from tvmlite.ops.pool import average_pool, max_pool_values  # noqa: E402

RNG = np.random.default_rng(0)
GEMM_STEPS = ["tile_for_cache", "pack_array", "write_cache", "vectorize_columns", "unroll_rows",
              "parallel_outer", "finish_reduction"]


def run_kernel(kd, feeds):
    args, outs = kernel_args(kd, feeds)
    build_kernel(kd)["main"](*args)
    return [o.numpy() for o in outs]


# ------------------------------------------------------------------------------ GEMM, step by step
@pytest.mark.parametrize("n_steps", range(len(GEMM_STEPS) + 1))
def test_gemm_steps_each_keep_results(n_steps):
    """Applying the schedule steps one more at a time never changes the numbers (M, N not
    multiples of the tile: padding and clamped rows are exercised)."""
    steps = set(GEMM_STEPS[:n_steps])
    a = RNG.standard_normal((37, 70)).astype(np.float32)
    w = RNG.standard_normal((70, 45)).astype(np.float32)
    b = RNG.standard_normal(45).astype(np.float32)
    kd = KG.dense_gemm("g", "a", a.shape, w, b, out_value="y", out_shape=(37, 45), lanes=16, steps=steps,
                       epilogue=Epilogue([EwOp("Relu")]), tile=S.GemmTile(mr=8, nr=32))
    (y,) = run_kernel(kd, {"a": a})
    np.testing.assert_allclose(y, np.maximum(a @ w + b, 0), rtol=1e-5, atol=1e-4)
    if "pack_array" in steps:  # the weights were packed [N/nr, K, nr] for the schedule
        assert [p.shape for p in kd.params if p.kind == "const"][0] == (2, 70, 32)
    assert kd.steps == [s for s in GEMM_STEPS if s in steps] and S.GEMM_STEPS == GEMM_STEPS


def test_gemm_schedule_shows_every_step():
    kd = KG.dense_gemm("g", "a", (64, 64), np.ones((64, 64), np.float32), None, out_value="y",
                       out_shape=(64, 64), lanes=16, epilogue=Epilogue())
    text = kd.func.script()
    assert "T.vectorized(32)" in text and "T.unroll(8)" in text and "T.parallel" not in text  # small: 1 core
    assert 'scope="local"' in text and "acc_init" in text  # register tile, init split off
    assert "w1: T.Buffer((2, 64, 32)" in text  # packed weights


@pytest.mark.parametrize("m,k,n,parallel", [(1, 2048, 128, True), (1, 512, 128, False), (2, 3072, 256, True),
                                             (64, 64, 64, False), (300, 64, 64, True)])
def test_gemv_weighs_its_weight_stream_for_parallelism(m, k, n, parallel, monkeypatch):
    """A GEMM of fewer rows than `STREAMED_ROWS` counts its weights at that many rows: a batch-1
    classifier layer of 2048x128 (262K multiply-adds, ~40 us on one core) runs on both cores, a
    512x128 one and a 64x64x64 GEMM stay on one, a 300-row GEMM was parallel already; results
    are the same either way."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.delenv("TVMLITE_MIN_PARALLEL_WORK", raising=False)
    a = RNG.standard_normal((m, k)).astype(np.float32)
    w = (RNG.standard_normal((k, n)) * 0.05).astype(np.float32)
    kd = KG.dense_gemm("g", "a", a.shape, w, None, out_value="y", out_shape=(m, n), lanes=8, epilogue=Epilogue())
    assert ("T.parallel" in kd.func.script()) == parallel
    (y,) = run_kernel(kd, {"a": a})
    ref = a.astype(np.float64) @ w
    np.testing.assert_allclose(y.reshape(m, n), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_pack_host_array_matches_index_map():
    a = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    p = S.pack_host_array(a, 4, along="cols")
    assert p.shape == (2, 6, 4) and p[1, 2, 3] == a[2, 1 * 4 + 3]
    q = S.pack_host_array(a, 3, along="rows")
    assert q.shape == (2, 8, 3) and q[1, 5, 2] == a[1 * 3 + 2, 5]


# ----------------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("cfg", [
    dict(x=(2, 5, 11, 13), w=(10, 5, 3, 3), pads=(1, 0, 2, 1), strides=(2, 1), dil=(1, 2)),
    dict(x=(1, 16, 8, 8), w=(24, 16, 1, 1), pads=(0, 0, 0, 0), strides=(1, 1), dil=(1, 1)),
    dict(x=(1, 3, 20, 20), w=(7, 3, 5, 5), pads=(2, 2, 2, 2), strides=(1, 1), dil=(1, 1)),
])
def test_conv_im2col_gemm_matches_numpy(cfg):
    x = RNG.standard_normal(cfg["x"]).astype(np.float32)
    w = RNG.standard_normal(cfg["w"]).astype(np.float32)
    b = RNG.standard_normal(cfg["w"][0]).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=cfg["pads"], strides=cfg["strides"], dilations=cfg["dil"]), x.shape, w.shape)
    kd = KC.conv2d_gemm("c", "x", x.shape, w, b, geom, out_value="y",
                        epilogue=Epilogue([EwOp("Clip", attrs={"min": 0.0, "max": 6.0})]), lanes=16)
    (y,) = run_kernel(kd, {"x": x})
    ref = np.clip(conv(x, w, b, pads=list(cfg["pads"]), strides=list(cfg["strides"]),
                       dilations=list(cfg["dil"])), 0, 6)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


def test_grouped_conv_matches_numpy():
    x = RNG.standard_normal((2, 6, 9, 8)).astype(np.float32)
    w = RNG.standard_normal((9, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(9).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=(1, 1, 1, 1), strides=(1, 2), group=3), x.shape, w.shape)
    kd = KC.conv2d_gemm("g", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=16)
    (y,) = run_kernel(kd, {"x": x})
    ref = np.maximum(conv(x, w, b, pads=[1, 1, 1, 1], strides=[1, 2], group=3), 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_steps", range(len(S.DIRECT_CONV_STEPS) + 1))
def test_direct_conv_steps_each_keep_results(n_steps):
    """The direct conv's schedule steps, one more at a time, never change the numbers (stride,
    dilation, uneven pads, a row width the pixel tile does not divide, channels not a multiple
    of the vector tile, two groups, batch 2)."""
    steps = set(S.DIRECT_CONV_STEPS[:n_steps])
    x = RNG.standard_normal((2, 6, 11, 13)).astype(np.float32)
    w = RNG.standard_normal((40, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(40).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=(1, 0, 2, 1), strides=(2, 1), dilations=(1, 2), group=2), x.shape, w.shape)
    kd = KC.conv2d_direct("d", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                          lanes=16, steps=steps, tile=S.GemmTile(mr=4, nr=16))
    (y,) = run_kernel(kd, {"x": x})
    ref = np.maximum(conv(x, w, b, pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2], group=2), 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
    if "pack_array" in steps:  # weights [G, CO/nr, CI, KH, KW, nr], channels padded to the tile
        assert [p.shape for p in kd.params if p.kind == "const"][0] == (2, 2, 3, 3, 3, 16)
    assert kd.steps == [s for s in S.DIRECT_CONV_STEPS if s in steps]


def test_direct_conv_schedule_shows_every_step():
    w = np.ones((64, 64, 3, 3), np.float32)
    geom = WindowGeometry.conv(dict(pads=(1, 1, 1, 1)), (1, 64, 56, 56), w.shape)
    kd = KC.conv2d_direct("d", "x", (1, 64, 56, 56), w, None, geom, out_value="y", epilogue=Epilogue(), lanes=16)
    text = kd.func.script()
    # 8 pixels x 32 channels, the channels two vectors of 16 (one weight stream each, schedules.weight_run)
    assert "T.vectorized(16)" in text and "T.unroll(2)" in text and "T.unroll(8)" in text and "T.parallel" in text
    assert 'scope="local"' in text and "acc_init" in text
    assert "w1: T.Buffer((1, 2, 2, 64, 3, 3, 16)" in text
    assert 'T.sblock("pad")' in text  # padded once, not tested per multiply-add


def test_direct_tile_follows_row_width():
    """The pixel tile is the row width's divisor that wastes least (7x7 outputs: 7, not 8)."""
    assert (KC.direct_tile(512, 7, 16).mr, KC.direct_tile(512, 7, 16).nr) == (7, 32)
    assert KC.direct_tile(64, 56, 16).mr == 8 and KC.direct_tile(128, 14, 16).mr == 7
    assert KC.direct_tile(16, 30, 16).nr == 16 and KC.direct_tile(16, 30, 16).mr == 10  # one vector: up to 12
    assert KC.direct_tile(16, 48, 16).mr == 12
    # AVX-512, two vectors: up to 10 pixels (11 and 12 x 32 ran slower): 48 -> 8, 55 -> 5, 27 -> 9, 40 -> 10
    assert [KC.direct_tile(64, w, 16, 9).mr for w in (48, 55, 27, 40)] == [8, 5, 9, 10]
    assert (KC.direct_tile(64, 12, 8).mr, KC.direct_tile(64, 12, 8).nr) == (4, 16)  # AVX2, 2 vectors: 4 pixels
    # ... or 5 (10 accumulators) where only they fill the row better: 13 -> 15, 55 -> 55; 20 and 160 keep 4
    assert [KC.direct_tile(64, w, 8).mr for w in (13, 55, 20, 160, 27)] == [5, 5, 4, 4, 4]
    assert KC.direct_tile(64, 55, 8, 9).nr == 16 and KC.direct_tile(64, 13, 8, 9).mr == 7  # 13: 7 x 8 pads 1
    # 54 wide: 6 x 8 fills the row, but 5 x 16 pads it by under 5% and keeps two vectors of channels
    assert (KC.direct_tile(96, 54, 8, 121).mr, KC.direct_tile(96, 54, 8, 121).nr) == (5, 16)
    assert (KC.direct_tile(24, 13, 8).mr, KC.direct_tile(24, 13, 8).nr) == (7, 8)  # AVX2, 1 vector: up to 8
    # a 3x3 conv (9 taps) on AVX2 takes one vector of channels where 7 pixels fill the row and 4 do not;
    # a 1x1 conv keeps two vectors; AVX-512 fits the row in its 2-vector tile, so nothing changes there
    assert [(t.mr, t.nr) for t in (KC.direct_tile(512, 7, 8, 9), KC.direct_tile(256, 14, 8, 9))] == [(7, 8), (7, 8)]
    assert (KC.direct_tile(512, 7, 8, 1).mr, KC.direct_tile(512, 7, 8, 1).nr) == (4, 16)
    assert (KC.direct_tile(64, 40, 8, 9).mr, KC.direct_tile(64, 40, 8, 9).nr) == (4, 16)  # 4 fills the row
    assert (KC.direct_tile(512, 7, 16, 9).mr, KC.direct_tile(512, 7, 16, 9).nr) == (7, 32)


def test_direct_tile_of_a_strided_conv():
    """A strided conv of several taps keeps two vectors of channels where they pad the row by under
    8% (14 wide: 5 x 16, 1 of 15), not where they pad it more (7 wide: 4 x 16 pads 1 of 8); stride
    1 and 1x1 convs as before; AVX-512's tiles fill these rows."""
    def tile(*a, **kw):
        t = KC.direct_tile(*a, **kw)
        return t.mr, t.nr
    assert tile(256, 14, 8, 9, strided=True) == (5, 16) and tile(256, 14, 8, 9) == (7, 8)
    assert tile(96, 14, 8, 9, strided=True) == (5, 16)
    assert tile(512, 7, 8, 9, strided=True) == (7, 8)
    assert tile(64, 28, 8, 9, strided=True) == (4, 16) == tile(64, 28, 8, 9)  # 4 fills the row either way
    assert tile(512, 14, 8, 1, strided=True) == tile(512, 14, 8, 1)  # one tap: the 2-vector tile already
    assert tile(256, 14, 16, 9, strided=True) == (7, 32) and tile(512, 7, 16, 9, strided=True) == (7, 32)


@pytest.mark.parametrize("layouts", [None, ("NCHW", "NHWC"), ("NHWC", "NCHW")])
def test_strided_conv_to_14_wide_takes_two_vectors_and_matches(layouts):
    """The direct kernels give a 3x3 stride-2 conv to 14 wide (AVX2) the 5 x 16 tile, its last pixel
    tile one column past the row, and match the NumPy conv (bias, ReLU)."""
    from tvmlite.backends.tvm.kernels.conv_nhwc import conv2d_nhwc

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 28, 28)).astype(np.float32)
    w = rng.standard_normal((32, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    attrs = dict(pads=[1, 1, 1, 1], strides=[2, 2])
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    epi = Epilogue([EwOp("Relu")])
    if layouts is None:
        kd = KC.conv2d_direct("d", "x", x.shape, w, b, geom, out_value="y", epilogue=epi, lanes=8)
    else:
        kd = conv2d_nhwc("d", "x", x.shape, w, b, geom, out_value="y", epilogue=epi, lanes=8,
                         x_layout=layouts[0], y_layout=layouts[1])
    assert "T.unroll(5)" in kd.func.script() and "T.vectorized(16)" in kd.func.script()
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layouts and layouts[0] == "NHWC" else x
    args, outs = kernel_args(kd, {"x": xin})
    build_kernel(kd)["main"](*args)
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    y = outs[0].numpy()
    if layouts and layouts[1] == "NHWC":
        y = y.reshape(1, 14, 14, 32).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
def test_strided_pointwise_conv_is_a_gemm_over_its_subsampled_copy(lanes):
    """An unpadded strided 1x1 conv follows the 1x1 rule (a GEMM over the stride-phase copy)
    unless the GEMM pads a small image; a padded or 3x3 strided conv keeps the strided rule."""
    def direct(x_shape, w_shape, pads, strides):
        geom = WindowGeometry.conv(dict(pads=pads, strides=strides), x_shape, w_shape)
        return KC.use_direct_conv(w_shape, geom, lanes)
    assert not direct((1, 256, 56, 56), (512, 256, 1, 1), (0, 0, 0, 0), (2, 2))  # ResNet-50's: 28x28 out
    # 14x14 out: AVX-512's 7-pixel direct tile fills the row where the GEMM pads 196 to 224 (as at stride 1)
    assert direct((1, 512, 28, 28), (1024, 512, 1, 1), (0, 0, 0, 0), (2, 2)) is (lanes == 16)
    assert direct((1, 256, 56, 56), (512, 256, 3, 3), (1, 1, 1, 1), (2, 2))
    assert direct((1, 32, 80, 80), (48, 32, 3, 3), (1, 1, 1, 1), (2, 2))  # the detector's


def test_strided_pointwise_conv_matches_onnxruntime():
    """A stride-2 1x1 conv with bias and Relu, built whole (the picked kernel, 8 x 8 output)."""
    w = (RNG.standard_normal((96, 64, 1, 1)) * 0.1).astype(np.float32)
    b = RNG.standard_normal(96).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2]), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 64, 15, 15])], [tensor("y", [1, 96, 8, 8])], [("w", w), ("b", b)])
    _check_graph(model, {"x": _x(1, 64, 15, 15)})


@pytest.mark.parametrize("lanes", [8, 16])
def test_register_tiles_fit_the_accumulator_registers(lanes):
    """Every default register tile (direct conv, im2col GEMM, dense GEMM) holds at most
    `S.accumulator_vectors` vectors: AVX2's 16 registers take 4 x 2 vectors, not AVX-512's
    8 x 2 (GEMM) or 10 x 2 (direct: 11 and 12 x 2 measured slower there), which spilled on every
    multiply-add."""
    budget = S.accumulator_vectors(lanes)
    assert budget == (20 if lanes == 16 else 8)
    for cog in (3, 16, 24, 48, 64, 512):
        for width in (7, 13, 20, 40, 56, 160):
            t = KC.direct_tile(cog, width, lanes)
            # AVX2's direct tile may take a 5th pixel of two vectors (10 of 16 registers) where it fills the row
            extra = 2 if lanes == 8 and t.nr == 2 * lanes and t.mr == 5 else 0
            assert t.mr * (t.nr // lanes) <= budget + extra and t.nr % lanes == 0, (cog, width, t)
        for p in (49, 400, 3136):
            for t in (KG.conv_tile(cog, p, lanes), KG.dense_tile(cog, p, lanes)):
                assert t.mr * (t.nr // lanes) <= budget and t.mr <= 8, (cog, p, t)
    assert (KG.conv_tile(64, 3136, lanes).mr, KG.conv_tile(64, 3136, lanes).nr) == \
        ((8, 32) if lanes == 16 else (4, 16))  # AVX-512 keeps its tiles


@pytest.mark.parametrize("lanes", [8, 16])
def test_three_channel_stem_takes_the_direct_conv(lanes):
    """K = 27 (a 3-channel 3x3 stem) is long enough for AVX2's small direct tiles (squeezenet's
    stem 1.31x -> 0.70x of onnxruntime's Conv), and for AVX-512's where the GEMM's column tiles
    cross output rows (squeezenet's 111-wide rows; 1.93x -> 1.01x at 3->16 to 112 wide), not where
    they do not (VGG's stem, 224 wide); a shorter K (one input channel) never is."""
    def direct(x_shape, w_shape, strides, pads=(0, 0, 0, 0)):
        geom = WindowGeometry.conv(dict(strides=strides, pads=pads), x_shape, w_shape)
        return KC.use_direct_conv(w_shape, geom, lanes)
    assert direct((1, 3, 224, 224), (64, 3, 3, 3), (2, 2))
    assert direct((1, 3, 224, 224), (64, 3, 3, 3), (1, 1), (1, 1, 1, 1)) is (lanes == 8)
    assert not direct((1, 1, 224, 224), (64, 1, 3, 3), (2, 2))
    # (channels, taps, lanes): K = 27 and 24 reach AVX2's 3 vectors, 21 does not; 126 is under AVX-512's 8
    assert not KC.short_reduction(3, 9, 8) and not KC.short_reduction(3, 8, 8) and KC.short_reduction(3, 7, 8)
    assert KC.short_reduction(14, 9, 16) and KC.short_reduction(3, 9, 16)
    assert not KC.short_reduction(3, 9, 16, gemm_crosses_rows=True)
    # AVX-512: image stems only (at most IMAGE_CHANNELS channels), as measured
    assert KC.short_reduction(8, 9, 16, gemm_crosses_rows=True)


def test_unpadded_strided_stem_direct_conv_matches_numpy():
    """The AVX2 pick for squeezenet's stem: 3 -> 24 channels, 3x3 stride 2, no pads, an odd output
    row (15) the pixel tile does not divide, bias and Relu."""
    x = RNG.standard_normal((1, 3, 31, 31)).astype(np.float32)
    w = RNG.standard_normal((24, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    geom = WindowGeometry.conv(dict(strides=(2, 2)), x.shape, w.shape)
    assert KC.use_direct_conv(w.shape, geom, 8)
    kd = KC.conv2d("c", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=8)
    (y,) = run_kernel(kd, {"x": x})
    ref = np.maximum(conv(x, w, b, strides=[2, 2]), 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("direct", [True, False])
def test_avx2_default_tiles_match_numpy(direct):
    """The AVX2 (8-lane) default tiles on a conv neither tile divides: 24 output channels, a
    13-pixel row, stride, dilation, uneven pads, two groups, batch 2, bias and an epilogue."""
    x = RNG.standard_normal((2, 16, 15, 27)).astype(np.float32)
    w = RNG.standard_normal((24, 8, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=(1, 0, 2, 1), strides=(1, 2), dilations=(2, 1), group=2), x.shape, w.shape)
    fn = KC.conv2d_direct if direct else KC.conv2d_gemm
    kd = fn("c", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=8)
    (y,) = run_kernel(kd, {"x": x})
    ref = np.maximum(conv(x, w, b, pads=[1, 0, 2, 1], strides=[1, 2], dilations=[2, 1], group=2), 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
    def direct(x_shape, w_shape, pads, strides=(1, 1)):
        geom = WindowGeometry.conv(dict(pads=pads, strides=strides), x_shape, w_shape)
        return KC.use_direct_conv(w_shape, geom, 16)

    assert direct((1, 512, 7, 7), (512, 512, 3, 3), (1, 1, 1, 1))  # GEMM: 49 -> 64
    assert direct((1, 128, 56, 56), (128, 128, 3, 3), (1, 1, 1, 1), (2, 2))
    assert not direct((1, 32, 8, 8), (64, 32, 1, 1), (0, 0, 0, 0))  # a plain GEMM
    assert not direct((1, 96, 40, 40), (24, 96, 3, 3), (1, 1, 1, 1))  # 24 -> 32 lanes
    assert not direct((1, 3, 64, 64), (16, 3, 3, 3), (1, 1, 1, 1))  # K = 27


@pytest.mark.parametrize("lanes", [8, 16])
def test_direct_conv_writes_each_channels_pixel_run_in_vectors(lanes):
    """The direct conv's NCHW write of its [pixels, channels] tile is vectorized along the
    pixels (a channel's run of one output row), also where the run ends the row early (10 of
    13 pixels) and with a residual Add read along the same run; numbers against NumPy."""
    x = RNG.standard_normal((1, 16, 13, 13)).astype(np.float32)
    w = RNG.standard_normal((24, 16, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    res = RNG.standard_normal((1, 24, 13, 13)).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=(1, 1, 1, 1)), x.shape, w.shape)
    epi = Epilogue([EwOp("Add", [("value", "res", (1, 24, 13, 13))]), EwOp("Relu")])
    kd = KC.conv2d_direct("c", "x", x.shape, w, b, geom, out_value="y", epilogue=epi, lanes=lanes)
    lines = kd.func.script().splitlines()
    at = next(i for i, ln in enumerate(lines) if 'T.sblock("epilogue")' in ln)
    assert "T.vectorized" in lines[at - 1], lines[at - 1]
    (y,) = run_kernel(kd, {"x": x, "res": res})
    ref = np.maximum(conv(x, w, b, pads=[1, 1, 1, 1]) + res, 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
def test_row_crossing_gemm_columns_favour_the_direct_conv_on_avx2(lanes):
    """A stride-1 3x3 conv whose GEMM column tiles cross output rows (27 or 13 pixels a row:
    every column lane divides and gathers) takes the direct kernel on AVX2 unless that wastes a
    tenth more; AVX-512 keeps the plain waste rule; whole-row tiles are unchanged."""
    def direct(x_shape, w_shape):
        geom = WindowGeometry.conv(dict(pads=(1, 1, 1, 1)), x_shape, w_shape)
        return KC.use_direct_conv(w_shape, geom, lanes)
    assert direct((1, 32, 27, 27), (128, 32, 3, 3))  # squeezenet's fire expand (AVX-512: 9 x 32 fills the row)
    assert direct((1, 48, 13, 13), (192, 48, 3, 3))
    # 20 channels pad to 24 (one vector) and 9 pixels to 10: a fifth wasted against the GEMM's 81 of 96
    assert not direct((1, 32, 9, 9), (20, 32, 3, 3))
    # a row of whole GEMM tiles (32 pixels): no gathers, the waste rule alone
    assert not direct((1, 16, 32, 32), (20, 16, 3, 3))


@pytest.mark.parametrize("hw", [(5, 11), (4, 8)])
def test_ragged_gemm_columns_write_whole_tiles_in_vectors(hw):
    """A 1x1 conv over 55 pixels (not a whole number of 16-column tiles): the last tile's padding
    columns read the last pixel on a branch of their own, and the epilogue's column run is
    unrolled (TVM writes a predicated vectorized run element by element; unrolled, LLVM writes the
    whole tiles in vectors); 32 pixels keep the vectorized run. Numbers against NumPy."""
    x = RNG.standard_normal((1, 12, *hw)).astype(np.float32)
    w = RNG.standard_normal((10, 12, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(10).astype(np.float32)
    geom = WindowGeometry.conv({}, x.shape, w.shape)
    kd = KC.conv2d_gemm("c", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=8)
    lines = kd.func.script().splitlines()
    at = next(i for i, ln in enumerate(lines) if 'T.sblock("epilogue")' in ln)
    ragged = hw[0] * hw[1] % 16 != 0
    assert ("T.unroll" if ragged else "T.vectorized") in lines[at - 1], lines[at - 1]
    (y,) = run_kernel(kd, {"x": x})
    ref = np.maximum(conv(x, w, b), 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,mult", [(1, 1), (2, 2)])
def test_depthwise_conv_matches_numpy(stride, mult):
    x = RNG.standard_normal((1, 6, 15, 21)).astype(np.float32)
    w = RNG.standard_normal((6 * mult, 1, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(6 * mult).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=(1, 1, 1, 1), strides=(stride, stride), group=6), x.shape, w.shape)
    kd = KC.depthwise_conv2d("d", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("HardSwish")]),
                             lanes=16)
    (y,) = run_kernel(kd, {"x": x})
    ref = conv(x, w, b, pads=[1, 1, 1, 1], strides=[stride, stride], group=6)
    ref = ref * np.clip(ref / 6 + 0.5, 0, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("kind,ceil,cip", [("max", 0, 0), ("max", 1, 0), ("avg", 1, 0), ("avg", 0, 1)])
def test_pool_matches_numpy(kind, ceil, cip):
    x = RNG.standard_normal((2, 3, 10, 9)).astype(np.float32)
    attrs = dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=ceil)
    geom = WindowGeometry.pool(attrs, x.shape)
    kd = KP.pool2d("p", "x", x.shape, geom, kind=kind, count_include_pad=bool(cip), out_value="y",
                   epilogue=Epilogue(), lanes=16)
    (y,) = run_kernel(kd, {"x": x})
    ref = max_pool_values(x, **attrs) if kind == "max" else average_pool(x, count_include_pad=cip, **attrs)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- small graphs vs onnxruntime
def _check_graph(model, feeds, rtol=1e-4):
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    ref = ort_run(model, feeds)
    got = cm.run(feeds)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * max(1.0, float(np.abs(r).max())))
    return cm


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_elementwise_chain_is_one_kernel():
    s = numpy_helper.from_array(RNG.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32), "s")
    nodes = [helper.make_node("Add", ["x", "z"], ["a"]), helper.make_node("HardSigmoid", ["a"], ["h"], alpha=0.3),
             helper.make_node("Mul", ["h", "s"], ["m"]), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Clip", ["d", "lo", "hi"], ["y"])]
    model = make_model(nodes, [tensor("x", [2, 4, 5, 6]), tensor("z", [6])], [tensor("y", [2, 4, 5, 6])],
                       [("lo", np.float32(-0.5)), ("hi", np.float32(0.8))])
    model.graph.initializer.append(s)
    cm = _check_graph(model, {"x": _x(2, 4, 5, 6), "z": _x(6)})
    assert cm.kernel_count == 1


def test_conv_bias_bn_relu_fused_and_matmul():
    cm = _check_graph(conv_bn_relu_model(), {"x": _x(3, 3, 4, 4)})
    # conv (+folded BN, relu) and matmul (+div): two kernels; the views cost nothing
    assert cm.kernel_count == 2


def test_epilogue_continues_behind_a_reshape():
    """MatMul -> Reshape -> Add (per-channel, in the reshaped index space) -> Relu: one kernel,
    the MatMul's row index split into the view's two dims."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["m", "s"], ["r"]),
             helper.make_node("Add", ["r", "b"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    model = make_model(nodes, [tensor("x", [6, 5])], [tensor("y", [2, 3, 4])],
                       [("w", _x(5, 4)), ("s", np.array([2, 3, 4], np.int64)), ("b", _x(3, 1))])
    cm = _check_graph(model, {"x": _x(6, 5)})
    assert cm.kernel_count == 1


def test_residual_add_fused_into_later_conv():
    w1 = (RNG.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"]),
             helper.make_node("Add", ["b", "a"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 4, 9, 9])], [tensor("y", [1, 4, 9, 9])], [("w1", w1), ("w2", w2)])
    cm = _check_graph(model, {"x": _x(1, 4, 9, 9)})
    assert cm.kernel_count == 2


@pytest.mark.parametrize("case", ["softmax", "reduce", "concat_transpose", "gemm_trans", "gemm_trans_whole_tiles",
                                  "global_pools", "slice_lrn"])
def test_other_ops_match_onnxruntime(case):
    if case == "softmax":
        nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1), helper.make_node("LogSoftmax", ["x"], ["z"])]
        model = make_model(nodes, [tensor("x", [3, 7, 5])], [tensor("y", [3, 7, 5]), tensor("z", [3, 7, 5])])
        feeds = {"x": _x(3, 7, 5)}
    elif case == "reduce":
        nodes = [helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=1),
                 helper.make_node("ReduceMax", ["x", "ax2"], ["z"], keepdims=0)]
        model = make_model(nodes, [tensor("x", [2, 3, 4, 5])], [tensor("y", [2, 3, 1, 1]), tensor("z", [2, 4, 5])],
                           [("ax", np.array([2, 3], np.int64)), ("ax2", np.array([1], np.int64))], opset=18)
        feeds = {"x": _x(2, 3, 4, 5)}
    elif case == "concat_transpose":
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                 helper.make_node("Concat", ["t", "c"], ["y"], axis=1)]
        model = make_model(nodes, [tensor("x", [2, 3, 4])], [tensor("y", [2, 6, 3])],
                           [("c", RNG.standard_normal((2, 2, 3)).astype(np.float32))])
        feeds = {"x": _x(2, 3, 4)}
    elif case == "gemm_trans":
        nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)]
        model = make_model(nodes, [tensor("x", [6, 3])], [tensor("y", [3, 10])],
                           [("w", _x(10, 6)), ("c", _x(10))])
        feeds = {"x": _x(6, 3)}
    elif case == "gemm_trans_whole_tiles":  # alpha 1, N a multiple of the tile: packed from the transposed view
        nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1)]
        model = make_model(nodes, [tensor("x", [3, 40])], [tensor("y", [3, 64])], [("w", _x(64, 40)), ("c", _x(64))])
        feeds = {"x": _x(3, 40)}
    elif case == "slice_lrn":
        nodes = [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
                 helper.make_node("LRN", ["s"], ["y"], size=3, alpha=0.5, beta=0.75, bias=2.0)]
        model = make_model(nodes, [tensor("x", [1, 6, 7, 8])], [tensor("y", [1, 6, 3, 3])],
                           [("st", np.array([-1, 1, 7], np.int64)), ("en", np.array([-100, 7, 0], np.int64)),
                            ("ax", np.array([1, 2, 3], np.int64)), ("sp", np.array([-1, 2, -3], np.int64))])
        feeds = {"x": _x(1, 6, 7, 8)}
    else:
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["a"]), helper.make_node("GlobalMaxPool", ["x"], ["b"]),
                 helper.make_node("Sigmoid", ["a"], ["y"]), helper.make_node("Mul", ["b", "b"], ["z"])]
        model = make_model(nodes, [tensor("x", [2, 5, 6, 7])], [tensor("y", [2, 5, 1, 1]), tensor("z", [2, 5, 1, 1])])
        feeds = {"x": _x(2, 5, 6, 7)}
    _check_graph(model, feeds)


# ------------------------------------------------------------------------------------ whole models
def test_digits_model_agrees_with_onnxruntime(tmp_path):
    from models_under_test import example_model

    path = example_model()
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    data = np.load(path.parent / "digits_test.npz")
    x, labels = data["input"][:16].astype(np.float32), data["label"][:16]
    cm = compile_model(load(path), {"input": x.shape})
    assert not cm.cached and cm.build_seconds > 0
    (got,) = cm.run({"input": x})
    (ref,) = ort_run(onnx.load(path), {"input": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got.argmax(1) == labels).mean() > 0.8
    # the same graph again comes from the cache
    again = compile_model(load(path), {"input": x.shape})
    assert again.cached
    np.testing.assert_array_equal(again.run({"input": x})[0], got)
    # saved library: runs again without the ONNX model
    so = tmp_path / "digits.so"
    cm.save(str(so))
    loaded = load_module(str(so))
    np.testing.assert_array_equal(loaded.run({"input": x})[0], got)
    with pytest.raises(InputError, match="expects"):
        loaded.run({"input": x[:3]})


def test_ppocr_cls_agrees_with_onnxruntime():
    """Depthwise convs, hard-sigmoid/swish chains, squeeze-excite blocks, shape arithmetic."""
    from conftest import corpus_model

    path = corpus_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    x = np.random.default_rng(1).random((1, 3, 48, 192), dtype=np.float32)
    cm = compile_model(load(path), {"x": x.shape})
    (got,) = cm.run({"x": x})
    (ref,) = ort_run(onnx.load(path), {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_emit_tvmscript_writes_each_kernel(tmp_path):
    paths = emit_tvmscript(load(conv_bn_relu_model()), str(tmp_path), {"x": (1, 3, 4, 4)})
    assert len(paths) == 2
    text = open(paths[0]).read()
    # the direct conv's steps start with pad_input (AVX2 takes it for this K = 27 conv), the GEMM's not
    steps = next(line for line in text.splitlines() if line.startswith("# schedule steps: "))
    assert "@T.prim_func" in text and "tile_for_cache" in steps
    assert (tmp_path / "index.txt").read_text().count(".py") == 2


# ------------------------------------------------------------------------------------ unsupported
def test_unsupported_ops_are_listed_at_once():
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["c"], mode="cubic"),
             helper.make_node("TopK", ["c", "k"], ["v", "i"], axis=-1),
             helper.make_node("Relu", ["v"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 10, 2])],
                       [("s", np.array([1, 1, 2, 2], np.float32)), ("k", np.array([2], np.int64))])
    problems = unsupported_ops(load(model))
    assert problems == ["Resize (mode=cubic)", "TopK (no TVM emitter)"]
    with pytest.raises(UnsupportedError) as e:
        compile_model(load(model), strict=True)
    msg = str(e.value)
    assert "\n" not in msg and "2 op kind(s)" in msg and "TopK" in msg and "mode=cubic" in msg
    # without strict they run as host calls (their NumPy kernels) between the TVM kernels
    cm = compile_model(load(model))
    assert cm.host_ops == ["Resize: mode=cubic", "TopK: no TVM emitter"] and cm.unsupported == problems
    x = _x(1, 4, 5, 5)
    np.testing.assert_allclose(cm.run({"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_symbolic_input_needs_a_shape():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 3])], [tensor("y", ["N", 3])])
    with pytest.raises(InputError, match="static shapes"):
        compile_model(load(model))
    cm = compile_model(load(model), {"x": (2, 3)})
    x = _x(2, 3)
    np.testing.assert_array_equal(cm.run({"x": x})[0], np.maximum(x, 0))


# ------------------------------------------------------------------------------------------- CLI
def test_cli_build_run_emit(tmp_path, capsys):
    from tvmlite.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_model(), str(src))
    so = tmp_path / "m.so"
    assert main(["build", str(src), "-o", str(so)]) == 2  # symbolic batch: needs --shape
    assert "static shapes" in capsys.readouterr().err
    assert main(["build", str(src), "-o", str(so), "--shape", "x=2x3x4x4"]) == 0
    # the same build again comes from the cache, whose loaded library is copied, not re-exported
    assert main(["build", str(src), "-o", str(tmp_path / "again.so"), "--shape", "x=2x3x4x4"]) == 0
    assert "from the build cache" in capsys.readouterr().out
    x = _x(2, 3, 4, 4)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    assert main(["run", str(so), "--inputs", str(tmp_path / "in.npz"), "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out)["y"], ort_run(conv_bn_relu_model(), {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert main(["compare", str(src), "--backend", "tvm", "--inputs", str(tmp_path / "in.npz"), "--repeats", "2"]) == 0
    assert main(["emit-tvm", str(src), "-o", str(tmp_path / "tir"), "--shape", "x=1x3x4x4"]) == 0
    assert len(list((tmp_path / "tir").glob("k*.py"))) == 2


def test_cache_drops_oldest_builds_past_its_limit():
    import os
    import time

    from tvmlite.backends.tvm.build_cache import cache_dir, prune_cache

    root = cache_dir() / "prune-test"
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TVMLITE_CACHE"], old = str(root), os.environ["TVMLITE_CACHE"]
    try:
        for i in range(3):
            d = root / f"e{i}"
            d.mkdir()
            (d / "model.so.npz").write_bytes(b"x" * 1000)
            os.utime(d, (time.time() - 100 + i, time.time() - 100 + i))
        prune_cache(keep=root / "e0", max_bytes=1500)
        assert sorted(p.name for p in root.iterdir()) == ["e0"]  # kept: the entry just built
    finally:
        os.environ["TVMLITE_CACHE"] = old
