"""Winograd F(m×m, 3×3): 3×3 stride-1 dilation-1 dense convs -> WinogradInput + MatMul + WinogradOutput.

Per tile of m×m outputs the conv costs α² = (m+2)² multiplications per (input, output) channel pair
instead of 9·m², i.e. 2.25× fewer for m=2, 4× for m=4 and 5.06× for m=6, paid for with the input
and output transforms (and float32 error that grows with m). The weight transform U = G g Gᵀ is done
here, once, and stored as a constant ``[α², M, C]``; the batched GEMM over the α² tile positions is
a standard MatMul ``U @ V`` that reduces the channels.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import is_onnx
from tvmlite.passes.lowering import ConvInfo, _Builder, conv_info
from tvmlite.export.shapes import TypeLookup
from tvmlite.errors import OptionError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Model
from tvmlite.ops.lowered import WINOGRAD_POINTS, winograd_tiles, winograd_weight

WINOGRAD_TILES = (2, 4, 6)


def winograd_reason(info: ConvInfo) -> str | None:
    """Why Winograd F(m×m, 3×3) does not apply (None when it does)."""
    if info.rank != 2:
        return f"{info.rank}-D conv: Winograd is implemented for 2-D"
    if info.kernel != (3, 3):
        return f"kernel {info.kernel[0]}x{info.kernel[1]}: Winograd is implemented for 3x3"
    if any(s != 1 for s in info.strides):
        return f"strides {info.strides}: Winograd needs stride 1"
    if any(d != 1 for d in info.dilations):
        return f"dilations {info.dilations}: Winograd needs dilation 1"
    if info.group != 1:
        return f"group={info.group}: grouped convs stay with im2col"
    return None


def winograd_macs(info: ConvInfo, m: int, batch: int = 1) -> int:
    """Multiplications of the tile GEMM: α² per (tile, input channel, output channel)."""
    th, tw = winograd_tiles(info.out_spatial, m)
    a = m + 2
    return batch * th * tw * a * a * info.channels * info.out_channels


def lower_winograd(model: Model, info: ConvInfo, m: int, b: Builder | None = None) -> None:
    bld = _Builder(model, info, b)
    N, C, M = info.batch, info.channels, info.out_channels
    a = m + 2
    th, tw = winograd_tiles(info.out_spatial, m)
    P = N * th * tw if isinstance(N, int) else None
    v = bld.add("WinogradInput", [info.x], (a * a, C, P), {"m": m, "r": 3, "pads": list(info.pads)},
                suffix=f"wino{m}_in", domain="tvmlite")
    u = bld.const(winograd_weight(info.w, m), f"wino{m}_U")
    t = bld.add("MatMul", [u, v], (a * a, M, P), suffix=f"wino{m}_gemm")
    ins = [t] + ([bld.const(info.b, "B")] if info.b is not None else [])
    y = bld.add("WinogradOutput", ins, (N, M) + tuple(info.out_spatial),
                {"m": m, "r": 3, "out_shape": list(info.out_spatial)}, suffix=f"wino{m}_out",
                domain="tvmlite")
    bld.commit(y)


@register_pass
class Winograd(Pass):
    """3×3 stride-1 convs -> Winograd F(m×m, 3×3) with m in {2, 4, 6}."""

    name = "winograd"
    needs_static_shapes = True

    @dataclass
    class Options:
        #: output tile size: 2, 4 or 6 (bigger saves more multiplications, loses more precision)
        m: int = 4

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.m not in WINOGRAD_TILES or self.options.m not in WINOGRAD_POINTS:
            raise OptionError(f"pass 'winograd': m={self.options.m} is not one of {WINOGRAD_TILES}")

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        m = self.options.m
        shapes = TypeLookup(model)
        b = Builder(model)
        for node in model.graph.toposort():
            if not is_onnx(node, "Conv"):
                continue
            info = conv_info(model, node, shapes)
            reason = info if isinstance(info, str) else winograd_reason(info)
            if reason:
                result.skip(node, reason)
                continue
            label = node.label
            direct = info.macs()
            wino = winograd_macs(info, m)
            lower_winograd(model, info, m, b)
            result.rewrote(label, choice=f"winograd(m={m})",
                           reason=f"3x3 stride 1: {direct / wino:.2f}x fewer multiplications per image",
                           macs_direct=direct, macs_winograd=wino)
        result.stats["lowered"] = len(result.rewritten)
        if result.changed:
            model.graph.remove_unused_values()
        return result
