"""Grouped 1x1 convolution (ShuffleNet's group=3/4 pointwise layers) as one kernel with a group
axis, reading the input rows in place.

`conv2d_gemm` runs a grouped conv as a GEMM batched over the groups, packing a [K, nr] column
panel per pixel tile. A grouped pointwise conv has a short K (the group's input channels: 6-136
in ShuffleNet) and few output rows per group, so that panel is copied for a handful of
multiply-adds per element, and the 8-row tile pads 34 channels to 40. Here each pixel tile is a
single vector read straight from the input row (contiguous along the pixels, so nothing is
packed) and the row tile is sized to the group's channels (34 -> 3 x 12, not 5 x 8).
Measured per kernel against `conv2d_gemm` and onnxruntime's Conv (2 threads, loaded machine,
best of 200): 136->136 g=4 at 28x28 0.077 ms vs 0.209 (onnxruntime 0.132). Taken only where the
pixels fill whole vectors: a ragged last tile would need a clamped (gathered) read, which lost to
`conv2d_gemm` at 14x14 (0.13-0.20 vs 0.12 ms).
"""
from __future__ import annotations

import numpy as np
from tvm import te

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.ops.geometry import WindowGeometry

STEPS = ["tile_for_cache", "pack_array", "write_cache", "vectorize_columns", "unroll_rows", "parallel_outer",
         "finish_reduction"]


def row_tile(cog: int) -> int:
    """Output channels per register tile: the size in 4..12 that pads the group's channels
    least, the largest among equals (12 accumulator vectors leave registers for the weights)."""
    if cog <= 12:
        return cog
    return min(range(4, 13), key=lambda m: (round_up(cog, m) - cog, -m))


def use_grouped_pointwise(w_shape, geom: WindowGeometry, lanes: int) -> bool:
    """A grouped (not depthwise), 1x1, stride-1, unpadded conv whose pixels are whole vectors."""
    ci = int(w_shape[1])
    oh, ow = geom.out_spatial
    return geom.group > 1 and geom.pointwise and ci > 1 and (oh * ow) % lanes == 0


def grouped_pointwise(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
                      epilogue: Epilogue, lanes: int) -> KernelDef:
    """Y[n, g*CoG + co, p] = sum_k W[g, co, k] X[n, g*Ci + k, p] (+ bias) then ``epilogue``. W is
    packed [G, CoG/mr, Ci, mr] at build time; the tile is mr output channels x one vector of
    pixels, accumulated in registers over k and written once through the epilogue."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci = (int(d) for d in w.shape[:2])
    g = geom.group
    cog = co // g
    p = h * wd
    mr, nr = row_tile(cog), int(lanes)
    assert geom.pointwise and p % nr == 0 and ci * g == c, (x_shape, w.shape, geom)
    cop = round_up(cog, mr)
    b = Builder(name)
    X = b.input(x, (n, c, p))
    wmat = np.zeros((g, cop, ci), np.float32)
    wmat[:, :cog] = w.reshape(g, cog, ci)
    W = b.const(S.pack_host_array(wmat, mr, along="rows", leading=1), (g, cop, ci))
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(g, cog), label="bias") if bias is not None else None
    spatial = (h, wd)
    apply = bind_epilogue(epilogue, b, (n, co) + spatial)
    r = te.reduce_axis((0, ci), name="k")
    acc = te.compute((n, g, cop, p), lambda nn, gg, i, j: te.sum(W[gg, i, r] * X[nn, gg * ci + r, j], axis=r),
                     name="acc")

    def out(nn, gg, cc, j):
        v = acc[nn, gg, cc, j]
        if B is not None:
            v = v + B[gg, cc]
        return apply(v, (nn, gg * cog + cc) + unflatten(j, spatial))

    Y = te.compute((n, g, cog, p), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    blk = sch.get_sblock("acc")
    nl, gl, il, jl, kl = sch.get_loops(blk)
    io, ii = sch.split(il, factors=[None, mr])
    jo, ji = sch.split(jl, factors=[None, nr])
    # pixel tiles outside the channel tiles: one input panel [Ci, nr] stays in L1 for all rows
    sch.reorder(gl, jo, io, kl, ii, ji)
    S.pack_array(sch, blk, ("read", 0), mr, along="rows", leading=1)
    S.write_cache(sch, blk, sch.get_sblock("epilogue"), io)
    S.vectorize_columns(sch, ji, sch.get_sblock("epilogue"))
    S.unroll_rows(sch, ii)
    if S.worth_parallel(n * co * p * ci):
        S.parallel_outer(sch, [nl, gl, jo])
    S.finish_reduction(sch, blk, kl)
    params = b.params
    params[w_index].shape = params[w_index].array.shape
    return KernelDef(name, params, sch.mod["main"], steps=list(STEPS))
