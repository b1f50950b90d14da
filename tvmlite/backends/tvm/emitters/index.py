"""Ops with integer or bool operands: Gather (float data, int32/int64 indices; the embedding
lookup) and Cast of an integer/bool graph input to float32. An integer operand must be a constant
or a graph input: integer values made at run time by other nodes are host values (their buffers
are float32 only), so such a node stays a host call."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.emitters.tensor import axis_of
from tvmlite.errors import UnsupportedError

INT_INPUTS = ("int64", "int32", "uint8", "int8", "bool")


def int_operand(low, name: str, what: str):
    """("const", array) or ("value", name, shape, dtype) of an integer/bool operand."""
    c = low.const(name)
    if c is not None:
        if c.dtype.kind not in "iub":
            raise UnsupportedError(f"{what} of dtype {c.dtype}")
        return ("const", c)
    dt = low.g.value(name).dtype
    if dt is None or np.dtype(dt).name not in INT_INPUTS:
        raise UnsupportedError(f"{what} of dtype {dt}")
    if name not in low.g.inputs:
        raise UnsupportedError(f"{what} made at run time (only graph inputs are read as integer buffers)")
    return ("value", name, low.shape(name), np.dtype(dt).name)


@emitter("Gather", checks_dtype=True)
def emit_gather(low, node) -> None:
    data, ids = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    low.check_float(node)  # the data and the output: float32
    idx = int_operand(low, ids, "indices")
    if idx[0] == "const" and idx[1].dtype.kind == "b":
        raise UnsupportedError("bool indices")
    ds = low.shape(data)
    axis = axis_of(node, ds)
    ish = low.shape(ids)
    if 0 in low.shape(out):
        raise UnsupportedError("empty output")
    c = low.const(data)
    src = c.astype(np.float32) if c is not None else data
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.index import gather

        return gather(name, src, ds, idx, ish, axis=axis, out_value=out, lanes=low.lanes)
    low.add(make, node, out)


@emitter("Cast", checks_dtype=True)
def emit_cast(low, node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    if int(node.attrs["to"]) != 1:  # TensorProto.FLOAT
        raise UnsupportedError("Cast to another dtype than float32")
    dt = low.g.value(x).dtype
    if dt is not None and np.dtype(dt) == np.float32:
        low.views[out] = low.views.get(x, x)  # float32 to float32: the same buffer
        return
    src = int_operand(low, x, "Cast input")
    if src[0] == "const":
        raise UnsupportedError("constant computation left unfolded")
    shape = low.shape(x)
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.index import cast_to_float

        return cast_to_float(name, x, shape, src[3], out_value=out, lanes=low.lanes)
    low.add(make, node, out)
