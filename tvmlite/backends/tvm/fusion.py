"""Epilogue fusion: elementwise ops that follow an anchor (bias, BN, activation, residual add)
through a value nobody else reads join the anchor's kernel, applied to its value on the way out,
so their data never makes a round trip through memory. An elementwise op behind a view (Reshape,
Flatten, ...) still joins, computed in the view's index space. Two activations that read their
input twice join as one op: a Gelu written out in elementwise ops (x * 0.5 * (1 + Erf(x / sqrt2)),
or its tanh form), and SiLU written x * Sigmoid(x) (every YOLO-style block), after any anchor:
conv, Gemm/MatMul, the lowered convs, an elementwise kernel. For a kernel that asks (``tables``:
the int8 conv, which reads the table from its integer output in a stage of its own), a value on
its quantization grid that only an elementwise chain of it reads (PP-OCR's HardSwish between
fake-quant pairs, reading the value twice) joins as one 256-entry table read (grid_table.py) where
the plain chain stops. Elsewhere a table read inside an epilogue costs more than the kernel it
saves: TVM computes a gather's index lane by lane (scalar code for the whole expression before
it), which made PP-OCR cls's fused convs 1.5-2.4x slower.
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite.backends.tvm.emitters.elementwise import EW_OPS, ew_ops
from tvmlite.backends.tvm.emitters.grid_table import chain_table
from tvmlite.backends.tvm.emitters.transformer import scalar_const
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
from tvmlite.errors import UnsupportedError

ONNX = ("", "ai.onnx")
CROSSABLE_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}  # an epilogue may continue behind them
#: an epilogue is one nested TE expression: TVM's C++ passes recurse over it, and a 10,000-op chain
#: overflowed their stack (SIGSEGV). Real epilogues are a few ops (bias, BN, activation, residual);
#: a longer chain continues in the next kernel.
MAX_EPILOGUE_OPS = 64


def absorb(low, value: str, out_shape: tuple, tables: bool = False) -> tuple[Epilogue, str, list]:
    """The elementwise consumers of ``value`` that fold into its producer's epilogue (marked
    absorbed in ``low``), the value the kernel then writes, and the nodes absorbed, in order;
    ``tables``: the epilogue may start with a table read of ``value``'s grid (`grid_chain`)."""
    g = low.g
    ops, taken = [], []
    kernel_shape = cur_shape = tuple(out_shape)
    while len(ops) < MAX_EPILOGUE_OPS:
        silu = silu_pair(low, value)
        if silu is not None:
            ops.append(EwOp("Silu", shape=None if cur_shape == kernel_shape else cur_shape))
            low.absorbed.update(silu)
            taken.extend(silu)
            value = silu[1].outputs[0]
            continue
        gelu = None if value in g.outputs else match_gelu(low, value)
        if gelu is not None:
            approximate, nodes, out = gelu
            op, attrs = ("HardSwish", {}) if approximate == "hardswish" else ("Gelu", {"approximate": approximate})
            ops.append(EwOp(op, attrs=attrs, shape=None if cur_shape == kernel_shape else cur_shape))
            low.absorbed.update(nodes)
            taken.extend(nodes)
            value = out
            continue
        cons = g.consumers(value)
        if len(cons) != 1 or g.num_uses(value) != 1 or value in g.outputs:
            table = grid_chain(low, value, cur_shape) if tables and not ops else None
            if table is None:
                break
            op, nodes, value = table
            ops.append(op)
            low.absorbed.update(nodes)
            taken.extend(nodes)
            continue
        c = cons[0]
        if c in low.absorbed or c.domain not in ONNX:
            break
        if c.op_type in CROSSABLE_VIEWS:
            # an elementwise op behind a view (lower-conv's MatMul -> Reshape -> BN, say) still
            # joins the epilogue, in the view's index space; the kernel writes the view's buffer
            view_shape = low.shapes.get(c.outputs[0])
            nxt = g.consumers(c.outputs[0])
            if view_shape is None or int(np.prod(view_shape)) != int(np.prod(cur_shape)) \
                    or c.outputs[0] in g.outputs:
                break
            one_ew = g.num_uses(c.outputs[0]) == 1 and len(nxt) == 1 and nxt[0].domain in ONNX \
                and nxt[0].op_type in EW_OPS and low.shapes.get(nxt[0].outputs[0]) == view_shape
            if not one_ew and silu_pair(low, c.outputs[0]) is None:
                break
            low.absorbed.add(c)
            taken.append(c)
            value, cur_shape = c.outputs[0], view_shape
            continue
        if c.op_type not in EW_OPS | {"Identity", "Dropout"}:
            break
        out = c.outputs[0]
        out_shape = cur_shape
        if low.shapes.get(out) != tuple(out_shape):
            break
        try:
            low.check_float(c)
            new, _ = ew_ops(low, c, value)
            for op in new:  # operands must be readable in the kernel's index space
                for o in op.operands:
                    shp = o[2] if o[0] == "value" else np.shape(o[1])
                    if len(shp) > len(out_shape) or any(
                            d not in (1, od) for d, od in zip(shp[::-1], out_shape[::-1])):
                        raise UnsupportedError("broadcast grows the output")
        except UnsupportedError:
            break
        for op in new:
            op.shape = None if cur_shape == kernel_shape else cur_shape
        ops.extend(new)
        low.absorbed.add(c)
        taken.append(c)
        value = out
    return Epilogue(ops), value, taken


def grid_chain(low, value: str, shape: tuple):
    """(EwOp "GridTable", nodes, value it makes) when ``value`` lies on a quantization grid and all
    its readers form one elementwise chain whose other operands are scalar constants or ``value``
    itself (each value inside read once, by the next link): the chain is then a function of the
    grid's integer (grid_table.chain_table), read from a table in the kernel that makes ``value``
    instead of running as a kernel of its own (the producer never stores ``value``: nothing else
    reads it). PP-OCR cls's HardSwish after each int8 pointwise conv and each float depthwise conv
    (Add, fake-quant, Mul by the value, fake-quant) was 18 such kernels. None otherwise."""
    g = low.g
    grid = low.grid(value) if value not in g.outputs else None
    cons = g.consumers(value)
    if grid is None or not cons or any(c in low.absorbed or c.domain not in ONNX or c.op_type not in EW_OPS
                                       for c in cons):
        return None
    for first in cons:
        ops, nodes, out = _chain_of(low, value, first, shape)
        if not nodes or any(c not in nodes for c in cons) or len(ops) > MAX_EPILOGUE_OPS:
            continue
        table = chain_table(value, shape, ops, grid)
        if table is not None:
            return EwOp("GridTable", attrs={"grid": grid, "table": table}), nodes, out
    return None


def _chain_of(low, value: str, node, shape: tuple) -> tuple[list, list, str]:
    """(EwOps, nodes, last value) of the elementwise chain from ``node`` (a reader of ``value``)
    on: each link of ``shape`` reads the last one's value, its only reader."""
    g = low.g
    ops, nodes, running = [], [], value
    while node is not None and node.domain in ONNX and node.op_type in EW_OPS and node not in low.absorbed \
            and low.shapes.get(node.outputs[0]) == tuple(shape):
        try:
            low.check_float(node)
            new, _ = ew_ops(low, node, running)
        except UnsupportedError:
            break
        ops.extend(new)
        nodes.append(node)
        running = node.outputs[0]
        nxt = g.consumers(running)
        if running in g.outputs or len(nxt) != 1 or g.num_uses(running) != 1:
            break
        node = nxt[0]
    return ops, nodes, running


def silu_pair(low, value: str):
    """(Sigmoid, Mul) when ``value`` is read only by Sigmoid(value) and Mul(value, that sigmoid),
    both float and of ``value``'s shape, and neither intermediate is a graph output; else None
    (the plain chain stops at a value read twice)."""
    g = low.g
    if value in g.outputs or g.num_uses(value) != 2:
        return None
    cons = g.consumers(value)
    if len(cons) != 2 or any(c in low.absorbed or c.domain not in ONNX for c in cons):
        return None
    sig = next((c for c in cons if c.op_type == "Sigmoid"), None)
    mul = next((c for c in cons if c.op_type == "Mul"), None)
    if sig is None or mul is None:
        return None
    s = sig.outputs[0]
    if s in g.outputs or g.num_uses(s) != 1 or sorted(mul.inputs) != sorted([value, s]):
        return None
    shape = low.shapes.get(value)
    if shape is None or low.shapes.get(mul.outputs[0]) != shape or low.shapes.get(s) != shape:
        return None
    try:
        low.check_float(sig)
        low.check_float(mul)
    except UnsupportedError:
        return None
    return sig, mul


GELU_PARTS = {"Div", "Mul", "Add", "Sub", "Erf", "Tanh", "Pow", "Clip"}  # Clip: HardSwish spelled out
MAX_GELU_NODES = 12  # the tanh form is 8-9 nodes; anything longer is not one Gelu
_PROBE = np.linspace(-6.0, 6.0, 97)


def match_gelu(low, x: str):
    """("none" | "tanh", nodes, output) when the only readers of ``x`` are a Gelu spelled out in
    Div/Mul/Add/Sub/Pow (by scalar constants), Erf and Tanh, else None. The nodes that read only
    ``x``, their own values and scalar constants are collected; the largest closed part of them
    (nothing inside read from outside but its output) that evaluates as Gelu on probe values is
    the match, so any order of the factors and constants is recognised, and nothing else is."""
    g = low.g
    shape = low.shapes.get(x)
    if shape is None or g.num_uses(x) < 2:
        return None
    region, made = [], {x}
    grew = True
    while grew and len(region) < MAX_GELU_NODES:
        grew = False
        for v in list(made):
            for c in g.consumers(v):
                if c in region or c in low.absorbed or c.domain not in ONNX or c.op_type not in GELU_PARTS \
                        or len(c.outputs) != 1 or low.shapes.get(c.outputs[0]) != shape \
                        or not all(n in made or scalar_const(low, n) is not None for n in c.inputs if n):
                    continue
                region.append(c)
                made.add(c.outputs[0])
                grew = True
    if not any(c.op_type in ("Erf", "Tanh", "Clip") for c in region):
        return None
    for end in reversed(region):
        nodes = _ancestors(g, end, region)
        inside = {n.outputs[0] for n in nodes}
        if len(nodes) > MAX_GELU_NODES or any(c not in nodes for v in inside - {end.outputs[0]} | {x}
                                                for c in g.consumers(v)) \
                or any(v in g.outputs for v in inside - {end.outputs[0]}):
            continue
        got = _evaluate(low, nodes, x, end.outputs[0])
        for approximate, ref in _GELU_REFS:
            if got is not None and np.allclose(got, ref, rtol=1e-5, atol=1e-6):
                ordered = [n for n in region if n in nodes]
                return approximate, ordered, end.outputs[0]
    return None


def _ancestors(g, end, region):
    todo, seen = [end], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(p for p in (g.producer(v) for v in n.inputs if v) if p in region)
    return seen


_NUMPY = {"Div": np.divide, "Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Pow": np.power,
          "Erf": np.vectorize(math.erf), "Tanh": np.tanh, "Clip": lambda x, lo=None, hi=None: np.clip(x, lo, hi)}


def _evaluate(low, nodes, x, out):
    vals = {x: _PROBE}
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(v in vals or scalar_const(low, v) is not None for v in n.inputs if v)]
        if not ready:
            return None
        for n in ready:
            args = [vals[v] if v in vals else scalar_const(low, v) for v in n.inputs if v]
            with np.errstate(all="ignore"):
                vals[n.outputs[0]] = np.asarray(_NUMPY[n.op_type](*args), np.float64)
            pending.remove(n)
    return vals.get(out)


def _gelu_ref(tanh: bool):
    t = _PROBE
    if tanh:
        return 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3)))
    return 0.5 * t * (1 + np.vectorize(math.erf)(t / math.sqrt(2)))


# what each Gelu form gives on the probe values: match_gelu compares every candidate region with
# them (every value read twice is a candidate), so they are computed once
# "hardswish": x * Clip(x + 3, 0, 6) / 6 (PaddleOCR's MobileNetV3 exports), fused as one HardSwish
_GELU_REFS = (("none", _gelu_ref(False)), ("tanh", _gelu_ref(True)),
              ("hardswish", _PROBE * np.clip(_PROBE + 3, 0, 6) / 6))
