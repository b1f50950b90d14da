"""The small/mobile CNN kernels of the TVM backend against onnxruntime: depthwise convs
(kernels/depthwise.py: strides, dilations, channel multipliers, asymmetric pads, rows narrower
than a vector), grouped 1x1 convs (kernels/grouped.py), and ShuffleNet's channel shuffle read by
depthwise convs without a Transpose kernel."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(0)


def build_and_compare(model, feeds, tol=1e-5):
    """Build ``model``, run it, compare with onnxruntime; returns the compiled model."""
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    assert not cm.host_ops, cm.host_ops
    (got,), (ref,) = cm.run(feeds), ort_run(model, feeds)
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    assert err <= tol, err
    return cm


def funcs(cm) -> list[str]:
    return [c["func"] for c in cm.plan["calls"] if "func" in c]


def conv_model(xs, w, b, attrs, act="Relu", pre=()):
    """x -> [pre nodes] -> Conv(w, b, attrs) -> act -> y, with y's shape from onnxruntime."""
    inits = [("w", w)] + ([("b", b)] if b is not None else [])
    pre = list(pre)
    src = pre[-1].output[0] if pre else "x"
    nodes = pre + [helper.make_node("Conv", [src, "w"] + (["b"] if b is not None else []), ["c"], **attrs)]
    nodes.append(helper.make_node(act, ["c"], ["y"]) if act else helper.make_node("Identity", ["c"], ["y"]))
    probe = make_model(nodes, [tensor("x", xs)], [tensor("y", None)], inits)
    ys = ort_run(probe, {"x": np.zeros(xs, np.float32)})[0].shape
    return make_model(nodes, [tensor("x", xs)], [tensor("y", ys)], inits)


DEPTHWISE = [
    # (N, C, H, W), kernel, mult, attrs
    ((1, 16, 20, 20), 3, 1, dict(pads=[1, 1, 1, 1])),
    ((1, 24, 28, 28), 3, 1, dict(pads=[1, 1, 1, 1], strides=[2, 2])),        # phases
    ((2, 8, 9, 37), 5, 1, dict(pads=[2, 1, 0, 2], strides=[2, 1])),          # asymmetric pads, batch 2
    ((1, 6, 12, 13), 3, 2, dict(pads=[1, 1, 1, 1], strides=[1, 2])),         # channel multiplier
    ((1, 8, 15, 19), 3, 1, dict(pads=[2, 2, 2, 2], dilations=[2, 2])),       # dilation
    ((1, 12, 3, 40), 5, 1, dict(pads=[2, 2, 2, 2], strides=[2, 2], dilations=[1, 2])),
    ((1, 5, 7, 7), 3, 1, dict()),                                           # no pads, row < a vector
    ((1, 4, 33, 50), 3, 1, dict(strides=[3, 3], pads=[0, 1, 0, 1])),        # stride 3
]


@pytest.mark.parametrize("xs,k,mult,attrs", DEPTHWISE)
def test_depthwise_conv_matches_onnxruntime(xs, k, mult, attrs):
    c = xs[1]
    w = RNG.standard_normal((c * mult, 1, k, k)).astype(np.float32)
    b = RNG.standard_normal(c * mult).astype(np.float32)
    m = conv_model(xs, w, b, dict(attrs, group=c, kernel_shape=[k, k]), act="HardSwish")
    cm = build_and_compare(m, {"x": RNG.standard_normal(xs).astype(np.float32)})
    assert len(funcs(cm)) == 1


def shuffle_nodes(xs, groups, out="xs"):
    n, c, h, w = xs
    return [helper.make_node("Reshape", ["x", "s5"], ["r5"]),
            helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", ["t5", "s4"], [out])]


def shuffle_model(xs, groups, stride, extra_reader=False):
    """x -> channel shuffle (G groups) -> depthwise 3x3 -> BatchNorm-free bias -> y; with
    ``extra_reader`` the shuffled value is also an output (so the Transpose must stay)."""
    n, c, h, wd = xs
    w = RNG.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(c).astype(np.float32)
    nodes = shuffle_nodes(xs, groups) + [
        helper.make_node("Conv", ["xs", "w", "b"], ["y"], group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[stride, stride])]
    oh, ow = (h - 1) // stride + 1, (wd - 1) // stride + 1
    outs = [tensor("y", (n, c, oh, ow))]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["xs"], ["z"]))
        outs.append(tensor("z", xs))
    inits = [("w", w), ("b", b), ("s5", np.array([n, groups, c // groups, h, wd], np.int64)),
             ("s4", np.array(xs, np.int64))]
    return make_model(nodes, [tensor("x", xs)], outs, inits)


@pytest.mark.parametrize("xs,groups,stride", [((1, 12, 10, 10), 3, 1), ((1, 136, 28, 28), 4, 1),
                                              ((2, 16, 9, 11), 4, 2), ((1, 10, 8, 8), 2, 2)])
def test_channel_shuffle_is_read_by_the_depthwise_conv(xs, groups, stride):
    m = shuffle_model(xs, groups, stride)
    feeds = {"x": RNG.standard_normal(xs).astype(np.float32)}
    cm = build_and_compare(m, feeds)
    assert [f for f in funcs(cm) if "transpose" in f] == []
    assert len(funcs(cm)) == 1


def test_channel_shuffle_read_elsewhere_keeps_its_kernel():
    xs = (1, 12, 10, 10)
    m = shuffle_model(xs, 3, 1, extra_reader=True)
    feeds = {"x": RNG.standard_normal(xs).astype(np.float32)}
    cm = compile_model(load(m), {"x": xs})
    got, ref = cm.run(feeds), ort_run(m, feeds)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    assert any("transpose" in f for f in funcs(cm))


def test_other_transposes_are_not_taken_for_a_shuffle():
    """Reshape, Transpose (0, 2, 1, 3, 4), Reshape that does not come back to the input's
    [N, C, H, W] (here [1, 4, 12, 4] from [1, 12, 4, 4]) is no channel shuffle: a Transpose kernel."""
    n, c, h, w = xs = (1, 12, 4, 4)
    nodes = [helper.make_node("Reshape", ["x", "s5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["xs"]),
             helper.make_node("Conv", ["xs", "w"], ["y"], group=4, kernel_shape=[1, 1])]
    inits = [("w", RNG.standard_normal((4, 1, 1, 1)).astype(np.float32)),
             ("s5", np.array([n, 3, 4, h, w], np.int64)), ("s4", np.array([n, 4, 12, 4], np.int64))]
    m = make_model(nodes, [tensor("x", xs)], [tensor("y", (1, 4, 12, 4))], inits)
    cm = build_and_compare(m, {"x": RNG.standard_normal(xs).astype(np.float32)})
    assert any("transpose" in f for f in funcs(cm))


@pytest.mark.parametrize("c,co,hw,g", [(136, 136, 28, 4), (24, 112, 56, 4), (12, 18, 8, 3), (6, 4, 4, 2),
                                       (272, 272, 14, 4)])
def test_grouped_pointwise_conv_matches_onnxruntime(c, co, hw, g):
    from tvmlite.backends.tvm.kernels.target import vector_lanes

    xs = (1, c, hw, hw)
    w = RNG.standard_normal((co, c // g, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    r = RNG.standard_normal((1, co, hw, hw)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=g),
             helper.make_node("Add", ["c", "r"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    m = make_model(nodes, [tensor("x", xs)], [tensor("y", (1, co, hw, hw))], [("w", w), ("b", b), ("r", r)])
    cm = build_and_compare(m, {"x": RNG.standard_normal(xs).astype(np.float32)})
    assert len(funcs(cm)) == 1  # the residual Add and the Relu are the conv's epilogue
    grouped = (hw * hw) % vector_lanes() == 0
    packed = [a[1] for a in cm.plan["calls"][0]["args"] if len(a[1]) == 4 and a[1][0] == g]
    # both kernels pack the weights [G, CoG/mr, K, mr]: grouped_pointwise with mr = row_tile(CoG),
    # the column GEMM with its conv_tile's mr (by the host's registers), so the row tile says which ran
    from tvmlite.backends.tvm.kernels.gemm import conv_tile
    from tvmlite.backends.tvm.kernels.grouped import row_tile

    gemm_mr = conv_tile(co // g, hw * hw, vector_lanes()).mr
    assert packed and (packed[0][3] == row_tile(co // g)) == (grouped or row_tile(co // g) == gemm_mr)


@pytest.mark.parametrize("lanes", [8, 16])
def test_grouped_pointwise_conv_on_a_small_image_takes_the_direct_kernel_on_avx2(lanes):
    """A grouped 1x1 conv whose pixels are no whole vectors follows the plain 1x1 rule on AVX2:
    at 7x7 (the GEMM pads 49 pixels to 64) the direct kernel, at 14x14 still the GEMM; AVX-512
    keeps the GEMM for grouped convs."""
    from tvmlite.backends.tvm.kernels import conv as KC
    from tvmlite.ops.geometry import WindowGeometry

    def direct(c, hw, g, **attrs):
        w_shape = (c, c // g, 1, 1)
        return KC.use_direct_conv(w_shape, WindowGeometry.conv(dict(attrs, group=g), (1, c, hw, hw), w_shape), lanes)
    assert direct(544, 7, 4) is (lanes == 8)
    assert not direct(272, 14, 4)
    assert not direct(24, 7, 4)  # K = 6: a short reduction never does


def test_grouped_pointwise_direct_conv_matches_onnxruntime():
    """ShuffleNet's last stage: 544 -> 544 channels, group 4, 7x7, bias, residual Add and Relu
    (the AVX2 pick is the direct kernel, whose tile transposes on its way out)."""
    c, g, hw = 544, 4, 7
    w = (RNG.standard_normal((c, c // g, 1, 1)) * 0.1).astype(np.float32)
    b = RNG.standard_normal(c).astype(np.float32)
    r = RNG.standard_normal((1, c, hw, hw)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=g),
             helper.make_node("Add", ["c", "r"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    m = make_model(nodes, [tensor("x", (1, c, hw, hw))], [tensor("y", (1, c, hw, hw))], [("w", w), ("b", b), ("r", r)])
    cm = build_and_compare(m, {"x": RNG.standard_normal((1, c, hw, hw)).astype(np.float32)})
    assert len(funcs(cm)) == 1


def test_concat_takes_the_relu_behind_it():
    """ShuffleNet's stride-2 units: Concat(conv branch, pooled shortcut) -> Relu is one kernel."""
    a, b = (1, 5, 6, 7), (1, 3, 6, 7)
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Relu", ["c"], ["y"])]
    m = make_model(nodes, [tensor("a", a), tensor("b", b)], [tensor("y", (1, 8, 6, 7))])
    feeds = {"a": RNG.standard_normal(a).astype(np.float32), "b": RNG.standard_normal(b).astype(np.float32)}
    cm = compile_model(load(m), {k: v.shape for k, v in feeds.items()})
    np.testing.assert_array_equal(cm.run(feeds)[0], ort_run(m, feeds)[0])
    assert len(funcs(cm)) == 1


POOLS = [
    ("MaxPool", (1, 24, 112, 112), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])),   # ShuffleNet
    ("MaxPool", (1, 16, 55, 55), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),          # SqueezeNet
    ("MaxPool", (2, 5, 13, 17), dict(kernel_shape=[3, 2], strides=[1, 1], pads=[1, 1, 1, 0], dilations=[2, 1])),
    ("AveragePool", (1, 24, 56, 56), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", (1, 7, 15, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                        count_include_pad=1, ceil_mode=1)),
    ("AveragePool", (1, 3, 20, 40), dict(kernel_shape=[2, 5], strides=[2, 3], pads=[0, 2, 1, 2])),
]


@pytest.mark.parametrize("op,xs,attrs", POOLS)
def test_pool_matches_onnxruntime(op, xs, attrs):
    nodes = [helper.make_node(op, ["x"], ["p"], **attrs), helper.make_node("Relu", ["p"], ["y"])]
    probe = make_model(nodes, [tensor("x", xs)], [tensor("y", None)])
    ys = ort_run(probe, {"x": np.zeros(xs, np.float32)})[0].shape
    m = make_model(nodes, [tensor("x", xs)], [tensor("y", ys)])
    cm = build_and_compare(m, {"x": RNG.standard_normal(xs).astype(np.float32)}, tol=1e-6)
    assert len(funcs(cm)) == 1


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("xs", [(1, 1000, 13, 13), (2, 7, 3, 5), (1, 6, 48), (1, 3, 2, 4, 5), (1, 4, 4, 4)])
def test_global_pool_matches_onnxruntime(op, xs):
    """Whole vectors, a tail, a plane shorter than a vector, 1-D and 3-D spatial dims."""
    out = xs[:2] + (1,) * (len(xs) - 2)
    m = make_model([helper.make_node(op, ["x"], ["y"])], [tensor("x", xs)], [tensor("y", out)])
    cm = build_and_compare(m, {"x": RNG.standard_normal(xs).astype(np.float32)}, tol=1e-6)
    assert len(funcs(cm)) == 1


def test_depthwise_1d_and_grouped_batch_2():
    """A 1-D depthwise conv (runs as 2-D with a unit height) feeding a grouped 1x1 conv, batch 2."""
    xs = (2, 8, 48)
    w1 = RNG.standard_normal((8, 1, 5)).astype(np.float32)
    w2 = RNG.standard_normal((12, 4, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["d"], group=8, pads=[2, 2], strides=[1]),
             helper.make_node("Conv", ["d", "w2"], ["y"], group=2)]
    m = make_model(nodes, [tensor("x", xs)], [tensor("y", (2, 12, 48))], [("w1", w1), ("w2", w2)])
    cm = build_and_compare(m, {"x": RNG.standard_normal(xs).astype(np.float32)})
    assert len(funcs(cm)) == 2


def test_spelled_out_hardswish_joins_the_conv():
    """PaddleOCR's MobileNetV3 writes HardSwish as x * Clip(x + 3, 0, 6) / 6 after a conv: the
    four nodes join the conv's epilogue (one kernel); Clip bounds other than (0, 6) do not."""
    xs = (1, 4, 6, 8)
    w = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)

    def model(hi):
        nodes = [helper.make_node("Conv", ["x", "w"], ["v"], pads=[1, 1, 1, 1]),
                 helper.make_node("Add", ["v", "three"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["c"]),
                 helper.make_node("Mul", ["v", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
        inits = [("w", w), ("three", np.float32(3)), ("lo", np.float32(0)), ("hi", np.float32(hi)),
                 ("six", np.float32(6))]
        return make_model(nodes, [tensor("x", xs)], [tensor("y", (1, 8, 6, 8))], inits)

    feeds = {"x": 3 * RNG.standard_normal(xs).astype(np.float32)}
    assert len(funcs(build_and_compare(model(6.0), feeds))) == 1
    assert len(funcs(build_and_compare(model(5.0), feeds))) == 2


@pytest.mark.parametrize("kind,xs,stride,parallel", [
    ("depthwise", (1, 136, 28, 28), 1, True),    # 0.96M taps: ShuffleNet's stage-2 depthwise convs
    ("depthwise", (1, 112, 56, 56), 2, True),
    ("depthwise", (1, 272, 14, 14), 1, True),    # 0.48M taps, at 4 multiply-adds each (S.depthwise_work)
    ("depthwise", (1, 64, 14, 14), 1, False),     # 0.11M taps
    ("max", (1, 24, 112, 112), 2, True),         # ShuffleNet's stem pool, 0.68M taps (a padded plane)
    ("max_unpadded", (1, 128, 55, 55), 2, True),  # SqueezeNet's second pool (the scalar tap kernel)
    ("max_unpadded", (1, 256, 27, 27), 2, False)])
def test_window_kernels_weigh_their_taps_for_parallelism(kind, xs, stride, parallel, monkeypatch):
    """A pool's tap counts twice a GEMM multiply-add (`schedules.pool_work`), a depthwise conv's
    four times (`schedules.depthwise_work`), so at 2 threads the 0.1-0.2 ms ones of ShuffleNet and SqueezeNet run on both cores (their numbers:
    the depthwise and pool tests above, which build at the host's threads)."""
    from tvmlite.backends.tvm.kernels import depthwise as DW
    from tvmlite.backends.tvm.kernels import pool as KP
    from tvmlite.backends.tvm.kernels.defs import Epilogue, window_2d
    from tvmlite.ops.geometry import WindowGeometry

    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.delenv("TVMLITE_MIN_PARALLEL_WORK", raising=False)
    c = xs[1]
    pads = [0] * 4 if kind == "max_unpadded" else [1] * 4
    attrs = {"kernel_shape": [3, 3], "strides": [stride] * 2, "pads": pads}
    if kind == "depthwise":
        w = RNG.standard_normal((c, 1, 3, 3)).astype(np.float32)
        geom = window_2d(WindowGeometry.conv(dict(attrs, group=c), xs, w.shape))
        kd = DW.depthwise_conv2d("d", "x", xs, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=8)
    else:
        geom = window_2d(WindowGeometry.pool(attrs, xs))
        kd = KP.pool2d("p", "x", xs, geom, kind="max", count_include_pad=False, out_value="y", epilogue=Epilogue(),
                       lanes=8)
    assert ("T.parallel" in kd.func.script()) == parallel
