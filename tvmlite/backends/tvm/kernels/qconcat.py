"""QConcat (ops/qconcat.py) as one kernel: each input requantized to the output's grid, as
onnxruntime's QLinearConcat. An integer input on the output's grid is copied as it is (DequantizeLinear
then QuantizeLinear with the same parameters gives the integers back); any other input is
dequantized (or, when float, fake-quantized on its own grid) and quantized again with the same float
operations as the QDQ graph: (q - z) * s, then / y_scale, round half to even, zero point, saturate.
4-D integer inputs and outputs may be stored channels-last (``x_nhwc`` per input, ``y_nhwc``); the
concatenation axis counts in NCHW."""
from __future__ import annotations

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
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["int8_concat"])
