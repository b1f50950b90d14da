"""Depthwise convolution (group == input channels, any channel multiplier) as a per-channel
stencil, optionally reading its input through a channel shuffle.

Per channel the zero-padded plane is made once, in vectors: for a stride-1 conv as a zero fill
and a plain copy of the in-bound rectangle (`decompose_padding`, no per-element test); for a
strided conv stored split by column phase ([rows, stride, cols/stride]), so every tap reads a
contiguous run of the plane instead of a strided gather. A vector of one output row is
accumulated in registers over the taps (columns unrolled) and written once through the
epilogue. Against the previous kernel (best of interleaved runs, loaded 2-core host): 112ch
56x56 stride 2 0.16 vs 0.27 ms, 192ch 40x40 5x5 0.37 vs 1.6 ms, 136ch 28x28 0.044 vs 0.053 ms;
level (within noise) on 32ch 112x112, 16ch 320x320 and 272ch 14x14. Several output vectors per
register tile measured no better and worse on 320-wide rows.

``shuffle``: the input is read as ShuffleNet's channel shuffle of the value given (Reshape to
[N, G, C/G, H, W], Transpose (0, 2, 1, 3, 4), Reshape back), so the shuffle costs no kernel:
channel c of the shuffled tensor is channel (c % G) * (C/G) + c // G of the value read.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.ops.geometry import WindowGeometry

STEPS = ["pad_per_channel", "phase_split", "write_cache", "vectorize_columns", "parallel_outer"]
#: accumulator vectors of one row tile (wider rows are split): the rest of the 32 AVX-512
#: registers hold the broadcast weight and the loaded inputs
MAX_ROW_VECTORS = 4


def shuffled_channel(c, groups: int, channels: int):
    """The channel of the value read that channel ``c`` of its channel shuffle comes from."""
    per = channels // groups
    return (c % groups) * per + c // groups


def depthwise_conv2d(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
                     epilogue: Epilogue, lanes: int, shuffle: int | None = None) -> KernelDef:
    """Conv with group == input channels (w [C*mult, 1, KH, KW]), bias and ``epilogue`` fused;
    ``shuffle``: G of a channel shuffle applied to ``x`` before the conv (see the module doc)."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, _, kh, kw = (int(d) for d in w.shape)
    mult = co // c
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl = geom.pad_begin
    oh, ow = geom.out_spatial
    vec = int(lanes) if ow >= lanes else ow
    owp = round_up(ow, vec)
    # the padded plane: every row and column a tap of the padded output row reads
    hp = (oh - 1) * sh + (kh - 1) * dh + 1
    wq = (owp - 1) + ((kw - 1) * dw) // sw + 1  # columns per phase
    if sw > 1 and wq > lanes // 2:
        wq = round_up(wq, int(lanes))  # whole vectors: the pad stage runs without a tail
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    W = b.const(np.ascontiguousarray(w.reshape(co, kh * kw), np.float32), (co, kh * kw))
    B = b.const(np.asarray(bias, np.float32).reshape(co), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, (n, co, oh, ow))

    def src(cc):
        return shuffled_channel(cc, shuffle, c) if shuffle else cc

    def padded(nn, cc, y, s, q):
        yy, xx = y - pt, q * sw + s - pl
        inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < wd)
        if sw == 1:  # the padding pattern `decompose_padding` splits into a fill and a plain copy
            return tirx.if_then_else(inside, X[nn, src(cc), yy, xx], tirx.const(0.0, F32))
        # phases: a strided read per element; indices clamped so a Select (vectorized) is safe
        return tirx.Select(inside, X[nn, src(cc), tirx.max(tirx.min(yy, h - 1), 0),
                                     tirx.max(tirx.min(xx, wd - 1), 0)], tirx.const(0.0, F32))

    pad = te.compute((n, c, hp, sw, wq), padded, name="pad")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def tap(nn, cc, y, xx):
        ci = cc // mult if mult > 1 else cc
        off = rx * dw  # column xx*sw + off lives in phase off % sw at xx + off // sw
        return te.sum(pad[nn, ci, y * sh + ry * dh, off % sw, xx + off // sw] * W[cc, ry * kw + rx], axis=[ry, rx])

    acc = te.compute((n, co, oh, owp), tap, name="acc")

    def out(nn, cc, y, xx):
        v = acc[nn, cc, y, xx]
        if B is not None:
            v = v + B[cc]
        return apply(v, (nn, cc, y, xx))

    Y = te.compute((n, co, oh, ow), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    blk = sch.get_sblock("acc")
    nl, cl, yl, xl, ryl, rxl = sch.get_loops(blk)
    xo, xi = sch.split(xl, factors=[None, vec])
    sch.reorder(nl, cl, yl, xo, ryl, rxl, xi)
    epi = sch.get_sblock("epilogue")
    S.write_cache(sch, blk, epi, xo)
    sch.unroll(rxl)
    sch.vectorize(xi)
    sch.vectorize(sch.get_loops(epi)[-1])
    # the plane of one input channel, made right before its output channel(s) need it
    pblk = sch.get_sblock("pad")
    padding = pt > 0 or pl > 0 or hp - pt > h or wq * sw - pl > wd
    if sw == 1 and not padding:  # the plane is the input itself
        sch.compute_inline(pblk)
    else:
        sch.compute_at(pblk, cl)
        blocks = [pblk]
        if sw == 1:  # zeros, then the in-bound rectangle copied with no per-element test
            blocks.append(sch.decompose_padding(pblk, sch.get_loops(pblk)[2]))  # first loop under (n, c)
        for blk_ in blocks:
            lp = sch.get_loops(blk_)[-1]
            ext = S._extent(sch, lp)
            if ext is not None and ext > lanes:
                _, lp = sch.split(lp, factors=[None, int(lanes)])
            sch.vectorize(lp)
    if S.worth_parallel(n * co * oh * ow * kh * kw):
        S.parallel_outer(sch, [nl, cl])
    sch.decompose_reduction(blk, ryl)
    return KernelDef(name, b.params, sch.mod["main"], steps=list(STEPS))
