"""fuse-affine-conv: a per-channel Mul/Add/Sub by a constant read only by a Conv folds into that
Conv's weights and bias (fuse-conv-affine's mirror, passes/fusions.py: there the affine follows the
Conv).

Conv(s * x + t) = Conv with W'[o, j] = W[o, j] * s[c] and b'[o] = b[o] + sum over j, taps of
W[o, j] * t[c], c the input channel W[o, j] reads (groups respected). A shift t is exact only when
the Conv reads no padding (zero padding of s * x + t is not t), so a padded Conv takes a scale alone
and refuses a shift with the reason. PP-LCNet (PP-OCR det/rec's backbone) writes a learnable scalar
affine after every hardswish; onnxruntime runs each as its own element-wise pass and reorders the
NCHWc layout around it. On PP-OCRv4 det 640x640 the 1x1 convs take 12 of them.
"""
from __future__ import annotations

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import remove_dead_producers
from tvmlite.passes.fusions import per_channel
from tvmlite.passes.pattern import Const, Match, Op, Rule, apply_rules
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model
from tvmlite.export.shapes import TypeLookup

_SCALE = Op("Mul", "x", Const("s"), commute=True, name="scale")
PATTERNS = {
    "scale and shift": Op("Conv", Op(("Add", "Sub"), _SCALE, Const("t"), commute=True, name="shift"), Const("w"), ...,
                          name="conv"),
    "shift": Op("Conv", Op(("Add", "Sub"), "x", Const("t"), commute=True, name="shift"), Const("w"), ..., name="conv"),
    "scale": Op("Conv", _SCALE, Const("w"), ..., name="conv"),
}


def _pads_nothing(conv) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    return auto == "VALID" or (auto == "NOTSET" and not any(conv.attrs.get("pads", [])))


def _per_input_channel(g: Graph, m: Match, key: str, w: np.ndarray, group: int) -> np.ndarray | None:
    """The constant ``key`` as a (C,) vector over the Conv's input channels, or None."""
    c = m.const(key)
    if c.dtype != w.dtype:
        return None
    return per_channel(c, w.ndim, w.shape[1] * group)


def _checker(types: TypeLookup):
    def check(g: Graph, m: Match) -> str | None:
        why = _check(g, m)
        if why is None:  # the Conv would read x itself: the constants must not broadcast it
            w, group = m.const("w"), int(m.node("conv").attrs.get("group", 1))
            shape = types.shape(m["x"])
            if shape is None or len(shape) != w.ndim or shape[1] != w.shape[1] * group:
                return (f"its input {m['x']!r} has shape {list(shape) if shape is not None else 'unknown'}, "
                        f"not {w.ndim}-D with {w.shape[1] * group} channels: the constants would broadcast it")
        return why
    return check


def _check(g: Graph, m: Match) -> str | None:
    conv = m.node("conv")
    w = m.const("w")
    if w.dtype.kind != "f" or w.ndim < 3:
        return f"weights of {conv.label!r} are not constant float kernels"
    b_name = conv.inputs[2] if len(conv.inputs) > 2 else ""
    if b_name and g.const_value(b_name) is None:
        return f"bias of {conv.label!r} is not constant"
    group = int(conv.attrs.get("group", 1))
    if group < 1 or w.shape[0] % group:
        return f"{w.shape[0]} output channels do not split into {group} groups"
    if "shift" in m.nodes:
        shift = m.node("shift")
        if shift.op_type == "Sub" and shift.inputs[0] == m["t"]:
            return "constant minus the input"
        if _per_input_channel(g, m, "t", w, group) is None:
            return f"shift of shape {list(m.const('t').shape)} is not per input channel"
        if not _pads_nothing(conv):
            return f"{conv.label!r} pads its input: a shift is not exact there"
    if "scale" in m.nodes and _per_input_channel(g, m, "s", w, group) is None:
        return f"scale of shape {list(m.const('s').shape)} is not per input channel"
    return None


def _rewrite(b: Builder, m: Match) -> dict:
    g, conv = b.graph, m.node("conv")
    w = m.const("w")
    group = int(conv.attrs.get("group", 1))
    out_ch, in_per_group = w.shape[0], w.shape[1]

    def per_weight(v):  # (C,) over input channels -> (O, C/group): the channel each W[o, j] reads
        return np.repeat(v.reshape(group, in_per_group), out_ch // group, axis=0)

    b_name = conv.inputs[2] if len(conv.inputs) > 2 else ""
    bias = g.const_value(b_name) if b_name else np.zeros(out_ch, w.dtype)
    bias = bias.astype(np.float64)
    if "shift" in m.nodes:
        t = _per_input_channel(g, m, "t", w, group).astype(np.float64)
        if m.node("shift").op_type == "Sub":
            t = -t
        taps = w.reshape(out_ch, in_per_group, -1).astype(np.float64).sum(-1)
        bias = bias + (taps * per_weight(t)).sum(1)
    if "scale" in m.nodes:
        s = per_weight(_per_input_channel(g, m, "s", w, group))
        w = w * s.reshape(s.shape + (1,) * (w.ndim - 2))
    base = conv.name or "conv"
    new = b.op.Conv(m["x"], b.const(w.astype(m.const("w").dtype), f"{base}_W"),
                    b.const(bias.astype(m.const("w").dtype), f"{base}_B"), name_hint=base,
                    attrs=dict(conv.attrs))
    b.inherit_name(new, conv)
    return {conv.outputs[0]: new}


@register_pass
class FuseAffineConv(Pass):
    """Mul/Add/Sub by a per-input-channel constant -> Conv: folded into the Conv's W and b (a shift
    only where the Conv reads no padding)."""

    name = "fuse-affine-conv"
    cleanup = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        replaced = []  # the old Convs' weights and biases (Constant nodes in PP-OCR), removed below

        def rewrite(b: Builder, m: Match) -> dict:
            replaced.extend(i for i in m.node("conv").inputs[1:] if i)
            return _rewrite(b, m)
        check = _checker(TypeLookup(model))
        apply_rules(model, [Rule(f"affine-conv ({k})", p, rewrite, check) for k, p in PATTERNS.items()], result)
        # a replaced root's Constant producers are otherwise left to dce: the report's row would
        # count both copies of the weights
        remove_dead_producers(model.graph, replaced)
        result.stats["fused"] = len(result.rewritten)
        return result
