"""MaxPool on a quantized (uint8 / int8) tensor, NCHW or channels-last in and out: the integer
buffers between int8 kernels (backends/tvm/qdq_buffers.py). Padding never wins the max: a window
position outside the input reads the dtype's lowest value, as MaxPool's padding reads -inf."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import KernelDef


def max_pool_int8(name: str, x: str, x_shape, dtype: str, geom, *, x_nhwc: bool, y_nhwc: bool,
                  out_value: str) -> KernelDef:
    x_shape = tuple(int(d) for d in x_shape)
    nb, c = (x_shape[0], x_shape[3]) if x_nhwc else x_shape[:2]
    h, w = geom.in_spatial
    oh, ow = geom.out_spatial
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilations
    pt, pl = geom.pads[0], geom.pads[1]
    b = Builder(name)
    X = b.input(x, x_shape, dtype)
    lowest = tirx.const(int(np.iinfo(np.dtype(dtype)).min), dtype)

    def tap(n, ch, y, xx, i, j):
        yy, xi = y * sh + i * dh - pt, xx * sw + j * dw - pl
        inside = tirx.all(yy >= 0, yy < h, xi >= 0, xi < w)
        yy, xi = tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xi, w - 1), 0)
        v = X[n, yy, xi, ch] if x_nhwc else X[n, ch, yy, xi]
        return tirx.if_then_else(inside, v, lowest) if any(geom.pads) or geom.ceil_mode else v

    def at(n, ch, y, xx):  # the taps unrolled (small windows): an elementwise block, vectorizable
        v = tap(n, ch, y, xx, 0, 0)
        for i in range(kh):
            for j in range(kw):
                if i or j:
                    v = tirx.max(v, tap(n, ch, y, xx, i, j))
        return v

    if y_nhwc:
        Y = te.compute((nb, oh, ow, c), lambda n, y, xx, ch: at(n, ch, y, xx), name="pool")
    else:
        Y = te.compute((nb, c, oh, ow), at, name="pool")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    blk = sch.get_sblock("pool")
    loops = sch.get_loops(blk)
    if S.worth_parallel(nb * c * oh * ow * kh * kw):
        sch.parallel(sch.fuse(*loops[:2]))
    inner = sch.get_loops(blk)[-1]
    if int(sch.get(inner).extent) % 16 == 0:  # channels (NHWC) or columns side by side
        sch.vectorize(sch.split(inner, [None, 16])[1])
    return KernelDef(name, b.params, sch.mod["main"], steps=["int8_pool"])
