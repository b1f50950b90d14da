"""Channels-last float values through windowed pools and channel Concats (kernels/nhwc_moves.py,
emitters/nhwc.passes_nhwc): the kernels in every geometry the pools take, and the lowering's
decisions on Inception- and SqueezeNet-shaped graphs, with the boundaries that stay NCHW;
everything against onnxruntime, at AVX2's 8 lanes and AVX-512's 16."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from test_tvm_nhwc import W, build, conv_node, nhwc, nhwc_buffers, transposes  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp, channel_vector  # noqa: E402
from tvmlite.backends.tvm.kernels.nhwc_moves import concat_nhwc, pool2d_nhwc  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402

RNG = np.random.default_rng(1)
POOLS = [("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),  # SqueezeNet's
         ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),  # Inception's branch
         ("MaxPool", dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2], pads=[0, 1, 1, 0])),
         ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
         ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
         ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1))]


def onnx_pool(op, attrs, x):
    m = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], [tensor("x", x.shape)], [tensor("y", None)], [])
    return ort_run(m, {"x": x})[0]


# --------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("op,attrs", POOLS)
@pytest.mark.parametrize("c", [24, 32])
def test_pool_kernel(lanes, op, attrs, c):
    """Pads, ceil_mode's ragged last window, dilation, both count_include_pad; 24 channels take
    vectors of 8 at AVX-512's 16 lanes; a fused residual stored NHWC and ReLU."""
    x = RNG.standard_normal((1, c, 13, 11)).astype(np.float32)
    ref = onnx_pool(op, attrs, x)
    r = RNG.standard_normal(ref.shape).astype(np.float32)
    geom = WindowGeometry.pool(attrs, x.shape)
    epi = Epilogue([EwOp("Add", [("value", "r", r.shape)]), EwOp("Relu")], layouts={"r": "r::nhwc"})
    kd = pool2d_nhwc("k", "x", x.shape, geom, kind="max" if op == "MaxPool" else "avg",
                     count_include_pad=bool(attrs.get("count_include_pad", 0)), out_value="y", epilogue=epi,
                     lanes=lanes)
    args, outs = kernel_args(kd, {"x": nhwc(x), "r::nhwc": nhwc(r)})
    build_kernel(kd)["main"](*args)
    n, c, oh, ow = ref.shape
    got = outs[0].numpy().reshape(n, oh, ow, c).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, np.maximum(ref + r, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("sizes", [(16, 8, 24), (64, 128, 32, 32), (3, 5)])
def test_concat_kernel_reads_each_input_in_its_layout(lanes, sizes):
    """Inputs stored NHWC and NCHW alternately into one NHWC output: runs of a common size (one
    loop nest each), of Inception's sizes, and of no whole vector; a fused ReLU."""
    xs = [RNG.standard_normal((1, c, 5, 6)).astype(np.float32) for c in sizes]
    ins = [(f"x{i}", x.shape, i % 2 == 0) for i, x in enumerate(xs)]
    kd = concat_nhwc("k", ins, out_value="y", out_shape=(1, sum(sizes), 5, 6), lanes=lanes,
                     epilogue=Epilogue([EwOp("Relu")]))
    args, outs = kernel_args(kd, {f"x{i}": nhwc(x) if i % 2 == 0 else x for i, x in enumerate(xs)})
    build_kernel(kd)["main"](*args)
    want = nhwc(np.maximum(np.concatenate(xs, axis=1), 0))
    np.testing.assert_array_equal(outs[0].numpy().reshape(want.shape), want)


@pytest.mark.parametrize("op,attrs", [POOLS[0], POOLS[4]])
def test_kernels_split_across_cores(monkeypatch, op, attrs):
    """The parallel schedules (every kernel parallel: $TVMLITE_MIN_PARALLEL_WORK=0, 2 threads):
    the pool's rows and the Concat's pixels across cores."""
    monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", "0")
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    x = RNG.standard_normal((1, 16, 9, 9)).astype(np.float32)
    ref = onnx_pool(op, attrs, x)
    kd = pool2d_nhwc("k", "x", x.shape, WindowGeometry.pool(attrs, x.shape), kind="max" if op == "MaxPool" else "avg",
                     count_include_pad=bool(attrs.get("count_include_pad", 0)), out_value="y", epilogue=Epilogue(),
                     lanes=8)
    assert "parallel" in kd.func.script()
    args, outs = kernel_args(kd, {"x": nhwc(x)})
    build_kernel(kd)["main"](*args)
    np.testing.assert_allclose(outs[0].numpy().reshape(nhwc(ref).shape), nhwc(ref), rtol=1e-5, atol=1e-5)
    kd = concat_nhwc("c", [("a", x.shape, True), ("b", x.shape, False)], out_value="y", out_shape=(1, 32, 9, 9), lanes=8)
    assert "parallel" in kd.func.script()
    args, outs = kernel_args(kd, {"a": nhwc(x), "b": 2 * x})
    build_kernel(kd)["main"](*args)
    np.testing.assert_array_equal(outs[0].numpy().reshape(1, 9, 9, 32), nhwc(np.concatenate([x, 2 * x], 1)))


def test_channel_vector():
    assert [channel_vector(c, 16) for c in (32, 24, 20, 6)] == [16, 8, 4, 0]
    assert [channel_vector(c, 8) for c in (32, 12, 2)] == [8, 4, 0]


# ------------------------------------------------------------------------------------ lowering
def inception(c=128, pool="MaxPool"):
    """A 1x1 stem, then Inception's four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; a 3x3/1
    pool -> 1x1) concatenated along the channels and read by a 1x1 conv."""
    nodes = [conv_node("x", "w0", "s0"), helper.make_node("Relu", ["s0"], ["s"]),
             conv_node("s", "w1", "t1"), helper.make_node("Relu", ["t1"], ["o1"]),
             conv_node("s", "w2", "t2"), conv_node("t2", "w3", "t3", k=3), helper.make_node("Relu", ["t3"], ["o2"]),
             conv_node("s", "w4", "t4"), conv_node("t4", "w5", "t5", k=3), conv_node("t5", "w6", "o3", k=3),
             helper.make_node(pool, ["s"], ["p"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
             conv_node("p", "w7", "o4"),
             helper.make_node("Concat", ["o1", "o2", "o3", "o4"], ["cat"], axis=1),
             conv_node("cat", "w8", "y")]
    inits = [W("w0", c, 8, 1, 1), W("b0", c), W("w1", 64, c, 1, 1), W("b1", 64), W("w2", 16, c, 1, 1),
             W("b2", 16), W("w3", 32, 16, 3, 3), W("b3", 32), W("w4", 16, c, 1, 1), W("b4", 16),
             W("w5", 16, 16, 3, 3), W("b5", 16), W("w6", 24, 16, 3, 3), W("b6", 24), W("w7", 16, c, 1, 1),
             W("b7", 16), W("w8", 8, 136, 1, 1), W("b8", 8)]
    return nodes, inits


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_inception_block_travels_channels_last_through_pool_and_concat(lanes, pool):
    """The stem's value (read by 1x1 convs and the pool branch), the pool's output and the
    Concat's (read by a 1x1 conv) are NHWC, the branches write their slices NHWC; no copy."""
    nodes, inits = inception(pool=pool)
    cm = build(nodes, inits, (1, 8, 9, 11), {"y": (1, 8, 9, 11)}, lanes)
    assert {"s::nhwc", "p::nhwc", "cat::nhwc", "o1::nhwc", "o4::nhwc"} <= nhwc_buffers(cm)
    assert not transposes(cm)
    assert not [c for c in cm.plan["calls"] if "_nhwc_" in c.get("func", "")]
    # each branch's kernel writes its channels into the Concat's buffer (nhwc_concat.py): no copy
    slices = {v: (b["of"], b["offset"]) for v, b in cm.plan["buffers"].items() if b.get("kind") == "slice"}
    assert slices == {"o1::nhwc": ("cat::nhwc", 0), "o2::nhwc": ("cat::nhwc", 64), "o3::nhwc": ("cat::nhwc", 96),
                      "o4::nhwc": ("cat::nhwc", 120)}
    assert not concats(cm)


def concats(cm) -> list:
    return [c["func"] for c in cm.plan["calls"] if "_concat_" in c.get("func", "")]


def test_concat_copies_without_views(monkeypatch):
    """TVMLITE_CONCAT_VIEWS=0: the channels-last Concat stays one copy kernel, no slices."""
    monkeypatch.setenv("TVMLITE_CONCAT_VIEWS", "0")
    nodes, inits = inception()
    cm = build(nodes, inits, (1, 8, 9, 11), {"y": (1, 8, 9, 11)}, 8)
    assert "cat::nhwc" in nhwc_buffers(cm) and len(concats(cm)) == 1
    assert not [b for b in cm.plan["buffers"].values() if b.get("kind") == "slice"]


def test_profiled_kernels_write_their_slices():
    """The kernels called one at a time (profile, tools: the public wrappers with views of the
    Concat's buffer at an offset) compute what the whole run does."""
    nodes, inits = inception()
    cm = build(nodes, inits, (1, 8, 9, 11), {"y": (1, 8, 9, 11)}, 8)
    x = RNG.standard_normal((1, 8, 9, 11)).astype(np.float32)
    want = cm.run({"x": x})
    want = np.array(want["y"] if isinstance(want, dict) else want[0])
    for name in ("cat::nhwc", "y"):  # forget what the run wrote
        buf = cm._store[name]
        buf.copyfrom(np.zeros(buf.shape, np.float32))
    for fn, args in cm._calls:
        fn(*args)
    np.testing.assert_array_equal(cm.buffer_view("y", want.shape), want)


def test_squeezenet_fire_concat_then_ceil_mode_maxpool():
    """Fire's expand 1x1 and 3x3 concatenated, a 3x3/2 ceil-mode MaxPool, the next squeeze 1x1:
    the Concat and the pool run channels-last."""
    nodes = [conv_node("x", "w0", "q"), helper.make_node("Relu", ["q"], ["qr"]),
             conv_node("qr", "w1", "e1"), helper.make_node("Relu", ["e1"], ["o1"]),
             conv_node("qr", "w2", "e2", k=3), helper.make_node("Relu", ["e2"], ["o2"]),
             helper.make_node("Concat", ["o1", "o2"], ["cat"], axis=1),
             helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             conv_node("p", "w3", "y")]
    inits = [W("w0", 16, 8, 1, 1), W("b0", 16), W("w1", 64, 16, 1, 1), W("b1", 64), W("w2", 64, 16, 3, 3),
             W("b2", 64), W("w3", 8, 128, 1, 1), W("b3", 8)]
    cm = build(nodes, inits, (1, 8, 12, 12), {"y": (1, 8, 6, 6)}, 8)
    assert {"cat::nhwc", "p::nhwc"} <= nhwc_buffers(cm) and not transposes(cm)


@pytest.mark.parametrize("case", ["reader_3x3", "axis", "ragged_channels", "output", "pool_output_read_nchw"])
def test_pool_and_concat_stay_nchw(case):
    """Must not apply: a Concat whose reader takes NCHW (a 3x3 conv over few channels), one along
    the height, a pool over channels of no whole vector, a Concat that is a graph output, a pool
    whose output a 3x3 conv reads; every value stays NCHW, results match."""
    c = 5 if case == "ragged_channels" else 64
    nodes = [conv_node("x", "w0", "a"), conv_node("x", "w1", "b")]
    inits = [W("w0", c, 8, 1, 1), W("b0", c), W("w1", c, 8, 1, 1), W("b1", c)]
    axis = 2 if case == "axis" else 1
    nodes.append(helper.make_node("Concat", ["a", "b"], ["cat"], axis=axis))
    cat_shape = (1, c, 16, 8) if axis == 2 else (1, 2 * c, 8, 8)
    outs = {"y": (1, 8) + cat_shape[2:]}
    if case in ("ragged_channels", "pool_output_read_nchw"):
        nodes.append(helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        k = 3 if case == "pool_output_read_nchw" else 1
        nodes.append(conv_node("p", "w2", "y", k=k))
        inits += [W("w2", 8, cat_shape[1], k, k), W("b2", 8)]
    else:
        k = 3 if case == "reader_3x3" else 1
        nodes.append(conv_node("cat", "w2", "y", k=k))
        inits += [W("w2", 8, cat_shape[1], k, k), W("b2", 8)]
    if case == "output":
        outs["cat"] = cat_shape
    cm = build(nodes, inits, (1, 8, 8, 8), outs, 8)
    assert not nhwc_buffers(cm) and not transposes(cm)


def test_a_concat_input_made_on_the_host_is_read_nchw():
    """One branch runs on the host (weights made at run time): the Concat reads that input NCHW
    and the others NHWC, writes NHWC for the 1x1 conv after it."""
    nodes = [conv_node("x", "w0", "a"), helper.make_node("Relu", ["w4"], ["wd"]),
             helper.make_node("Conv", ["x", "wd"], ["d"], kernel_shape=[1, 1]),
             helper.make_node("Concat", ["a", "d"], ["cat"], axis=1), conv_node("cat", "w1", "y")]
    inits = [W("w0", 32, 8, 1, 1), W("b0", 32), W("w1", 8, 64, 1, 1), W("b1", 8)]
    m = make_model(nodes, [tensor("x", (1, 8, 6, 6)), tensor("w4", (32, 8, 1, 1))], [tensor("y", (1, 8, 6, 6))],
                   inits)
    feeds = {"x": RNG.standard_normal((1, 8, 6, 6)).astype(np.float32),
             "w4": RNG.standard_normal((32, 8, 1, 1)).astype(np.float32)}
    ref = ort_run(m, feeds)[0]
    from tvmlite.backends.tvm import compile_model
    from tvmlite.frontend import load

    cm = compile_model(load(m), {k: v.shape for k, v in feeds.items()}, cache=False, lanes=8)
    got = cm.run(feeds)
    got = got["y"] if isinstance(got, dict) else got[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert {"a::nhwc", "cat::nhwc"} <= nhwc_buffers(cm) and not transposes(cm)
    assert len(concats(cm)) == 1  # an input stored NCHW: the Concat stays a copy


@pytest.mark.parametrize("yl", ["NCHW", "NHWC"])
@pytest.mark.parametrize("co,lanes", [(520, 8), (1000, 16)])
def test_two_vector_tile_for_many_channels_padded_a_little(yl, co, lanes):
    """520 output channels at 8 lanes take the two-vector tile (528 computed, conv_nhwc._tile_channels:
    SqueezeNet's 1000-channel conv), and at 16 lanes 1000 (1024 computed: AVX-512 pads up to
    1/32); the padded channels are never written."""
    from tvmlite.backends.tvm.kernels.conv_nhwc import _tile_channels, conv2d_nhwc
    from tvmlite.ops.conv import conv

    assert _tile_channels(520, 8) == 528 and _tile_channels(200, 8) == 200 and _tile_channels(1000, 16) == 1024
    assert _tile_channels(500, 8) == 500 and _tile_channels(200, 16) == 200  # AVX2 keeps 1/64
    x = RNG.standard_normal((1, 16, 5, 7)).astype(np.float32)
    w = RNG.standard_normal((co, 16, 1, 1)).astype(np.float32)
    geom = WindowGeometry.conv({"kernel_shape": [1, 1]}, x.shape, w.shape)
    kd = conv2d_nhwc("k", "x", x.shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=lanes, y_layout=yl)
    args, outs = kernel_args(kd, {"x": nhwc(x)})
    build_kernel(kd)["main"](*args)
    ref = conv(x, w, None, kernel_shape=[1, 1])
    got = outs[0].numpy()
    got = got.reshape(1, 5, 7, co).transpose(0, 3, 1, 2) if yl == "NHWC" else got.reshape(ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layouts,parallel", [((False, True, False), True), ((True, True, True), False)])
def test_concat_gathering_nchw_inputs_weighs_them_for_the_cores(monkeypatch, layouts, parallel):
    """The detector's 16+16+32-channel Concat at 80x80 (0.41M elements, under the 1M parallel
    threshold): with two inputs stored NCHW (gathered across planes, weighted 4 per element) it
    runs across the cores; the same Concat of NHWC channel runs stays on one."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.delenv("TVMLITE_MIN_PARALLEL_WORK", raising=False)
    ins = [(f"x{i}", (1, c, 80, 80), t) for i, (c, t) in enumerate(zip((16, 16, 32), layouts))]
    kd = concat_nhwc("k", ins, out_value="y", out_shape=(1, 64, 80, 80), lanes=16)
    assert ("T.parallel" in kd.func.script()) == parallel
