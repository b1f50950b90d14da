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


class WindowPlane:
    """The zero- (or ``fill``-) padded input plane a windowed kernel over NCHW reads, made per
    channel (see the module doc), and the schedule that goes with it. Output columns are
    computed in whole vectors (``owp``: the output width rounded up to ``vec``)."""

    def __init__(self, X, x_shape, geom: WindowGeometry, lanes: int, *, fill: float = 0.0, channel_of=None):
        n, c, h, wd = (int(d) for d in x_shape)
        sh, sw = geom.strides
        dh, dw = geom.dilations
        pt, pl = geom.pad_begin
        oh, ow = geom.out_spatial
        kh, kw = geom.kernel
        self.geom, self.lanes, self.x_shape = geom, int(lanes), (n, c, h, wd)
        self.vec = int(lanes) if ow >= lanes else ow
        self.owp = round_up(ow, self.vec)
        # every row and column a tap of the padded output rows reads
        self.hp = (oh - 1) * sh + (kh - 1) * dh + 1
        wq = (self.owp - 1) + ((kw - 1) * dw) // sw + 1  # columns per phase
        if sw > 1 and wq > lanes // 2:
            wq = round_up(wq, int(lanes))  # whole vectors: the pad stage runs without a tail
        self.wq = wq
        src = channel_of or (lambda cc: cc)
        fill_v = tirx.const(fill, F32)

        def padded(nn, cc, y, s, q):
            yy, xx = y - pt, q * sw + s - pl
            inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < wd)
            if sw == 1:  # the padding pattern `decompose_padding` splits into a fill and a plain copy
                return tirx.if_then_else(inside, X[nn, src(cc), yy, xx], fill_v)
            # phases: a strided read per element; indices clamped so a Select (vectorized) is safe
            return tirx.Select(inside, X[nn, src(cc), tirx.max(tirx.min(yy, h - 1), 0),
                                         tirx.max(tirx.min(xx, wd - 1), 0)], fill_v)

        self.pad = te.compute((n, c, self.hp, sw, wq), padded, name="pad")

    def tap(self, nn, cc, y, xx, ry, rx):
        """Input of output pixel (y, xx) at tap (ry, rx), channel ``cc`` of the plane."""
        sh, sw = self.geom.strides
        dh, dw = self.geom.dilations
        off = rx * dw  # column xx*sw + off lives in phase off % sw at xx + off // sw
        return self.pad[nn, cc, y * sh + ry * dh, off % sw, xx + off // sw]

    def schedule(self, sch, acc: str, epilogue: str, *, parallel: bool):
        """A vector of one output row accumulated in registers over the taps (columns unrolled),
        written once through ``epilogue``; the plane made per channel right before it is read;
        channels across cores. ``acc`` is [N, C, OH, owp] with reduce axes (ry, rx)."""
        n, c, h, wd = self.x_shape
        pt, pl = self.geom.pad_begin
        sw = self.geom.strides[1]
        lanes = self.lanes
        blk = sch.get_sblock(acc)
        nl, cl, yl, xl, ryl, rxl = sch.get_loops(blk)
        xo, xi = sch.split(xl, factors=[None, self.vec])
        sch.reorder(nl, cl, yl, xo, ryl, rxl, xi)
        epi = sch.get_sblock(epilogue)
        S.write_cache(sch, blk, epi, xo)
        sch.unroll(rxl)
        sch.vectorize(xi)
        sch.vectorize(sch.get_loops(epi)[-1])
        pblk = sch.get_sblock("pad")
        padding = pt > 0 or pl > 0 or self.hp - pt > h or self.wq * sw - pl > wd
        if sw == 1 and not padding:  # the plane is the input itself
            sch.compute_inline(pblk)
        else:
            sch.compute_at(pblk, cl)
            blocks = [pblk]
            if sw == 1:  # the fill, then the in-bound rectangle copied with no per-element test
                blocks.append(sch.decompose_padding(pblk, sch.get_loops(pblk)[2]))  # first loop under (n, c)
            for b in blocks:
                lp = sch.get_loops(b)[-1]
                ext = S._extent(sch, lp)
                if ext is not None and ext > lanes:
                    _, lp = sch.split(lp, factors=[None, lanes])
                sch.vectorize(lp)
        if parallel:  # in chunks: the plane and the register tile are allocated once per chunk
            S.parallel_chunks(sch, sch.fuse(nl, cl))
        sch.decompose_reduction(blk, ryl)


def depthwise_conv2d(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
                     epilogue: Epilogue, lanes: int, shuffle: int | None = None) -> KernelDef:
    """Conv with group == input channels (w [C*mult, 1, KH, KW]), bias and ``epilogue`` fused;
    ``shuffle``: G of a channel shuffle applied to ``x`` before the conv (see the module doc)."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, _, kh, kw = (int(d) for d in w.shape)
    mult = co // c
    oh, ow = geom.out_spatial
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    W = b.const(np.ascontiguousarray(w.reshape(co, kh * kw), np.float32), (co, kh * kw))
    B = b.const(np.asarray(bias, np.float32).reshape(co), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, (n, co, oh, ow))
    plane = WindowPlane(X, (n, c, h, wd), geom, lanes,
                        channel_of=(lambda cc: shuffled_channel(cc, shuffle, c)) if shuffle else None)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    acc = te.compute((n, co, oh, plane.owp), lambda nn, cc, y, xx: te.sum(
        plane.tap(nn, cc // mult if mult > 1 else cc, y, xx, ry, rx) * W[cc, ry * kw + rx], axis=[ry, rx]),
        name="acc")

    def out(nn, cc, y, xx):
        v = acc[nn, cc, y, xx]
        if B is not None:
            v = v + B[cc]
        return apply(v, (nn, cc, y, xx))

    Y = te.compute((n, co, oh, ow), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    plane.schedule(sch, "acc", "epilogue", parallel=S.worth_parallel(S.depthwise_work(n, co, oh, ow, kh, kw)))
    return KernelDef(name, b.params, sch.mod["main"], steps=list(STEPS))
