"""Reductions along axes: Softmax / LogSoftmax (opset-dependent axis semantics), Reduce* (axes as
an attribute or a constant input), LRN."""
from __future__ import annotations

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.emitters.transformer import emit_decomposed_layer_norm
from tvmlite.backends.tvm.kernels.defs import Epilogue
from tvmlite.errors import UnsupportedError
from tvmlite.ops.reduce import keeps_dims


@emitter("Softmax", "LogSoftmax")
def emit_softmax(low, node) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    axis = int(node.attrs.get("axis", -1 if low.opset >= 13 else 1))
    name = low.kernel_name(node)
    out = node.outputs[0]
    opset = low.opset
    log = node.op_type == "LogSoftmax"

    def make():
        from tvmlite.backends.tvm.kernels.reduce import softmax

        return softmax(name, x, xs, axis=axis, log=log, opset=opset, out_value=out, epilogue=Epilogue(),
                       lanes=low.lanes)
    low.add(make, node, out)


@emitter("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSum")
def emit_reduce(low, node) -> None:
    if node.op_type == "ReduceMean" and emit_decomposed_layer_norm(low, node):
        return
    a = node.attrs
    x = node.inputs[0]
    xs = low.shape(x)
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = low.const(node.inputs[1])
        if axes is None:
            raise UnsupportedError("non-constant axes")
        axes = [int(v) for v in axes.reshape(-1)]
    else:
        axes = list(a.get("axes") or [])
    if not axes and a.get("noop_with_empty_axes", 0):
        raise UnsupportedError("noop_with_empty_axes")
    keep = keeps_dims(a.get("keepdims", 1))
    out = node.outputs[0]
    out_shape = low.shape(out)
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    op = node.op_type

    def make():
        from tvmlite.backends.tvm.kernels.reduce import reduce

        return reduce(name, x, xs, op=op, axes=axes, keepdims=keep, out_value=final, out_shape=out_shape,
                      epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)


@emitter("LRN")
def emit_lrn(low, node) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    a = node.attrs
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.reduce import lrn

        return lrn(name, x, xs, size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                   beta=float(a.get("beta", 0.75)), bias=float(a.get("bias", 1.0)), out_value=final,
                   epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)
