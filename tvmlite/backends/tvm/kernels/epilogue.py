"""Epilogues: the elementwise ops fused into a kernel (bias, BN, activation, residual add),
applied to the value on its way out of the register tile, so their data never makes a round trip
through memory."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import tirx

from tvmlite.backends.tvm.kernels.builder import F32, Builder
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp, unflatten
from tvmlite.backends.tvm.kernels.fastmath import fast_erf, fast_exp, fast_sigmoid, fast_silu


UNARY = {
    "Relu": lambda x, a: tirx.max(x, tirx.const(0.0, F32)),
    "LeakyRelu": lambda x, a: tirx.Select(x >= 0, x, x * tirx.const(a.get("alpha", 0.01), F32)),
    "Sigmoid": lambda x, a: fast_sigmoid(x),  # tirx.sigmoid's exp is a scalar libm call per lane
    "Silu": lambda x, a: fast_silu(x),  # x * Sigmoid(x) (fusion.silu_pair)
    "Tanh": lambda x, a: tirx.tanh(x),
    "Exp": lambda x, a: tirx.exp(x),
    "Log": lambda x, a: tirx.log(x),
    "Sqrt": lambda x, a: tirx.sqrt(x),
    "Abs": lambda x, a: tirx.abs(x),
    "Neg": lambda x, a: -x,
    "Reciprocal": lambda x, a: tirx.const(1.0, F32) / x,
    "Erf": lambda x, a: fast_erf(x),
    "Floor": lambda x, a: tirx.floor(x),
    "Ceil": lambda x, a: tirx.ceil(x),
    "Round": lambda x, a: tirx.nearbyint(x),  # half to even, as ONNX Round and QuantizeLinear
    "Identity": lambda x, a: x,
    "HardSigmoid": lambda x, a: tirx.max(tirx.const(0.0, F32), tirx.min(
        tirx.const(1.0, F32), x * tirx.const(a.get("alpha", 0.2), F32) + tirx.const(a.get("beta", 0.5), F32))),
    "HardSwish": lambda x, a: x * tirx.max(tirx.const(0.0, F32), tirx.min(
        tirx.const(1.0, F32), x * tirx.const(1.0 / 6.0, F32) + tirx.const(0.5, F32))),
    "Clip": lambda x, a: _clip(x, a.get("min"), a.get("max")),
    "Elu": lambda x, a: tirx.Select(x >= 0, x, tirx.const(a.get("alpha", 1.0), F32) * (tirx.exp(x) - 1)),
    "Softplus": lambda x, a: tirx.log(tirx.exp(x) + tirx.const(1.0, F32)),
    "Gelu": lambda x, a: _gelu(x, a.get("approximate", "none")),
}

BINARY = {
    "Add": lambda x, y: x + y,
    "Sum": lambda x, y: x + y,
    "Sub": lambda x, y: x - y,
    "Mul": lambda x, y: x * y,
    "Div": lambda x, y: x / y,
    "Max": lambda x, y: tirx.max(x, y),
    "Min": lambda x, y: tirx.min(x, y),
    "Pow": lambda x, y: tirx.power(x, y),
    "PRelu": lambda x, y: tirx.Select(x >= 0, x, x * y),
}


def _gelu(x, approximate):
    """ONNX Gelu (opset 20): the erf form, or with approximate="tanh" the tanh form."""
    half, one = tirx.const(0.5, F32), tirx.const(1.0, F32)
    if (approximate.decode() if isinstance(approximate, bytes) else approximate) == "tanh":
        inner = tirx.const(math.sqrt(2 / math.pi), F32) * (x + tirx.const(0.044715, F32) * x * x * x)
        # 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): no cancellation for negative x, one fast exp
        return x / (one + fast_exp(inner * tirx.const(-2.0, F32)))
    return x * half * (one + fast_erf(x * tirx.const(1 / math.sqrt(2), F32)))


def _clip(x, lo, hi):
    if lo is not None:
        x = tirx.max(x, tirx.const(float(lo), F32))
    if hi is not None:
        x = tirx.min(x, tirx.const(float(hi), F32))
    return x


def bind_epilogue(epilogue: Epilogue, b: Builder, out_shape: tuple):
    """Placeholders for the epilogue's operands (made once, in parameter order) -> a function
    applying the chain to a value at ONNX index ``idx`` of ``out_shape``."""
    bound = []
    for i, op in enumerate(epilogue.ops):
        args = []
        if not any(later.op in ROUNDING for later in epilogue.ops[i + 1:]):
            op = _divide_as_multiply(op)
        if op.op == "GridTable":  # fusion.grid_chain: no operands, a table of the grid's integers
            args.append(b.const(np.asarray(op.attrs["table"], np.float32).reshape(256), label="table"))
        for kind, *rest in op.operands:
            if kind == "value":
                name, shape = rest
                if name in epilogue.layouts and len(shape) == 4:  # stored NHWC: read through a permutation
                    n, c, h, w = shape
                    args.append(("nhwc", b.input(epilogue.layouts[name], (n, h, w, c)), tuple(shape)))
                else:
                    args.append(("t", b.input(name, shape), tuple(shape)))
            else:
                arr = np.asarray(rest[0], dtype=np.float32)
                if arr.size == 1:
                    args.append(("s", float(arr.reshape(-1)[0]), ()))
                else:
                    shape = _trim_ones(arr.shape)
                    args.append(("t", b.const(arr.reshape(shape), label="c"), shape))
        bound.append((op, args))
    out_shape = tuple(int(d) for d in out_shape)

    def apply(x, idx):
        spaces = {}
        for op, args in bound:
            if op.op == "GridTable":
                x = grid_table_read(x, args[0], op.attrs["grid"])
                continue
            if op.op in UNARY:
                x = UNARY[op.op](x, op.attrs)
                continue
            fn = BINARY[op.op]
            shape = tuple(op.shape) if op.shape is not None else out_shape
            if shape not in spaces:
                spaces[shape] = tuple(idx) if shape == out_shape else _reindex(tuple(idx), out_shape, shape)
            vals = [broadcast_read(a, spaces[shape], len(shape)) for a in args]
            if len(vals) != 1:  # variadic Sum/Max/Min
                for v in vals:
                    x = fn(x, v)
                continue
            (y,) = vals
            x = fn(x, y) if op.first == 0 else fn(y, x)
        return x
    return apply


ROUNDING = {"Round", "Floor", "Ceil", "GridTable"}  # a Div before these keeps its exact quotient (QDQ's x / scale)


def grid_table_read(x, table, grid):
    """``table`` [256] at the integer k of ``x``, a float32 value on ``grid`` = (scale, zero point,
    signed), lowest integer first: round(x * (1 / scale)) + zero point (exact: x / scale lies a few
    ulps from an integer, grid_table.py)."""
    s, z, signed = grid
    lo = -128 if signed else 0
    r, off = tirx.const(float(np.float32(1) / np.float32(s)), F32), tirx.const(float(z - lo), F32)
    k = tirx.nearbyint(x * r) + off
    return table[tirx.max(tirx.min(k, tirx.const(255.0, F32)), tirx.const(0.0, F32)).astype("int32")]


def _divide_as_multiply(op: EwOp) -> EwOp:
    """x / c with c a constant (finite, nonzero) as x * (1/c): the reciprocal is taken once at
    build time, where a division per element is a vdivps (Zen 1: ~10 cycles' latency, a throughput
    far below a multiply's). Attention's scores / sqrt(d) in MiniLM's fused scores + softmax kernel
    (AVX2, one thread, CPU time): 0.88 -> 0.78 ms. The result may differ from x / c by one
    rounding (a few 1e-8 relative; exact when c is a power of two), so `bind_epilogue` keeps the
    division when a rounding op follows (a tie of QuantizeLinear's x / scale could flip)."""
    if op.op != "Div" or op.first != 0 or len(op.operands) != 1 or op.operands[0][0] != "const":
        return op
    c = np.asarray(op.operands[0][1], dtype=np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = (1.0 / c.astype(np.float64)).astype(np.float32)
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(inv))):  # 0, inf, nan, or 1/c past float32
        return op
    return replace(op, op="Mul", operands=[("const", inv)])


def _reindex(idx, shape, view):
    """Index into ``view`` (a reshape of ``shape``) of element ``idx`` of ``shape``: the common
    leading dims are kept, the rest flattened and unflattened (so a split of the last dim, the
    usual case, costs one div/mod)."""
    lead = 0
    while lead < min(len(shape), len(view)) and shape[lead] == view[lead]:
        lead += 1
    flat = 0
    for i, d in zip(idx[lead:], shape[lead:]):
        flat = flat * d + i
    return tuple(idx[:lead]) + unflatten(flat, view[lead:])


def _trim_ones(shape):
    shape = tuple(int(d) for d in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def broadcast_read(arg, idx, rank):
    kind, t, shape = arg
    if kind == "s":
        return tirx.const(t, F32)
    off = rank - len(shape)
    ix = [0 if d == 1 else idx[off + i] for i, d in enumerate(shape)]
    if kind == "nhwc":
        ix = [ix[0], ix[2], ix[3], ix[1]]
    return t[tuple(ix)]
