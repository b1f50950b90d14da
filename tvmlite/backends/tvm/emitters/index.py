"""Ops on integer and bool tensors, and the dtype-generic ones: Gather (the embedding lookup; any
data dtype, int32/int64 indices), Cast between float32 / int / bool, comparisons, And/Or/Xor/Not,
Where, Expand, Mod, and the integer forms of Add/Sub/Mul/Div/Neg/Abs/Min/Max (elementwise.py hands
them here).

Integer and bool values live in buffers of their own dtype (bool, uint8, int8, int32, int64)
between kernels and host calls, so shape arithmetic on a run-time value stays in kernels. Where
the input shapes fix such values, prepare.py has already folded them to constants: Shape, Size,
and everything they feed (Gather, Concat, Range, ConstantOfShape, Equal, Where, Expand...).
Shape/Size left unfolded read a value of no static shape, and Range and ConstantOfShape left
unfolded make an output whose shape depends on run-time values: they stay host calls, saying so."""
from __future__ import annotations

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.emitters.tensor import axis_of, kernel_dtype
from tvmlite.errors import UnsupportedError

#: ONNX TensorProto element types a Cast may target
CAST_TO = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool"}
COMPARISONS = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
LOGICAL = ("And", "Or", "Xor", "Not")
#: integer arithmetic (ONNX semantics: wrap-around, Div truncates toward zero as onnxruntime does)
INT_ARITH = ("Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min", "Max", "Sum")


def typed_operand(low, name: str, what: str):
    """("const", array) or ("value", name, shape, dtype) of an operand of any kernel dtype."""
    dt = kernel_dtype(low, name, what)
    c = low.const(name)
    if c is not None:
        return ("const", c)
    return ("value", name, low.shape(name), dt)


def int_operand(low, name: str, what: str):
    """An integer/bool operand (Gather's indices, say), as `typed_operand` gives it."""
    o = typed_operand(low, name, what)
    if (o[1].dtype.name if o[0] == "const" else o[3]) == "float32":
        raise UnsupportedError(f"{what} of dtype float32")
    return o


def emit_mapped(low, node, op: str, names, attrs=None) -> None:
    """A kernel computing ``node``'s output element by element from ``names`` (ONNX-broadcast to
    the output shape) with ``op`` of kernels/index.py's table."""
    out = node.outputs[0]
    dt = kernel_dtype(low, out, "output")
    operands = [typed_operand(low, n, f"input {i}") for i, n in enumerate(names)]
    out_shape = low.shape(out)
    if 0 in out_shape:
        raise UnsupportedError("empty output")
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.index import mapped

        return mapped(name, op, dict(attrs or {}), operands, out_shape, dt, out_value=out, lanes=low.lanes)
    low.add(make, node, out)


def emit_int_elementwise(low, node) -> None:
    """Integer arithmetic: ``node`` is an elementwise op whose output is not float32."""
    dt = kernel_dtype(low, node.outputs[0], "output")
    if node.op_type not in INT_ARITH or dt == "bool":
        raise UnsupportedError(f"{node.op_type} on dtype {dt}")
    names = [n for n in node.inputs if n]
    for i, n in enumerate(names):
        if kernel_dtype(low, n, f"input {i}") != dt:
            raise UnsupportedError(f"input {i} of dtype {low.dtype(n)} for an output of {dt}")
    emit_mapped(low, node, node.op_type, names, node.attrs)


@emitter(*COMPARISONS, *LOGICAL, "Where", checks_dtype=True)
def emit_logic(low, node) -> None:
    emit_mapped(low, node, node.op_type, list(node.inputs))


@emitter("Mod", checks_dtype=True)
def emit_mod(low, node) -> None:
    if kernel_dtype(low, node.outputs[0], "output") == "float32":
        raise UnsupportedError("float Mod (only integer Mod is emitted)")
    emit_int_elementwise(low, node)


@emitter("Expand", checks_dtype=True)
def emit_expand(low, node) -> None:
    """The output shape (inferred from the constant shape input) fixes the broadcast."""
    if low.const(node.inputs[1]) is None:
        raise UnsupportedError("non-constant shape")
    emit_mapped(low, node, "Identity", [node.inputs[0]])


@emitter("Shape", "Size", checks_dtype=True)
def emit_shape(low, node) -> None:
    # prepare.py folds every Shape/Size of a static value (graph outputs too): one left has none
    raise UnsupportedError("an input shape is not static")


@emitter("Range", "ConstantOfShape", checks_dtype=True)
def emit_run_time_shape(low, node) -> None:
    raise UnsupportedError("output shape depends on run-time values (folded when its inputs are constant)")


@emitter("Gather", checks_dtype=True)
def emit_gather(low, node) -> None:
    data, ids = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    dt = kernel_dtype(low, data, "data")
    idx = int_operand(low, ids, "indices")
    if (idx[1].dtype.name if idx[0] == "const" else idx[3]) == "bool":
        raise UnsupportedError("bool indices")
    ds = low.shape(data)
    axis = axis_of(node, ds)
    ish = low.shape(ids)
    if 0 in low.shape(out):
        raise UnsupportedError("empty output")
    c = low.const(data)
    src = c if c is not None else data
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.index import gather

        return gather(name, src, ds, idx, ish, axis=axis, out_value=out, lanes=low.lanes, dtype=dt)
    low.add(make, node, out)


@emitter("Cast", checks_dtype=True)
def emit_cast(low, node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    to = CAST_TO.get(int(node.attrs["to"]))
    if to is None:
        raise UnsupportedError(f"Cast to ONNX type {int(node.attrs['to'])} (emitted: {', '.join(CAST_TO.values())})")
    if kernel_dtype(low, x, "Cast input") == to:
        low.views[out] = low.views.get(x, x)  # to its own dtype: the same buffer
        return
    emit_mapped(low, node, "Cast", [x], {"to": to})
