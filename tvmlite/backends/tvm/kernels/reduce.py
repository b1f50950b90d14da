"""Reductions along axes: Softmax / LogSoftmax, Reduce*, and LRN (a windowed sum across channels)."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule, unrolled_sum
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.fastmath import fast_exp


def lane_rows(name: str, rows, red: int, lanes: int, value, kind: str):
    """Reduction (``kind`` "sum" or "max") of ``value(*row, c)`` over c < red, for every row
    index of ``rows`` (an int or a shape). When red divides into vectors, in two stages: ``lanes``
    partial results per row over a vector of columns (vectorizable, where TVM leaves a one-axis
    reduction scalar), then across the lanes; `schedule_lane_rows` places and vectorizes them.
    Returns (tensor, whether two-stage)."""
    shape = (rows,) if isinstance(rows, int) else tuple(rows)
    reducer = te.sum if kind == "sum" else te.max
    if red % lanes or red < 2 * lanes:
        r = te.reduce_axis((0, red), name=f"{name}_r")
        return te.compute(shape, lambda *ix: reducer(value(*ix, r), axis=r), name=name), False
    ro = te.reduce_axis((0, red // lanes), name=f"{name}_ro")
    part = te.compute(shape + (lanes,), lambda *ix: reducer(value(*ix[:-1], ro * lanes + ix[-1]), axis=ro),
                      name=f"{name}_part")
    rl = te.reduce_axis((0, lanes), name=f"{name}_rl")
    return te.compute(shape, lambda *ix: reducer(part[ix + (rl,)], axis=rl), name=name), True


def schedule_lane_rows(sch, name: str, two_stage: bool, loop) -> list:
    """Put `lane_rows`' stages under the row ``loop`` (callers place consumers first), the lane
    loop innermost and vectorized. Returns the (block, loop) reductions to split into init and
    update with `finish_reductions`, after ``parallel`` (which refuses a split reduction)."""
    sch.compute_at(sch.get_sblock(name), loop)
    if not two_stage:
        return []
    part = sch.get_sblock(f"{name}_part")
    sch.compute_at(part, loop)
    lane, ro = sch.get_loops(part)[-2:]
    sch.reorder(ro, lane)
    sch.vectorize(lane)
    return [(part, ro)]


def finish_reductions(sch, pending) -> None:
    for block, loop in pending:
        sch.decompose_reduction(block, loop)


def row_softmax(rows, red: int, lanes: int, value, finish, *, log: bool = False, ragged: bool = False):
    """Softmax (LogSoftmax with ``log``) over the last axis of ``value(*row, c)``, for every row
    index of ``rows`` (an int or a shape): exp once per element, by a polynomial that vectorizes
    (TVM's exp is a scalar expf call); max and sum reduced a vector at a time (`lane_rows`); the
    norm multiplies by the sum's reciprocal. ``finish(p, index)`` is applied to each result.
    Stages max, exp, sum, inv, norm; returns (norm, what `place_row_softmax` takes).
    ``ragged``: a row of no whole number of vectors (PP-OCR rec's 6625 classes) is reduced and
    exponentiated over whole vectors all the same (`padded_row`), where it ran scalar."""
    shape = (rows,) if isinstance(rows, int) else tuple(rows)
    rp = round_up(red, lanes) if ragged and red % lanes and red >= 2 * lanes else red
    if rp != red:
        value = padded_row(value, red, lanes)
    mx, mx2 = lane_rows("max", rows, rp, lanes, value, "max")  # the padding repeats the last value

    def exp(*ix):
        e = fast_exp(value(*ix) - mx[ix[:-1]])
        return e if rp == red else tirx.Select(ix[-1] < red, e, tirx.const(0.0, F32))  # sums to nothing
    ex = te.compute(shape + (rp,), exp, name="exp")
    sm, sm2 = lane_rows("sum", rows, rp, lanes, lambda *ix: ex[ix], "sum")
    if log:
        y = te.compute(shape + (red,), lambda *ix: finish(value(*ix) - mx[ix[:-1]] - tirx.log(sm[ix[:-1]]), ix),
                       name="norm")
    else:
        inv = te.compute(shape, lambda *ix: tirx.const(1.0, F32) / sm[ix], name="inv")
        y = te.compute(shape + (red,), lambda *ix: finish(ex[ix] * inv[ix[:-1]], ix), name="norm")
    return y, (red, lanes, mx2, sm2, log, rp)


def padded_row(value, red: int, lanes: int):
    """``value(*row, c)`` for c up to ``red`` rounded up to whole vectors, the padding repeating
    the row's last value. The test is on the vector (c // lanes, one scalar per vector), so every
    whole vector stays one contiguous load and only the last takes the clamped (gathered) read."""
    full = red // lanes

    def read(*ix):
        c = ix[-1]
        return tirx.if_then_else(c // lanes < full, value(*ix), value(*ix[:-1], tirx.min(c, red - 1)))
    return read


def place_row_softmax(sch, stages, loop) -> tuple[list, list]:
    """Put `row_softmax`'s stages under the row ``loop`` (a loop of the norm's), exp in a row-local
    buffer, and vectorize the norm and exp when the row is whole vectors (a ragged row's norm: its
    whole vectors, the rest a scalar loop). Returns (the reductions for `finish_reductions`, the
    steps taken)."""
    red, lanes, mx2, sm2, log, rp = stages
    if not log:
        sch.compute_at(sch.get_sblock("inv"), loop)
    pending = schedule_lane_rows(sch, "sum", sm2, loop)
    sch.compute_at(sch.get_sblock("exp"), loop)
    sch.set_scope(sch.get_sblock("exp"), 0, "local")
    pending += schedule_lane_rows(sch, "max", mx2, loop)
    steps = []
    for blk in ("norm", "exp"):
        inner = sch.get_loops(sch.get_sblock(blk))[-1]
        if blk == "norm" and red % lanes and rp != red:
            inner = sch.loop_partition(inner, [red // lanes * lanes, None])[0]
        if rp % lanes == 0:
            _, vec = sch.split(inner, [None, exp_run(rp, lanes) if blk == "exp" else lanes])
            sch.vectorize(vec)
            steps.append(f"vectorize_{blk}")
    return pending, steps


EXP_CHAINS = 4


def exp_run(red: int, lanes: int) -> int:
    """Elements per vectorized step of a row's exp: up to `EXP_CHAINS` registers of ``lanes``
    (LLVM splits the wide vector into that many independent polynomial chains, interleaved op by
    op), the most that divides ``red``. One register per step left the ~60-cycle latency of each
    exp chain exposed (the out-of-order window holds about two steps): MiniLM's fused scores +
    softmax kernel (12 x 128 x 128, AVX2 Zen 1, one thread, CPU time) 0.76 -> 0.66 ms with 4
    (the exp alone about 0.31 -> 0.21 ms); 8 registers spilled (0.70), 16 more so (0.77)."""
    chains = EXP_CHAINS
    while chains > 1 and red % (chains * lanes):
        chains //= 2
    return chains * lanes


# the longest row `_softmax_rows` takes: its exp is a row buffer (heap workspace past 1 KB); PP-OCR
# rec's 6625 classes x 40 steps ran 2.14 ms by the generic kernel (scalar: exp twice per element),
# onnxruntime 0.40 ms
MAX_ROW = 1 << 16


def softmax(name: str, x: str, x_shape, *, axis: int, log: bool, opset: int, out_value: str,
            epilogue: Epilogue, lanes: int) -> KernelDef:
    """Softmax/LogSoftmax: opset >= 13 over one axis; older opsets over all dims from ``axis``
    (coerced to 2-D)."""
    shape = tuple(int(d) for d in x_shape)
    axis = axis % len(shape)
    if opset < 13:
        rows = int(np.prod(shape[:axis])) if axis else 1
        view = (rows, int(np.prod(shape[axis:])))
        ax = 1
    else:
        view = shape
        ax = axis
    pre, red, post = int(np.prod(view[:ax])), view[ax], int(np.prod(view[ax + 1:]))
    if post == 1 and red <= MAX_ROW:
        return _softmax_rows(name, x, pre, red, log=log, out_value=out_value, epilogue=epilogue, lanes=lanes)
    b = Builder(name)
    X = b.input(x, (pre, red, post))
    apply = bind_epilogue(epilogue, b, (pre, red, post))
    r1 = te.reduce_axis((0, red), name="r1")
    mx = te.compute((pre, post), lambda i, j: te.max(X[i, r1, j], axis=r1), name="max")
    r2 = te.reduce_axis((0, red), name="r2")
    sm = te.compute((pre, post), lambda i, j: te.sum(fast_exp(X[i, r2, j] - mx[i, j]), axis=r2), name="sum")
    if log:
        Y = te.compute((pre, red, post), lambda i, c, j: apply(X[i, c, j] - mx[i, j] - tirx.log(sm[i, j]),
                                                                 (i, c, j)), name="norm")
    else:
        Y = te.compute((pre, red, post), lambda i, c, j: apply(fast_exp(X[i, c, j] - mx[i, j]) / sm[i, j],
                                                                 (i, c, j)), name="norm")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    steps = []
    if pre >= 2 and S.worth_parallel(pre * red * post * 4):
        outer = sch.get_loops(sch.get_sblock("norm"))[0]
        sch.compute_at(sch.get_sblock("sum"), outer)
        sch.compute_at(sch.get_sblock("max"), sch.get_loops(sch.get_sblock("sum"))[0])
        sch.parallel(outer)
        steps.append("parallel_outer")
    return KernelDef(name, b.params, sch.mod["main"], steps=steps)


def _softmax_rows(name, x, rows, red, *, log, out_value, epilogue, lanes) -> KernelDef:
    """Softmax over the last axis (attention's rows): `row_softmax`, a row per outer step."""
    b = Builder(name)
    X = b.input(x, (rows, red))
    apply = bind_epilogue(epilogue, b, (rows, red, 1))
    Y, stages = row_softmax(rows, red, lanes, lambda i, c: X[i, c], lambda p, ix: apply(p, (ix[0], ix[1], 0)),
                            log=log, ragged=True)
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    outer = sch.get_loops(sch.get_sblock("norm"))[0]
    pending, steps = place_row_softmax(sch, stages, outer)
    if rows >= 2 and S.worth_parallel(rows * red * 4):
        sch.parallel(outer)
        steps.append("parallel_outer")
    finish_reductions(sch, pending)
    return KernelDef(name, b.params, sch.mod["main"], steps=steps)


def reduce(name: str, x: str, x_shape, *, op: str, axes, keepdims: bool, out_value: str, out_shape,
           epilogue: Epilogue, lanes: int) -> KernelDef:
    shape = tuple(int(d) for d in x_shape)
    axes = sorted({a % len(shape) for a in axes}) if axes else list(range(len(shape)))
    b = Builder(name)
    X = b.input(x, shape)
    kept = [i for i in range(len(shape)) if i not in axes]
    rs = [te.reduce_axis((0, shape[a]), name=f"r{a}") for a in axes]
    acc_shape = tuple(shape[i] for i in kept) or (1,)
    count = int(np.prod([shape[a] for a in axes])) if axes else 1

    def src_index(idx):
        ix, ri = [], 0
        ki = iter(idx)
        for i in range(len(shape)):
            if i in axes:
                ix.append(rs[ri])
                ri += 1
            else:
                ix.append(next(ki))
        return tuple(ix)

    def body(*idx):
        idx = idx if kept else ()
        v = X[src_index(idx)]
        if op == "ReduceMax":
            return te.max(v, axis=rs)
        if op == "ReduceMin":
            return te.min(v, axis=rs)
        if op in ("ReduceSumSquare", "ReduceL2"):
            return te.sum(v * v, axis=rs)
        if op == "ReduceL1":
            return te.sum(tirx.abs(v), axis=rs)
        return te.sum(v, axis=rs)

    acc = te.compute(acc_shape, body, name="acc")
    out_shape = tuple(int(d) for d in out_shape)
    apply = bind_epilogue(epilogue, b, out_shape)

    def out(*idx):
        v = acc[idx]
        if op == "ReduceMean":
            v = v * tirx.const(1.0 / count, F32)
        elif op == "ReduceL2":
            v = tirx.sqrt(v)
        elif op == "ReduceLogSum":
            v = tirx.log(v)
        if keepdims:
            full, ki = [], iter(idx)
            for i in range(len(shape)):
                full.append(0 if i in axes else next(ki))
            return apply(v, tuple(full))
        return apply(v, idx)

    Y = te.compute(acc_shape, out, name="epilogue")
    func = b.finish([(out_value, Y)])
    b.params[-1].shape = acc_shape
    sch = schedule(func)
    if kept and int(np.prod(acc_shape)) >= 2 and S.worth_parallel(int(np.prod(shape))):
        S.parallel_outer(sch, [sch.get_loops(sch.get_sblock("acc"))[0]])
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_outer"])


def lrn(name: str, x: str, x_shape, *, size: int, alpha: float, beta: float, bias: float, out_value: str,
        epilogue: Epilogue, lanes: int) -> KernelDef:
    """Local response normalization across channels (NCHW...): each output's window of ``size``
    channels summed as an unrolled expression (loads clamped into the tensor, a select per term),
    vectorized along the last axis. (bias + alpha/size * sum)^-beta is two square roots for
    AlexNet's and GoogLeNet's beta = 0.75 (and one for 0.5) instead of a libm ``powf`` per element:
    the scalar kernel with a reduction block and ``powf`` took 7.45 ms on Inception v1's
    192x56x56 LRN (AVX2, one thread, CPU time)."""
    shape = tuple(int(d) for d in x_shape)
    n, c = shape[:2]
    plane = int(np.prod(shape[2:], dtype=np.int64))
    lo = (size - 1) // 2
    b = Builder(name)
    X = b.input(x, (n, c, plane))  # the pixels as one run: whole vectors of a 55x55 plane, not of its rows
    apply = bind_epilogue(epilogue, b, shape)
    spatial = shape[2:]
    scale, zero = tirx.const(alpha / size, F32), tirx.const(0.0, F32)

    def square_sum(nn, cc, rest):
        terms = []
        for r in range(size):
            src = cc - lo + r
            v = X[(nn, tirx.min(tirx.max(src, 0), c - 1)) + rest]
            terms.append(tirx.Select(tirx.all(src >= 0, src < c), v * v, zero))
        return unrolled_sum(terms)

    def out(nn, cc, p):
        d = tirx.const(bias, F32) + scale * square_sum(nn, cc, (p,))
        return apply(X[nn, cc, p] * _inverse_power(d, beta), (nn, cc) + tuple(unflatten(p, spatial)))

    Y = te.compute((n, c, plane), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    nl, cl, pl = sch.get_loops(sch.get_sblock("epilogue"))
    if S.worth_parallel(int(np.prod(shape)) * size):
        S.parallel_outer(sch, [nl, cl])
    body = plane // lanes * lanes
    if body:
        # the whole vectors and the ragged tail as two loops: TVM vectorizes no predicated loop
        if plane > body:
            pl, _ = sch.loop_partition(pl, factors=[body, None])
        sch.vectorize(sch.split(pl, factors=[None, lanes])[1])
    return KernelDef(name, b.params, sch.mod["main"], steps=["plane_vectors", "parallel_outer"])


def _inverse_power(d, beta: float):
    """d^-beta, as square roots (vectorized by LLVM) where beta allows."""
    one = tirx.const(1.0, F32)
    if beta == 0.75:
        r = tirx.sqrt(d)
        return one / (r * tirx.sqrt(r))
    if beta == 0.5:
        return one / tirx.sqrt(d)
    if beta == 1.0:
        return one / d
    return one / tirx.power(d, tirx.const(beta, F32))
