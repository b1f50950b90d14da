"""Transformer kernels: LayerNormalization over the trailing dims from ``axis`` (mean and variance
kept in float32, as onnxruntime does)."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.reduce import lane_rows, schedule_lane_rows


def layer_norm(name: str, x: str, x_shape, *, axis: int, epsilon: float, scale: np.ndarray,
               bias: np.ndarray | None, out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """Y = (X - mean) / sqrt(var + eps) * scale + bias, statistics over dims ``axis``.. viewed as
    (rows, cols); ``scale``/``bias`` are host arrays already broadcast to the normalized dims."""
    shape = tuple(int(d) for d in x_shape)
    axis = axis % len(shape)
    rows, cols = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
    b = Builder(name)
    X = b.input(x, (rows, cols))
    G = b.const(scale.reshape(cols), label="gamma")
    B = b.const(bias.reshape(cols), label="beta") if bias is not None else None
    apply = bind_epilogue(epilogue, b, shape)
    inv = tirx.const(1.0 / cols, F32)
    # both statistics reduced a vector of columns at a time (TVM leaves a plain row sum scalar)
    total, total2 = lane_rows("total", rows, cols, lanes, lambda i, c: X[i, c], "sum")
    mean = te.compute((rows,), lambda i: total[i] * inv, name="mean")
    sq, sq2 = lane_rows("sq", rows, cols, lanes, lambda i, c: (X[i, c] - mean[i]) * (X[i, c] - mean[i]), "sum")
    rstd = te.compute((rows,), lambda i: tirx.rsqrt(sq[i] * inv + tirx.const(epsilon, F32)), name="rstd")
    lead = shape[:axis]
    trail = shape[axis:]

    def full_index(i, j):
        return unflatten(i, lead) + unflatten(j, trail)

    def norm(i, j):
        v = (X[i, j] - mean[i]) * rstd[i] * G[j]
        if B is not None:
            v = v + B[j]
        return apply(v, full_index(i, j)) if epilogue.ops else v

    Y = te.compute((rows, cols), norm, name="norm")
    func = b.finish([(out_value, Y)])
    b.params[-1].shape = (rows, cols)
    sch = schedule(func)
    steps = []
    outer = sch.get_loops(sch.get_sblock("norm"))[0]
    sch.compute_at(sch.get_sblock("rstd"), outer)
    schedule_lane_rows(sch, "sq", sq2, outer)
    sch.compute_at(sch.get_sblock("mean"), outer)
    schedule_lane_rows(sch, "total", total2, outer)
    inner = sch.get_loops(sch.get_sblock("norm"))[-1]
    if cols % lanes == 0 and cols >= lanes:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        steps.append("vectorize_columns")
    if rows >= 2 and S.worth_parallel(rows * cols * 4):
        sch.parallel(outer)
        steps.append("parallel_outer")
    return KernelDef(name, b.params, sch.mod["main"], steps=steps)
