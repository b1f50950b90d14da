"""Kernels that index with integer values: Gather (the embedding lookup of transformers: one
row copy per index, vectorized along the row) and Cast from integer/bool inputs to float32."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import KernelDef


def _index_tensor(b: Builder, idx):
    """idx: ("const", array) or ("value", name, shape, dtype); 0-d indices are read as [1]."""
    if idx[0] == "const":
        return b.table(np.asarray(idx[1]).reshape(-1) if np.ndim(idx[1]) == 0 else idx[1])
    _, name, shape, dtype = idx
    return b.input(name, tuple(shape) or (1,), dtype)


def gather(name: str, data, data_shape, idx, idx_shape, *, axis: int, out_value: str, lanes: int) -> KernelDef:
    """out[pre, j, post] = data[pre, idx[j], post]; negative indices count from the end (ONNX),
    out-of-range ones are clamped (onnxruntime refuses them; a kernel must not read past the table)."""
    ds = tuple(int(d) for d in data_shape)
    ish = tuple(int(d) for d in idx_shape)
    out_shape = ds[:axis] + ish + ds[axis + 1:]
    n = ds[axis]
    b = Builder(name)
    X = b.input(data, ds) if isinstance(data, str) else b.const(data, label="table")
    Ix = _index_tensor(b, idx)
    r = len(ish)

    def f(*i):
        v = Ix[tuple(i[axis:axis + r])] if r else Ix[0]
        v = v.astype("int64")
        v = tirx.if_then_else(v < 0, v + n, v)
        v = tirx.max(tirx.min(v, n - 1), 0)
        return X[tuple(i[:axis]) + (v,) + tuple(i[axis + r:])]

    Y = te.compute(out_shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def cast_to_float(name: str, x: str, shape, dtype: str, *, out_value: str, lanes: int) -> KernelDef:
    shape = tuple(int(d) for d in shape)
    b = Builder(name)
    X = b.input(x, shape or (1,), dtype)
    Y = te.compute(shape or (1,), lambda *i: X[i].astype("float32"), name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(shape or (1,)))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])
