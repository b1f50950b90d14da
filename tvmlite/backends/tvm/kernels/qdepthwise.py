"""Depthwise int8 convolution (group = input channels = output channels, as MobileNet's): each
output channel sums its own window of uint8 activations times int8 weights in int32, then the
same requantizing epilogue as the VNNI kernels (qgemm.requant_tail), so a depthwise layer between
int8 convs reads and writes integer buffers, NCHW or channels-last, instead of running float
between fake quantizations. No dot-product instruction fits a one-channel window; the channels
(NHWC) or the columns (NCHW) are the vector lanes.

The input is first copied into a padded buffer of q - zero point (quantized once when it is float;
the padding is 0), so the taps read it without bounds checks."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, requant_scales, requant_tail, silu_lut


def pairwise_sum(terms: list):
    """The sum of ``terms`` as a balanced tree: independent additions instead of one chain, each
    waiting for the last (the sums are exact integers, so any order gives the same value)."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def depthwise_int8(name: str, x: str, x_shape, w_q: np.ndarray, w_scale: np.ndarray, bias, spec: QuantSpec, geom,
                   *, out_value: str, out_shape, epilogue: Epilogue) -> KernelDef:
    if spec.x_nhwc:
        nb, h, w, c = (int(d) for d in x_shape)
    else:
        nb, c, h, w = (int(d) for d in x_shape)
    kh, kw = (int(d) for d in w_q.shape[2:])
    oh, ow = geom.out_spatial
    (sh, sw), (dh, dw) = geom.strides, geom.dilations
    pt, pl = geom.pads[0], geom.pads[1]
    b = Builder(name)
    X = b.input(x, tuple(int(d) for d in x_shape), spec.x_dtype)
    # |(q - zero point) * w| <= 255 * 128: a sum of fewer than 2^24 / 32640 such products is exact
    # in float32, so the taps are float multiply-adds (vector int32 multiplies are slow)
    exact = kh * kw * 255 * 128 < 2 ** 24
    acc_t = "float32" if exact else "int32"
    W = b.const(w_q.reshape(c, kh * kw).astype(acc_t), label="wq", dtype=np.dtype(acc_t))
    scale, bias = requant_scales(spec, w_scale, bias)
    scale = b.const(scale, label="scale")
    B = b.const(bias, label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, tuple(out_shape))
    lut = silu_lut(b, spec) if spec.activation == "SiLU" else None
    zero = spec.x_zero_u8
    hp, wp = h + geom.pads[0] + geom.pads[2], w + geom.pads[1] + geom.pads[3]

    def padded(n, ch, y, xx):  # each input quantized (or shifted) once, the padding its zero point
        yy, xi = y - pt, xx - pl
        inside = tirx.all(yy >= 0, yy < h, xi >= 0, xi < w)
        yy, xi = tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xi, w - 1), 0)
        v = spec.x_u8(X[n, yy, xi, ch] if spec.x_nhwc else X[n, ch, yy, xi])
        v = tirx.if_then_else(inside, v, tirx.const(zero, "uint8")) if any(geom.pads) else v
        return (v.astype("int32") - tirx.const(zero, "int32")).astype(acc_t)
    # few, short columns and many channels (the late layers: 200 channels of 3 x 12): the channels
    # are the vector lanes, read from a channels-last padded copy
    lanes_c = ow % 16 != 0 and c >= 16
    if lanes_c:
        xp_cl = te.compute((nb, hp, wp, c), lambda n, y, xx, ch: padded(n, ch, y, xx), name="xp")
        xp = lambda n, ch, y, xx: xp_cl[n, y, xx, ch]  # noqa: E731
    else:
        xp_nchw = te.compute((nb, c, hp, wp), padded, name="xp")
        xp = lambda n, ch, y, xx: xp_nchw[n, ch, y, xx]  # noqa: E731

    def at(n, ch, y, xx):  # the taps unrolled (small windows): an elementwise block, vectorizable
        rows = []
        for i in range(kh):
            row = None
            for j in range(kw):
                t = xp(n, ch, y * sh + i * dh, xx * sw + j * dw) * W[ch, i * kw + j]
                row = t if row is None else row + t
            rows.append(row)
        v = pairwise_sum(rows).astype("float32") * scale[ch]
        if B is not None:
            v = v + B[ch]
        return requant_tail(v, spec, lut, apply, (n, ch, y, xx))

    if spec.y_nhwc:
        Y = te.compute((nb, oh, ow, c), lambda n, y, xx, ch: at(n, ch, y, xx), name="dw")
    else:
        Y = te.compute((nb, c, oh, ow), at, name="dw")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    parallel = S.worth_parallel(S.depthwise_work(nb, c, oh, ow, kh, kw))
    blk = sch.get_sblock("dw")
    if lanes_c and not spec.y_nhwc:  # NCHW output written channel-innermost
        n_, ch, y, xx = sch.get_loops(blk)
        sch.reorder(n_, y, xx, ch)
    outer = sch.fuse(*sch.get_loops(blk)[:2])
    if not lanes_c:  # one channel's padded plane at a time: it stays in L1 for its k x k reads
        sch.compute_at(sch.get_sblock("xp"), outer)
    elif parallel:
        xo = sch.get_loops(sch.get_sblock("xp"))
        sch.parallel(sch.fuse(*xo[:2]))
    if parallel:
        sch.parallel(outer)
    for block in ("xp", "dw"):
        inner = sch.get_loops(sch.get_sblock(block))[-1]
        extent = int(sch.get(inner).extent)
        if extent % 16 == 0 or extent > 64:  # columns (NCHW) or channels (NHWC) side by side
            sch.vectorize(sch.split(inner, [None, 16])[1])
        elif extent >= 8:
            sch.vectorize(inner)
    return KernelDef(name, b.params, sch.mod["main"], steps=["int8_depthwise"])
