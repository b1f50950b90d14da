"""Gemm and MatMul: constant weights on the right make a dense GEMM with packed weights; constant
weights on the left (lower-conv, Winograd) a batched GEMM with both operands packed; two runtime
operands a batched MatMul."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.kernels.defs import EwOp
from tvmlite.errors import UnsupportedError


@emitter("Gemm")
def emit_gemm(low, node) -> None:
    a = node.attrs
    A, B = node.inputs[0], node.inputs[1]
    Cn = node.inputs[2] if len(node.inputs) > 2 else ""
    w = low.const(B)
    if w is None or low.const(A) is not None:
        raise UnsupportedError("Gemm whose B is not constant")
    if a.get("transB", 0):
        w = w.T
    alpha = float(a.get("alpha", 1.0))
    # scaled in float64 then rounded once; alpha 1 (nearly every Gemm) copies nothing here: VGG-19's
    # fc6 weights are 411 MB, and two float64 copies of them made most of its build's peak memory
    w = (w.astype(np.float64) * alpha).astype(np.float32) if alpha != 1.0 else np.asarray(w, np.float32)
    n_out = w.shape[1]
    bias = None
    extra = []
    if Cn:
        c = low.const(Cn)
        if c is None:
            extra = [("value", Cn)]
        else:
            c = c.astype(np.float64) * float(a.get("beta", 1.0))
            if c.size == 1 or c.shape in ((n_out,), (1, n_out)):
                bias = np.broadcast_to(c.reshape(-1), (n_out,)).astype(np.float32)
            else:
                extra = [("const", c.astype(np.float32))]
    if extra and extra[0][0] == "value" and float(a.get("beta", 1.0)) != 1.0:
        raise UnsupportedError("Gemm with beta != 1 and a runtime C")
    out = node.outputs[0]
    epi, final, labels = low.epilogue(node)
    if extra:
        op = EwOp("Add", [("value", Cn, low.shape(Cn)) if extra[0][0] == "value" else extra[0]])
        epi.ops.insert(0, op)
    _dense(low, node, A, low.shape(A), w, bias, final, low.shape(out), epi, labels,
           trans_a=bool(a.get("transA", 0)))


def _dense(low, node, A, a_shape, w, bias, final, out_shape, epi, labels, trans_a=False):
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.gemm import dense_gemm

        return dense_gemm(name, A, a_shape, w, bias, out_value=final, out_shape=out_shape,
                          epilogue=epi, lanes=low.lanes, trans_a=trans_a)
    low.add(make, node, final, labels)


@emitter("MatMul")
def emit_matmul(low, node) -> None:
    A, B = node.inputs
    w = low.const(B)
    out = node.outputs[0]
    a_shape = low.shape(A)
    if w is not None and low.const(A) is None and w.ndim == 2 and len(a_shape) >= 2:
        epi, final, labels = low.epilogue(node)
        _dense(low, node, A, a_shape, np.asarray(w, np.float32), None, final, low.shape(out), epi, labels)
        return
    a_const = low.const(A)
    if a_const is not None and w is None:  # weights on the left (lower-conv, Winograd)
        b_shape, o_shape = low.shape(B), low.shape(out)
        if a_const.ndim < 2 or len(b_shape) < 2:
            raise UnsupportedError("MatMul with 1-D operands")
        epi, final, labels = low.epilogue(node)
        name = low.kernel_name(node)
        a32 = a_const.astype(np.float32)

        def make_left():
            from tvmlite.backends.tvm.kernels.gemm import const_a_batch_gemm

            return const_a_batch_gemm(name, a32, B, b_shape, out_value=final, out_shape=o_shape,
                                      epilogue=epi, lanes=low.lanes)
        low.add(make_left, node, final, labels)
        return
    if w is not None or a_const is not None:
        raise UnsupportedError("MatMul with a constant operand that is not a 2-D right-hand side")
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    b_shape, o_shape = low.shape(B), low.shape(out)
    soft = _softmax_of(low, final, o_shape)
    if soft is not None:  # attention: scores, scale, mask and Softmax in one kernel
        low.absorbed.add(soft)
        low.taken.append(soft)
        after, probs, labels_after = low.epilogue(soft)

        def make_attention():
            from tvmlite.backends.tvm.kernels.transformer import scores_softmax

            return scores_softmax(name, A, a_shape, B, b_shape, out_value=probs, out_shape=o_shape, epilogue=epi,
                                  after=after, lanes=low.lanes)
        low.add(make_attention, node, probs, labels + [soft.label] + labels_after)
        return

    def make():
        from tvmlite.backends.tvm.kernels.gemm import batch_matmul

        return batch_matmul(name, A, a_shape, B, b_shape, out_value=final, out_shape=o_shape,
                            epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)


def _softmax_of(low, value, shape):
    """The Softmax over the last axis that alone reads ``value`` (of ``shape``), when the fused
    scores kernel takes it: rows a whole number of vectors long, batch dims present."""
    g = low.g
    cons = g.consumers(value)
    if len(shape) < 2 or len(cons) != 1 or g.num_uses(value) != 1 or value in g.outputs \
            or low.shapes.get(value) != tuple(shape):
        return None
    s = cons[0]
    if s.op_type != "Softmax" or s.domain not in ("", "ai.onnx") or s in low.absorbed:
        return None
    axis = int(s.attrs.get("axis", -1 if low.opset >= 13 else 1))
    if axis % len(shape) != len(shape) - 1 or shape[-1] % low.lanes or low.shapes.get(s.outputs[0]) != tuple(shape):
        return None
    return s
