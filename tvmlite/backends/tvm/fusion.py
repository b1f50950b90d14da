"""Epilogue fusion: elementwise ops that follow an anchor (bias, BN, activation, residual add)
through a value nobody else reads join the anchor's kernel, applied to its value on the way out,
so their data never makes a round trip through memory. An elementwise op behind a view (Reshape,
Flatten, ...) still joins, computed in the view's index space.
"""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.elementwise import EW_OPS, ew_ops
from tvmlite.backends.tvm.kernels.defs import Epilogue
from tvmlite.errors import UnsupportedError

ONNX = ("", "ai.onnx")
CROSSABLE_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}  # an epilogue may continue behind them
#: an epilogue is one nested TE expression: TVM's C++ passes recurse over it, and a 10,000-op chain
#: overflowed their stack (SIGSEGV). Real epilogues are a few ops (bias, BN, activation, residual);
#: a longer chain continues in the next kernel.
MAX_EPILOGUE_OPS = 64


def absorb(low, value: str, out_shape: tuple) -> tuple[Epilogue, str, list]:
    """The elementwise consumers of ``value`` that fold into its producer's epilogue (marked
    absorbed in ``low``), the value the kernel then writes, and the nodes absorbed, in order."""
    g = low.g
    ops, taken = [], []
    kernel_shape = cur_shape = tuple(out_shape)
    while len(ops) < MAX_EPILOGUE_OPS:
        cons = g.consumers(value)
        if len(cons) != 1 or g.num_uses(value) != 1 or value in g.outputs:
            break
        c = cons[0]
        if c in low.absorbed or c.domain not in ONNX:
            break
        if c.op_type in CROSSABLE_VIEWS:
            # an elementwise op behind a view (lower-conv's MatMul -> Reshape -> BN, say) still
            # joins the epilogue, in the view's index space; the kernel writes the view's buffer
            view_shape = low.shapes.get(c.outputs[0])
            nxt = g.consumers(c.outputs[0])
            if view_shape is None or int(np.prod(view_shape)) != int(np.prod(cur_shape)) \
                    or g.num_uses(c.outputs[0]) != 1 or c.outputs[0] in g.outputs \
                    or len(nxt) != 1 or nxt[0].domain not in ONNX or nxt[0].op_type not in EW_OPS \
                    or low.shapes.get(nxt[0].outputs[0]) != view_shape:
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
