"""Elementwise ops: each becomes a chain of `EwOp`s. A chain that starts a kernel is emitted
here; one that follows an anchor through a value nobody else reads joins that anchor's epilogue
instead (backends/tvm/fusion.py reads `ew_ops` for it)."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.index import emit_int_elementwise
from tvmlite.backends.tvm.emitters.grid_table import chain_table
from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
from tvmlite.errors import UnsupportedError

UNARY_OPS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
             "Erf", "Floor", "Ceil", "Round", "HardSigmoid", "HardSwish", "Clip", "Elu", "Softplus", "Gelu"}
BINARY_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "PRelu"}
EW_OPS = UNARY_OPS | BINARY_OPS | {"BatchNormalization"}


def ew_ops(low, node, running: str | None):
    """EwOps computing ``node`` from the running value (None: the node starts a chain and its
    first input is the running value). Returns (ops, first operand) or raises."""
    op = node.op_type
    ins = [n for n in node.inputs]
    a = dict(node.attrs)
    if op in ("Identity", "Dropout"):
        if len([o for o in node.outputs if o and low.g.num_uses(o)]) > 1:
            raise UnsupportedError("Dropout mask output")
        return [EwOp("Identity")], ins[0]
    if op == "BatchNormalization":
        if a.get("training_mode", 0) or len([o for o in node.outputs if o]) > 1:
            raise UnsupportedError("training-mode BatchNormalization")
        p = [low.const(n) for n in ins[1:5]]
        if any(x is None for x in p):
            raise UnsupportedError("BatchNormalization with non-constant parameters")
        scale, beta, mean, var = (x.astype(np.float64) for x in p)
        s = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        rank = len(low.shape(ins[0]))
        shp = (-1,) + (1,) * (rank - 2)
        return [EwOp("Mul", [("const", s.astype(np.float32).reshape(shp))]),
                EwOp("Add", [("const", (beta - mean * s).astype(np.float32).reshape(shp))])], ins[0]
    if op in UNARY_OPS:
        if op == "Clip":
            if low.opset < 11 or ("min" in a or "max" in a):
                lo, hi = a.get("min"), a.get("max")
            else:
                lo_c = low.const(ins[1]) if len(ins) > 1 and ins[1] else None
                hi_c = low.const(ins[2]) if len(ins) > 2 and ins[2] else None
                if (len(ins) > 1 and ins[1] and lo_c is None) or (len(ins) > 2 and ins[2] and hi_c is None):
                    raise UnsupportedError("Clip with non-constant bounds")
                lo = None if lo_c is None else float(lo_c)
                hi = None if hi_c is None else float(hi_c)
            return [EwOp("Clip", attrs={"min": lo, "max": hi})], ins[0]
        return [EwOp(op, attrs=a)], ins[0]
    if op in BINARY_OPS:
        names = [n for n in ins if n]
        if running is None:
            run, rest, first = names[0], names[1:], 0
        else:
            if names.count(running) != 1:
                raise UnsupportedError("value used twice by one op")
            first = names.index(running)
            run, rest = running, [n for n in names if n != running]
        if op in ("Sum", "Max", "Min") and len(names) != 2:
            return [EwOp(op, [low.operand(n) for n in rest])], run
        if len(rest) != 1:
            raise UnsupportedError(f"{op} with {len(names)} inputs")
        if op == "Pow" and low.const(rest[0]) is None:
            raise UnsupportedError("Pow with a non-constant exponent")
        return [EwOp(op, [low.operand(rest[0])], first=first)], run
    raise UnsupportedError("not an elementwise op")


@emitter(*sorted(EW_OPS), checks_dtype=True)
def emit_elementwise(low, node) -> None:
    dt = low.dtype(node.outputs[0]) if node.outputs[0] else None
    if dt is not None and dt.kind in "iub":
        emit_int_elementwise(low, node)  # integer arithmetic (shape chains made at run time)
        return
    low.check_float(node)
    ops, first = ew_ops(low, node, None)
    out = node.outputs[0]
    out_shape = low.shape(out)
    epi2, final, labels = low.epilogue(node)
    epi = Epilogue(ops + epi2.ops)
    src = low.operand(first)
    name = low.kernel_name(node)
    lanes = low.lanes
    table = grid = None
    if src[0] == "value" and tuple(src[2]) == tuple(out_shape):
        grid = low.grid(first)
        table = chain_table(first, tuple(out_shape), epi.ops, grid) if grid is not None else None

    def make():
        from tvmlite.backends.tvm.kernels.tensor import elementwise, grid_lookup

        if table is not None:
            return grid_lookup(name, first, out_shape, grid, table, out_value=final, lanes=lanes)
        return elementwise(name, src, out_shape, out_value=final, epilogue=epi, lanes=lanes)
    low.add(make, node, final, labels)
