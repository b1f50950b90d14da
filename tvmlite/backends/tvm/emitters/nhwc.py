"""Float values kept channels-last (NHWC) between convs, decided while lowering.

A float conv kernel (or a Winograd conv's output transform, emitters/lowered.py) writes its value
(after its fused epilogue) into an NHWC buffer when every reader takes it that way: a group-1 conv as its input (`conv_nhwc.conv2d_nhwc` reads NHWC, its
k-panel contiguous: every 1x1 conv, 3x3 ones where their tile measured faster, `reads_nhwc`), at
least one such conv, or an Add that joins another conv's epilogue (a residual: the epilogue
reads the operand through `Epilogue.layouts`). The value's NCHW buffer is then not made at all,
unless a reader the decision did not foresee needs it (an Add that ran as its own kernel, a host
call, a view, a graph output): `materialize` then adds one transpose kernel per such value, run
right after its producer, so a wrong guess costs a copy, never a wrong result. A windowed pool
or a channel Concat passes the layout on (`passes_nhwc`): it runs channels-last in and out
(kernels/nhwc_moves.py) when its own readers take NHWC, so Inception's and SqueezeNet's branches,
pools and Concats reach the next 1x1 convs channels-last, and a Concat's inputs are written
straight into its NHWC buffer (nhwc_concat.py). The same design
as the int8 path's channels-last buffers (qdq_buffers.py), there decided before lowering because
those nodes' fusion is already done; here the float epilogue fusion (fusion.py) decides which
value a kernel writes, so the decision is taken per kernel as it is emitted.

Set TVMLITE_FLOAT_NHWC=0 to keep every float value NCHW.
"""
from __future__ import annotations

import re

import numpy as np

from tvmlite.backends.tvm.kernels.defs import channel_vector
from tvmlite.backends.tvm.kernels.schedules import accumulator_vectors
from tvmlite.limits import env_flag

ONNX = ("", "ai.onnx")
SUFFIX = "::nhwc"


def enabled() -> bool:
    return env_flag("TVMLITE_FLOAT_NHWC")


def reads_nhwc(low, node) -> bool:
    """Whether float Conv ``node`` reads its input from an NHWC buffer where it has one: a 2-D
    group-1 conv with constant weights (and bias), 1x1 with a long enough reduction
    (`pointwise_reads_nhwc`), or larger where its tile measured faster reading NHWC
    (`input_nhwc_pays`)."""
    if node.domain not in ONNX or node.op_type != "Conv" or int(node.attrs.get("group", 1)) != 1:
        return False
    x = node.inputs[0]
    w = low.const(node.inputs[1]) if len(node.inputs) > 1 else None
    xs = low.shapes.get(x, ())
    if w is None or w.ndim != 4 or x in node.inputs[1:] or len(xs) != 4:
        return False
    b = node.inputs[2] if len(node.inputs) > 2 else ""
    if b and low.const(b) is None:
        return False
    if tuple(w.shape[2:]) == (1, 1):
        return pointwise_reads_nhwc(int(xs[1]), low.lanes)
    from tvmlite.ops.geometry import WindowGeometry

    return input_nhwc_pays(xs, w.shape, WindowGeometry.conv(node.attrs, xs, w.shape), low.lanes)


def pointwise_reads_nhwc(channels: int, lanes: int) -> bool:
    """Whether a group-1 1x1 conv of ``channels`` input channels reads NHWC: with AVX2's tiles
    where its reduction is 8 vectors or more (a short one does not hide the transposing store of
    a kernel writing NCHW, the direct conv's rule, kernels/conv.short_reduction: PP-OCR cls'
    16->88 and 32->200 at 3x96 ran 1.10x and 1.19x of the NCHW kernel reading NHWC, one thread,
    CPU time); with AVX-512's from 4 vectors (64 channels), where the NHWC-reading kernel ran
    faster into either layout (Sapphire Rapids, one thread, CPU time, bench/conv_tiles.py
    --layouts, 30 rounds, load 2.4, NHWC input against NCHW input, written NHWC / NCHW, as
    fractions of onnxruntime's Conv): ResNet-50's 64->256 at 56x56 0.71x / 0.76x and 1.06x /
    1.15x, 64->64 0.55x / 0.72x and 0.73x / 0.82x, SqueezeNet's 64->256 at 13x13 alike; shorter
    reductions mixed (32->200 at 3x24 written NCHW 0.67x against 0.62x)."""
    from tvmlite.backends.tvm.kernels.conv import short_reduction

    if accumulator_vectors(lanes) > 8:
        return channels >= 4 * lanes
    return not short_reduction(channels, 1, lanes)


#: the most pixels (channel streams) a 3x3 conv's NHWC tile may read (`input_nhwc_pays`)
MAX_STREAMS = 5


def input_nhwc_pays(x_shape, w_shape, geom, lanes: int) -> bool:
    """Whether a group-1 3x3 conv (``geom``: its `WindowGeometry`) of input ``x_shape`` (NCHW)
    runs faster reading its input NHWC, from what its tile (`conv_nhwc.nhwc_tile`: mr pixels x
    nr channels) does there: each (ky, kx) step reads, for each of its mr pixels, a run of all
    C input channels, so the tile reads mr separate streams; reading NCHW, mr + 2 neighbouring
    pixels of one row per channel and tap row. Taken where the tile reads at most `MAX_STREAMS`
    streams (AVX2's two-vector tiles of 4-5 pixels; its one-vector tiles of 6-7 pixels, which
    rows of 6, 7, 13 and 14 take, always lost) and either, at stride 1, each stream's run is
    long (C >= 32 vectors: 256 channels with AVX2), or, at stride 2, the input is larger than the
    L2 (`tile_order.L2_FLOATS`: the NCHW tile then streams C planes of rows of which each tap uses
    every other pixel). AVX2 (Zen 1), one thread, CPU time, NHWC input against NCHW input with
    the output in the same layout (both pairs: NCHW and NHWC output), bench/conv_tiles.py,
    medians of 15-20 interleaved rounds at load 8-12:
    stride 1, 4-5 pixels, >= 256 channels: VGG's 256->256 at 56x56 0.93x / 0.98x, 256->512 at
    28x28 0.98x / 0.96x, 512->512 at 28x28 0.92x / 0.92x; fewer channels 0.96-1.06x (the
    detector's 16..112 at 80x80..20x20, ResNet-50's 64 at 56x56 and 128 at 28x28, DenseNet's
    128->32, Inception's 64->192 at 55x55 1.05x / 1.06x, VGG's 64->128 at 112x112 1.03x / 1.04x);
    6-7 pixels: 1.21-1.48x (ResNet-50's 256 and 512 channels at 14x14 and 7x7, DenseNet's 128->32
    at 14x14 and 7x7, Inception's 13x13 and 6x6); stride 2, 4 pixels, input past the L2: the
    detector's 16->32 from 160x160 0.91x / 0.70x, 32->48 from 80x80 0.98x / 0.99x, ResNet-50's
    128 from 56x56 1.01x / 0.93x; input within it: 48->48 from 40x40 1.00x / 1.09x; 7 pixels
    (ResNet-50's 256 from 28x28, 512 from 14x14) 1.04-1.08x. 5x5 lost with 4 pixels (Inception's
    32->96 at 27x27 1.24x), so only 3x3; no dilation, other strides or AVX-512's tiles measured."""
    from tvmlite.backends.tvm.kernels.tile_order import L2_FLOATS
    from tvmlite.backends.tvm.kernels.conv_nhwc import nhwc_tile

    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = (int(d) for d in w_shape)
    if accumulator_vectors(lanes) > 8 or geom.group != 1 or (kh, kw) != (3, 3) or tuple(geom.dilations) != (1, 1):
        return False
    if nhwc_tile(co, geom.out_spatial[1], lanes, kh * kw, strided=max(geom.strides) > 1).mr > MAX_STREAMS:
        return False
    strides = tuple(geom.strides)
    if strides == (1, 1):
        return c >= 32 * lanes
    return strides == (2, 2) and n * c * h * wd > L2_FLOATS


def writes_nhwc(low, node, final: str) -> bool:
    """Whether conv ``node``'s kernel (a 2-D group-1 float conv whose epilogue ends in ``final``)
    should write ``final`` NHWC: all its readers take it that way, at least one of them a conv."""
    g = low.g
    if not (low.emit and enabled()) or final in g.outputs or final in low.nhwc:
        return False
    if low.shapes.get(final) != low.shapes.get(node.outputs[0]) or len(low.shapes.get(final, ())) != 4:
        return False  # the epilogue crossed a view
    return _readers_take_nhwc(low, final, ahead=True)


def _readers_take_nhwc(low, value: str, ahead: bool, depth: int = 0) -> bool:
    """Whether every reader of ``value`` takes it NHWC, at least one a conv (or a pool or channel
    Concat whose own readers do: `passes_nhwc`); or, with ``ahead``, all of them residuals of
    convs that will write NHWC (ResNet's downsampling 1x1 conv, read only by the block's Add: the
    kernel writing NHWC would read it channel-strided)."""
    g = low.g
    readers = g.consumers(value)
    if value in g.outputs or not readers or any(r in low.absorbed for r in readers):
        return False  # a reader already emitted took the NCHW buffer
    convs = 0
    for r in readers:
        if r.inputs and r.inputs[0] == value and reads_nhwc(low, r):
            convs += 1
        elif depth < _MAX_DEPTH and passes_nhwc(low, r, value) \
                and _readers_take_nhwc(low, _chain_end(low, r.outputs[0]), False, depth + 1):
            convs += 1
        elif not _residual(low, r, value):
            return False
    if convs:
        return True
    return ahead and all(_readers_take_nhwc(low, _chain_end(low, r.outputs[0]), False, depth + 1) for r in readers)


#: how many pools and Concats a look-ahead crosses (Inception: Concat -> pool -> Concat -> conv)
_MAX_DEPTH = 4
_POOLS = ("MaxPool", "AveragePool")


def passes_nhwc(low, node, value: str) -> bool:
    """Whether ``node`` can read ``value`` NHWC and write its own output NHWC
    (kernels/nhwc_moves.py): a 2-D MaxPool / AveragePool of ``value`` (no Indices output) over
    channels that make whole vectors, or a Concat of 4-D float values along the channels."""
    if node.domain not in ONNX or value in low.g.outputs or node.outputs[0] in low.g.outputs:
        return False
    shape = low.shapes.get(value, ())
    if node.op_type in _POOLS:
        return (node.inputs[0] == value and len(shape) == 4 and len([o for o in node.outputs if o]) == 1
                and len(low.shapes.get(node.outputs[0], ())) == 4 and channel_vector(shape[1], low.lanes) > 0)
    if node.op_type != "Concat" or len(low.shapes.get(node.outputs[0], ())) != 4:
        return False
    if int(node.attrs.get("axis", 0)) % 4 != 1:
        return False
    for x in node.inputs:
        if not x or low.const(x) is not None or len(low.shapes.get(x, ())) != 4:
            return False
        dt = low.g.value(x).dtype
        if dt is not None and np.dtype(dt) != np.float32:
            return False
    return True


#: the unary ops an epilogue takes after a residual Add (fusion.absorb)
_UNARY_AFTER = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Identity")


def _chain_end(low, value: str) -> str:
    """The value a kernel whose epilogue reaches ``value`` writes: past a run of unary ops."""
    g = low.g
    while value not in g.outputs and g.num_uses(value) == 1:
        (c,) = g.consumers(value)
        if c.domain not in ONNX or c.op_type not in _UNARY_AFTER or c.inputs[0] != value:
            break
        value = c.outputs[0]
    return value


def _residual(low, add, value: str) -> bool:
    """Whether ``add`` will join another conv's epilogue with ``value`` as its operand: Add (Sum) of two
    values of one shape, the other made by a float Conv that nobody else reads."""
    g = low.g
    if add.domain not in ONNX or add.op_type not in ("Add", "Sum") or len(add.inputs) != 2 or add.inputs.count(value) != 1:
        return False
    other = add.inputs[1 - add.inputs.index(value)]
    p = g.producer(other) if other else None
    return (p is not None and p.domain in ONNX and p.op_type == "Conv" and other not in g.outputs
            and g.num_uses(other) == 1 and low.shapes.get(other) == low.shapes.get(value)
            == low.shapes.get(add.outputs[0]))


def emit_pool(low, node, geom, *, kind: str, count_include_pad: bool, epilogue, final: str, labels) -> bool:
    """A windowed pool of a value stored NHWC whose readers take its output NHWC as one
    channels-last kernel (kernels/nhwc_moves.pool2d_nhwc); False (nothing added) otherwise."""
    x = node.inputs[0]
    if x not in low.nhwc or not passes_nhwc(low, node, x) or not writes_nhwc(low, node, final):
        return False
    name, src, xs, lanes = low.kernel_name(node), low.nhwc[x], low.shapes[x], low.lanes
    out = buffer_of(final)

    def make():
        from tvmlite.backends.tvm.kernels.nhwc_moves import pool2d_nhwc

        return pool2d_nhwc(name, src, xs, geom, kind=kind, count_include_pad=count_include_pad, out_value=out,
                           epilogue=epilogue, lanes=lanes)
    low.add(make, node, final, labels)
    store_nhwc(low, final)
    return True


def emit_concat(low, node, *, epilogue, final: str, labels) -> bool:
    """A channel Concat of which some input is stored NHWC and whose readers take its output NHWC
    as one copy into an NHWC buffer, each input read in its own layout
    (kernels/nhwc_moves.concat_nhwc); False (nothing added) otherwise."""
    if not any(x in low.nhwc for x in node.inputs) or not passes_nhwc(low, node, node.inputs[0]) \
            or not writes_nhwc(low, node, final):
        return False
    ins = [(low.nhwc.get(x, x), low.shapes[x], x in low.nhwc) for x in node.inputs]
    name, shape, lanes = low.kernel_name(node), low.shapes[final], low.lanes
    out = buffer_of(final)

    def make():
        from tvmlite.backends.tvm.kernels.nhwc_moves import concat_nhwc

        return concat_nhwc(name, ins, out_value=out, out_shape=shape, lanes=lanes, epilogue=epilogue)
    low.add(make, node, final, labels)
    low.nhwc_concats[name] = (ins, out, shape, bool(epilogue.ops))  # its inputs may move (nhwc_concat.py)
    store_nhwc(low, final)
    return True


def buffer_of(value: str) -> str:
    """The name of ``value``'s channels-last buffer."""
    return value + SUFFIX


def promise_residuals(low, node, epilogue) -> None:
    """Residual operands of ``epilogue`` (of conv ``node``, whose kernel writes NHWC) that a
    group-1 Conv makes later in the walk and nothing else reads (ResNet's downsampling conv
    comes after the block's last conv in topological order): that conv is promised to write
    them NHWC (``low.promised``) and this kernel reads them so. A promise the conv does not keep
    (it ran on the host, say) gets an NHWC copy from `materialize`."""
    g = low.g
    for op in epilogue.ops:
        for o in op.operands:
            v = o[1] if o[0] == "value" else None
            p = g.producer(v) if v and v not in low.nhwc else None
            if p is None or p.domain not in ONNX or p.op_type != "Conv" or low.pos.get(p, -1) <= low.pos[node] \
                    or p.outputs[0] != v or v in g.outputs or g.num_uses(v) != 1 \
                    or int(p.attrs.get("group", 1)) != 1 or len(low.shapes.get(v, ())) != 4:
                continue
            n, c, h, w = low.shapes[v]
            low.shapes[buffer_of(v)] = (n, h, w, c)
            low.nhwc[v] = epilogue.layouts[v] = buffer_of(v)
            low.nhwc_keys[v] = low.pos[p]
            low.promised.add(v)


def store_nhwc(low, value: str) -> str:
    """Record that ``value``'s kernel (just added) writes it NHWC, to `buffer_of` (its logical
    NCHW shape stays in ``low.shapes[value]``), and the run position of its producer for
    `materialize`."""
    n, c, h, w = low.shapes[value]
    buf = buffer_of(value)
    low.shapes[buf] = (n, h, w, c)
    low.nhwc[value] = buf
    low.nhwc_keys[value] = low.pos[low.g.producer(value)]
    low.promised.discard(value)
    return buf


def layouts_of(low, epilogue) -> dict:
    """The NHWC buffers of ``epilogue``'s value operands (for `Epilogue.layouts`)."""
    return {o[1]: low.nhwc[o[1]] for op in epilogue.ops for o in op.operands
            if o[0] == "value" and o[1] in low.nhwc}


def materialize(low) -> None:
    """An NCHW copy (a transpose kernel, run right after the producer) of each NHWC value that
    something still reads by its own name: a kernel input, a host node, a view, a graph output."""
    if not low.nhwc:
        return
    for value in sorted(low.promised):  # written NCHW after all: the NHWC copy the reader expects
        _transpose(low, value, "nhwc", low.nhwc[value], to_nhwc=True)
    wanted = {p.name for kd in low.kernels if not _is_host(kd) for p in kd.params if p.kind == "input"}
    for e in low.kernels:
        if _is_host(e):
            wanted.update(n for n in list(e.node.inputs) + list(e.node.implicit_inputs) if n)
    wanted.update(low.views.values())
    wanted.update(low.g.outputs)
    for value in sorted(v for v in low.nhwc if v in wanted and v not in low.promised):
        _transpose(low, value, "nchw", value, to_nhwc=False)


def _transpose(low, value: str, kind: str, out: str, to_nhwc: bool) -> None:
    """A kernel making ``out`` (``value``'s buffer in the other layout), run right after the
    producer of ``value``."""
    name = f"k{len(low.kernels):03d}_{kind}_" + re.sub(r"[^0-9A-Za-z_]", "_", value)[:40]
    src = value if to_nhwc else low.nhwc[value]
    shape, lanes = low.shapes[value], low.lanes

    def make():
        from tvmlite.backends.tvm.kernels.conv_nhwc import nhwc_to_nchw

        return nhwc_to_nchw(name, src, shape, out_value=out, lanes=lanes, to_nhwc=to_nhwc)
    low.add(make, low.g.producer(value), value, key=low.nhwc_keys[value])


def _is_host(entry) -> bool:
    return hasattr(entry, "reason")
