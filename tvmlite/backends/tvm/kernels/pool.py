"""Pooling kernels: windowed MaxPool / AveragePool (a `WindowGeometry`, ceil_mode and
count_include_pad included) and global pooling, each accumulating in registers and writing
through the epilogue. Windowed pooling reads a per-channel padded plane a vector of output
pixels at a time (`depthwise.WindowPlane`, shared with the depthwise conv): the previous kernel
tested every tap's bounds in scalar code (ShuffleNet's 3x3/2 MaxPool over 24x112x112: 0.13 ms
against onnxruntime's 0.08)."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef
from tvmlite.backends.tvm.kernels.depthwise import STEPS as PLANE_STEPS
from tvmlite.backends.tvm.kernels.depthwise import WindowPlane
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.ops.geometry import WindowGeometry


def pool2d(name: str, x: str, x_shape, geom: WindowGeometry, *, kind: str, count_include_pad: bool,
           out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """MaxPool / AveragePool over NCHW (the geometry's output accounts for ceil_mode)."""
    n, c, h, wd = (int(d) for d in x_shape)
    oh, ow = geom.out_spatial
    kh, kw = geom.kernel
    if not any(geom.pads):
        # no pads: the scalar kernel's bounds tests fold away (measured 0.03 vs 0.10 ms on
        # SqueezeNet's 3x3/2 ceil-mode MaxPool over 24x109x109), and the plane would be a copy
        return _pool2d_taps(name, x, (n, c, h, wd), geom, kind=kind, count_include_pad=count_include_pad,
                            out_value=out_value, epilogue=epilogue)
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    apply = bind_epilogue(epilogue, b, (n, c, oh, ow))
    # per channel a padded plane (pads never win a max: the lowest float), read in vectors
    plane = WindowPlane(X, (n, c, h, wd), geom, lanes, fill=float(np.finfo(np.float32).min) if kind == "max" else 0.0)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    reduce = te.max if kind == "max" else te.sum
    acc = te.compute((n, c, oh, plane.owp), lambda nn, cc, y, xx: reduce(plane.tap(nn, cc, y, xx, ry, rx),
                                                                          axis=[ry, rx]), name="acc")

    Y = pool_output(acc, geom, (n, c, h, wd), kind=kind, count_include_pad=count_include_pad, apply=apply)
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    plane.schedule(sch, "acc", "epilogue", parallel=S.worth_parallel(S.pool_work(n, c, oh, ow, kh, kw)))
    return KernelDef(name, b.params, sch.mod["main"], steps=list(PLANE_STEPS))


def _pool2d_taps(name: str, x: str, x_shape, geom: WindowGeometry, *, kind: str, count_include_pad: bool,
                 out_value: str, epilogue: Epilogue) -> KernelDef:
    """Windowed pooling one output pixel at a time, each tap read where it lies in the input."""
    n, c, h, wd = x_shape
    oh, ow = geom.out_spatial
    kh, kw = geom.kernel
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pads = geom.pads
    pt, pl = pads[0], pads[1]
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    apply = bind_epilogue(epilogue, b, (n, c, oh, ow))
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def at(nn, cc, y, xx):
        iy, ix = y * sh - pt + ry * dh, xx * sw - pl + rx * dw
        return tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd), iy, ix

    if kind == "max":
        def red(nn, cc, y, xx):
            ok, iy, ix = at(nn, cc, y, xx)
            return te.max(tirx.if_then_else(ok, X[nn, cc, iy, ix], tirx.min_value(F32)), axis=[ry, rx])
    else:
        def red(nn, cc, y, xx):
            ok, iy, ix = at(nn, cc, y, xx)
            return te.sum(tirx.if_then_else(ok, X[nn, cc, iy, ix], tirx.const(0.0, F32)), axis=[ry, rx])
    acc = te.compute((n, c, oh, ow), red, name="acc")

    Y = pool_output(acc, geom, (n, c, h, wd), kind=kind, count_include_pad=count_include_pad, apply=apply)
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    blk = sch.get_sblock("acc")
    loops = sch.get_loops(blk)
    S.write_cache(sch, blk, sch.get_sblock("epilogue"), loops[3])
    if S.worth_parallel(S.pool_work(n, c, oh, ow, kh, kw)):  # a scalar tap costs as much
        S.parallel_outer(sch, loops[:3] if n * c * oh >= 2 else loops[:2])
    return KernelDef(name, b.params, sch.mod["main"], steps=["write_cache", "parallel_outer"])


def pool_output(acc, geom: WindowGeometry, x_shape, *, kind: str, count_include_pad: bool, apply,
                channels_last: bool = False):
    """The "epilogue" block: ``acc`` [N, C, OH, >= OW] (max or sum over the window) as the pooled
    value (an average divided by its window's count) through ``apply``; with ``channels_last``
    ``acc`` is [N, OH, OW, C] and so is the block (kernels/nhwc_moves.py)."""
    n, c, h, wd = x_shape
    count = window_count(geom, h, wd, count_include_pad)

    def out(v, nn, cc, y, xx):
        if kind != "max":
            v = v / count(y, xx)
        return apply(v, (nn, cc, y, xx))

    if channels_last:
        return te.compute((n,) + tuple(geom.out_spatial) + (c,),
                          lambda nn, y, xx, cc: out(acc[nn, y, xx, cc], nn, cc, y, xx), name="epilogue")
    return te.compute((n, c) + tuple(geom.out_spatial), lambda nn, cc, y, xx: out(acc[nn, cc, y, xx], nn, cc, y, xx),
                      name="epilogue")


def window_count(geom: WindowGeometry, h: int, wd: int, count_include_pad: bool):
    """(y, x) -> the divisor of AveragePool's output pixel (y, x), as a float32 expression."""
    kh, kw = geom.kernel
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pads = geom.pads
    pt, pl = pads[0], pads[1]

    def count(y, xx):
        if count_include_pad:  # pads count, the part past the end added by ceil_mode does not
            y0, x0 = y * sh - pt, xx * sw - pl
            y1 = tirx.min(y0 + (kh - 1) * dh + 1, h + pads[2])
            x1 = tirx.min(x0 + (kw - 1) * dw + 1, wd + pads[3])
            ny = (y1 - y0 + dh - 1) // dh
            nx = (x1 - x0 + dw - 1) // dw
            return (ny * nx).astype(F32)
        def valid(o, s, p_, d, k_, lim):
            start = o * s - p_
            # taps start + t*d inside [0, lim): count over t in [0, k_)
            lo = tirx.max((-start + d - 1) // d, 0)
            hi = tirx.min((lim - 1 - start) // d + 1, k_)
            return tirx.max(hi - lo, 0)
        return (valid(y, sh, pt, dh, kh, h) * valid(xx, sw, pl, dw, kw, wd)).astype(F32)

    return count


def global_pool(name: str, x: str, x_shape, *, kind: str, out_value: str, epilogue: Epilogue,
                lanes: int) -> KernelDef:
    """GlobalAveragePool / GlobalMaxPool: per channel a vector of partial sums (maxima) over the
    whole vectors of the plane, contiguous loads, then the lanes and the short tail reduced. The
    scalar reduction it replaces took 0.094 ms on SqueezeNet's 1000x13x13 (onnxruntime 0.021)."""
    shape = tuple(int(d) for d in x_shape)
    n, c, spatial = shape[0], shape[1], shape[2:]
    size = int(np.prod(spatial))
    vec = int(lanes)
    full, tail = size // vec, size % vec
    b = Builder(name)
    X = b.input(x, (n, c, size))
    out_shape = (n, c) + (1,) * len(spatial)
    apply = bind_epilogue(epilogue, b, out_shape)
    red = te.max if kind == "max" else te.sum
    if full:
        if full > 1:
            ro = te.reduce_axis((0, full), name="ro")
            part = te.compute((n, c, vec), lambda nn, cc, i: red(X[nn, cc, ro * vec + i], axis=ro), name="part")
        else:
            part = te.compute((n, c, vec), lambda nn, cc, i: X[nn, cc, i], name="part")
        rl = te.reduce_axis((0, vec), name="rl")
        lanes_acc = te.compute((n, c), lambda nn, cc: red(part[nn, cc, rl], axis=rl), name="acc")
    if tail:
        rt = te.reduce_axis((0, tail), name="rt")
        tail_acc = te.compute((n, c), lambda nn, cc: red(X[nn, cc, full * vec + rt], axis=rt), name="tail")
    scale = 1.0 / size

    def out(nn, cc):
        if full and tail:
            v = (tirx.max(lanes_acc[nn, cc], tail_acc[nn, cc]) if kind == "max"
                 else lanes_acc[nn, cc] + tail_acc[nn, cc])
        else:
            v = lanes_acc[nn, cc] if full else tail_acc[nn, cc]
        if kind != "max":
            v = v * tirx.const(scale, F32)
        return apply(v, (nn, cc) + (0,) * len(spatial))

    Y = te.compute((n, c), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    b.params[-1].shape = (n, c)
    sch = schedule(func)
    epi = sch.get_sblock("epilogue")
    nl, cl = sch.get_loops(epi)
    if S.worth_parallel(n * c * size):
        cl = S.parallel_outer(sch, [nl, cl])
    # every reduction of a channel runs under its channel's loop, in registers
    for blk_name in (["tail"] if tail else []) + (["acc", "part"] if full else []):
        blk = sch.get_sblock(blk_name)
        sch.compute_at(blk, cl)
        sch.set_scope(blk, 0, "local")
    if full > 1:
        pblk = sch.get_sblock("part")
        *_, il, rol = sch.get_loops(pblk)
        sch.reorder(rol, il)
        sch.vectorize(il)
        sch.decompose_reduction(pblk, rol)
    elif full:
        sch.vectorize(sch.get_loops(sch.get_sblock("part"))[-1])
    return KernelDef(name, b.params, sch.mod["main"], steps=["lane_partials", "parallel_outer"])
