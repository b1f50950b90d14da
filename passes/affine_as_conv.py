"""affine-as-conv: a per-channel (or scalar) Mul/Add by constants that feeds a Conv it cannot fold
into becomes a 1x1 depthwise Conv (W = scale, B = shift).

The same arithmetic, but onnxruntime runs a Conv in its blocked NCHWc layout and a Mul or Add by a
constant in plain NCHW: between two NCHWc convolutions each such affine costs a ReorderOutput, the
Mul, the Add and a ReorderInput (four passes over the tensor) where the depthwise Conv is one, kept
in the blocked layout. PP-LCNet (PP-OCR det/rec's backbone) writes a learnable scalar affine after
every hardswish; fuse-affine-conv folds the ones before unpadded convs, the 14 before padded
depthwise convs on PP-OCRv4 det 640x640 remain.

Not a clean-up: whether it pays depends on the runtime's layouts, so the fast preset keeps it only
when the whole model is measured faster (optimize's speed check). Only affines whose output a Conv
reads are rewritten (elsewhere the Mul/Add is as fast); a 4-D float tensor with a known channel
count, constants per channel.
"""
from __future__ import annotations

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.fusions import _per_channel
from tvmlite.passes.pattern import Const, Match, Op, Rule, apply_rules
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, type_shape
from tvmlite.export.shapes import inferred_types

_SCALE = Op("Mul", "x", Const("s"), commute=True, name="scale")
PATTERNS = {
    "scale and shift": Op(("Add", "Sub"), _SCALE, Const("t"), commute=True, name="shift"),
    "shift": Op(("Add", "Sub"), "x", Const("t"), commute=True, name="shift"),
    "scale": _SCALE,
}


class _Shapes:
    """Each value's (elem type, shape): recorded, else from onnx's inference, run once on first need."""

    def __init__(self, model: Model):
        self.model, self._types = model, None

    def types(self, g: Graph, name: str) -> tuple[int | None, tuple | None]:
        """(elem type, shape) of a value, each None where not known."""
        v = g.value(name)
        elem, shape = v.elem_type, v.shape
        if elem is None or shape is None:
            if self._types is None:
                self._types = inferred_types(self.model)
            tp = self._types.get(name)
            elem = tp.tensor_type.elem_type if tp is not None and tp.HasField("tensor_type") else elem
            shape = type_shape(tp) if shape is None else shape
        return elem, shape

    def channels(self, g: Graph, name: str) -> int | None:
        """C of a 4-D float32 value with a known channel count, else None."""
        elem, shape = self.types(g, name)
        if elem != 1 or shape is None or len(shape) != 4 or not isinstance(shape[1], int):
            return None
        return shape[1]


def _shifted_later(g: Graph, node) -> bool:
    """``node`` (a Mul) is read only by an Add/Sub with a constant: the pair is matched there."""
    readers = g.consumers(node.outputs[0]) if node.outputs[0] not in g.outputs else []
    return len(readers) == 1 and readers[0].op_type in ("Add", "Sub") and any(
        i != node.outputs[0] and g.const_value(i) is not None for i in readers[0].inputs)


def _checker(shapes: _Shapes):
    def check(g: Graph, m: Match) -> str | None:
        root = m.root
        out = root.outputs[0]
        if "shift" not in m.nodes and _shifted_later(g, root):
            return False  # the Add after it takes both
        if not any(r.op_type == "Conv" and r.inputs[0] == out for r in g.consumers(out)):
            return "no Conv reads it"
        c = shapes.channels(g, m["x"])
        if c is None:
            return "not a 4-D float32 tensor with a known channel count"
        if shapes.channels(g, out) != c:
            return "the constants broadcast the tensor to another shape"
        if "shift" in m.nodes and m.node("shift").op_type == "Sub" and m.node("shift").inputs[0] == m["t"]:
            return "constant minus the tensor"
        for key in ("s", "t"):
            if key in m.consts and (m.const(key).dtype != np.float32 or _per_channel(m.const(key), 4, c) is None):
                return f"constant of shape {list(m.const(key).shape)} is not per channel"
        return None
    return check


def _rewriter(shapes: _Shapes):
    def rewrite(b: Builder, m: Match) -> dict:
        g, root = b.graph, m.root
        c = shapes.channels(g, m["x"])
        scale = _per_channel(m.const("s"), 4, c) if "s" in m.consts else np.ones(c, np.float32)
        shift = _per_channel(m.const("t"), 4, c) if "t" in m.consts else np.zeros(c, np.float32)
        if "shift" in m.nodes and m.node("shift").op_type == "Sub":
            shift = -shift
        base = root.name or root.outputs[0]
        conv = b.op.Conv(m["x"], b.const(scale.reshape(c, 1, 1, 1).astype(np.float32), f"{base}_W"),
                         b.const(np.ascontiguousarray(shift, np.float32), f"{base}_B"), group=c,
                         kernel_shape=[1, 1], name_hint=f"{base}_conv")
        return {root.outputs[0]: conv}
    return rewrite


@register_pass
class AffineAsConv(Pass):
    """Mul/Add by per-channel constants feeding a Conv -> a 1x1 depthwise Conv (one NCHWc kernel in
    onnxruntime instead of reorders around element-wise ops)."""

    name = "affine-as-conv"

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        shapes = _Shapes(model)
        check, rewrite = _checker(shapes), _rewriter(shapes)
        apply_rules(model, [Rule(f"affine-as-conv ({k})", p, rewrite, check) for k, p in PATTERNS.items()], result)
        result.stats["rewritten"] = len(result.rewritten)
        return result
