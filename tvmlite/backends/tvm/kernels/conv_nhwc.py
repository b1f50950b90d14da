"""Float Conv2D over channels-last (NHWC) buffers, and the transposes at the layout's edges.

`conv2d_nhwc` is the direct conv's register tile (nr output channels in vector lanes x mr output
pixels) reading its input NCHW or NHWC and writing its output NCHW or NHWC (`lower.py` decides
which values travel NHWC, see `float_layout.py`). Writing NHWC the tile leaves with one vector
store per pixel instead of `conv2d_direct`'s transposing write; a 1x1 stride-1 unpadded conv is a
plain GEMM over all pixels (the pixel tile runs across output rows: no row padding), and reading
NHWC its tile's k-panel (the pixels' channels) is contiguous. AVX2 Zen 1, one thread, CPU time,
against the NCHW kernel `conv2d` picks (ResNet-50's shapes, interleaved medians):
x NHWC -> y NHWC 64->256 1x1 at 56x56 + residual 0.76x, 128->512 at 28x28 + residual 0.81x,
512->2048 at 7x7 + residual 0.86x, 1024->256 at 14x14 0.92x, 1024->512 stride 2 0.86x;
x NCHW -> y NHWC 3x3 0.98-1.0x; x NHWC for a 3x3 conv at 7x7 / 14x14 1.22x / 1.25-1.35x (its
mr pixels' channels are mr separate streams): which 3x3 convs read NHWC, emitters/nhwc.input_nhwc_pays.

The fused epilogue runs at the output's logical NCHW index (constants keep their ONNX shapes);
operands stored NHWC are read through `Epilogue.layouts` (epilogue.bind_epilogue)."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.conv import (channel_row_block, direct_tile, finish_direct, pack_direct_weights,
                                               pixel_tiles_outer, row_tasks, tile_activation, unary_prefix,
                                               zero_padded)
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.tile_order import flat_pixels_split
from tvmlite.ops.geometry import WindowGeometry

NHWC = "NHWC"


def conv2d_nhwc(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
                epilogue: Epilogue, lanes: int, x_layout: str = NHWC, y_layout: str = NHWC,
                tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Conv2D with the input stored ``x_layout`` (``x_shape`` is the logical NCHW shape) and the
    output written ``y_layout``. Weights are packed [G, CO/nr, taps and channels in the
    reduction's order, nr] at build time; bias and ``epilogue`` run on the tile."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = (int(d) for d in w.shape)
    xl, yl = x_layout == NHWC, y_layout == NHWC
    g = geom.group
    cog = co // g
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl, pb, pr = geom.pads
    oh, ow = geom.out_spatial
    # a 1x1 stride-1 unpadded conv: every pixel is one row of a GEMM, the image one long row
    flat = (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and not geom.padded
    rows, cols = (1, oh * ow) if flat else (oh, ow)
    tile = tile or nhwc_tile(cog, cols, lanes, kh * kw, strided=max(geom.strides) > 1)
    mr, nr = int(tile.mr), int(tile.nr)
    cop, colp = round_up(cog, nr), round_up(cols, mr)
    xh, xw = (1, h * wd) if flat else (h, wd)
    top, left = (0, 0) if flat else (pt, pl)
    hp = max(xh + (0 if flat else pt + pb), (rows - 1) * sh + (kh - 1) * dh + 1)
    wp = max(xw + (0 if flat else pl + pr), (colp - 1) * sw + (kw - 1) * dw + 1)
    b = Builder(name)
    X = b.input(x, (n, xh, xw, c) if xl else (n, c, xh, xw))
    # reading NHWC the reduction runs (ky, kx, channel): a pixel's channels are contiguous
    wmat = np.zeros((g, cop, kh, kw, ci) if xl else (g, cop, ci, kh, kw), np.float32)
    wg = w.reshape(g, cog, ci, kh, kw)
    wmat[:, :cog] = wg.transpose(0, 1, 3, 4, 2) if xl else wg
    packing = steps is None or "pack_array" in steps
    W = b.const(pack_direct_weights(wmat, nr, S.weight_run(nr, lanes)) if packing else wmat, wmat.shape)
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(g, cog), label="bias") if bias is not None else None
    pre, rest = unary_prefix(epilogue)
    out_shape = (n, co, oh, ow)
    apply = bind_epilogue(rest, b, out_shape)
    unpadded = (top, left, hp, wp) == (0, 0, xh, xw)
    if unpadded:
        pad = X
    elif flat:  # only the last pixel tile runs past the image: it reads the last pixel again
        pad = clamped_row(X, xl, (n, c, xw), wp)
        steps = [s for s in (steps or S.DIRECT_CONV_STEPS) if s != "pad_input"]  # inlined, never copied
    elif xl:
        pad = zero_padded_nhwc(X, (n, xh, xw, c), (hp, wp), top, left)
    else:
        pad = zero_padded(X, (n, c, xh, xw), (hp, wp), top, left)
    rc = te.reduce_axis((0, ci), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    if xl:
        acc = te.compute((n, g, rows, colp, cop), lambda nn, gg, y, xx, i: te.sum(
            pad[nn, y * sh + ry * dh, xx * sw + rx * dw, gg * ci + rc] * W[gg, i, ry, rx, rc],
            axis=[ry, rx, rc]), name="acc")
    else:
        acc = te.compute((n, g, rows, colp, cop), lambda nn, gg, y, xx, i: te.sum(
            pad[nn, gg * ci + rc, y * sh + ry * dh, xx * sw + rx * dw] * W[gg, i, rc, ry, rx],
            axis=[rc, ry, rx]), name="acc")
    tile_out = tile_activation(acc, pre, b, B, out_shape, cog)

    def value(nn, y, xx, gg, cc):
        v = tile_out[nn, gg, y, xx, cc]
        if B is not None and not pre.ops:
            v = v + B[gg, cc]
        oy, ox = (xx // ow, xx % ow) if flat else (y, xx)
        return apply(v, (nn, gg * cog + cc, oy, ox))

    if yl:  # [n, oh, ow, g, co/g]: the channels of a pixel contiguous
        Y = te.compute((n, rows, cols, g, cog), value, name="epilogue")
    else:
        Y = te.compute((n, g, cog, rows, cols), lambda nn, gg, cc, y, xx: value(nn, y, xx, gg, cc),
                       name="epilogue")
    outer = pixel_tiles_outer(geom, n * c * h * wd, w.size,
                              wide_nchw_write=not yl and S.accumulator_vectors(lanes) > 8)
    outer = outer or (flat and flat_pixels_split(cop // nr, S.worth_parallel(n * co * oh * ow * ci), ci))
    rb = 0 if outer or flat else channel_row_block(geom, c * wp, w.shape, nr)
    return finish_direct(b, out_value, Y, tile, lanes=lanes, steps=steps, unpadded=unpadded, act=bool(pre.ops),
                         work=n * co * oh * ow * ci * kh * kw, w_index=w_index if packing else None,
                         pixels_outer=outer, row_block=rb, row_tasks=0 if flat else row_tasks(geom, w.size))


def nhwc_tile(cog: int, cols: int, lanes: int, taps: int, *, strided: bool = False) -> S.GemmTile:
    """The register tile `conv2d_nhwc` takes for ``cog`` output channels per group and output rows
    of ``cols`` pixels (``strided``: a stride above 1): its ``mr`` is how many pixels' channel runs
    (streams) a tile reads NHWC."""
    return direct_tile(_tile_channels(cog, lanes), cols, lanes, taps, strided=strided)


def _tile_channels(cog: int, lanes: int) -> int:
    """The output channels `direct_tile` chooses the tile for: padded to two vectors where that
    wastes at most 1/64 of them (AVX-512: 1/32), so that the two-vector tile (twice the
    accumulators) is taken. SqueezeNet's 512->1000 1x1 conv at 13x13 reading NHWC (AVX2, one
    thread, CPU time): one vector, 5 pixels 6.53 ms; two vectors, 5 pixels 5.29 ms (0.81x; the
    NCHW GEMM it replaces 5.3 ms in the model). With AVX-512 two vectors pad those 1000 channels
    to 1024 (2.4%): written NCHW (Sapphire Rapids, one thread, CPU time, bench/conv_tiles.py
    --layouts, 40 rounds, load 2.7) 10 x 16 1.00x of onnxruntime's Conv, 10 x 32 0.92x (5 x 64
    0.91x, 8 x 32 0.97x)."""
    padded = round_up(cog, 2 * lanes)
    share = 32 if lanes >= 16 else 64
    return padded if (padded - cog) * share <= cog else cog


def clamped_row(X, nhwc: bool, shape, width: int):
    """A flat 1x1 conv's input ``X`` (one row of ``shape`` = (n, c, pixels), stored NHWC or NCHW)
    read up to ``width`` pixels, the ones past the image clamped to its last pixel: the tile
    padding's results are dropped, so any valid pixel will do. Inlined into the conv (the clamp is
    per pixel tile, outside the reduction loop), where a zero-padded copy of the whole input was
    made on every call for a pixel count no whole number of tiles: AVX2, one thread, CPU time,
    the kernel alone, copy -> clamp, SqueezeNet's 128->32 at 27x27 0.88-0.90x, 256->48 at 13x13
    0.93x, 32->128 and 64->256 at 27x27 / 13x13 (reading NCHW) 0.93x / 0.95x, 512->1000 at
    13x13 0.98x."""
    n, c, p = shape
    last = p - 1
    if nhwc:
        return te.compute((n, 1, width, c), lambda nn, y, xx, cc: X[nn, 0, tirx.min(xx, last), cc], name="pad")
    return te.compute((n, c, 1, width), lambda nn, cc, y, xx: X[nn, cc, 0, tirx.min(xx, last)], name="pad")


def zero_padded_nhwc(X, x_shape, padded_hw, top: int, left: int):
    """X [n, h, w, c] placed at (top, left) in a zero plane [n, hp, wp, c] (`conv.zero_padded`
    channels-last)."""
    n, h, wd, c = x_shape
    hp, wp = padded_hw
    return te.compute((n, hp, wp, c), lambda nn, y, xx, cc: tirx.if_then_else(
        tirx.all(y >= top, y < top + h, xx >= left, xx < left + wd), X[nn, y - top, xx - left, cc],
        tirx.const(0.0, F32)), name="pad")


def nhwc_to_nchw(name: str, src: str, shape, *, out_value: str, lanes: int, to_nhwc: bool = False) -> KernelDef:
    """The NCHW copy of a value stored NHWC (logical ``shape`` [N, C, H, W]), for a reader that
    takes NCHW only: a pixel-run of each channel per vector, read with a stride of C. With
    ``to_nhwc`` the other way: the NHWC copy of an NCHW value."""
    n, c, h, wd = (int(d) for d in shape)
    b = Builder(name)
    if to_nhwc:
        X = b.input(src, (n, c, h, wd))
        Y = te.compute((n, h, wd, c), lambda nn, y, xx, cc: X[nn, cc, y, xx], name="ew")
    else:
        X = b.input(src, (n, h, wd, c))
        Y = te.compute((n, c, h, wd), lambda nn, cc, y, xx: X[nn, y, xx, cc], name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(n * c * h * wd))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])
