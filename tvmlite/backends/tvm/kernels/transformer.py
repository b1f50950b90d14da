"""Transformer kernels: LayerNormalization over the trailing dims from ``axis`` (mean and variance
kept in float32, as onnxruntime does), and attention's scores with their Softmax."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.gemm import gemm_rows
from tvmlite.backends.tvm.kernels.reduce import (finish_reductions, lane_rows, place_row_softmax, row_softmax,
                                                  schedule_lane_rows)


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
    pending = schedule_lane_rows(sch, "sq", sq2, outer)
    sch.compute_at(sch.get_sblock("mean"), outer)
    pending += schedule_lane_rows(sch, "total", total2, outer)
    inner = sch.get_loops(sch.get_sblock("norm"))[-1]
    if cols % lanes == 0 and cols >= lanes:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        steps.append("vectorize_columns")
    if rows >= 2 and S.worth_parallel(rows * cols * 4):
        sch.parallel(outer)
        steps.append("parallel_outer")
    finish_reductions(sch, pending)
    return KernelDef(name, b.params, sch.mod["main"], steps=steps)


def scores_softmax(name: str, a: str, a_shape, bname: str, b_shape, *, out_value: str, out_shape,
                   epilogue: Epilogue, after: Epilogue, lanes: int) -> KernelDef:
    """Attention's Softmax(epilogue(A @ B)) over the last axis in one kernel ([.., M, K] @
    [.., K, N], batch dims broadcast; the epilogue is the scale and the additive mask): per batch
    entry and block of mr rows, each register tile of scores goes through the epilogue into a
    row-local buffer, then max, exp (the vectorizing polynomial), sum and the normalization run
    on those rows before the next block, so the scores never leave cache. ``after``: ops on the
    probabilities. The caller checks N % lanes == 0."""
    out_shape = tuple(int(d) for d in out_shape)
    a_shape, b_shape = tuple(int(d) for d in a_shape), tuple(int(d) for d in b_shape)
    batch, (m, n), k = out_shape[:-2], out_shape[-2:], a_shape[-1]
    bt = int(np.prod(batch)) if batch else 1
    mr = next(d for d in (gemm_rows(lanes), 4, 2, 1) if m % d == 0)  # 8 rows x 2 vectors spill AVX2's 16
    nr = 2 * lanes if n % (2 * lanes) == 0 else lanes
    b = Builder(name)
    A = b.input(a, a_shape)
    Bt = b.input(bname, b_shape)
    apply = bind_epilogue(epilogue, b, out_shape)
    apply_after = bind_epilogue(after, b, out_shape)

    def full(t, i, j):
        return (unflatten(t, batch) if batch else ()) + (i, j)

    def read(tensor, shape, idx):
        off = len(out_shape) - len(shape)
        return tensor[tuple(0 if shape[d] == 1 else idx[off + d] for d in range(len(shape) - 2)) + idx[-2:]]

    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((bt, m, n), lambda t, i, j: te.sum(
        read(A, a_shape, full(t, i, r)) * read(Bt, b_shape, full(t, r, j)), axis=r), name="acc")
    scores = te.compute((bt, m, n), lambda t, i, j: apply(acc[t, i, j], full(t, i, j)), name="scores")
    Y, stages = row_softmax((bt, m), n, lanes, lambda t, i, j: scores[t, i, j],
                            lambda p, ix: apply_after(p, full(*ix)))
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    t_loop, i_loop, j_loop = sch.get_loops(sch.get_sblock("norm"))
    io, _ = sch.split(i_loop, [None, mr])
    pending, _ = place_row_softmax(sch, stages, io)
    sch.compute_at(sch.get_sblock("scores"), io, preserve_unit_loops=True)  # keeps ii when mr = 1
    sch.set_scope(sch.get_sblock("scores"), 0, "local")
    # the register tile: mr rows x nr columns of scores per step, k inside
    s_blk = sch.get_sblock("scores")
    ii, jj = sch.get_loops(s_blk)[-2:]
    jo, ji = sch.split(jj, [None, nr])
    sch.reorder(jo, ii, ji)
    acc_blk = sch.get_sblock("acc")
    sch.compute_at(acc_blk, jo, preserve_unit_loops=True)
    sch.set_scope(acc_blk, 0, "local")
    a_ii, a_ji, a_k = sch.get_loops(acc_blk)[-3:]
    sch.reorder(a_k, a_ii, a_ji)
    sch.vectorize(a_ji)
    sch.unroll(a_ii)
    sch.vectorize(sch.get_loops(s_blk)[-1])
    steps = ["register_tile", "row_softmax"]
    if S.worth_parallel(bt * m * n * k):
        S.parallel_outer(sch, [t_loop, io])
        steps.append("parallel_outer")
    finish_reductions(sch, pending + [(acc_blk, a_k)])
    b.params[-1].shape = (bt, m, n)
    return KernelDef(name, b.params, sch.mod["main"], steps=steps)
