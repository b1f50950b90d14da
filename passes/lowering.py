"""Conv lowering: Conv -> Im2Col + MatMul (+ bias, + reshape back), or the MEC layout.

``lower-conv`` rewrites every 1-D and 2-D Conv with constant float32 weights and static channel and
spatial dims (the batch may be symbolic): strides, explicit pads and auto_pad, dilations, groups
(depthwise included) and bias. ``layout=mec`` uses MEC for the 2-D group=1 convs, where it needs a
smaller lowered matrix, and im2col for the others (each such fallback is recorded). Per layer the
result records the bytes of the lowered matrix under both layouts.

The helpers :func:`conv_info`, :func:`lower_im2col` and :func:`lower_mec` are shared by the
``winograd`` and ``choose-conv`` passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import is_onnx
from tvmlite.errors import OptionError, TvmliteError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node, tensor_type
from tvmlite.export.shapes import TypeLookup
from tvmlite.ops.geometry import WindowGeometry


@dataclass
class ConvInfo:
    """What a lowering needs to know about one Conv, with auto_pad resolved to explicit pads."""

    node: Node
    x: str
    w: np.ndarray
    b: np.ndarray | None
    batch: int | str | None  # may be symbolic
    channels: int
    in_spatial: tuple
    out_spatial: tuple
    kernel: tuple
    strides: list
    dilations: list
    pads: list  # [begins..., ends...]
    group: int

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def out_channels(self) -> int:
        return int(self.w.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.w.dtype

    def im2col_bytes(self, batch: int = 1) -> int:
        """Bytes of im2col's lowered matrix: C·prod(k) rows by prod(out) columns per image."""
        return batch * self.channels * int(np.prod(self.kernel)) * int(np.prod(self.out_spatial)) \
            * self.dtype.itemsize

    def mec_bytes(self, batch: int = 1) -> int:
        """Bytes of MEC's lowered matrix: OW × Hp × C·KW per image (2-D; 1-D as H = 1)."""
        kh, kw = (1, self.kernel[0]) if self.rank == 1 else self.kernel[:2]
        ow = self.out_spatial[-1]
        hp = 1 if self.rank == 1 else self.in_spatial[0] + self.pads[0] + self.pads[2]
        return batch * ow * hp * self.channels * kw * self.dtype.itemsize

    def macs(self, batch: int = 1) -> int:
        return batch * int(np.prod(self.out_spatial)) * self.out_channels * int(np.prod(self.w.shape[1:]))


def conv_info(model: Model, node: Node, shapes: TypeLookup | None = None) -> ConvInfo | str:
    """The Conv's geometry, or a one-line reason why it cannot be lowered."""
    g = model.graph
    if not is_onnx(node, "Conv"):
        return "not an ONNX Conv"
    if len(node.inputs) < 2 or not node.inputs[1]:
        return "Conv without weights"
    w = g.const_value(node.inputs[1])
    if w is None:
        return "weights are not constant"
    if w.dtype != np.float32:
        return f"weights are {w.dtype}: only float32 convs are lowered"
    if w.ndim not in (3, 4):
        return f"{w.ndim - 2}-D Conv: only 1-D and 2-D convs are lowered"
    b = None
    if len(node.inputs) > 2 and node.inputs[2]:
        b = g.const_value(node.inputs[2])
        if b is None:
            return "bias is not constant"
        b = b.astype(np.float32).reshape(-1)
    shape = (shapes or TypeLookup(model)).shape(node.inputs[0])
    if shape is None or len(shape) != w.ndim:
        return f"input shape {shape} is unknown or does not match the weight rank"
    if any(not isinstance(d, int) for d in shape[1:]):
        return f"input channel/spatial dims are not static ({shape}): fix the model's input shape first"
    group = int(node.attrs.get("group", 1))
    C, M = int(shape[1]), int(w.shape[0])
    if C != w.shape[1] * group or M % group:
        return f"channels do not fit: input C={C}, weight {list(w.shape)}, group={group}"
    try:  # kernel_shape against the weights, defaults, auto_pad, an empty output: one place decides
        geo = WindowGeometry.conv(node.attrs, shape, w.shape)
    except TvmliteError as e:
        return str(e)
    return ConvInfo(node, node.inputs[0], w, b, shape[0], C, geo.in_spatial, geo.out_spatial, geo.kernel,
                    list(geo.strides), list(geo.dilations), list(geo.pads), geo.group)


class _Builder:
    """The replacement nodes of one Conv, typing every new value (tvmlite ops' function bodies are
    specialized on their input types); the nodes are made before the Conv by ``b``."""

    def __init__(self, g: Graph | Model, info: ConvInfo, b: Builder | None = None):
        self.info = info
        self.b = b.at(before=info.node) if b is not None else Builder(g, before=info.node)
        self.g = self.b.graph
        self.base = info.node.name or "conv"

    def const(self, array: np.ndarray, suffix: str) -> str:
        return self.b.const(array, f"{self.base}_{suffix}").name

    def add(self, op: str, ins: list[str], shape: tuple, attrs: dict | None = None, *, suffix: str,
            domain: str = "") -> str:
        v = self.b.op(op, *ins, domain=domain, name_hint=f"{self.base}_{suffix}", attrs=attrs)
        v.type = tensor_type(self.info.dtype, shape)
        return v.name

    def commit(self, final: str) -> None:
        node = self.info.node
        x = self.g.value(self.info.x)
        if x.type is None or x.shape is None:  # the new ops' function bodies depend on it
            x.type = tensor_type(self.info.dtype, (self.info.batch, self.info.channels) + self.info.in_spatial)
        self.b.replace(node, {node.outputs[0]: final})


def lowerable_convs(model: Model, result):
    """(node, ConvInfo) for each Conv whose lowering facts are known; the others are recorded in
    ``result`` as skipped with conv_info's reason. The node list is taken before any rewrite."""
    shapes = TypeLookup(model)
    for node in model.graph.toposort():
        if not is_onnx(node, "Conv"):
            continue
        info = conv_info(model, node, shapes)
        if isinstance(info, str):
            result.skip(node, info)
            continue
        yield node, info

def _reshape_back(bld: _Builder, y: str, info: ConvInfo) -> str:
    shape = (info.batch, info.out_channels) + tuple(info.out_spatial)
    target = bld.const(np.array([0, info.out_channels, *info.out_spatial], np.int64), "out_shape")
    return bld.add("Reshape", [y, target], shape, suffix="y")


def lower_im2col(model: Model, info: ConvInfo, b: Builder | None = None) -> None:
    """Conv -> Im2Col + MatMul (batched per group) + Add(bias) + Reshape back. ``b``: the pass's
    builder (one name authority per run), else a new one."""
    bld = _Builder(model, info, b)
    N, C, M, G = info.batch, info.channels, info.out_channels, info.group
    K = int(np.prod(info.kernel))
    P = int(np.prod(info.out_spatial))
    n = info.rank
    cols = bld.add("Im2Col", [info.x], (N, C * K, P),
                   {"kernel_shape": list(info.kernel), "pads": list(info.pads),
                    "strides": list(info.strides), "dilations": list(info.dilations)},
                   suffix="cols", domain="tvmlite")
    if G == 1:
        w2 = bld.const(info.w.reshape(M, C * K), "W2")
        y = bld.add("MatMul", [w2, cols], (N, M, P), suffix="gemm")
        if info.b is not None:
            y = bld.add("Add", [y, bld.const(info.b.reshape(M, 1), "B2")], (N, M, P), suffix="bias")
    else:
        cg, mg = C // G, M // G
        shp = bld.const(np.array([0, G, cg * K, P], np.int64), "group_shape")
        cols = bld.add("Reshape", [cols, shp], (N, G, cg * K, P), suffix="gcols")
        w3 = bld.const(info.w.reshape(G, mg, cg * K), "W3")
        y = bld.add("MatMul", [w3, cols], (N, G, mg, P), suffix="gemm")
        if info.b is not None:
            y = bld.add("Add", [y, bld.const(info.b.reshape(G, mg, 1), "B3")], (N, G, mg, P), suffix="bias")
    del n
    bld.commit(_reshape_back(bld, y, info))


def mec_reason(info: ConvInfo) -> str | None:
    """Why MEC does not apply (None when it does)."""
    if info.rank != 2:
        return f"{info.rank}-D conv: MEC is built for 2-D"
    if info.group != 1:
        return f"group={info.group}: MEC lowers dense convs only"
    return None


def lower_mec(model: Model, info: ConvInfo, b: Builder | None = None) -> None:
    """Conv -> MecLower + MecMatMul(+bias): one lowered row per output column, bars shared by
    vertically adjacent windows."""
    bld = _Builder(model, info, b)
    N, C, M = info.batch, info.channels, info.out_channels
    kh, kw = info.kernel
    oh, ow = info.out_spatial
    hp = info.in_spatial[0] + info.pads[0] + info.pads[2]
    low = bld.add("MecLower", [info.x], (N, ow, hp, C * kw),
                  {"kernel_shape": list(info.kernel), "pads": list(info.pads),
                   "strides": list(info.strides), "dilations": list(info.dilations)},
                  suffix="mec", domain="tvmlite")
    # W'[i, c*KW + j, m] = W[m, c, i, j]: row i of every window times the bar of each channel
    wm = bld.const(info.w.transpose(2, 1, 3, 0).reshape(kh, C * kw, M), "Wmec")
    ins = [low, wm] + ([bld.const(info.b, "B")] if info.b is not None else [])
    y = bld.add("MecMatMul", ins, (N, M, oh, ow),
                {"kernel_h": kh, "stride_h": info.strides[0], "dilation_h": info.dilations[0], "out_h": oh},
                suffix="y", domain="tvmlite")
    bld.commit(y)


def lowered_bytes(info: ConvInfo, batch: int = 1) -> dict:
    return {"im2col_bytes": info.im2col_bytes(batch), "mec_bytes": info.mec_bytes(batch)}


@register_pass
class LowerConv(Pass):
    """Conv -> Im2Col + GEMM (``layout=im2col``) or MEC + GEMMs (``layout=mec``)."""

    name = "lower-conv"
    needs_static_shapes = True

    @dataclass
    class Options:
        #: im2col or mec (MEC for 2-D dense convs, im2col for the rest)
        layout: str = "im2col"
        #: images per batch assumed for the lowered-matrix sizes when the batch dim is symbolic
        batch: int = 1

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.layout not in ("im2col", "mec"):
            raise OptionError(f"pass 'lower-conv': layout={self.options.layout!r} is not im2col or mec")

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        totals = {"im2col_bytes": 0, "mec_bytes": 0}
        b = Builder(model)
        for node, info in lowerable_convs(model, result):
            batch = info.batch if isinstance(info.batch, int) else self.options.batch
            sizes = lowered_bytes(info, batch)
            for k, v in sizes.items():
                totals[k] += v
            layout, why = "im2col", "layout=im2col"
            if self.options.layout == "mec":
                reason = mec_reason(info)
                layout, why = ("mec", "layout=mec") if reason is None else ("im2col", reason)
            label = node.label
            if layout == "mec":
                lower_mec(model, info, b)
            else:
                lower_im2col(model, info, b)
            result.rewrote(label, choice=layout, reason=why, **sizes,
                           mec_saving=round(sizes["im2col_bytes"] / max(sizes["mec_bytes"], 1), 2))
        result.stats.update(lowered=len(result.rewritten), **totals)
        if result.changed:
            model.graph.remove_unused_values()
        return result
