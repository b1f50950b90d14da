"""Reductions along axes: Softmax / LogSoftmax, Reduce*, and LRN (a windowed sum across channels)."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue, fast_exp


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
    b = Builder(name)
    X = b.input(x, (pre, red, post))
    apply = bind_epilogue(epilogue, b, (pre, red, post))
    r1 = te.reduce_axis((0, red), name="r1")
    mx = te.compute((pre, post), lambda i, j: te.max(X[i, r1, j], axis=r1), name="max")
    # exp once per element, by a polynomial that vectorizes (TVM's exp is a scalar expf call);
    # the row keeps its exps in a local buffer and the norm multiplies by the sum's reciprocal
    ex = te.compute((pre, red, post), lambda i, c, j: fast_exp(X[i, c, j] - mx[i, j]), name="exp")
    r2 = te.reduce_axis((0, red), name="r2")
    sm = te.compute((pre, post), lambda i, j: te.sum(ex[i, r2, j], axis=r2), name="sum")
    if log:
        Y = te.compute((pre, red, post), lambda i, c, j: apply(X[i, c, j] - mx[i, j] - tirx.log(sm[i, j]),
                                                                 (i, c, j)), name="norm")
    else:
        inv = te.compute((pre, post), lambda i, j: tirx.const(1.0, F32) / sm[i, j], name="inv")
        Y = te.compute((pre, red, post), lambda i, c, j: apply(ex[i, c, j] * inv[i, j], (i, c, j)), name="norm")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    steps = []
    if log:
        sch.compute_inline(sch.get_sblock("exp"))
    outer = sch.get_loops(sch.get_sblock("norm"))[0]
    row_local = red * post <= 4096  # a row's exps fit a small local buffer
    if row_local:
        for blk in (("sum",) if log else ("inv", "sum", "exp")) + ("max",):
            sch.compute_at(sch.get_sblock(blk), outer)
        if not log:
            sch.set_scope(sch.get_sblock("exp"), 0, "local")
        for blk in ("norm",) if log else ("norm", "exp"):
            below = sch.get_loops(sch.get_sblock(blk))[1:]  # compute_at may drop the unit post loop
            inner, extent = (below[-1], post) if post > 1 else (below[0], red)
            if extent % lanes == 0:
                _, vec = sch.split(inner, [None, lanes])
                sch.vectorize(vec)
                steps.append(f"vectorize_{blk}")
    elif not log:
        sch.compute_inline(sch.get_sblock("exp"))
    if pre >= 2 and S.worth_parallel(pre * red * post * 4):
        sch.parallel(outer)
        steps.append("parallel_outer")
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
    """Local response normalization across channels (NCHW...)."""
    shape = tuple(int(d) for d in x_shape)
    c = shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    b = Builder(name)
    X = b.input(x, shape)
    apply = bind_epilogue(epilogue, b, shape)
    r = te.reduce_axis((0, size), name="r")

    def sq(nn, cc, *rest):
        src = cc - lo + r
        v = X[(nn, tirx.min(tirx.max(src, 0), c - 1)) + rest]
        return te.sum(tirx.if_then_else(tirx.all(src >= 0, src < c), v * v, tirx.const(0.0, F32)), axis=r)

    ssum = te.compute(shape, sq, name="acc")
    del hi
    Y = te.compute(shape, lambda *idx: apply(X[idx] / tirx.power(
        tirx.const(bias, F32) + tirx.const(alpha / size, F32) * ssum[idx], tirx.const(beta, F32)), idx),
        name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    if S.worth_parallel(int(np.prod(shape)) * size):
        S.parallel_outer(sch, sch.get_loops(sch.get_sblock("epilogue"))[:2])
    sch.compute_at(sch.get_sblock("acc"), sch.get_loops(sch.get_sblock("epilogue"))[-1])
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_outer"])
