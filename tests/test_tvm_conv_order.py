"""The direct conv's tile loop order (kernels/tile_order.pixel_tiles_outer, schedules.tile_direct_conv):
pixel tiles outside the channel tiles for a group-1 conv whose input is larger than the L2 and its
weights, whose weights fit the L2 and which has few taps per stride^2; the numbers the same in
either order, for the NCHW direct kernel and the layout-taking one, at AVX2's 8 lanes and
AVX-512's 16, against the NumPy conv."""
from __future__ import annotations

import numpy as np
import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from tvmlite.backends.tvm.kernels import conv as KC  # noqa: E402
from tvmlite.backends.tvm.kernels import conv_nhwc as KN  # noqa: E402
from tvmlite.backends.tvm.kernels import schedules as S  # noqa: E402
from tvmlite.backends.tvm.kernels import tile_order as TO  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.ops.conv import conv  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402
from test_tvm_nhwc import test_conv_kernel_in_every_layout_pair as layout_pair_matches  # noqa: E402

RNG = np.random.default_rng(0)


def geometry(ci, co, k, s, hw, group=1):
    x_shape, w_shape = (1, ci) + hw, (co, ci // group, k, k)
    geom = WindowGeometry.conv(dict(pads=[k // 2] * 4, strides=[s, s], group=group), x_shape, w_shape)
    return geom, int(np.prod(x_shape)), int(np.prod(w_shape))


@pytest.mark.parametrize("case,outer", [
    ((16, 32, 3, 2, (320, 320)), True),  # the detector's 16->32 stride-2 conv
    ((256, 64, 1, 1, (56, 56)), True),  # ResNet-50's 1x1 convs at 56x56
    ((256, 512, 1, 2, (56, 56)), True),  # weights of exactly 512 KiB still fit
    ((16, 32, 3, 2, (320, 320), 2), False),  # grouped: not measured, the default order
    ((1024, 2048, 1, 2, (14, 14)), False),  # weights the larger operand
    ((128, 128, 3, 2, (112, 112)), False),  # weights past the L2 (576 KiB)
    ((48, 64, 3, 2, (40, 40)), False),  # the input fits the L2
    ((64, 128, 3, 1, (112, 112)), False),  # 3x3 stride 1: 9 taps per pixel hide the re-reads
    ((3, 64, 7, 2, (224, 224)), False),  # 7x7 stride 2: 49 taps per 4 pixels
    ((64, 64, 5, 2, (112, 112)), True),  # 5x5 stride 2: 25 taps per 4 pixels
])
def test_pixel_tiles_outer_rule(case, outer):
    assert KC.pixel_tiles_outer(*geometry(*case)) == outer


@pytest.fixture
def orders(monkeypatch):
    """The ``pixels_outer`` each direct-conv schedule was given."""
    seen = []
    tile = S.tile_direct_conv

    def spy(sch, block, t, *, pixels_outer=False, **kw):
        seen.append(pixels_outer)
        return tile(sch, block, t, pixels_outer=pixels_outer, **kw)
    monkeypatch.setattr(S, "tile_direct_conv", spy)
    return seen


@pytest.fixture
def row_blocks(monkeypatch):
    """The ``row_block`` each direct-conv schedule was given."""
    seen = []
    tile = S.tile_direct_conv

    def spy(sch, block, t, **kw):
        seen.append(kw.get("row_block", 0))
        return tile(sch, block, t, **kw)
    monkeypatch.setattr(S, "tile_direct_conv", spy)
    return seen


def force(monkeypatch, outer: bool):
    for mod in (KC, KN):
        monkeypatch.setattr(mod, "pixel_tiles_outer", lambda *a, **k: outer)


def direct_conv_matches(lanes, ci, co, k, attrs, batch, hw):
    """`conv2d_direct` (bias, ReLU fused) of a random input of ``hw`` pixels matches the NumPy conv."""
    x = RNG.standard_normal((batch, ci) + hw).astype(np.float32)
    w = RNG.standard_normal((co, ci, k, k)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    kd = KC.conv2d_direct("d", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                          lanes=lanes)
    args, outs = kernel_args(kd, {"x": x})
    build_kernel(kd)["main"](*args)
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    np.testing.assert_allclose(outs[0].numpy().reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("outer", [False, True])
@pytest.mark.parametrize("ci,co,k,attrs,batch", [
    (6, 40, 3, dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), 2),  # uneven pads, ragged channels
    (5, 24, 3, dict(pads=[1, 1, 1, 1], strides=[2, 2]), 1),  # stride 2, a row the pixel tile does not divide
    (16, 16, 1, dict(strides=[1, 1]), 1),  # 1x1, read unpadded
])
def test_direct_conv_same_results_in_either_order(monkeypatch, orders, lanes, outer, ci, co, k, attrs, batch):
    force(monkeypatch, outer)
    direct_conv_matches(lanes, ci, co, k, attrs, batch, (11, 13))
    assert orders == [outer]


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("outer", [False, True])
@pytest.mark.parametrize("xl,yl", [("NHWC", "NHWC"), ("NHWC", "NCHW"), ("NCHW", "NHWC")])
@pytest.mark.parametrize("ci,co,k,s,hw", [(16, 24, 1, 1, (9, 11)), (16, 40, 1, 2, (12, 12)), (8, 20, 3, 2, (11, 11))])
def test_layout_taking_conv_same_results_in_either_order(monkeypatch, orders, lanes, outer, xl, yl, ci, co, k, s, hw):
    """test_tvm_nhwc's layout-pair check (1x1 flat with a ragged last pixel tile, 1x1 stride 2,
    padded 3x3 stride 2; bias, a residual stored NHWC and ReLU fused) in either order."""
    force(monkeypatch, outer)
    layout_pair_matches(lanes, xl, yl, ci, co, k, s, hw)
    assert orders == [outer]


@pytest.mark.parametrize("case,outer", [((16, 32, 3, 2, (200, 200)), True), ((16, 32, 3, 2, (200, 200), 2), False),
                                        ((64, 64, 3, 1, (8, 8)), False)])
def test_conv_kernels_take_the_order_the_rule_says(orders, case, outer):
    """The rule's answer reaches the schedule of both direct kernels (a grouped conv: the NCHW one only)."""
    geom, _, _ = geometry(*case)
    ci, co, k, _, hw = case[:5]
    shape, w = (1, ci) + hw, np.ones((co, ci // geom.group, k, k), np.float32)
    KC.conv2d_direct("d", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8)
    if geom.group == 1:
        KN.conv2d_nhwc("n", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8)
    assert orders == [outer] * (2 if geom.group == 1 else 1)


@pytest.mark.parametrize("lanes,yl,outer", [(16, "NCHW", False), (16, "NHWC", True), (8, "NCHW", True)])
def test_nhwc_kernel_writing_nchw_with_avx512_tiles_keeps_channel_tiles_outside(orders, lanes, yl, outer,
                                                                                monkeypatch):
    """ResNet-50's 256->64 1x1 at 56x56 read NHWC (the rule: pixel tiles outside) keeps its channel
    tiles outside where its AVX-512 tile writes NCHW (tile_order.pixel_tiles_outer's
    ``wide_nchw_write``: 0.87x -> 0.77x of onnxruntime's Conv); written NHWC, or by AVX2's tile, the rule
    holds. Built for one thread: at two its 2 channel tiles make it split by pixels
    (`tile_order.flat_pixels_split`)."""
    monkeypatch.setenv("TVMLITE_THREADS", "1")
    geom, _, _ = geometry(256, 64, 1, 1, (56, 56))
    assert KC.pixel_tiles_outer(*geometry(256, 64, 1, 1, (56, 56)))
    assert not KC.pixel_tiles_outer(*geometry(256, 64, 1, 1, (56, 56)), wide_nchw_write=True)
    w = np.ones((64, 256, 1, 1), np.float32)
    KN.conv2d_nhwc("n", "x", (1, 256, 56, 56), w, None, geom, out_value="y", epilogue=Epilogue(), lanes=lanes,
                   x_layout="NHWC", y_layout=yl)
    assert orders == [outer]


# --------------------------------------------------------------- output rows in blocks (channel_row_block)
def row_block_of(ci, co, k, s, hw, group=1, nr=8):
    geom, _, _ = geometry(ci, co, k, s, hw, group)
    wp = hw[1] + 2 * (k // 2)
    return geom, KC.channel_row_block(geom, ci * wp, (co, ci // group, k, k), nr)


@pytest.mark.parametrize("case,blocked", [
    ((128, 128, 3, 2, (56, 56)), True),  # ResNet-50's stride-2 3x3 from 56x56: input 1.7 MB, weights 0.6 MB
    ((256, 256, 3, 2, (28, 28)), False),  # weights 2.6x the input: read once per block, they would cost more
    ((64, 192, 3, 1, (56, 56)), False),  # 3x3 stride 1: 9 taps per pixel hide the re-reads
    ((3, 64, 7, 2, (224, 224)), False),  # 7x7 stride 2: 49 taps per 4 pixels
    ((48, 64, 3, 2, (40, 40)), False),  # the input fits the L2
    ((128, 128, 3, 2, (56, 56), 2), False),  # grouped: not measured
])
def test_channel_row_block_rule(case, blocked, monkeypatch):
    monkeypatch.setattr(TO, "l2_floats", lambda: 512 * 1024 // 4)  # measured with Zen 1's L2
    geom, rb = row_block_of(*case)
    oh = geom.out_spatial[0]
    if not blocked:
        assert rb == 0
        return
    ci, _, k, s, hw = case[:5]
    rows_in = (rb - 1) * s + k
    assert 0 < rb < oh and oh % rb == 0
    assert rows_in * ci * (hw[1] + 2 * (k // 2)) <= 512 * 1024 // 8  # half the L2, in floats
    # the most rows that divide the height and fit: the next divisor up does not fit
    bigger = [r for r in range(rb + 1, oh) if oh % r == 0]
    if bigger:
        assert ((bigger[0] - 1) * s + k) * ci * (hw[1] + 2 * (k // 2)) > 512 * 1024 // 8 - ci * k * k * 8


def test_channel_row_block_sizes_blocks_by_the_hosts_l2(monkeypatch):
    """The row blocks fit half of this host's L2 (`tile_order.l2_floats`): with 2 MiB (Sapphire Rapids)
    ResNet-50's 128->128 stride-2 input (1.7 MB) fits it whole, so no blocks; a 256-channel one
    from 112x112 (13 MB) takes blocks of at most 1 MiB of input rows, where with 512 KiB not even
    one output row's input fits beside a weight panel."""
    monkeypatch.setattr(TO, "l2_floats", lambda: 2 * 1024 * 1024 // 4)
    assert row_block_of(128, 128, 3, 2, (56, 56))[1] == 0
    geom, rb = row_block_of(256, 256, 3, 2, (112, 112))
    assert 0 < rb and ((rb - 1) * 2 + 3) * 256 * 114 <= 1024 * 1024 // 4
    monkeypatch.setattr(TO, "l2_floats", lambda: 512 * 1024 // 4)
    assert row_block_of(256, 256, 3, 2, (112, 112))[1] == 0


def test_l2_cache_size_from_sysfs_text():
    from tvmlite.backends.tvm.kernels import target

    assert target.parse_cache_size("2048K") == 2 << 20 and target.parse_cache_size("1M") == 1 << 20
    assert target.parse_cache_size("512") == 512 and target.parse_cache_size("") == 0
    assert target.parse_cache_size("big") == 0
    assert target.l2_cache_bytes() >= 64 * 1024  # this host's, or the Zen 1 fallback


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("rb", [2, 4])  # 7 output rows: a ragged last block either way
@pytest.mark.parametrize("ci,co,k,attrs,batch", [
    (6, 40, 3, dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), 2),  # uneven pads, ragged channels
    (5, 24, 3, dict(pads=[1, 1, 1, 1], strides=[2, 2]), 1),  # stride 2, a row the pixel tile does not divide
])
def test_direct_conv_same_results_in_row_blocks(monkeypatch, row_blocks, lanes, rb, ci, co, k, attrs, batch):
    monkeypatch.setattr(KC, "pixel_tiles_outer", lambda *a, **k: False)
    monkeypatch.setattr(KC, "channel_row_block", lambda *a: rb)
    direct_conv_matches(lanes, ci, co, k, attrs, batch, (13, 13))
    assert row_blocks == [rb]


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("xl,yl", [("NHWC", "NHWC"), ("NCHW", "NHWC"), ("NCHW", "NCHW")])
def test_layout_taking_conv_same_results_in_row_blocks(monkeypatch, row_blocks, lanes, xl, yl):
    """test_tvm_nhwc's layout-pair check (padded 3x3 stride 2, 6 output rows; bias, a residual
    stored NHWC and ReLU fused) with its rows in ragged blocks of 4."""
    monkeypatch.setattr(KN, "pixel_tiles_outer", lambda *a, **k: False)
    monkeypatch.setattr(KN, "channel_row_block", lambda *a: 4)
    layout_pair_matches(lanes, xl, yl, 8, 20, 3, 2, (11, 11))
    assert row_blocks == [4]


def test_conv_kernels_take_the_row_block_the_rule_says(row_blocks, monkeypatch):
    """The rule's block reaches the schedule of both direct kernels; none where the pixel tiles
    run outside (the detector's stride-2 conv) or the kernel is a flat 1x1 GEMM."""
    monkeypatch.setattr(TO, "l2_floats", lambda: 512 * 1024 // 4)  # Zen 1's L2: ResNet's conv takes blocks
    for case in [(128, 128, 3, 2, (56, 56)), (16, 32, 3, 2, (200, 200)), (256, 64, 1, 1, (56, 56))]:
        geom, rb = row_block_of(*case)
        ci, co, k, _, hw = case
        shape, w = (1, ci) + hw, np.ones((co, ci, k, k), np.float32)
        del row_blocks[:]
        if k > 1:
            KC.conv2d_direct("d", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8)
        KN.conv2d_nhwc("n", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8)
        want = rb if case[0] == 128 else 0
        assert row_blocks == [want] * (2 if k > 1 else 1), case
    assert row_block_of(128, 128, 3, 2, (56, 56))[1] == 2


@pytest.mark.parametrize("case,nchw_out_channels,outer", [
    ((3, 24, 3, 2, (224, 224)), 3, False),  # ShuffleNet's stem written NCHW: channel tiles outside
    ((3, 24, 3, 2, (224, 224)), 0, True),  # the same conv written NHWC (conv2d_nhwc passes no channels)
    ((4, 32, 3, 2, (224, 224)), 4, False),  # RGBA
    ((16, 32, 3, 2, (320, 320)), 16, True),  # the detector's 16->32: the rule as before
])
def test_image_stem_writing_nchw_keeps_channel_tiles_outside(case, nchw_out_channels, outer):
    assert KC.pixel_tiles_outer(*geometry(*case), nchw_out_channels=nchw_out_channels) == outer


def test_stem_orders_reach_both_kernels(orders):
    """A 3->24 stride-2 stem from 224x224: the NCHW direct kernel keeps its channel tiles outside,
    the layout-taking one (writing NHWC) its pixel tiles."""
    geom, _, _ = geometry(3, 24, 3, 2, (224, 224))
    shape, w = (1, 3, 224, 224), np.ones((24, 3, 3, 3), np.float32)
    KC.conv2d_direct("d", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8)
    KN.conv2d_nhwc("n", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8, x_layout="NCHW")
    assert orders == [False, True]
