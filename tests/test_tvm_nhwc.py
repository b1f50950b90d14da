"""Float values kept channels-last between convs (emitters/nhwc.py, kernels/conv_nhwc.py): the
layout-taking conv kernel in every layout pair, and the lowering's decisions on small graphs:
chains, branches, residuals, the boundaries that stay NCHW, the copy made for a reader nobody
foresaw, the switch; everything against onnxruntime, at AVX2's 8 lanes and AVX-512's 16."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.kernels.conv_nhwc import conv2d_nhwc  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.ops.conv import conv  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402

RNG = np.random.default_rng(0)
LAYOUTS = [("NCHW", "NCHW"), ("NCHW", "NHWC"), ("NHWC", "NCHW"), ("NHWC", "NHWC")]


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("xl,yl", LAYOUTS)
@pytest.mark.parametrize("ci,co,k,s,hw", [(16, 24, 1, 1, (9, 11)), (16, 40, 1, 2, (12, 12)),
                                          (8, 16, 3, 1, (9, 7)), (8, 20, 3, 2, (11, 11))])
def test_conv_kernel_in_every_layout_pair(lanes, xl, yl, ci, co, k, s, hw):
    """Input read NCHW or NHWC, output written NCHW or NHWC; bias, a residual stored NHWC (read
    through Epilogue.layouts at the logical index) and ReLU fused; 1x1 flat (pixel tiles across
    rows, 99 pixels: a ragged last tile), strided, padded 3x3; channels no multiple of the tile."""
    x = RNG.standard_normal((1, ci) + hw).astype(np.float32)
    w = RNG.standard_normal((co, ci, k, k)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [k // 2] * 4}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    ref = conv(x, w, b, **attrs)
    r = RNG.standard_normal(ref.shape).astype(np.float32)
    epi = Epilogue([EwOp("Add", [("value", "r", r.shape)]), EwOp("Relu")], layouts={"r": "r::nhwc"})
    kd = conv2d_nhwc("k", "x", x.shape, w, b, geom, out_value="y", epilogue=epi, lanes=lanes,
                     x_layout=xl, y_layout=yl)
    args, outs = kernel_args(kd, {"x": nhwc(x) if xl == "NHWC" else x, "r::nhwc": nhwc(r)})
    build_kernel(kd)["main"](*args)
    n, c, oh, ow = ref.shape
    y = outs[0].numpy()
    y = y.reshape(n, oh, ow, c).transpose(0, 3, 1, 2) if yl == "NHWC" else y.reshape(ref.shape)
    np.testing.assert_allclose(y, np.maximum(ref + r, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("yl", ["NCHW", "NHWC"])
def test_stride_2_3x3_reading_nhwc_with_asymmetric_pads(lanes, yl):
    """The detector-style stride-2 3x3 conv reading NHWC (emitters/nhwc.input_nhwc_pays) with
    SAME_UPPER-style pads (none before, one after), an even input and SiLU fused."""
    x = RNG.standard_normal((1, 16, 12, 10)).astype(np.float32)
    w = RNG.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(32).astype(np.float32)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1]}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    ref = conv(x, w, b, **attrs)
    kd = conv2d_nhwc("k", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Silu")]), lanes=lanes,
                     x_layout="NHWC", y_layout=yl)
    args, outs = kernel_args(kd, {"x": nhwc(x)})
    build_kernel(kd)["main"](*args)
    n, c, oh, ow = ref.shape
    y = outs[0].numpy()
    y = y.reshape(n, oh, ow, c).transpose(0, 3, 1, 2) if yl == "NHWC" else y.reshape(ref.shape)
    np.testing.assert_allclose(y, ref / (1 + np.exp(-ref)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("xl,yl", LAYOUTS)
@pytest.mark.parametrize("ci,co,k,hw,copied", [
    (32, 48, 1, (13, 13), False),  # flat 1x1, 169 pixels: a ragged last tile reads the last pixel again
    (32, 48, 1, (8, 10), False),  # 80 pixels: whole tiles (5 pixels at 8 lanes, 10 at 16), read as they are
    (8, 16, 3, (9, 7), True),  # a padded 3x3 keeps its zero-padded copy
])
def test_flat_conv_clamps_its_last_tile_instead_of_copying(lanes, xl, yl, ci, co, k, hw, copied):
    """A flat 1x1 conv (`conv_nhwc.clamped_row`) reads past the image's last pixel through a clamp
    inlined into the conv, no copy of its input; the numbers as the NumPy conv's."""
    x = RNG.standard_normal((1, ci) + hw).astype(np.float32)
    w = RNG.standard_normal((co, ci, k, k)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    attrs = {"kernel_shape": [k, k], "pads": [k // 2] * 4}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    kd = conv2d_nhwc("k", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=lanes,
                     x_layout=xl, y_layout=yl)
    assert ("pad_input" in kd.steps) is copied
    if not copied:
        assert 'T.sblock("pad")' not in kd.func.script()
    relu_conv_matches(kd, x, w, b, attrs, xl, yl)


def relu_conv_matches(kd, x, w, b, attrs, xl: str, yl: str):
    """Runs ``kd`` (a conv + ReLU kernel reading ``x`` in layout ``xl``, writing ``yl``) against
    the reference conv."""
    args, outs = kernel_args(kd, {"x": nhwc(x) if xl == "NHWC" else x})
    build_kernel(kd)["main"](*args)
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    n, c, oh, ow = ref.shape
    y = outs[0].numpy()
    y = y.reshape(n, oh, ow, c).transpose(0, 3, 1, 2) if yl == "NHWC" else y.reshape(ref.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ lowering
def W(name, *shape):
    return name, (RNG.standard_normal(shape) * 0.2).astype(np.float32)


def conv_node(x, w, y, k=1, **kw):
    pads = [k // 2] * 4
    return helper.make_node("Conv", [x, w, w.replace("w", "b")], [y], kernel_shape=[k, k], pads=pads, **kw)


def build(nodes, inits, x_shape, out_shapes, lanes):
    """(compiled model, onnxruntime's outputs, ours) for a graph of input x."""
    outs = [tensor(n, s) for n, s in out_shapes.items()]
    m = make_model(nodes, [tensor("x", x_shape)], outs, inits)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    ref = ort_run(m, {"x": x})
    cm = compile_model(load(m), {"x": x_shape}, cache=False, lanes=lanes)
    got = cm.run({"x": x})
    got = [got[n] for n in out_shapes] if isinstance(got, dict) else list(got)
    for a, e in zip(got, ref):
        assert float(np.abs(a - e).max() / (np.abs(e).max() + 1e-30)) <= 1e-4
    return cm


def nhwc_buffers(cm) -> set:
    """The channels-last buffers the plan's kernels write."""
    return {a[0] for c in cm.plan["calls"] for a in c.get("args", []) if a[0].endswith("::nhwc")}


def transposes(cm) -> list:
    return [c["func"] for c in cm.plan["calls"] if "_nchw_" in c.get("func", "")]


def bottleneck(c=128, mid=128):
    """1x1 reduce -> 3x3 -> 1x1 expand + residual (ResNet's block) after a 1x1 stem."""
    nodes = [conv_node("x", "w0", "a0"), helper.make_node("Relu", ["a0"], ["r0"]),
             conv_node("r0", "w1", "a1"), helper.make_node("Relu", ["a1"], ["r1"]),
             conv_node("r1", "w2", "a2", k=3), helper.make_node("Relu", ["a2"], ["r2"]),
             conv_node("r2", "w3", "a3"), helper.make_node("Sum", ["a3", "r0"], ["s3"]),
             helper.make_node("Relu", ["s3"], ["y"])]
    inits = [W("w0", c, 8, 1, 1), W("b0", c), W("w1", mid, c, 1, 1), W("b1", mid), W("w2", mid, mid, 3, 3),
             W("b2", mid), W("w3", c, mid, 1, 1), W("b3", c)]
    return nodes, inits


@pytest.mark.parametrize("lanes", [8, 16])
def test_bottleneck_keeps_the_values_1x1_convs_and_residuals_read_channels_last(lanes):
    """The stem's value (read by a 1x1 conv and as the residual) and the 3x3 conv's (read by the
    expand conv) travel NHWC; the reduce conv's (read by the 3x3 conv) and the graph output
    stay NCHW; nothing needs a copy."""
    nodes, inits = bottleneck()
    cm = build(nodes, inits, (1, 8, 9, 11), {"y": (1, 128, 9, 11)}, lanes)
    assert nhwc_buffers(cm) == {"r0::nhwc", "r2::nhwc"} and not transposes(cm)


def test_chain_and_branches_of_1x1_convs():
    """A value two 1x1 convs read (a branch) and a chain of 1x1 convs: all NHWC but the output."""
    nodes = [conv_node("x", "w0", "a"), conv_node("a", "w1", "v1"), conv_node("a", "w2", "v2"),
             helper.make_node("Add", ["v1", "v2"], ["c"]), conv_node("c", "w3", "y")]
    inits = [W("w0", 64, 8, 1, 1), W("b0", 64), W("w1", 64, 64, 1, 1), W("b1", 64), W("w2", 64, 64, 1, 1),
             W("b2", 64), W("w3", 8, 64, 1, 1), W("b3", 8)]
    cm = build(nodes, inits, (1, 8, 7, 7), {"y": (1, 8, 7, 7)}, 8)
    # v1 and v2 are each other's residual, read by a kernel writing c, which a 1x1 conv reads
    assert {"a::nhwc", "c::nhwc"} <= nhwc_buffers(cm) and not transposes(cm)


@pytest.mark.parametrize("reader", ["conv3x3", "depthwise", "maxpool", "flatten", "output"])
def test_values_read_otherwise_stay_nchw(reader):
    """Must not apply: a value a 3x3 conv, a depthwise conv, MaxPool or a view reads, or a graph
    output, is written NCHW even when a 1x1 conv reads it too."""
    nodes = [conv_node("x", "w0", "a"), conv_node("a", "w1", "y")]
    inits = [W("w0", 64, 8, 1, 1), W("b0", 64), W("w1", 8, 64, 1, 1), W("b1", 8)]
    outs = {"y": (1, 8, 8, 8)}
    if reader == "conv3x3":
        nodes.append(conv_node("a", "w2", "z", k=3))
        inits += [W("w2", 8, 64, 3, 3), W("b2", 8)]
        outs["z"] = (1, 8, 8, 8)
    elif reader == "depthwise":
        nodes.append(conv_node("a", "w2", "z", k=3, group=64))
        inits += [W("w2", 64, 1, 3, 3), W("b2", 64)]
        outs["z"] = (1, 64, 8, 8)
    elif reader == "maxpool":
        nodes.append(helper.make_node("MaxPool", ["a"], ["z"], kernel_shape=[2, 2], strides=[2, 2]))
        outs["z"] = (1, 64, 4, 4)
    elif reader == "flatten":
        nodes.append(helper.make_node("Flatten", ["a"], ["z"]))
        outs["z"] = (1, 4096)
    else:
        outs["a"] = (1, 64, 8, 8)
    cm = build(nodes, inits, (1, 8, 8, 8), outs, 8)
    assert not nhwc_buffers(cm) and not transposes(cm)


def test_a_reader_nobody_foresaw_gets_an_nchw_copy():
    """The residual Add was to join a conv's epilogue, but that conv (non-constant weights) runs
    on the host: the Add becomes its own kernel reading the value by name, so one transpose
    kernel makes the NCHW copy; results still match."""
    nodes = [conv_node("x", "w0", "a"), conv_node("a", "w1", "y"),
             helper.make_node("Relu", ["w4"], ["wd"]),  # weights computed at run time
             helper.make_node("Conv", ["x", "wd"], ["d"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["d", "a"], ["z"])]
    inits = [W("w0", 64, 8, 1, 1), W("b0", 64), W("w1", 8, 64, 1, 1), W("b1", 8)]
    outs = [tensor("y", (1, 8, 6, 6)), tensor("z", (1, 64, 6, 6))]
    m = make_model(nodes, [tensor("x", (1, 8, 6, 6)), tensor("w4", (64, 8, 1, 1))], outs, inits)
    x = RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)
    w4 = RNG.standard_normal((64, 8, 1, 1)).astype(np.float32)
    ref = ort_run(m, {"x": x, "w4": w4})
    cm = compile_model(load(m), {"x": x.shape, "w4": w4.shape}, cache=False, lanes=8)
    got = cm.run({"x": x, "w4": w4})
    got = [got[n] for n in ("y", "z")] if isinstance(got, dict) else list(got)
    for a, e in zip(got, ref):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    assert nhwc_buffers(cm) == {"a::nhwc"} and len(transposes(cm)) == 1


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("TVMLITE_FLOAT_NHWC", "0")
    nodes, inits = bottleneck()
    cm = build(nodes, inits, (1, 8, 9, 11), {"y": (1, 128, 9, 11)}, 8)
    assert not nhwc_buffers(cm)


@pytest.mark.parametrize("hw,lanes,kept", [(28, 8, True), (14, 8, False), (28, 16, False)])
def test_wide_3x3_convs_read_channels_last_only_on_large_images(hw, lanes, kept):
    """A 3x3 conv reads NHWC with 256 channels of 28x28 (VGG's wide convs: a tile of 4 pixels),
    not at 14x14, where its tile reads 7 pixel streams, nor with AVX-512's wider tiles, where it
    was not measured (emitters/nhwc.input_nhwc_pays)."""
    nodes = [conv_node("x", "w0", "a", k=3), helper.make_node("Relu", ["a"], ["r"]), conv_node("r", "w1", "y", k=3)]
    inits = [W("w0", 256, 8, 3, 3), W("b0", 256), W("w1", 32, 256, 3, 3), W("b1", 32)]
    cm = build(nodes, inits, (1, 8, hw, hw), {"y": (1, 32, hw, hw)}, lanes)
    assert nhwc_buffers(cm) == ({"r::nhwc"} if kept else set())


@pytest.mark.parametrize("hw,kept", [(96, True), (64, False)])
def test_stride_2_3x3_convs_read_channels_last_from_inputs_past_the_l2(hw, kept):
    """The detector's stride-2 3x3 convs read NHWC where their input is larger than the L2 (16
    channels of 96x96: 576 KiB), so the conv before them writes NHWC; at 64x64 (256 KiB) the value
    stays NCHW. Results match onnxruntime either way (emitters/nhwc.input_nhwc_pays)."""
    nodes = [conv_node("x", "w0", "a", k=3), helper.make_node("Relu", ["a"], ["r"]),
             conv_node("r", "w1", "y", k=3, strides=[2, 2])]
    inits = [W("w0", 16, 3, 3, 3), W("b0", 16), W("w1", 32, 16, 3, 3), W("b1", 32)]
    cm = build(nodes, inits, (1, 3, hw, hw), {"y": (1, 32, hw // 2, hw // 2)}, 8)
    assert nhwc_buffers(cm) == ({"r::nhwc"} if kept else set())


def geometry(ci, co, k, hw, stride=1, dilation=1, group=1, pads=None):
    attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "dilations": [dilation, dilation],
             "pads": [dilation * (k // 2)] * 4 if pads is None else pads, "group": group}
    return (1, ci, hw, hw), (co, ci // group, k, k), WindowGeometry.conv(attrs, (1, ci, hw, hw), (co, ci // group, k, k))


@pytest.mark.parametrize("case,kept", [
    ((256, 256, 3, 56), True), ((512, 512, 3, 28), True), ((256, 512, 3, 28), True),  # VGG's
    ((256, 256, 3, 20), True),  # a tile of 4 pixels, 256 channels
    ((128, 128, 3, 28), False), ((64, 64, 3, 56), False), ((48, 48, 3, 40), False),  # short runs
    ((256, 256, 3, 14), False), ((512, 512, 3, 7), False), ((128, 32, 3, 14), False),  # 7-pixel tiles
    ((192, 384, 3, 6), False), ((256, 8, 3, 28), False),  # 6 pixels; 8 channels: a one-vector tile of 7
    ((16, 32, 3, 160, 2), True), ((32, 48, 3, 80, 2), True), ((128, 128, 3, 56, 2), True),  # past the L2
    ((48, 48, 3, 40, 2), False), ((48, 64, 3, 40, 2), False),  # stride 2 within the L2
    ((256, 256, 3, 28, 2), True),  # stride 2 to 14x14: the strided tile is 5 x 16 (conv.direct_tile), past the L2
    ((512, 512, 3, 14, 2), False),  # stride 2 to 7x7: 7 pixels
    ((512, 512, 5, 28), False), ((512, 512, 7, 28), False), ((256, 256, 3, 56, 1, 2), False),  # 5x5, 7x7, dilated
    ((256, 256, 3, 56, 3), False), ((256, 256, 3, 56, 1, 1, 2), False),  # stride 3; grouped
    ((256, 256, 3, 56, 1, 1, 1, [0, 0, 0, 0]), True), ((16, 32, 3, 160, 2, 1, 1, [0, 1, 1, 0]), True),  # pads
])
def test_the_3x3_rule_decides_per_tile(case, kept):
    """`input_nhwc_pays` on the measured shape classes (AVX2's 8 lanes): a tile of at most 5
    pixels with 256+ channels at stride 1, or a stride-2 input past the L2; never with AVX-512's
    16 lanes (its tiles were not measured)."""
    from tvmlite.backends.tvm.emitters.nhwc import input_nhwc_pays

    xs, ws, geom = geometry(*case)
    assert input_nhwc_pays(xs, ws, geom, 8) == kept
    assert not input_nhwc_pays(xs, ws, geom, 16)


@pytest.mark.parametrize("kept", [True, False])
def test_a_downsampling_conv_emitted_after_its_block_is_promised_nhwc(kept):
    """ResNet's downsampling conv comes after the block's last conv in the walk: that conv's
    kernel (writing NHWC) reads the residual NHWC and the downsampling conv keeps the promise;
    one that runs on the host (weights made at run time) breaks it and one transpose kernel
    makes the NHWC copy the reader expects. Results match either way."""
    nodes = [conv_node("x", "w0", "a0"), helper.make_node("Relu", ["a0"], ["r0"]),
             conv_node("r0", "w1", "m1"), helper.make_node("Relu", ["m1"], ["r1"]), conv_node("r1", "w2", "m2")]
    if kept:
        nodes.append(conv_node("r0", "w3", "d"))
    else:
        nodes += [helper.make_node("Relu", ["w4"], ["wd"]),
                  helper.make_node("Conv", ["r0", "wd"], ["d"], kernel_shape=[1, 1])]
    nodes += [helper.make_node("Sum", ["m2", "d"], ["s"]), helper.make_node("Relu", ["s"], ["y0"]),
              conv_node("y0", "w5", "y")]
    inits = [W("w0", 16, 8, 1, 1), W("b0", 16), W("w1", 8, 16, 1, 1), W("b1", 8), W("w2", 64, 8, 1, 1),
             W("b2", 64), W("w3", 64, 16, 1, 1), W("b3", 64), W("w5", 8, 64, 1, 1), W("b5", 8)]
    ins = [tensor("x", (1, 8, 6, 6))] + ([] if kept else [tensor("w4", (64, 16, 1, 1))])
    m = make_model(nodes, ins, [tensor("y", (1, 8, 6, 6))], inits)
    feeds = {"x": RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)}
    if not kept:
        feeds["w4"] = RNG.standard_normal((64, 16, 1, 1)).astype(np.float32)
    ref = ort_run(m, feeds)[0]
    cm = compile_model(load(m), {k: v.shape for k, v in feeds.items()}, cache=False, lanes=8)
    got = cm.run(feeds)
    got = got["y"] if isinstance(got, dict) else got[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert {"d::nhwc", "y0::nhwc"} <= nhwc_buffers(cm)
    copies = [c["func"] for c in cm.plan["calls"] if "_nhwc_" in c.get("func", "")]
    assert len(copies) == (0 if kept else 1) and not transposes(cm)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("channels", [48, 64])
def test_1x1_convs_of_a_short_reduction_read_nchw(lanes, channels):
    """Must not apply: a 1x1 conv over 64 channels reads NHWC at 8 lanes (8 vectors of K) and at
    16 (4 vectors, as measured there: emitters/nhwc.pointwise_reads_nhwc), one over 48 at
    neither, so the value it reads stays NCHW there."""
    nodes = [conv_node("x", "w0", "a"), conv_node("a", "w1", "y")]
    inits = [W("w0", channels, 8, 1, 1), W("b0", channels), W("w1", 16, channels, 1, 1), W("b1", 16)]
    cm = build(nodes, inits, (1, 8, 6, 6), {"y": (1, 16, 6, 6)}, lanes)
    assert nhwc_buffers(cm) == ({"a::nhwc"} if channels == 64 else set())
