"""fuse-transformer: BERT-style blocks written as onnxruntime's fused com.microsoft ops.

- Self-attention (Q/K/V projections, heads, scaled masked softmax, context merge; see
  passes/attention_match.py) -> ``Attention`` with one packed [D, 3H] weight. Why: onnxruntime fuses
  this itself in a float model, but not once the projections are int8 (its AttentionFusion needs
  float MatMuls), so ``quantize-dynamic(attention=true)`` runs this pass first and then writes
  ``QAttention``; and the file says what it computes to other runtimes that know the contrib ops.
- ``Add(a, b) -> LayerNormalization`` over the last axis -> ``SkipLayerNormalization`` (a constant
  1-D bias added to either operand just before is folded in; the sum kept as its fourth output when
  read elsewhere).
- Exact (erf) GELU, as the Gelu op or spelled out ``x * 0.5 * (1 + erf(x / sqrt 2))`` in the usual
  associations -> ``BiasGelu(x, b)`` when ``x = y + b`` with a constant 1-D b, else ``Gelu``.

Every op written has a NumPy reference kernel (tvmlite/ops/ms_transformer.py) checked against
onnxruntime. A block that does not fit is left alone with a skip reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvmlite.export.shapes import infer_shapes
from tvmlite.ir.builder import MS_DOMAIN, Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.passes.attention_match import Refused, match_attention, scalar
from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import DeadCodeElimination, is_onnx

INT32 = 6


@register_pass
class FuseTransformer(Pass):
    """Attention, SkipLayerNormalization and (Bias)Gelu of onnxruntime's com.microsoft domain."""

    name = "fuse-transformer"
    cleanup = True

    @dataclass
    class Options:
        attention: bool = True
        skip_layernorm: bool = True
        gelu: bool = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        infer_shapes(model)  # ranks and head splits are read from the inferred shapes
        g = model.graph
        b = Builder(model)
        if self.options.attention:
            masks: dict = {}
            for sm in [n for n in g.toposort() if is_onnx(n, "Softmax")]:
                try:
                    m = match_attention(g, sm)
                except Refused as e:
                    result.skip(sm, f"attention: {e}")
                    continue
                _write_attention(b.at(before=sm), g, m, masks)
                result.rewrote(sm, fused="Attention", heads=m.heads, scale=round(m.scale, 6),
                               mask="raw 2-D" if m.mask_source else "none")
            DeadCodeElimination().run(model)
        if self.options.skip_layernorm:
            for ln in [n for n in g.toposort() if is_onnx(n, "LayerNormalization")]:
                why = _skip_layernorm(b.at(before=ln), g, ln)
                if why:
                    result.skip(ln, f"skip-layernorm: {why}")
                else:
                    result.rewrote(ln, fused="SkipLayerNormalization")
        if self.options.gelu:
            for erf in [n for n in g.toposort() if is_onnx(n, "Erf", "Gelu")]:
                if erf.graph is None:
                    continue
                why = _gelu(b.at(before=erf), g, erf)
                if why:
                    result.skip(erf, f"gelu: {why}")
                else:
                    result.rewrote(erf, fused="Gelu")
        DeadCodeElimination().run(model)
        result.stats["fused"] = len(result.rewritten)
        return result


def _write_attention(b: Builder, g: Graph, m, masks: dict) -> None:
    w = np.concatenate(m.weights, axis=1).astype(np.float32)
    bias = np.concatenate(m.biases).astype(np.float32)
    base = g.producer(m.out).name or m.out
    mask = ""
    if m.mask_source:
        if m.mask_source not in masks:  # one int32 cast per mask, shared by all layers
            src = m.mask_source
            masks[src] = src if g.value(src).dtype == np.int32 else b.op.Cast(src, to=INT32, name_hint=f"{src}_int32")
        mask = masks[m.mask_source]
    attrs = {"num_heads": m.heads, "scale": m.scale}
    if m.mask_source:
        attrs["mask_filter_value"] = m.mask_filter
    att = b.ms.Attention(m.x, b.const(w, f"{base}_qkv_weight"), b.const(bias, f"{base}_qkv_bias"), mask,
                         name_hint=f"{base}_attention", attrs=attrs)
    b.replace(g.producer(m.out), {m.out: att})


def _bias_of(g: Graph, name: str) -> tuple[str, str] | None:
    """(y, b) when ``name`` = Add(y, b) with b a constant 1-D float and ``name`` read once."""
    add = g.producer(name)
    if add is None or not is_onnx(add, "Add") or g.num_uses(name) != 1 or name in g.outputs:
        return None
    for i in (0, 1):
        c = g.const_value(add.inputs[1 - i])
        if c is not None and c.ndim == 1 and c.dtype == np.float32 and g.const_value(add.inputs[i]) is None:
            return add.inputs[i], add.inputs[1 - i]
    return None


def _skip_layernorm(b: Builder, g: Graph, ln: Node) -> str | None:
    x = ln.inputs[0]
    add = g.producer(x)
    if add is None or not is_onnx(add, "Add"):
        return "input is not an Add"
    shape = g.value(x).shape
    rank = len(shape) if shape else 0
    if rank < 2 or int(ln.attrs.get("axis", -1)) not in (-1, rank - 1) or int(ln.attrs.get("stash_type", 1)) != 1:
        return "not normalising the last axis (float32 statistics)"
    if any(o and g.num_uses(o) for o in ln.outputs[1:]):
        return "mean/inv_std_dev outputs are read"
    a, s = add.inputs
    if g.value(a).shape != shape or g.value(s).shape != shape or g.const_value(a) is not None \
            or g.const_value(s) is not None:
        return "the Add's operands are not two computed tensors of the output's shape (broadcast or constant)"
    gamma, beta = ln.inputs[1], ln.inputs[2] if len(ln.inputs) > 2 else ""
    for v in (gamma, beta):
        if v and (g.value(v).shape is None or len(g.value(v).shape) != 1):
            return "scale/bias are not 1-D"
    bias = ""
    for i, v in enumerate((a, s)):
        got = _bias_of(g, v)
        if got is not None:
            (a, s), bias = ((got[0], s) if i == 0 else (a, got[0])), got[1]
            break
    sum_read = g.num_uses(x) > 1 or x in g.outputs
    outs = [b.value_name(f"{ln.name or ln.outputs[0]}_fused"), "", ""]
    outs += [b.value_name(f"{x}_sum")] if sum_read else []
    node = b.make_node("SkipLayerNormalization", [a, s, gamma, beta, bias], outs,
                       {"epsilon": float(ln.attrs.get("epsilon", 1e-5))}, domain=MS_DOMAIN,
                       name_hint=f"{ln.name or 'ln'}_skip")
    b.replace(ln, {ln.outputs[0]: node.outputs[0]})
    if sum_read:
        g.replace_all_uses(x, node.outputs[3])
    return None


def _near(v: float | None, want: float) -> bool:
    return v is not None and math.isclose(v, want, rel_tol=1e-4)


def _only(g: Graph, name: str, op: str) -> Node | None:
    readers = g.consumers(name)
    if len(readers) != 1 or name in g.outputs or not is_onnx(readers[0], op):
        return None
    return readers[0]


def _other(node: Node, name: str) -> str:
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def _gelu_spelled(g: Graph, erf: Node) -> tuple[str, Node, list] | str:
    """(x, the node producing GELU(x), the GELU's nodes) for erf's ``x * 0.5 * (1 + erf(x / sqrt 2))`` spellings."""
    pre = g.producer(erf.inputs[0])
    if pre is None or not ((is_onnx(pre, "Div") and _near(scalar(g, pre.inputs[1]), math.sqrt(2)))
                           or (is_onnx(pre, "Mul") and _near(scalar(g, _other(pre, pre.inputs[0])), 1 / math.sqrt(2))
                               or is_onnx(pre, "Mul") and _near(scalar(g, pre.inputs[0]), 1 / math.sqrt(2)))):
        return "erf's input is not x / sqrt(2)"
    x = pre.inputs[0] if scalar(g, pre.inputs[0]) is None else pre.inputs[1]
    one = _only(g, erf.outputs[0], "Add")
    if one is None or not _near(scalar(g, _other(one, erf.outputs[0])), 1.0):
        return "erf is not followed by + 1"
    m1 = _only(g, one.outputs[0], "Mul")
    if m1 is None:
        return "1 + erf is not multiplied"
    f = _other(m1, one.outputs[0])
    if f == x:  # (x * (1 + erf)) * 0.5
        m2 = _only(g, m1.outputs[0], "Mul")
        if m2 is None or not _near(scalar(g, _other(m2, m1.outputs[0])), 0.5):
            return "x * (1 + erf) is not halved"
        return x, m2, [pre, erf, one, m1, m2]
    half = g.producer(f)  # (x * 0.5) * (1 + erf)
    if half is not None and is_onnx(half, "Mul") and g.num_uses(f) == 1 and x in half.inputs \
            and _near(scalar(g, _other(half, x)), 0.5):
        return x, m1, [pre, erf, one, m1, half]
    return "not x * 0.5 * (1 + erf(x / sqrt 2))"


def _gelu(b: Builder, g: Graph, node: Node) -> str | None:
    if node.op_type == "Gelu":
        if node.attrs.get("approximate", "none") != "none":
            return "tanh approximation (FastGelu computes another formula)"
        x, last, own = node.inputs[0], node, [node]
    else:
        got = _gelu_spelled(g, node)
        if isinstance(got, str):
            return got
        x, last, own = got
    # a bias Add before the GELU goes into BiasGelu when only the GELU's own nodes read its sum
    add = g.producer(x)
    fused = None
    if add is not None and is_onnx(add, "Add") and x not in g.outputs and all(
            any(r is n for n in own) for r in g.consumers(x)):
        for i in (0, 1):
            c = g.const_value(add.inputs[1 - i])
            if c is not None and c.ndim == 1 and c.dtype == np.float32 and g.const_value(add.inputs[i]) is None:
                fused = b.ms.BiasGelu(add.inputs[i], add.inputs[1 - i], name_hint=f"{last.name or x}_biasgelu")
                break
    if fused is None:
        fused = b.ms.Gelu(x, name_hint=f"{last.name or x}_gelu")
    b.replace(last, {last.outputs[0]: fused})
    return None
