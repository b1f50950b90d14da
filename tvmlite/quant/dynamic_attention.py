"""quantize-dynamic's attention form: a fused com.microsoft ``Attention`` (fuse-transformer) becomes
``QAttention``, onnxruntime's int8 attention: the packed [D, 3H] Q/K/V weight stored int8 (per
column), the input quantized at run time by the DynamicQuantizeLinear the pass shares between the
readers of one activation (uint8, with its scale and zero point), bias, mask and attributes carried
over. Q.K^T, softmax and .V stay float inside the kernel, as in onnxruntime's CPU implementation.

Why: with the projections as MatMulInteger, onnxruntime's AttentionFusion no longer matches (it
needs float MatMuls), so an int8 BERT file runs attention as separate Reshape/Transpose/MatMul/
Softmax nodes; QAttention is what onnxruntime's own quantizer writes for a fused float model.
"""
from __future__ import annotations

import numpy as np

from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Node

#: Attention attributes QAttention has too (the rest are refused by attention_operands)
_CARRIED = ("num_heads", "scale", "mask_filter_value")


def attention_operands(g: Graph, node: Node) -> tuple | str:
    """(packed weight [D, 3H], bias [3H] or None) of an Attention QAttention can take, or why not."""
    extra = [i for i in node.inputs[4:] if i]
    if extra:
        return "Attention with past state or attention_bias (QAttention takes neither)"
    for a in ("unidirectional", "do_rotary", "past_present_share_buffer"):
        if int(node.attrs.get(a, 0)):
            return f"Attention with {a}=1"
    if node.attrs.get("qkv_hidden_sizes"):
        return "Attention with qkv_hidden_sizes (QAttention packs three equal widths)"
    w = g.const_value(node.inputs[1])
    if w is None or w.dtype != np.float32 or w.ndim != 2:
        return "Attention weights are not a constant 2-D float32 matrix"
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = g.const_value(node.inputs[2])
        if bias is None:
            return "Attention bias is not constant"
    return w, bias


def write_qattention(b: Builder, node: Node, wq: str, w_zero: str, scales: np.ndarray, bias, x_quant: tuple,
                     base: str):
    """The QAttention replacing ``node``'s output (per-column or per-tensor ``scales``)."""
    xq, xs, xz = x_quant
    if bias is None:
        bias = np.zeros(scales.size if scales.size > 1 else b.graph.const_value(node.inputs[1]).shape[1], np.float32)
    s_name = b.const(scales.reshape(-1) if scales.size > 1 else scales.reshape(()), f"{base}_W_scale")
    mask = node.inputs[3] if len(node.inputs) > 3 else ""
    attrs = {k: node.attrs[k] for k in _CARRIED if k in node.attrs}
    return b.ms.QAttention(xq, wq, b.const(np.asarray(bias, np.float32), f"{base}_bias"), xs, s_name, mask, xz,
                           w_zero, name_hint=f"{base}_q", attrs=attrs)
