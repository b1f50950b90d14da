"""Winograd F(m×m, 3×3) as a lowering choice of the TVM backend, taken in `prepare`.

The direct conv kernel runs near one core's FMA peak, so what is left is doing fewer
multiplications: a float 3x3 stride-1 dilation-1 group-1 2-D Conv with constant weights is
lowered by `passes.winograd.lower_winograd` (WinogradInput, the batched GEMM on the transformed
weights, WinogradOutput with the epilogue) where the rule below says it pays; every other conv
stays with the direct kernel. $TVMLITE_WINOGRAD=0 switches the choice off (and is part of the
build-cache key). Only float32 convs are considered (an fp16 or int8 conv has no float32
weights; a QDQ conv the int8 path left reads a DequantizeLinear and is left alone).

The tile: the largest m in (4, 2) leaving at least MIN_TILES tiles per run (a 7x7 or 8x8 map
takes F(2): F(4)'s 2x2 tiles leave too little GEMM to pay for the transforms). F(6) is not used:
its float32 error (~1e-4 per conv against onnxruntime) leaves no room for a deep stack.

The rule, a cost rule on the conv's geometry (C input, M output channels, P tiles per run,
N·H·W output pixels per run) and on what reads its output; RULE_NOTE holds the measurement it
was fitted on (F(m) time / direct kernel time):
- the transforms cost per tile about C + M (read C channels, write M), the GEMM saves about
  C·M, so the gain grows with C·M/(C+M) (half the harmonic mean of the channel counts): it must
  be at least MIN_HARMONIC (64->64 and below measured 0.95-1.05x, 128->32 1.3-1.6x; 64->96,
  48->192 and up 0.62-0.82x alone, but at 38-41 whole models lost: the detector with its
  112->64 conv at 20x20 (0.98x alone) 1.02x in two runs, Inception-v2's 64->96 convs above);
- at most MAX_TILES tiles per run: beyond, the transformed input and the GEMM's output
  (α²·C·P and α²·M·P floats) leave the caches (64->128 and 128->128 at 112x112: 1.04x and
  0.99x, 128->128 at 80x80 0.90x, at 56x56 0.82x);
- below WIDE_GEMM tiles per run, at most MAX_NARROW_WEIGHT_BYTES of transformed weights
  (α²·C·M floats, 4x the direct kernel's for F(4)): the GEMM does 2·P flops per weight it reads,
  and in a model the weights come from memory, not from the cache a lone conv's timing loop
  keeps them in. Eight convs in a row, each its own weights (``--depth 8``), at 16 tiles:
  256->256 at 14x14 (9 MiB) 1.30x (0.76x alone), 192->192 (5.1 MiB) 0.98-1.23x, 160->160
  (3.5 MiB) 1.05x, 128<->160 (2.8 MiB) 1.13x, 128->128 (2.25 MiB) 0.82x, 96<->128 (1.7 MiB)
  0.83x, 64<->128 at 16x16 0.85x, 48<->192 at 13x13 0.90x; at 49 tiles and more the weights'
  size did not matter: 512->512 at 28x28 (36 MiB, ``--depth 4``) 0.68x, 256<->512 0.73x,
  256->256 0.67x, 128->128 0.92x, 96->96 0.88x; 128->128 at 56x56 (196 tiles) 0.84x;
- at least MIN_MACS multiply-adds, unless the model's float weights (at most
  CACHED_MODEL_BYTES) stay in the caches between runs: the two added kernels and intermediates
  cost a model more than their kernel times show. Inception-v2 (39 MiB of weights) with only
  its 64->96 convs at 28x28 (43M) lowered: 1.051x of none, 96->128 at 14x14 (22M) 1.019x,
  160->224 at 7x7 (F(2), 16M) 1.022x, though that conv's kernels alone went 0.156 -> 0.14 ms;
  the digits models (1.9 and 5.5 MiB) 0.86-0.87x with 9-19M convs lowered;
- a reader that takes the conv's output channels-last (a 1x1 conv while the float NHWC path is
  on, emitters/nhwc.py, or a Concat, also behind an activation, a constant scale or a pool:
  `channels_last_reader`) has the output transform write NHWC, into the Concat's slice where it
  is one (nhwc_concat.py), as the direct kernel does (NCHW Concats take either as a view,
  concat_views.py). That transform gathers the GEMM's channel-major output per channel vector:
  alone 1.19-1.49x the NCHW transform's time at 13x13-28x28, 2.1-2.2x at 56x56, so the output
  side counts NHWC_OUTPUT_COST·M: C·M/(C+1.3·M) must reach MIN_HARMONIC. Whole models, 1 thread,
  on/off, four runs of 15-60 rounds, with such convs taken by C·M/(C+M): ResNet-50's 128->128 at
  28x28 (55.7) 0.986-0.999, Inception-v1's 96->128 and 128->192 at 27x27 (Concats) 0.919 / 0.936
  against 0.938 / 0.933 without them: both kept; SqueezeNet's 64->256 at 13x13 (41.3) 0.980-1.051
  (written into their Concat slices; the transformed weights read from memory eat the 0.20 vs
  0.26 ms per conv of the kernels alone), Inception-v2's 64->192 at 56x56 (39.2) 0.985-1.007:
  refused. (With the output transform writing NCHW those readers lost their layout or copied:
  SqueezeNet 1.067x, ResNet-50 1.035x, Inception-v2 1.029x.) Reading the GEMM's output tile-major
  ([α², P, M], channels contiguous) the NHWC transform measured 0.43-0.80x of the NCHW one at
  13x13-55x55 but 1.3x and 2.4x at 56x56 (64, 192 channels; a timing mock-up, unexplained): a
  GEMM computing that layout could lift the 1.3.
The thresholds were measured on one AVX-512 host (RULE_NOTE); on AVX2 the direct kernel's tile
and the NHWC readers differ (wide 3x3 convs there read NHWC too): `bench/winograd_convs.py`
(``--depth 8``) and `bench/winograd_models.py` are the two measurements to refit them with.
"""
from __future__ import annotations

from collections import Counter

from tvmlite.backends.tvm.emitters.nhwc import enabled as nhwc_enabled
from tvmlite.export.shapes import TypeLookup
from tvmlite.ir.graph import Model
from tvmlite.limits import env_flag
from tvmlite.passes.cleanup import is_onnx
from tvmlite.passes.lowering import ConvInfo, conv_info
from tvmlite.passes.winograd import lower_winograd, winograd_reason
from tvmlite.ops.lowered import winograd_tiles

WINOGRAD_MS = (4, 2)
MIN_TILES = 16
MAX_TILES = 256
MIN_HARMONIC = 42.0
NHWC_OUTPUT_COST = 1.3
WIDE_GEMM = 49
MIN_MACS = 100_000_000
CACHED_MODEL_BYTES = 8 << 20
MAX_NARROW_WEIGHT_BYTES = 5 << 19  # 2.5 MiB
RULE_NOTE = ("fitted on bench/winograd_convs.py, Conv+Relu at batch 1, alone (--depth 1, 20 rounds) and 8 in a row "
             "(--depth 8, 12-15 rounds; 512 channels --depth 4), F(4)/F(2) time over the direct kernel's, "
             "TVMLITE_THREADS=1, thread CPU time, interleaved; Intel Xeon with AVX-512 (KVM, 2 cores, mcpu rocketlake), "
             "load 1-4, 2026-12-05, on 91fcd6e's transform kernels; whole models: bench/winograd_models.py")


def enabled() -> bool:
    return env_flag("TVMLITE_WINOGRAD")


def winograd_tile(info: ConvInfo, model_bytes: int = 0, reader: str | None = None) -> tuple[int | None, str]:
    """(m, why) for a Conv's geometry in a model of ``model_bytes`` of float weights, its output
    read channels-last by ``reader`` (`channels_last_reader`) or not: m is None where the direct
    kernel stays."""
    reason = winograd_reason(info)
    if reason:
        return None, reason
    if not isinstance(info.batch, int):
        return None, f"batch {info.batch!r} is not static"
    m = next((m for m in WINOGRAD_MS if _tiles(info, m) >= MIN_TILES), None)
    oh, ow = info.out_spatial
    if m is None:
        return None, f"{oh}x{ow} output: fewer than {MIN_TILES} F(2) tiles"
    c, k = info.channels, info.out_channels
    out_cost = NHWC_OUTPUT_COST if reader else 1.0
    harmonic = c * k / (c + out_cost * k)
    if harmonic < MIN_HARMONIC:
        form = f"C·M/(C+{out_cost:g}·M)" if reader else "C·M/(C+M)"
        return None, (f"{c}->{k} channels: {form} = {harmonic:.1f} < {MIN_HARMONIC:g}"
                      + (f" (read channels-last by {reader})" if reader else "") + ", the transforms outweigh the saving")
    tiles = _tiles(info, m)
    if tiles > MAX_TILES:
        return None, f"{tiles} F({m}) tiles of {oh}x{ow} > {MAX_TILES}: the transformed maps leave the caches"
    macs = info.macs(info.batch)
    if macs < MIN_MACS and model_bytes > CACHED_MODEL_BYTES:
        return None, (f"{c}->{k} channels at {oh}x{ow}: {macs / 1e6:.0f}M multiply-adds < {MIN_MACS / 1e6:.0f}M in a model "
                      f"of {model_bytes / 2**20:.0f} MiB of weights: the added kernels and buffers outweigh the saving")
    weights = 4 * (m + 2) ** 2 * c * k
    if tiles < WIDE_GEMM and weights > MAX_NARROW_WEIGHT_BYTES:
        return None, (f"{c}->{k} channels at {oh}x{ow}: {weights / 2**20:.1f} MiB of F({m}) weights for {tiles} tiles "
                      f"(< {WIDE_GEMM}): reading them outweighs the saving")
    return m, f"{c}->{k} channels at {oh}x{ow}, {tiles} tiles" + (f", written channels-last for {reader}" if reader else "")


_PASSES_ON = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "MaxPool", "AveragePool")
_BY_CONSTANT = ("Mul", "Add", "Sub", "Div")  # with a constant operand: a scale or shift the epilogue takes


def channels_last_reader(model: Model, value: str, depth: int = 0) -> str | None:
    """The reader of ``value`` (behind up to four activations, constant scales or pools) that takes the conv's
    output channels-last while the float NHWC path is on (a 1x1 conv, a Concat): the output transform then
    writes NHWC (emitters/lowered.py), at `NHWC_OUTPUT_COST` times the NCHW transform's time."""
    if not nhwc_enabled():
        return None
    for r in model.graph.consumers(value):
        if is_onnx(r, "Concat"):
            return "a Concat"
        if (is_onnx(r, "Conv") and r.inputs[0] == value and int(r.attrs.get("group", 1)) == 1
                and (w := model.graph.const_value(r.inputs[1])) is not None and w.shape[2:] == (1, 1)):
            return "a 1x1 conv"
        passes_on = is_onnx(r, *_PASSES_ON) or (is_onnx(r, *_BY_CONSTANT) and any(
            model.graph.const_value(v) is not None for v in r.inputs))
        if passes_on and depth < 4 and (why := channels_last_reader(model, r.outputs[0], depth + 1)):
            return f"{r.op_type} -> {why}"
    return None


def _tiles(info: ConvInfo, m: int) -> int:
    th, tw = winograd_tiles(info.out_spatial, m)
    return info.batch * th * tw


def qdq_convs(model: Model) -> set[str]:
    """The Convs reading a DequantizeLinear (input or weights), taken before `prepare` fuses QDQ
    patterns: those the int8 path leaves run in float between fake quantizations (qdq_fusion),
    where Winograd's other rounding could move a value across a quantization step."""
    g = model.graph
    return {n.label for n in g.nodes if is_onnx(n, "Conv") and any(
        (p := g.producer(v)) is not None and is_onnx(p, "DequantizeLinear") for v in n.inputs if v)}


def choose_winograd(model: Model, quantized: set[str] = frozenset()) -> list[dict]:
    """Lower every Conv the rule picks to Winograd, in place; one decision per 3x3 Conv
    considered ({"node", "m", "reason"}, m None where it stays direct). ``quantized``: the labels
    of QDQ convs (`qdq_convs`), left alone. Nothing when switched off."""
    if not enabled():
        return []
    shapes = TypeLookup(model)
    g = model.graph
    model_bytes = sum(a.nbytes for a in (g.const_value(n) for n in g.initializers) if a is not None and a.dtype.kind == "f")
    decisions = []
    for node in model.graph.toposort():
        if not is_onnx(node, "Conv"):
            continue
        info = conv_info(model, node, shapes)
        if isinstance(info, str) or info.kernel != (3, 3):
            continue
        if node.label in quantized:
            m, why = None, "a QDQ conv the int8 path left: it stays between fake quantizations"
        else:
            m, why = winograd_tile(info, model_bytes, channels_last_reader(model, node.outputs[0]))
        decisions.append({"node": node.label, "m": m, "reason": why})
        if m is not None:
            lower_winograd(model, info, m)
    if any(d["m"] for d in decisions):
        model.opsets.setdefault("tvmlite", 1)
        model.graph.remove_unused_values()
    return decisions


def plan_record(decisions: list[dict]) -> dict:
    """What the run plan keeps of the decisions: how many 3x3 convs were considered, and
    [conv, m, why] of each one lowered."""
    return {"considered": len(decisions), "lowered": [[d["node"], d["m"], d["reason"]] for d in decisions if d["m"]]}


def report_lines(record: dict | None) -> list[str]:
    """The build report: '3 of 5 3x3 convs as Winograd (F(4) x2, F(2) x1)', then 'conv: F(4), why'
    per conv lowered; nothing where no 3x3 conv was considered."""
    if not record:
        return []
    lowered = record["lowered"]
    tiles = Counter(m for _, m, _ in lowered)
    head = f"{len(lowered)} of {record['considered']} 3x3 convs as Winograd"
    if tiles:
        head += " (" + ", ".join(f"F({m}) x{n}" for m, n in sorted(tiles.items(), reverse=True)) + ")"
    return [head] + [f"{node}: F({m}), {why}" for node, m, why in lowered]
