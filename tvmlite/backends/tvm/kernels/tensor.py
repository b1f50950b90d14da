"""Kernels that move or map data element by element: fused elementwise chains, Concat,
Transpose, Slice (these three of any element type), and Resize as a gather from host-computed
index tables."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue, broadcast_read, grid_table_read


def elementwise(name: str, first: tuple, out_shape, *, out_value: str, epilogue: Epilogue,
                lanes: int) -> KernelDef:
    """A fused chain of elementwise ops: ``first`` = ("value", name, shape) or ("const", array)
    is the running value, broadcast to ``out_shape``; ``epilogue`` applies the chain."""
    out_shape = tuple(int(d) for d in out_shape) or ()
    b = Builder(name)
    rank = len(out_shape)
    if first[0] == "value":
        src = ("t", b.input(first[1], first[2]), tuple(first[2]))
    else:
        src = ("t", b.const(first[1]), tuple(np.shape(first[1])))
    apply = bind_epilogue(epilogue, b, out_shape)
    shape = out_shape if rank else (1,)

    def f(*idx):
        idx = idx if rank else ()
        v = broadcast_read(src, idx, rank) if (src[2] or rank) else src[1][()]
        return apply(v, idx)

    Y = te.compute(shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes,
                         parallel=S.worth_parallel(int(np.prod(shape)) * (1 + len(epilogue.ops))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def grid_lookup(name: str, x: str, shape, grid, table: np.ndarray, *, out_value: str, lanes: int) -> KernelDef:
    """out = table[k] for each element of ``x``, a float32 value on ``grid`` = (scale, zero point,
    signed), k its integer (lowest first): round(x * (1 / scale)) + zero point (grid_table.py)."""
    shape = tuple(int(d) for d in shape)
    b = Builder(name)
    X = b.input(x, shape)
    T = b.const(np.asarray(table, np.float32).reshape(256), label="table")
    Y = te.compute(shape, lambda *idx: grid_table_read(X[idx], T, grid), name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["grid_lookup"])


def concat(name: str, inputs: list[tuple[str, tuple]], *, axis: int, out_value: str, out_shape,
           lanes: int, dtype: str = "float32", epilogue: Epilogue | None = None) -> KernelDef:
    """Concat along ``axis``; ``epilogue`` (float32 only): the elementwise ops that follow it
    (ShuffleNet's Concat -> Relu), applied on the copy instead of in a kernel of their own."""
    out_shape = tuple(int(d) for d in out_shape)
    axis = axis % len(out_shape)
    b = Builder(name)
    ts, offs, off = [], [], 0
    for v, shape in inputs:
        ts.append(b.input(v, shape, dtype) if isinstance(v, str) else b.const(v, dtype=dtype))
        offs.append(off)
        off += int(shape[axis])

    def f(*idx):
        val = None
        for t, o, (_, shape) in reversed(list(zip(ts, offs, inputs))):
            ix = list(idx)
            # clamped so that the branch not taken still reads inside the buffer
            ix[axis] = tirx.min(tirx.max(idx[axis] - o, 0) if o else idx[axis], int(shape[axis]) - 1)
            read = t[tuple(ix)]
            val = read if val is None else tirx.if_then_else(idx[axis] < o + int(shape[axis]), read, val)
        return apply(val, idx) if apply is not None else val

    apply = bind_epilogue(epilogue, b, out_shape) if epilogue is not None and epilogue.ops else None
    Y = te.compute(out_shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    n_ops = 1 + (len(epilogue.ops) if epilogue is not None else 0)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape)) * n_ops))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def transpose(name: str, x: str, x_shape, perm, *, out_value: str, lanes: int,
              dtype: str = "float32") -> KernelDef:
    shape = tuple(int(d) for d in x_shape)
    out_shape = tuple(shape[p] for p in perm)
    b = Builder(name)
    X = b.input(x, shape, dtype)
    inv = [perm.index(i) for i in range(len(perm))]
    Y = te.compute(out_shape, lambda *idx: X[tuple(idx[inv[i]] for i in range(len(shape)))], name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    parallel = S.worth_parallel(int(np.prod(out_shape)))
    if dtype == "float32" and block_transpose(sch, "ew", perm, out_shape, lanes, parallel=parallel):
        return KernelDef(name, b.params, sch.mod["main"], steps=["block_transpose"])
    S.parallel_vectorize(sch, "ew", lanes, parallel=parallel)
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def block_transpose(sch, block: str, perm, out_shape, lanes: int, *, parallel: bool) -> bool:
    """When the input's last axis moves (attention's keys [S, h, d] -> [h, d, S]), copy blocks
    of (rows of the output's last axis) x (a vector of the input's last axis): each step reads
    ``lanes`` contiguous input floats and stores them down an output column, the rows unrolled.
    Vectorized along the output's last axis instead, every lane was a load from another input
    row: MiniLM's key transpose (128 x 12 x 32, AVX2, one thread, CPU time) 0.046 -> 0.011 ms
    (blocks of 8 rows 0.013). False (nothing scheduled) when the last axis stays or the extents
    do not divide."""
    rank = len(perm)
    d_axis = list(perm).index(rank - 1)  # the output axis that is the input's last
    if rank < 2 or d_axis == rank - 1 or out_shape[d_axis] % lanes:
        return False
    rows = next((r for r in (16, 8, 4) if out_shape[-1] % r == 0), None)
    if rows is None:
        return False
    loops = sch.get_loops(sch.get_sblock(block))
    so, si = sch.split(loops[-1], [None, rows])
    do, di = sch.split(loops[d_axis], [None, lanes])
    outer = [lp for i, lp in enumerate(loops[:-1]) if i != d_axis]
    sch.reorder(*outer, so, do, si, di)
    sch.vectorize(di)
    sch.unroll(si)
    if parallel:
        S.parallel_outer(sch, outer + [so])
    return True


def strided_slice(name: str, x: str, x_shape, starts, steps, *, out_value: str, out_shape,
                  lanes: int, dtype: str = "float32") -> KernelDef:
    """Slice with every axis resolved to (start, step): out[i] = x[start + i * step]."""
    shape = tuple(int(d) for d in x_shape)
    out_shape = tuple(int(d) for d in out_shape)
    b = Builder(name)
    X = b.input(x, shape, dtype)
    Y = te.compute(out_shape, lambda *idx: X[tuple(int(s0) + i * int(st) for s0, st, i in zip(starts, steps, idx))],
                   name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def resize(name: str, x: str, x_shape, *, axes_maps, out_shape, out_value: str, epilogue: Epilogue,
           lanes: int) -> KernelDef:
    """ONNX Resize as a gather. ``axes_maps[i]`` says how output index o of axis i reads the
    input: None (same index), ("div", num, den): floor(o * num / den) (nearest with an exact
    rational scale, computed in the kernel), ("nearest", idx[out]) or ("linear", idx[out, 2],
    weights[out, 2]) from host tables; the linear axes' taps are combined separably (bilinear
    on two axes)."""
    shape = tuple(int(d) for d in x_shape)
    out_shape = tuple(int(d) for d in out_shape)
    b = Builder(name)
    X = b.input(x, shape)
    maps = []
    for ax, mp in enumerate(axes_maps):
        if mp is None or mp[0] == "div":
            maps.append(mp)
        elif mp[0] == "nearest":
            maps.append(("nearest", b.table(np.asarray(mp[1]).reshape(-1), label=f"idx{ax}_")))
        else:
            maps.append(("linear", b.table(mp[1], label=f"idx{ax}_"),
                         b.const(np.asarray(mp[2], np.float32), label=f"wt{ax}_")))
    apply = bind_epilogue(epilogue, b, out_shape)
    linear = [ax for ax, mp in enumerate(maps) if mp is not None and mp[0] == "linear"]

    def f(*idx):
        base = []
        for o, mp in zip(idx, maps):
            if mp is None:
                base.append(o)
            elif mp[0] == "div":
                base.append(o * mp[1] // mp[2])
            elif mp[0] == "nearest":
                base.append(mp[1][o])
            else:
                base.append(None)
        v = None
        for taps in np.ndindex(*([2] * len(linear))):
            ix = list(base)
            w = None
            for ax, t in zip(linear, taps):
                _, tab, wt = maps[ax]
                ix[ax] = tab[idx[ax], int(t)]
                w = wt[idx[ax], int(t)] if w is None else w * wt[idx[ax], int(t)]
            term = X[tuple(ix)] if w is None else X[tuple(ix)] * w
            v = term if v is None else v + term
        return apply(v, idx)

    Y = te.compute(out_shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes,
                         parallel=S.worth_parallel(int(np.prod(out_shape)) * (1 << len(linear))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])
