"""upsample-conv: a Conv that reads nearest-upsampled tensors (directly, or some of the inputs of a
channel Concat) computes their part at the low resolution as a ConvTranspose.

A nearest Resize by integer factors (ky, kx) copies every input pixel to a ky x kx block; a stride-1
Conv (kernel R x S, "same" size) on it sees, from one input pixel, the sum of its taps that fall on
that block. So Conv(W, up(a)) == ConvTranspose(a, K, strides=(ky, kx)) with a (ky+R-1) x (kx+S-1)
kernel K, K[c, o, t, u] = sum of W[o, c, r, s] over the taps (r, s) whose window at offset (t, u)
covers the block, and pads chosen so the output is (ky*H, kx*W): exact but for float rounding (each
entry of K sums up to R*S weights; zero padding outside the image is the same on both sides). The
multiply-adds drop by (ky+R-1)(kx+S-1) / (ky*kx*R*S): 0.44x for 3x3 at 2x, 0.25x at 4x, 0.17x at
8x, and the upsampled copies are never written. A Concat's other inputs keep a Conv (with the bias)
over their channels; the parts are summed with Add.

PP-OCRv4 det 640x640 (DBNet's FPN): the head's 3x3 Conv (96 -> 24 channels at 160x160, a quarter of
the model's MACs) reads Concat(Resize 8x, Resize 4x, Resize 2x, x). In onnxruntime at one thread
(CPU time, interleaved medians of 41 runs, load average ~9) the preset's model ran in 0.953x of its
time with the 8x and 4x parts rewritten, 0.975x with all three: onnxruntime's ConvTranspose (GEMM
and col2im, plain NCHW) on the 2x part (4x4 kernel, stride 2) took as long as the blocked direct
Conv on those channels at full resolution. Hence ``min_scale`` (4): only factors of 4 or more are
rewritten. At two threads (wall clock, interleaved medians of 31-41, load 3-5) three runs read
0.990x, 0.998x and 0.948x: smaller and less sure than at one thread (onnxruntime's col2im does not
scale with threads as its blocked Conv does; 8x alone read 1.033x, noise at that load). Not a clean-up: whether it pays depends on the runtime (optimize's speed check decides in
the fast preset).

Refused (left alone with the reason): a Conv that is grouped, strided, dilated, not "same" sized,
not 2-D, or whose weights/bias are not constant floats; Resizes that are not nearest upsampling by
constant integer scales in (N, C) = 1 with asymmetric coordinates and floor rounding (what both
onnxruntime's and PaddlePaddle's exports use), given by sizes, or with axes; a Concat not along the
channels, read elsewhere, or whose inputs' channel counts are not known.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.errors import OptionError
from tvmlite.export.shapes import TypeLookup
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.ops.batchnorm_fold import remove_dead_producers
from tvmlite.passes.base import Pass, PassResult, register_pass

_ONNX = ("", "ai.onnx")
_CANDIDATE_INPUTS = ("Resize", "Upsample", "Concat")


def _text(v, default: str) -> str:
    v = default if v is None else v
    return v.decode() if isinstance(v, bytes) else str(v)


def same_pads_begin(conv: Node, kernel: tuple[int, ...]) -> list[int] | str:
    """Leading pad per spatial axis of a stride-1 Conv whose output has its input's size, or why not."""
    a = conv.attrs
    rank = len(kernel)
    if any(int(s) != 1 for s in a.get("strides", [1] * rank)):
        return f"strides {list(a.get('strides'))}: only stride 1"
    if any(int(d) != 1 for d in a.get("dilations", [1] * rank)):
        return f"dilations {list(a.get('dilations'))}: only dilation 1"
    auto = _text(a.get("auto_pad"), "NOTSET")
    if auto == "SAME_UPPER":
        return [(r - 1) // 2 for r in kernel]
    if auto == "SAME_LOWER":
        return [r - 1 - (r - 1) // 2 for r in kernel]
    pads = [0] * (2 * rank) if auto == "VALID" else [int(p) for p in a.get("pads", [0] * (2 * rank))]
    if auto not in ("NOTSET", "VALID") or len(pads) != 2 * rank:
        return f"auto_pad {auto!r} / pads {pads}"
    if any(pads[i] + pads[i + rank] != kernel[i] - 1 for i in range(rank)):
        return f"pads {pads} do not keep the size of the input (kernel {list(kernel)})"
    return pads[:rank]


def _taps(k: int, r: int) -> np.ndarray:
    """(k+r-1, r) 0/1: offset t of a ConvTranspose kernel holds tap j of the Conv's r on an axis
    upsampled k times. With leading pad p, output y = k*i + t - (r-1-p) reads tap j at y + j - p,
    inside input pixel i's block [k*i, k*i + k) exactly when 0 <= t + j - (r-1) < k (p drops out)."""
    t = np.arange(k + r - 1)[:, None]
    j = np.arange(r)[None, :]
    return ((t + j - (r - 1) >= 0) & (t + j - (r - 1) < k)).astype(np.float64)


def upsampled_conv_weight(w: np.ndarray, scales: tuple[int, int], pads_begin: list[int]) -> tuple[np.ndarray, list[int]]:
    """(ConvTranspose weight (C, O, ky+R-1, kx+S-1), its pads) equal to Conv ``w`` (O, C, R, S) with
    leading pads ``pads_begin`` on the input nearest-upsampled by ``scales``."""
    (ky, kx), (_, _, r, s) = scales, w.shape
    th, tw = _taps(ky, r), _taps(kx, s)
    k = np.einsum("ocrs,tr,us->cotu", w.astype(np.float64), th, tw)
    # the ConvTranspose's output, (H-1)*k + k+R-1 - begin - end, is k*H with begin = R-1-pad, end = pad
    pads = [r - 1 - pads_begin[0], s - 1 - pads_begin[1], pads_begin[0], pads_begin[1]]
    return k.astype(w.dtype), pads


def nearest_upsample_scales(g: Graph, n: Node, opset: int) -> tuple[int, int] | str:
    """(ky, kx) of a Resize/Upsample that repeats each pixel ky x kx times, else why not."""
    if n.domain not in _ONNX or n.op_type not in ("Resize", "Upsample"):
        return f"{n.op_type} is not a Resize"
    a = n.attrs
    if _text(a.get("mode"), "nearest") != "nearest":
        return f"mode {_text(a.get('mode'), '')!r} is not nearest"
    if n.op_type == "Resize" and opset >= 11:
        coord = _text(a.get("coordinate_transformation_mode"), "half_pixel")
        rounding = _text(a.get("nearest_mode"), "round_prefer_floor")
        if coord != "asymmetric" or rounding != "floor":
            return f"coordinates {coord!r} / nearest_mode {rounding!r}: only asymmetric / floor"
        if "axes" in a:
            return "axes given"
        if len(n.inputs) > 3 and n.inputs[3]:
            return "sizes given, not scales"
        scales_name = n.inputs[2] if len(n.inputs) > 2 else ""
    else:  # Resize-10 and Upsample: asymmetric coordinates, floor when upsampling
        scales_name = n.inputs[1] if len(n.inputs) > 1 else ""
    scales = g.const_value(scales_name) if scales_name else None
    if scales is None or scales.dtype.kind != "f" or scales.shape != (4,):
        return "scales are not 4 constant floats"
    if scales[0] != 1 or scales[1] != 1 or any(s < 2 or s != int(s) for s in scales[2:]):
        return f"scales {scales.tolist()} are not (1, 1, integer >= 2, integer >= 2)"
    return int(scales[2]), int(scales[3])


@dataclass
class _Part:
    """A run of the Conv's input channels: ``source`` read as it is, or upsampled by ``scales``."""

    source: str
    weight: np.ndarray
    scales: tuple[int, int] | None = None
    resize: Node | None = None


class _Planner:
    def __init__(self, model: Model, min_scale: int):
        self.g, self.opset, self.min_scale = model.graph, model.opset, min_scale
        self.types = TypeLookup(model)

    def conv_reason(self, conv: Node) -> str | None:
        g = self.g
        w = g.const_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if w is None or w.dtype.kind != "f" or w.ndim != 4:
            return "weights are not constant 4-D floats"
        b_name = conv.inputs[2] if len(conv.inputs) > 2 else ""
        if b_name and (g.const_value(b_name) is None or g.const_value(b_name).shape != (w.shape[0],)):
            return "bias is not a constant per output channel"
        if int(conv.attrs.get("group", 1)) != 1:
            return f"group={conv.attrs.get('group')}"
        pads = same_pads_begin(conv, w.shape[2:])
        return pads if isinstance(pads, str) else None

    def upsampled(self, name: str) -> tuple[tuple[int, int], Node] | str:
        """((ky, kx), the Resize) when ``name`` is a nearest upsampling by min_scale or more."""
        p = self.g.producer(name)
        if p is None:
            return "not made by a Resize"
        got = nearest_upsample_scales(self.g, p, self.opset)
        if isinstance(got, str):
            return got
        if min(got) < self.min_scale:
            return f"scales {list(got)} below min_scale {self.min_scale}"
        return got, p

    def parts(self, conv: Node, w: np.ndarray) -> list[_Part] | str:
        """The Conv's input as parts, at least one upsampled, or why there are none."""
        g, x = self.g, conv.inputs[0]
        p = g.producer(x)
        if p is not None and p.op_type == "Concat" and p.domain in _ONNX:
            return self._concat_parts(conv, p, w)
        got = self.upsampled(x)
        if isinstance(got, str):
            return f"input: {got}"
        return [_Part(p.inputs[0], w, *got)]

    def _concat_parts(self, conv: Node, cat: Node, w: np.ndarray) -> list[_Part] | str:
        g = self.g
        if int(cat.attrs.get("axis", 0)) not in (1, -3):
            return "its input is a Concat not along the channels"
        if cat.outputs[0] in g.outputs or len(g.consumers(cat.outputs[0])) != 1:
            return "its input Concat is read elsewhere"
        parts, start, reasons = [], 0, []
        for name in cat.inputs:
            shape = self.types.shape(name)
            if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
                return f"channels of Concat input {name!r} are not known"
            piece = w[:, start:start + shape[1]]
            start += shape[1]
            got = self.upsampled(name)
            if isinstance(got, str):
                parts.append(_Part(name, piece))
                reasons.append(got)
            else:
                parts.append(_Part(got[1].inputs[0], piece, *got))
        if start != w.shape[1]:
            return f"Concat holds {start} channels, the weights read {w.shape[1]}"
        if all(p.scales is None for p in parts):
            return f"no Concat input is a nearest upsampling ({reasons[0]})"
        return parts


def _emit(model: Model, conv: Node, parts: list[_Part], pads_begin: list[int]) -> None:
    g = model.graph
    b = Builder(model, before=conv)
    base = conv.name or conv.outputs[0]
    b_name = conv.inputs[2] if len(conv.inputs) > 2 else ""
    terms, old = [], [conv.inputs[0]] + [i for i in conv.inputs[1:] if i]
    plain = [p for p in parts if p.scales is None]
    if plain:
        x = plain[0].source if len(plain) == 1 else b.op.Concat(*[p.source for p in plain], axis=1,
                                                              name_hint=f"{base}_rest_concat")
        weight = np.concatenate([p.weight for p in plain], axis=1)
        terms.append(b.op.Conv(x, b.const(np.ascontiguousarray(weight), f"{base}_rest_W"), *([b_name] if b_name else []),
                               attrs=dict(conv.attrs), name_hint=f"{base}_rest"))
    for p in parts:
        if p.scales is None:
            continue
        k, pads = upsampled_conv_weight(p.weight, p.scales, pads_begin)
        bias = [b_name] if b_name and not terms else []
        terms.append(b.op.ConvTranspose(p.source, b.const(k, f"{base}_up{p.scales[0]}x{p.scales[1]}_W"), *bias,
                                        kernel_shape=list(k.shape[2:]), strides=list(p.scales), pads=pads,
                                        name_hint=f"{base}_up{p.scales[0]}x{p.scales[1]}"))
    out = terms[0]
    for t in terms[1:]:
        out = b.op.Add(out, t, name_hint=f"{base}_sum")
    b.replace(conv, {conv.outputs[0]: out}, heir=terms[0])
    remove_dead_producers(g, old)


@register_pass
class UpsampleConv(Pass):
    """Conv over nearest-upsampled inputs (or Concat inputs) -> ConvTranspose at the low resolution,
    for scale factors of ``min_scale`` and more."""

    name = "upsample-conv"

    @dataclass
    class Options:
        #: rewrite only upsamplings by at least this factor on both axes (onnxruntime's ConvTranspose
        #: on a 2x part ran as slow as the direct Conv it replaced on PP-OCR det)
        min_scale: int = 4

    def validate(self) -> None:
        if self.options.min_scale < 2:
            raise OptionError(f"pass {self.name!r}: min_scale={self.options.min_scale} is below 2")

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        plan = _Planner(model, self.options.min_scale)
        g = model.graph
        for conv in g.toposort():
            if conv.graph is None or conv.op_type != "Conv" or conv.domain not in _ONNX or not conv.inputs:
                continue
            src = g.producer(conv.inputs[0])
            if src is None or src.op_type not in _CANDIDATE_INPUTS:
                continue  # only Convs reading a Resize or a Concat are reported
            why = plan.conv_reason(conv)
            w = g.const_value(conv.inputs[1]) if why is None else None
            parts = plan.parts(conv, w) if why is None else why
            if isinstance(parts, str):
                result.skip(conv, parts)
                continue
            label = conv.label
            _emit(model, conv, parts, same_pads_begin(conv, w.shape[2:]))
            result.rewrote(label, scales=[list(p.scales) for p in parts if p.scales],
                           kept_channels=sum(p.weight.shape[1] for p in parts if p.scales is None))
        result.stats["rewritten"] = len(result.rewritten)
        return result
