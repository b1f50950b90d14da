"""Windowed pooling and channel Concat over channels-last (NHWC) float buffers, so that the layout
`conv_nhwc` writes travels on through Inception's and SqueezeNet's pools and branch Concats to
the next 1x1 convs (emitters/nhwc.py decides which values travel so).

Channels-last, a pooling window's taps are whole vectors of channels: the kernel keeps a vector
of channels in registers per output pixel and reads each tap as one contiguous load (the NCHW
kernel reads a padded plane per channel, `pool.pool2d`). A channel Concat is a copy whose every
output pixel is its inputs' channel runs one after the other; each input may be stored NHWC or
NCHW (a producer that could not write NHWC), the output is NHWC.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, channel_vector
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.pool import pool_output
from tvmlite.ops.geometry import WindowGeometry


def pool2d_nhwc(name: str, x: str, x_shape, geom: WindowGeometry, *, kind: str, count_include_pad: bool,
                out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """MaxPool / AveragePool reading ``x`` stored NHWC (``x_shape`` is its logical NCHW shape) and
    writing the output NHWC; taps outside the input (pads, ceil_mode) never win a max and count in
    an average only with ``count_include_pad`` (`pool.window_count`)."""
    n, c, h, wd = (int(d) for d in x_shape)
    oh, ow = geom.out_spatial
    kh, kw = geom.kernel
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl = geom.pads[0], geom.pads[1]
    vec = channel_vector(c, lanes)
    if not vec:
        raise ValueError(f"{c} channels are no whole number of vectors")
    b = Builder(name)
    X = b.input(x, (n, h, wd, c))
    apply = bind_epilogue(epilogue, b, (n, c, oh, ow))
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    fill = tirx.min_value(F32) if kind == "max" else tirx.const(0.0, F32)
    reduce = te.max if kind == "max" else te.sum

    def tap(nn, y, xx, cc):
        iy, ix = y * sh - pt + ry * dh, xx * sw - pl + rx * dw
        # the condition does not depend on the channel: one branch per tap, not per lane
        return tirx.if_then_else(tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd), X[nn, iy, ix, cc], fill)

    acc = te.compute((n, oh, ow, c), lambda nn, y, xx, cc: reduce(tap(nn, y, xx, cc), axis=[ry, rx]), name="acc")
    Y = pool_output(acc, geom, (n, c, h, wd), kind=kind, count_include_pad=count_include_pad, apply=apply,
                    channels_last=True)
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    e = sch.get_sblock("epilogue")
    nl, yl, xl, cl = sch.get_loops(e)
    co, ci = sch.split(cl, factors=[None, vec])
    if S.worth_parallel(n * c * oh * ow * kh * kw):  # before the accumulator moves in: TVM refuses after
        S.parallel_outer(sch, [nl, yl] if n * oh >= 2 else [nl, yl, xl])
    a = sch.get_sblock("acc")
    sch.compute_at(a, co)
    sch.set_scope(a, 0, "local")
    av, ar, ax = sch.get_loops(a)[-3:]
    sch.reorder(ar, ax, av)
    sch.vectorize(av)
    sch.vectorize(ci)
    sch.decompose_reduction(a, ar)
    return KernelDef(name, b.params, sch.mod["main"], steps=["channel_vectors", "parallel_outer"])


#: the parallel work (`S.worth_parallel`) of one element a channels-last Concat gathers from an input
#: stored NCHW, against 1 for a contiguous channel run
TRANSPOSED_READ_WEIGHT = 4


def concat_nhwc(name: str, inputs: list, *, out_value: str, out_shape, lanes: int,
                epilogue: Epilogue | None = None) -> KernelDef:
    """Concat along the channels of 4-D float values into an NHWC output (``out_shape`` is its
    logical NCHW shape). ``inputs``: (buffer, logical NCHW shape, stored NHWC) per input.
    ``epilogue``: elementwise ops that follow the Concat, applied on the copy."""
    from tvmlite.backends.tvm.kernels.qconcat import _segments

    n, c, h, wd = (int(d) for d in out_shape)
    b = Builder(name)
    reads, off = [], 0
    for buf, shape, nhwc in inputs:
        ni, ci, hi, wi = (int(d) for d in shape)
        t = b.input(buf, (ni, hi, wi, ci) if nhwc else (ni, ci, hi, wi))
        reads.append((t, off, ci, nhwc))
        off += ci
    apply = bind_epilogue(epilogue, b, (n, c, h, wd)) if epilogue is not None and epilogue.ops else None

    def f(nn, y, xx, cc):
        val = None
        for t, o, ci, nhwc in reversed(reads):
            # clamped so that the branch not taken still reads inside the buffer
            k = tirx.min(tirx.max(cc - o, 0) if o else cc, ci - 1)
            read = t[nn, y, xx, k] if nhwc else t[nn, k, y, xx]
            val = read if val is None else tirx.if_then_else(cc < o + ci, read, val)
        return apply(val, (nn, cc, y, xx)) if apply is not None else val

    Y = te.compute((n, h, wd, c), f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    n_ops = 1 + (len(epilogue.ops) if epilogue is not None else 0)
    # an input stored NCHW is gathered across channel planes into the output's vectors: weighted
    # TRANSPOSED_READ_WEIGHT per element (the detector's 16+16+32-channel Concat at 80x80, two
    # inputs NCHW, 0.41M elements: 207 -> 107 us on 2 threads, best of 400 runs in the plan,
    # bench/kernel_threads.py, AVX-512 Xeon)
    work = sum(int(np.prod(shape)) * (1 if nhwc else TRANSPOSED_READ_WEIGHT) for _, shape, nhwc in inputs)
    parallel = S.worth_parallel(work * n_ops)
    # each input's channel run its own unrolled loop nest: a vector reads one input, no select
    if not _segments(sch, "ew", 3, [r[2] for r in reads], lanes, parallel):
        S.parallel_vectorize(sch, "ew", lanes, parallel=parallel)
    return KernelDef(name, b.params, sch.mod["main"], steps=["channel_segments"])
