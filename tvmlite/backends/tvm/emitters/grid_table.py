"""An elementwise chain of one input on a quantization grid becomes a 256-entry table.

A value that an int8 kernel fake-quantized (a fused QDQConv / QDQMatMul / QConcat output, or the
float arithmetic a lone QuantizeLinear -> DequantizeLinear pair became, qdq_fusion._fake_quant)
takes at most 256 values: fl((k - z) * s) for the integers k of its grid. A chain of elementwise
ops whose other operands are scalar constants or that same value (PP-OCR's HardSwish, written
Add 3 -> Clip -> Div 6 -> Mul by the input, with fake-quant pairs between the steps) is then a
function of k alone: its output is computed here once per k, in float32 with ONNX's arithmetic
(round half to even, Div a true division), and the kernel reads it from a table by k, recovered
from the input as round(x * (1 / s)) + z. That recovery is exact: x / s lies within a few ulps of
the integer k - z (|k - z| <= 255), far from the halfway points. The table kernel replaces four
divisions and some twenty vector operations per element.
"""
from __future__ import annotations

import numpy as np

_SCALAR_OPS = ("Add", "Sum", "Sub", "Mul", "Div", "Max", "Min")


def chain_table(first: str, shape: tuple, ops, grid) -> np.ndarray | None:
    """float32[256]: the elementwise ``ops`` (EwOps) applied to each value of ``grid`` (lowest
    integer first), or None when the chain is not a function of the value alone."""
    s, z, signed = grid
    lo = -128 if signed else 0
    x = (np.arange(lo, lo + 256, dtype=np.float32) - np.float32(z)) * np.float32(s)
    v = x
    with np.errstate(all="ignore"):
        for op in ops:
            if op.shape is not None:
                return None
            if op.operands:
                if op.op not in _SCALAR_OPS or len(op.operands) != 1:
                    return None
                y = _operand(op.operands[0], first, shape, x)
                if y is None:
                    return None
                v = _binary(op.op, *((v, y) if op.first == 0 else (y, v)))
            else:
                v = _unary(op.op, op.attrs, v)
                if v is None:
                    return None
    return v.astype(np.float32)


def _operand(operand, first: str, shape: tuple, x: np.ndarray):
    kind, *rest = operand
    if kind == "const":
        arr = np.asarray(rest[0], np.float32)
        return np.float32(arr.reshape(-1)[0]) if arr.size == 1 else None
    name, vshape = rest
    return x if name == first and tuple(vshape) == tuple(shape) else None


def _binary(op: str, a, b):
    if op in ("Add", "Sum"):
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return a * b
    if op == "Div":
        return a / b
    return np.maximum(a, b) if op == "Max" else np.minimum(a, b)


def _unary(op: str, attrs: dict, v):
    f32 = np.float32
    if op == "Identity":
        return v
    if op == "Round":
        return np.rint(v)  # half to even
    if op == "Relu":
        return np.maximum(v, f32(0))
    if op == "Neg":
        return -v
    if op == "Abs":
        return np.abs(v)
    if op == "Clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        v = v if lo is None else np.maximum(v, f32(lo))
        return v if hi is None else np.minimum(v, f32(hi))
    if op == "HardSigmoid":
        return np.maximum(f32(0), np.minimum(f32(1), v * f32(attrs.get("alpha", 0.2)) + f32(attrs.get("beta", 0.5))))
    if op == "HardSwish":
        return v * np.maximum(f32(0), np.minimum(f32(1), v * f32(1.0 / 6.0) + f32(0.5)))
    return None
