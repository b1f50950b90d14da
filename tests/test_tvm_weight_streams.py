"""The direct convs' packed weights in one stream per vector of a tile's channels on AVX-512
(schedules.weight_run, pack_direct_weights): the rule, the packed layout the kernels take, and
their results in both kernels (NCHW `conv2d_direct`, layout-taking `conv2d_nhwc`) against the
reference conv, at 16 lanes with two- and four-vector tiles and at AVX2's 8 lanes (one stream)."""
from __future__ import annotations

import numpy as np
import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from tvmlite.backends.tvm.kernels import conv as KC  # noqa: E402
from tvmlite.backends.tvm.kernels import schedules as S  # noqa: E402
from tvmlite.backends.tvm.kernels.conv_nhwc import conv2d_nhwc  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.ops.conv import conv  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402
from test_tvm_nhwc import relu_conv_matches  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("nr,lanes,run", [(32, 16, 16), (64, 16, 16), (16, 16, 16), (16, 8, 16), (8, 8, 8),
                                          (48, 16, 16)])
def test_weight_run_rule(nr, lanes, run):
    """AVX-512: a vector's channels per stream; AVX2 (8 lanes) and one-vector tiles: the whole tile."""
    assert S.weight_run(nr, lanes) == run


def test_host_packing_puts_each_vector_of_channels_in_its_own_stream():
    w = np.arange(64 * 3 * 2 * 2, dtype=np.float32).reshape(1, 64, 3, 2, 2)
    p = KC.pack_direct_weights(w, 32, 16)
    assert p.shape == (1, 2, 2, 3, 2, 2, 16)
    # channel tile 1, its second vector: channels 48..63 of input channel 2, tap (1, 0)
    np.testing.assert_array_equal(p[0, 1, 1, 2, 1, 0], w[0, 48:64, 2, 1, 0])
    np.testing.assert_array_equal(KC.pack_direct_weights(w, 32), KC.pack_direct_weights(w, 32, 32))


def _weights_param(kd):
    return next(p for p in kd.params if p.kind == "const" and p.array.ndim >= 6)


@pytest.mark.parametrize("lanes,mr,nr,streams", [(16, 7, 32, 2), (16, 5, 64, 4), (16, 7, 16, 1), (8, 4, 16, 1)])
@pytest.mark.parametrize("k,s", [(1, 1), (3, 1), (3, 2)])
def test_direct_conv_with_weight_streams(lanes, mr, nr, streams, k, s):
    """NCHW direct conv, ragged channels (40 of a 64-channel tile), bias and ReLU fused."""
    x = RNG.standard_normal((1, 12, 9, 9)).astype(np.float32)
    w = RNG.standard_normal((40, 12, k, k)).astype(np.float32)
    b = RNG.standard_normal(40).astype(np.float32)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [k // 2] * 4}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    kd = KC.conv2d_direct("d", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                          lanes=lanes, tile=S.GemmTile(mr=mr, nr=nr))
    packed = _weights_param(kd).array
    assert packed.shape[-1] == nr // streams and (packed.ndim == 6 or packed.shape[2] == streams), packed.shape
    args, outs = kernel_args(kd, {"x": x})
    build_kernel(kd)["main"](*args)
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    np.testing.assert_allclose(outs[0].numpy().reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("xl,yl", [("NHWC", "NHWC"), ("NHWC", "NCHW"), ("NCHW", "NHWC")])
@pytest.mark.parametrize("k,s,hw", [(1, 1, (7, 7)), (1, 2, (14, 14)), (3, 1, (7, 7))])
@pytest.mark.parametrize("mr,nr", [(7, 32), (6, 64)])
def test_layout_taking_conv_with_weight_streams(xl, yl, k, s, hw, mr, nr):
    """`conv2d_nhwc` at 16 lanes with a two- or four-vector tile: a flat 1x1 conv at 7x7 (a pixel
    tile no divisor of 49 with 6), a stride-2 1x1, a padded 3x3; 72 output channels (ragged)."""
    x = RNG.standard_normal((1, 24) + hw).astype(np.float32)
    w = RNG.standard_normal((72, 24, k, k)).astype(np.float32)
    b = RNG.standard_normal(72).astype(np.float32)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [k // 2] * 4}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    kd = conv2d_nhwc("k", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=16,
                     x_layout=xl, y_layout=yl, tile=S.GemmTile(mr=mr, nr=nr))
    assert _weights_param(kd).array.shape[2] == nr // 16
    relu_conv_matches(kd, x, w, b, attrs, xl, yl)
