"""Transformer kernels: LayerNormalization over the trailing dims from ``axis`` (mean and variance
kept in float32, as onnxruntime does)."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue


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
    r1 = te.reduce_axis((0, cols), name="r1")
    total = te.compute((rows,), lambda i: te.sum(X[i, r1], axis=r1), name="total")
    mean = te.compute((rows,), lambda i: total[i] * inv, name="mean")
    r2 = te.reduce_axis((0, cols), name="r2")
    sq = te.compute((rows,), lambda i: te.sum((X[i, r2] - mean[i]) * (X[i, r2] - mean[i]), axis=r2), name="sq")
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
    for blk in ("rstd", "sq", "mean", "total"):
        sch.compute_at(sch.get_sblock(blk), outer)
    inner = sch.get_loops(sch.get_sblock("norm"))[-1]
    if cols % lanes == 0 and cols >= lanes:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        steps.append("vectorize_columns")
    if rows >= 2 and S.worth_parallel(rows * cols * 4):
        sch.parallel(outer)
        steps.append("parallel_outer")
    return KernelDef(name, b.params, sch.mod["main"], steps=steps)
