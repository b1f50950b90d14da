"""QConcat (ops/qconcat.py) as one kernel: each input requantized to the output's grid, as
onnxruntime's QLinearConcat. An integer input on the output's grid is copied as it is (DequantizeLinear
then QuantizeLinear with the same parameters gives the integers back); any other input is
dequantized (or, when float, fake-quantized on its own grid) and quantized again with the same float
operations as the QDQ graph: (q - z) * s, then / y_scale, round half to even, zero point, saturate.
4-D integer inputs and outputs may be stored channels-last (``x_nhwc`` per input, ``y_nhwc``); the
concatenation axis counts in NCHW.

Each input's part of the output is its own loop nest (`_segments`): the concatenation axis is split
at the greatest common divisor of the inputs' extents and its outer part is unrolled outermost, so
after unrolling every vector reads one input, without a select over all inputs (each computed,
then blended) per element.
"""
from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import KernelDef
from tvmlite.backends.tvm.kernels.qgemm import _quantized, fake_quant


_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def concat_int8(name: str, inputs: list, *, axis: int, y_grid: tuple, y_quantized: bool, out_value: str,
                out_shape, lanes: int, y_nhwc: bool = False) -> KernelDef:
    """``inputs``: (value, stored shape, dtype, (scale, zero point, signed), quantized, nhwc) per input."""
    out_shape = tuple(int(d) for d in out_shape)
    axis = axis % len(out_shape)
    ys, yz, ysg = y_grid
    out_dtype = ("int8" if ysg else "uint8") if y_quantized else "float32"
    b = Builder(name)
    reads, off = [], 0
    for v, shape, dtype, grid, quantized, nhwc in inputs:
        t = b.input(v, tuple(int(d) for d in shape), dtype)
        same = bool(quantized) and y_quantized and tuple(grid) == tuple(y_grid)
        n = int(shape[_TO_NCHW[axis]] if nhwc else shape[axis])
        reads.append((t, off, n, grid, bool(quantized), same, nhwc))
        off += n

    def value(t, ix, grid, quantized, same):
        x = t[ix]
        if same:
            return x
        s, z, sg = grid
        if quantized:
            x = (x.astype("float32") - tirx.const(float(z), "float32")) * tirx.const(float(s), "float32")
        else:
            x = fake_quant(x, float(s), int(z), int(sg))
        q = _quantized(x, ys, yz, ysg)
        if y_quantized:
            return q.astype("int32").astype(out_dtype)
        return (q - tirx.const(float(yz), "float32")) * tirx.const(float(ys), "float32")

    def f(*stored):
        idx = tuple(stored[i] for i in _TO_NCHW) if y_nhwc else stored  # the NCHW index
        val = None
        for t, o, n, grid, quantized, same, nhwc in reversed(reads):
            ix = list(idx)
            # clamped so that the branch not taken still reads inside the buffer
            ix[axis] = tirx.min(tirx.max(idx[axis] - o, 0) if o else idx[axis], n - 1)
            read = value(t, tuple(ix[i] for i in _TO_NHWC) if nhwc else tuple(ix), grid, quantized, same)
            val = read if val is None else tirx.if_then_else(idx[axis] < o + n, read, val)
        return val

    Y = te.compute(out_shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    parallel = S.worth_parallel(int(np.prod(out_shape)))
    pos = _TO_NHWC.index(axis) if y_nhwc else axis  # the concatenation axis among the stored ones
    if not (_SEGMENTS and _segments(sch, "ew", pos, [r[2] for r in reads], lanes, parallel)):
        S.parallel_vectorize(sch, "ew", lanes, parallel=parallel)
    return KernelDef(name, b.params, sch.mod["main"], steps=["int8_concat"])


_SEGMENTS = True  # off: one loop nest with a select per input (tests compare the two forms)
MAX_SEGMENTS = 16


def _segments(sch, block: str, pos: int, sizes: list, lanes: int, parallel: bool) -> bool:
    """Split the stored loop ``pos`` (the concatenation axis) into pieces of gcd(``sizes``), the
    piece loop unrolled outermost, so that each piece reads one input; then vectorize the innermost
    loop and run the outer ones of each piece across cores. False (nothing changed) for one input,
    or pieces more than MAX_SEGMENTS (each is a copy of the loop nest in the code)."""
    g = math.gcd(*sizes)
    pieces = sum(sizes) // g
    if len(sizes) < 2 or pieces > MAX_SEGMENTS:
        return False
    loops = list(sch.get_loops(sch.get_sblock(block)))
    piece, inside = sch.split(loops[pos], [pieces, g])
    loops[pos] = inside
    sch.reorder(piece, *loops)
    sch.unroll(piece)
    inner = loops[-1]
    if not S.vectorize_inner(sch, inner, lanes) and int(sch.get(inner).extent) == lanes // 2 >= 4:
        sch.vectorize(inner)  # 8 channels of 16 lanes: 8
    if parallel and len(loops) > 1:
        S.parallel_outer(sch, loops[:-1])
    return True
