"""Kernels over any element type: Gather (the embedding lookup of transformers: one row copy per
index, vectorized along the row) and `mapped`, one element-by-element kernel for comparisons,
logical ops, Where, Cast, Expand and integer arithmetic (ONNX broadcasting, bool/int/float
operands)."""
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


def _finish(b: Builder, name: str, out_value: str, Y, n: int, lanes: int) -> KernelDef:
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(n))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def gather(name: str, data, data_shape, idx, idx_shape, *, axis: int, out_value: str, lanes: int,
           dtype: str = "float32") -> KernelDef:
    """out[pre, j, post] = data[pre, idx[j], post]; negative indices count from the end (ONNX),
    out-of-range ones are clamped (onnxruntime refuses them; a kernel must not read past the table)."""
    ds = tuple(int(d) for d in data_shape)
    ish = tuple(int(d) for d in idx_shape)
    out_shape = ds[:axis] + ish + ds[axis + 1:]
    n = ds[axis]
    b = Builder(name)
    X = b.input(data, ds, dtype) if isinstance(data, str) else b.const(data, label="table", dtype=dtype)
    Ix = _index_tensor(b, idx)
    r = len(ish)

    def f(*i):
        v = Ix[tuple(i[axis:axis + r])] if r else Ix[0]
        v = v.astype("int64")
        v = tirx.if_then_else(v < 0, v + n, v)
        v = tirx.max(tirx.min(v, n - 1), 0)
        return X[tuple(i[:axis]) + (v,) + tuple(i[axis + r:])]

    Y = te.compute(out_shape or (1,), f if out_shape else (lambda _: f()), name="ew")
    return _finish(b, name, out_value, Y, int(np.prod(out_shape)), lanes)


def _c(v, dt: str):
    return tirx.const(v, dt)


def _safe(d, dt: str):
    """The divisor with 0 made 1: an integer division by zero must not trap the process (the
    result there is 0, see `_div`); onnxruntime leaves it undefined."""
    return tirx.Select(tirx.EQ(d, _c(0, dt)), _c(1, dt), d)


def _div(a, b, dt: str):
    q = tirx.truncdiv(a, _safe(b, dt))
    if dt.startswith("int"):  # INT_MIN / -1 traps on x86 (the wrapped result is -a)
        q = tirx.Select(tirx.EQ(b, _c(-1, dt)), _c(0, dt) - a, q)
    return tirx.Select(tirx.EQ(b, _c(0, dt)), _c(0, dt), q)


def _mod(a, b, dt: str, fmod: int):
    # C's remainder (fmod=1) takes the dividend's sign, ONNX's default the divisor's (Python's %)
    r = tirx.truncmod(a, _safe(b, dt)) if fmod else tirx.floormod(a, _safe(b, dt))
    if dt.startswith("int"):  # x % -1 is 0, and INT_MIN % -1 traps
        r = tirx.Select(tirx.EQ(b, _c(-1, dt)), _c(0, dt), r)
    return tirx.Select(tirx.EQ(b, _c(0, dt)), _c(0, dt), r)


def _abs(a, dt: str):
    return a if dt.startswith("uint") else tirx.Select(tirx.LT(a, _c(0, dt)), _c(0, dt) - a, a)


def _fold(fn, vals):
    v = vals[0]
    for w in vals[1:]:
        v = fn(v, w)
    return v


def _xor(p, q):
    # not NE: TVM 0.27's LLVM codegen compares two bools with a float compare, which LLVM rejects
    return tirx.Or(tirx.And(p, tirx.Not(q)), tirx.And(tirx.Not(p), q))


def _cast(v, dt: str, to: str):
    if to == "bool":
        return tirx.NE(v, _c(0, dt))
    return v.astype(to)


#: op -> f(values, attrs, dtype of the first operand); integer ops follow ONNX (wrap-around,
#: truncating Div)
OPS = {
    "Identity": lambda v, a, dt: v[0],
    "Equal": lambda v, a, dt: tirx.Not(_xor(v[0], v[1])) if dt == "bool" else tirx.EQ(v[0], v[1]),
    "Less": lambda v, a, dt: tirx.LT(v[0], v[1]),
    "Greater": lambda v, a, dt: tirx.GT(v[0], v[1]),
    "LessOrEqual": lambda v, a, dt: tirx.LE(v[0], v[1]),
    "GreaterOrEqual": lambda v, a, dt: tirx.GE(v[0], v[1]),
    "And": lambda v, a, dt: tirx.And(v[0], v[1]),
    "Or": lambda v, a, dt: tirx.Or(v[0], v[1]),
    "Xor": lambda v, a, dt: _xor(v[0], v[1]),
    "Not": lambda v, a, dt: tirx.Not(v[0]),
    "Where": lambda v, a, dt: tirx.Select(v[0], v[1], v[2]),
    "Cast": lambda v, a, dt: _cast(v[0], dt, a["to"]),
    "Add": lambda v, a, dt: v[0] + v[1],
    "Sum": lambda v, a, dt: _fold(lambda x, y: x + y, v),
    "Sub": lambda v, a, dt: v[0] - v[1],
    "Mul": lambda v, a, dt: v[0] * v[1],
    "Div": lambda v, a, dt: _div(v[0], v[1], dt),
    "Mod": lambda v, a, dt: _mod(v[0], v[1], dt, int(a.get("fmod", 0))),
    "Neg": lambda v, a, dt: _c(0, dt) - v[0],
    "Abs": lambda v, a, dt: _abs(v[0], dt),
    "Min": lambda v, a, dt: _fold(tirx.min, v),
    "Max": lambda v, a, dt: _fold(tirx.max, v),
}


def _operand(b: Builder, opnd):
    """(reader, shape): a one-element constant becomes an immediate, the rest a parameter."""
    if opnd[0] == "const":
        arr = np.asarray(opnd[1])
        if arr.size == 1:
            return ("s", tirx.const(arr.reshape(-1)[0].item(), arr.dtype.name)), arr.shape
        return ("t", b.const(arr, label="c", dtype=arr.dtype)), arr.shape
    _, name, shape, dtype = opnd
    return ("t", b.input(name, tuple(shape) or (1,), dtype)), tuple(shape)


def _read(reader, shape, idx):
    kind, t = reader
    if kind == "s":
        return t
    if not shape:
        return t[0]
    off = len(idx) - len(shape)
    return t[tuple(0 if d == 1 else idx[off + i] for i, d in enumerate(shape))]


def mapped(name: str, op: str, attrs: dict, operands: list, out_shape, out_dtype: str, *, out_value: str,
           lanes: int) -> KernelDef:
    """out[i] = OPS[op](operands broadcast to i), stored as ``out_dtype``. Operands are
    ("const", array) or ("value", name, shape, dtype)."""
    out_shape = tuple(int(d) for d in out_shape)
    b = Builder(name)
    reads = [_operand(b, o) for o in operands]

    first = operands[0][1].dtype.name if operands[0][0] == "const" else operands[0][3]

    def f(*idx):
        idx = idx if out_shape else ()
        return OPS[op]([_read(r, s, idx) for r, s in reads], attrs, first).astype(out_dtype)

    Y = te.compute(out_shape or (1,), f, name="ew")
    return _finish(b, name, out_value, Y, int(np.prod(out_shape)) * max(len(reads), 1), lanes)
