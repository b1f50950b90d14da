"""fuse-hardswish: HardSwish written out in element-wise ops -> one activation node.

Exporters (paddle2onnx, older torch) write hardswish(x) = x * clip(x + 3, 0, 6) / 6 as four nodes
(Add, Clip, Mul, Div). onnxruntime runs each as its own pass over the tensor and, between NCHWc
convolutions, reorders the layout around them; HardSwish (opset >= 14) or, below, HardSigmoid(x,
alpha=1/6, beta=0.5) times x is one or two kernels it keeps in the convolution's layout.
Four Conv+hardswish layers of 48 channels at 160x160 in onnxruntime, 1 and 2 threads, interleaved
medians on a loaded 2-core host (load 6-7): HardSwish 0.57x / 0.55x of the four-node form,
HardSigmoid + Mul 0.56x / 0.58x. PP-OCRv4 det has 24 of them (and no other activation
between most of its convolutions).

Matched forms (``k`` = 6, or 1/6 multiplied): (x * clip(x + 3, 0, 6)) / k, x * (clip(x + 3, 0, 6) / k),
and, from opset 14, x * HardSigmoid(x, 1/6, 0.5). The constants must be scalars (one element, no
broadcast beyond x's rank) of x's float type with exactly those values; anything else is skipped
with the reason. The result differs from the four nodes by float rounding only (a few ulp).
"""
from __future__ import annotations

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.pattern import Const, Match, Op, Rule, apply_rules
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model

#: HardSigmoid's alpha and beta for hardswish (ONNX's HardSwish definition)
ALPHA, BETA = 1.0 / 6.0, 0.5
HARDSWISH_OPSET = 14

_CLIP = Op("Clip", Op("Add", "x", Const("three"), commute=True, name="add"), ..., name="clip")
PATTERNS = {
    # (x * clip(x + 3, 0, 6)) / 6, or * (1/6)
    "x*clip/6": Op(("Div", "Mul"), Op("Mul", "x", _CLIP, commute=True, name="mul"), Const("k"), commute=True,
                   name="scale"),
    # x * (clip(x + 3, 0, 6) / 6), or * (1/6)
    "x*(clip/6)": Op("Mul", "x", Op(("Div", "Mul"), _CLIP, Const("k"), commute=True, name="scale"), commute=True,
                     name="mul"),
}
HARDSIGMOID_MUL = Op("Mul", "x", Op("HardSigmoid", "x", name="hsig"), commute=True, name="mul")


def _scalar(g: Graph, m: Match, key: str) -> float | None:
    """The value of the one-element constant ``key`` when it cannot broadcast x to a larger rank and
    has x's float type; else None."""
    c = m.const(key)
    x = g.value(m["x"])
    rank = len(x.shape) if x.shape is not None else None
    if c.size != 1 or c.dtype.kind != "f" or (c.ndim and (rank is None or c.ndim > rank)):
        return None
    if x.elem_type and c.dtype != x.dtype:
        return None
    return float(c.reshape(()))


def _clip_bounds(g: Graph, clip) -> tuple[float, float] | None:
    """Clip's (min, max) when both are given as constants (inputs from opset 11, attributes before)."""
    if len(clip.inputs) == 1:
        lo, hi = clip.attrs.get("min"), clip.attrs.get("max")
        return (float(lo), float(hi)) if lo is not None and hi is not None else None
    if len(clip.inputs) < 3 or not clip.inputs[1] or not clip.inputs[2]:
        return None
    lo, hi = g.const_value(clip.inputs[1]), g.const_value(clip.inputs[2])
    if lo is None or hi is None or lo.size != 1 or hi.size != 1:
        return None
    return float(lo.reshape(())), float(hi.reshape(()))


def _written_out_check(g: Graph, m: Match) -> str | None:
    if _scalar(g, m, "three") != 3.0:
        return "the added constant is not a scalar 3 of x's type"
    if _clip_bounds(g, m.node("clip")) != (0.0, 6.0):
        return "Clip's bounds are not the constants 0 and 6"
    k = _scalar(g, m, "k")
    scale = m.node("scale")
    if scale.op_type == "Div" and scale.inputs[0] == m["k"]:
        return "6 divided by the product, not the product by 6"
    if k is None or not (k == 6.0 if scale.op_type == "Div" else np.isclose(k, 1 / 6, rtol=1e-6, atol=0)):
        return "not divided by 6 (or multiplied by 1/6)"
    return None


def _hardsigmoid_check(g: Graph, m: Match) -> str | None:
    hs = m.node("hsig")
    alpha, beta = hs.attrs.get("alpha", 0.2), hs.attrs.get("beta", 0.5)
    if not (np.isclose(alpha, ALPHA, rtol=1e-6, atol=0) and beta == BETA):
        return f"HardSigmoid(alpha={alpha:g}, beta={beta:g}) is not hardswish's (1/6, 0.5)"
    return None


def _hardswish(opset: int):
    def rewrite(b: Builder, m: Match) -> dict:
        root = m.root
        base = root.name or root.outputs[0]
        if opset >= HARDSWISH_OPSET:
            out = b.op.HardSwish(m["x"], name_hint=f"{base}_hardswish")
        else:
            gate = b.op.HardSigmoid(m["x"], alpha=ALPHA, beta=BETA, name_hint=f"{base}_hardsigmoid")
            out = b.op.Mul(m["x"], gate, name_hint=f"{base}_hardswish")
        return {root.outputs[0]: out}
    return rewrite


@register_pass
class FuseHardSwish(Pass):
    """x * clip(x + 3, 0, 6) / 6 in element-wise nodes -> HardSwish (opset >= 14) or HardSigmoid * x."""

    name = "fuse-hardswish"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        rewrite = _hardswish(model.opset)
        rules = [Rule(f"hardswish {form}", pat, rewrite, _written_out_check) for form, pat in PATTERNS.items()]
        if model.opset >= HARDSWISH_OPSET:
            rules.append(Rule("hardsigmoid-mul", HARDSIGMOID_MUL, rewrite, _hardsigmoid_check))
        apply_rules(model, rules, result)
        result.stats["fused"] = len(result.rewritten)
        return result
