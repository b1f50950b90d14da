"""Per-layer conv algorithm choice: direct (the backend's Conv kernel), im2col, MEC or Winograd(m).

``choose-conv`` estimates each candidate's time on the NumPy backend with a cost rule (GEMM
multiply-adds at a GEMM rate that drops for skinny GEMMs, plus the bytes every candidate moves at a
memory rate) or, with ``measure=true``, times each candidate on the layer's real shape, interleaved
and by median, and applies the cheapest. The choice and the reason (the estimates or timings of
all candidates) are recorded per layer in ``PassResult.decisions``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.ir.builder import Builder
from tvmlite.passes.lowering import ConvInfo, conv_info, lower_im2col, lower_mec, lowerable_convs, mec_reason
from tvmlite.passes.winograd import WINOGRAD_TILES, lower_winograd, winograd_macs, winograd_reason
from tvmlite.errors import OptionError
from tvmlite.backends.numpy import compile_model
from tvmlite.ir.graph import Model
from tvmlite.runtime.ort import fragment, time_interleaved

#: cost-rule constants for the NumPy backend on one core of this machine kind (bench/bench_conv.py
#: measures them): BLAS multiply-adds per second on well-shaped GEMMs, bytes per second for copies
GEMM_MACS_PER_S = 30e9
COPY_BYTES_PER_S = 10e9
#: a GEMM streams its weights at this rate: skinny GEMMs (few tiles or pixels) are bound by it
WEIGHT_BYTES_PER_S = 5e9
#: a GEMM whose smallest dimension is below this runs proportionally slower
GEMM_FULL_SPEED_DIM = 16
#: Winograd transforms: seconds per element of V or of the GEMM output, per transform point (α)
WINOGRAD_TRANSFORM_S = 0.45e-9
#: fixed cost per kernel call (Python dispatch, allocation)
CALL_S = 15e-6


def _gemm_seconds(macs: float, smallest_dim: int, calls: int = 1, weight_bytes: float = 0.0) -> float:
    slow = max(1.0, GEMM_FULL_SPEED_DIM / max(smallest_dim, 1))
    return max(macs * slow / GEMM_MACS_PER_S, weight_bytes / WEIGHT_BYTES_PER_S) + calls * CALL_S


def candidates(info: ConvInfo) -> list[str]:
    out = ["direct", "im2col"]
    if mec_reason(info) is None:
        out.append("mec")
    if winograd_reason(info) is None:
        out += [f"winograd{m}" for m in WINOGRAD_TILES]
    return out


def estimate_seconds(info: ConvInfo, algo: str, batch: int) -> float:
    """The cost rule: GEMM time plus the bytes the algorithm writes and reads beside the GEMM."""
    f = info.dtype.itemsize
    C, M, G = info.channels, info.out_channels, info.group
    K = int(np.prod(info.kernel))
    P = int(np.prod(info.out_spatial))
    x_bytes = batch * C * int(np.prod(info.in_spatial)) * f
    y_bytes = batch * M * P * f
    macs = info.macs(batch)
    if algo in ("direct", "im2col"):
        # direct: the backend's kernel (chunked im2col kept in cache, depthwise as shifted slices)
        cols = info.im2col_bytes(batch)
        if G > 1 and G == C and info.w.shape[1] == 1:  # depthwise: no GEMM at all
            if algo == "direct":
                return (K * (x_bytes + 2 * y_bytes)) / COPY_BYTES_PER_S + K * CALL_S
            return _gemm_seconds(macs, 1, batch * G) + 2 * cols / COPY_BYTES_PER_S
        smallest = min(M // G, C // G * K, P)
        moved = (cols / 4 if algo == "direct" else 2 * cols) + x_bytes + y_bytes
        return _gemm_seconds(macs, smallest, batch * G, M * C // G * K * f) + moved / COPY_BYTES_PER_S
    if algo == "mec":
        oh, ow = info.out_spatial
        lowered = info.mec_bytes(batch)
        moved = 2 * lowered + x_bytes + 2 * y_bytes
        return (_gemm_seconds(macs, min(M, batch * ow, C * K), oh, oh * M * C * K * f)
                + moved / COPY_BYTES_PER_S)
    if algo.startswith("winograd"):
        m = int(algo[len("winograd"):])
        a = m + 2
        th, tw = (-(-info.out_spatial[0] // m), -(-info.out_spatial[1] // m))
        tiles = batch * th * tw
        transforms = a * a * (C + M) * tiles * a * WINOGRAD_TRANSFORM_S
        gemm = _gemm_seconds(winograd_macs(info, m, batch), min(M, C, tiles), a * a, a * a * M * C * f)
        return gemm + transforms + (x_bytes + y_bytes) / COPY_BYTES_PER_S
    raise ValueError(algo)


def apply_choice(model: Model, info: ConvInfo, algo: str, b=None) -> None:
    """``b``: the pass's Builder (one name authority per run), else the lowering makes one."""
    if algo == "direct":
        return
    if algo == "im2col":
        lower_im2col(model, info, b)
    elif algo == "mec":
        lower_mec(model, info, b)
    else:
        lower_winograd(model, info, int(algo[len("winograd"):]), b)


def measure_seconds(model: Model, info: ConvInfo, algos: list[str], batch: int, repeats: int = 5,
                    budget_s: float = 2.0) -> dict[str, float]:
    """Median NumPy-backend time of each candidate on this layer alone (a fragment of the model at
    a fixed batch), runs interleaved so that a noisy machine slows every candidate alike."""
    x, y = info.node.inputs[0], info.node.outputs[0]
    shapes = {x: (batch, info.channels, *info.in_spatial), y: (batch, info.out_channels, *info.out_spatial)}
    plans = {}
    for algo in algos:
        m = fragment(model, [info.node], shapes, outputs=[y])
        apply_choice(m, conv_info(m, m.graph.producer(y)), algo)
        plans[algo] = compile_model(m)
    feeds = {x: np.random.default_rng(0).standard_normal(shapes[x]).astype(np.float32)}
    # one warm-up call each (allocations, BLAS threads); past budget_s, two timed rounds suffice
    timing = time_interleaved([lambda p=p: p.run(feeds) for p in plans.values()], repeats, warmup=1,
                              budget_s=budget_s)
    return {a: ms / 1e3 for a, ms in zip(plans, timing.medians_ms)}


@register_pass
class ChooseConv(Pass):
    """Pick direct / im2col / MEC / Winograd(m) per Conv by a cost rule or by measuring."""

    name = "choose-conv"
    needs_static_shapes = True

    @dataclass
    class Options:
        #: time every candidate on the NumPy backend instead of using the cost rule
        measure: bool = False
        #: batch to decide for when the model's batch dim is symbolic
        batch: int = 1
        #: candidates allowed, '|'-separated (direct, im2col, mec, winograd2, winograd4, winograd6)
        allow: list[str] | None = None
        #: timed rounds per layer with measure=true
        repeats: int = 5

    ALL = ("direct", "im2col", "mec") + tuple(f"winograd{m}" for m in WINOGRAD_TILES)

    def __init__(self, **options):
        super().__init__(**options)
        bad = [a for a in (self.options.allow or []) if a not in self.ALL]
        if bad:
            raise OptionError(f"pass 'choose-conv': unknown candidate(s) {bad} (known: {', '.join(self.ALL)})")
        if self.options.batch < 1 or self.options.repeats < 1:
            raise OptionError("pass 'choose-conv': batch and repeats must be >= 1")

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        counts: dict[str, int] = {}
        b = Builder(model)
        for node, info in lowerable_convs(model, result):
            batch = info.batch if isinstance(info.batch, int) else self.options.batch
            algos = [a for a in candidates(info) if not self.options.allow or a in self.options.allow]
            if not algos:
                result.skip(node, "no allowed candidate applies")
                continue
            if self.options.measure:
                cost = measure_seconds(model, info, algos, batch, self.options.repeats)
                how = "measured"
            else:
                cost = {a: estimate_seconds(info, a, batch) for a in algos}
                how = "estimated"
            best = min(cost, key=cost.get)
            ranking = ", ".join(f"{a} {cost[a] * 1e3:.3g} ms" for a in sorted(cost, key=cost.get))
            label = node.label
            apply_choice(model, info, best, b)
            counts[best] = counts.get(best, 0) + 1
            decision = dict(choice=best, reason=f"{how} at batch {batch}: {ranking}",
                            **{f"ms_{a}": round(cost[a] * 1e3, 4) for a in algos})
            if best == "direct":
                result.decisions.append({"node": label, **decision})
            else:
                result.rewrote(label, **decision)
        result.stats.update({f"chose_{k}": v for k, v in sorted(counts.items())})
        if result.changed:
            model.graph.remove_unused_values()
        return result
