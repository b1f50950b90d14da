"""The YOLO-style detector on the TVM backend (issue 15): SiLU (x * Sigmoid(x)) fused into the conv
epilogue, sigmoid through a vectorizable exp that keeps float accuracy, stride-2 convs on the direct
kernel, and the whole detector built by `tvmlite build` matching onnxruntime with nothing host-run."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import make_model, ort_run, tensor
from real_graphs import detector

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from tvmlite.backends.tvm import compile_model, load_module  # noqa: E402
from tvmlite.backends.tvm.kernels import conv as KC  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402

RNG = np.random.default_rng(0)


def rel_err(got, ref):
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def conv_silu_model(silu_inputs=("bn", "sig"), extra_sigmoid_use=False, stride=1, cout=8, cin=4, hw=(12, 12)):
    """Conv -> BN -> Mul(bn, Sigmoid(bn)) -> Add 1; the Mul's inputs in the given order."""
    inits = [("w", (RNG.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32)),
             ("scale", RNG.uniform(0.5, 1.5, cout).astype(np.float32)),
             ("bias", RNG.standard_normal(cout).astype(np.float32)),
             ("mean", (RNG.standard_normal(cout) * 0.1).astype(np.float32)),
             ("var", RNG.uniform(0.5, 1.5, cout).astype(np.float32)),
             ("one", np.array(1.0, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[stride, stride]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Sigmoid", ["bn"], ["sig"], name="sig"),
             helper.make_node("Mul", list(silu_inputs), ["silu"], name="mul"),
             helper.make_node("Add", ["silu", "one"], ["y"], name="add")]
    out_shape = [1, cout] + [(d - 1) // stride + 1 for d in hw]
    outs = [tensor("y", out_shape)]
    if extra_sigmoid_use:
        outs.append(tensor("sig", out_shape))
    return make_model(nodes, [tensor("x", [1, cin, *hw])], outs, inits)


def build_and_compare(model, feeds):
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()}, cache=False)
    got = cm.run(feeds)
    ref = ort_run(model, feeds)
    for g, r in zip(got, ref):
        assert rel_err(g, r) <= 1e-5
    return cm


@pytest.mark.parametrize("order", [("bn", "sig"), ("sig", "bn")])
def test_silu_joins_the_conv_kernel(order):
    x = RNG.standard_normal((1, 4, 12, 12)).astype(np.float32) * 3
    cm = build_and_compare(conv_silu_model(order), {"x": x})
    # one kernel: the conv with BN, Sigmoid, Mul and the Add after them in its epilogue
    assert cm.kernel_count == 1
    (call,) = cm.plan["calls"]
    assert {"conv", "sig", "mul", "add"} <= set(call["nodes"])


def test_silu_with_the_sigmoid_read_elsewhere_is_not_fused():
    x = RNG.standard_normal((1, 4, 12, 12)).astype(np.float32)
    cm = build_and_compare(conv_silu_model(extra_sigmoid_use=True), {"x": x})
    assert cm.kernel_count > 1  # the sigmoid is a graph output: it must be written


def test_sigmoid_is_accurate_over_the_whole_range():
    """The vectorized exp: within float rounding of float64 sigmoid from -100 to 100, 0 and 1 at
    the ends, NaN kept."""
    x = np.concatenate([np.linspace(-100, 100, 4093, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf], np.float32)]).reshape(1, -1)
    model = make_model([helper.make_node("Sigmoid", ["x"], ["y"])], [tensor("x", list(x.shape))],
                       [tensor("y", list(x.shape))])
    got = compile_model(load(model), {"x": x.shape}, cache=False).run({"x": x})[0][0]
    ref = 1.0 / (1.0 + np.exp(-x[0, :-3].astype(np.float64)))
    assert np.abs(got[:-3] - ref).max() <= 2e-7
    big = ref > 1e-30
    assert (np.abs(got[:-3][big] - ref[big]) / ref[big]).max() <= 5e-7
    assert np.isnan(got[-3]) and got[-2] == 1.0 and 0.0 <= got[-1] < 1e-37


@pytest.mark.parametrize("lanes", [8, 16])
def test_rgb_stem_takes_the_direct_kernel_where_k_is_three_vectors(lanes):
    """A 3-channel 3x3 stem (K = 27) runs direct where K is 3 vectors (AVX2); one input channel
    and a 1x1 conv of the same K stay a GEMM, and an AVX-512 stem (K under 3 of its vectors) does
    unless the GEMM's column tiles (32 pixels) cross its output rows (112 wide)."""
    def direct(cin, cout, k, stride=1, hw=64):
        w_shape = (cout, cin, k, k)
        geom = WindowGeometry.conv({"pads": (k // 2,) * 4, "strides": (stride, stride)}, (1, cin, hw, hw), w_shape)
        return KC.use_direct_conv(w_shape, geom, lanes)
    avx2 = lanes == 8
    assert direct(3, 16, 3, 2, 320) is avx2  # the detector's stem: rows of 160
    assert direct(3, 32, 3, 2, 224) and direct(3, 64, 3) is avx2
    assert direct(3, 24, 3, 2, 224) and direct(3, 8, 3, 2, 192) is avx2  # one vector of channels
    assert not direct(1, 32, 5) and not direct(1, 32, 3)  # one input channel
    assert not direct(27, 32, 1)  # 1x1: its short-K rule is unchanged


@pytest.mark.parametrize("lanes", [8, 16])
def test_rgb_stem_on_the_direct_kernel_with_silu_matches_onnxruntime(lanes):
    """The detector's stem shape (3 -> 16, 3x3, stride 2, padded, rows the tile does not
    divide) on the direct kernel with BN folded and SiLU + Add on its tile, against onnxruntime."""
    from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    x = RNG.standard_normal((1, 3, 22, 26)).astype(np.float32)
    w = (RNG.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    b = RNG.standard_normal(16).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 3, 22, 26])], [tensor("y", [1, 16, 11, 13])], [("w", w), ("b", b)])
    geom = WindowGeometry.conv({"pads": (1, 1, 1, 1), "strides": (2, 2)}, x.shape, w.shape)
    kd = KC.conv2d_direct("stem", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Silu")]),
                          lanes=lanes)
    fn = build_kernel(kd)["main"]
    args, outs = kernel_args(kd, {"x": x})
    fn(*args)
    (ref,) = ort_run(model, {"x": x})
    assert rel_err(outs[0].numpy().reshape(ref.shape), ref) <= 1e-5


def test_strided_conv_takes_the_direct_kernel_with_no_padded_channels():
    w = np.zeros((48, 32, 3, 3), np.float32)
    geom = WindowGeometry.conv({"pads": (1, 1, 1, 1), "strides": (2, 2)}, (1, 32, 80, 80), w.shape)
    assert KC.use_direct_conv(w.shape, geom, 16)
    tile = KC.direct_tile(48, 40, 16)
    assert tile.nr == 16 and 40 % tile.mr == 0 and tile.mr <= 12
    assert KC.direct_tile(64, 40, 16).nr == 32


@pytest.mark.parametrize("cout", [48, 20])
def test_strided_conv_silu_matches_onnxruntime(cout):
    """Direct stride-2 kernel with SiLU in its epilogue, channels that fill (48) or pad (20) the tile."""
    model = conv_silu_model(stride=2, cout=cout, cin=32, hw=(19, 21))  # K = 32 * 9: long enough
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    geom = WindowGeometry.conv({"pads": (1, 1, 1, 1), "strides": (2, 2)}, (1, 32, 19, 21), w.shape)
    assert KC.use_direct_conv(w.shape, geom, 16)
    x = RNG.standard_normal((1, 32, 19, 21)).astype(np.float32)
    build_and_compare(model, {"x": x})


def test_detector_built_by_the_cli_matches_onnxruntime(tmp_path):
    model, shapes = detector(128)
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    so = tmp_path / "det.so"
    r = subprocess.run([sys.executable, "-m", "tvmlite.cli", "build", str(path), "-o", str(so), "--strict"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    x = RNG.random(shapes["images"], dtype=np.float32)
    cm = load_module(str(so))
    assert not cm.host_ops
    # every SiLU (Mul(v, Sigmoid(v))) runs inside a conv's kernel
    sig_of = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Sigmoid"}
    silus = {n.name for n in model.graph.node if n.op_type == "Mul"
             and any(i in sig_of and sig_of[i] in n.input for i in n.input)}
    in_convs = {n for c in cm.plan["calls"] if c.get("nodes", [""])[0].startswith("Conv") for n in c["nodes"]}
    assert len(silus) == 14 and silus <= in_convs
    assert rel_err(cm.run({"images": x})[0], ort_run(model, {"images": x})[0]) <= 1e-4


def test_head_sigmoid_alone_still_builds():
    """A Sigmoid that starts its own kernel (the detector's head) goes through the same exp."""
    x = RNG.standard_normal((1, 3, 5, 7)).astype(np.float32) * 10
    model = make_model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])],
                       [tensor("x", [1, 3, 5, 7])], [tensor("y", [1, 3, 5, 7], TensorProto.FLOAT)])
    build_and_compare(model, {"x": x})


def test_bench_light_group_on_the_shipped_models(capsys, tmp_path, monkeypatch):
    """bench_tvm.py --only light: each model built, matched against onnxruntime, its ratio, best-run
    ratio and host-run count printed, and the geometric mean over them."""
    import importlib
    import json
    import pathlib

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    bench = importlib.import_module("bench_tvm")
    out_json = tmp_path / "light.json"
    assert bench.main(["--only", "light", "--quick", "--zoo", "digits", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "best-run ratio" in out and "host-run" in out and "float geometric mean" in out
    rows = json.loads(out_json.read_text())["light"]
    assert {r["model"] for r in rows} == {"digits_cnn", "digits_vgg"}
    for r in rows:
        assert "error" not in r, r
        assert r["tvm_ms"] > 0 and r["ort_ms"] > 0 and r["rel_err"] <= 1e-4 and r["host_ops"] == []


def test_direct_conv_activation_then_residual_matches_onnxruntime():
    """Bias and Relu run on the channels-last tile; the residual Add and the Sigmoid after it run in
    the NCHW write (an op that reads a tensor ends the part done on the tile). 40 channels pad
    the 16-lane tile."""
    w = (RNG.standard_normal((40, 16, 3, 3)) * 0.1).astype(np.float32)
    b = RNG.standard_normal(40).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "res"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 16, 7, 7]), tensor("res", [1, 40, 7, 7])],
                       [tensor("y", [1, 40, 7, 7])], [("w", w), ("b", b)])
    geom = WindowGeometry.conv({"pads": (1, 1, 1, 1)}, (1, 16, 7, 7), w.shape)
    assert KC.use_direct_conv(w.shape, geom, 16)
    feeds = {"x": RNG.standard_normal((1, 16, 7, 7)).astype(np.float32),
             "res": RNG.standard_normal((1, 40, 7, 7)).astype(np.float32)}
    cm = build_and_compare(model, feeds)
    assert cm.kernel_count == 1


@pytest.mark.parametrize("cfg", [
    dict(x=(1, 3, 33, 40), w=(16, 3, 3, 3), pads=(1, 1, 1, 1), strides=(2, 2)),  # the stem, rows split tiles
    dict(x=(1, 3, 20, 128), w=(16, 3, 3, 3), pads=(1, 1, 1, 1), strides=(2, 2)),  # 64-wide rows: whole tiles
    dict(x=(1, 3, 18, 64), w=(8, 3, 3, 3), pads=(1, 1, 1, 1), strides=(1, 1)),  # stride 1, whole tiles
    dict(x=(1, 8, 15, 17), w=(12, 8, 1, 1), pads=(0, 0, 0, 0), strides=(2, 2)),  # strided 1x1: phase 0 only
    dict(x=(2, 4, 9, 23), w=(6, 2, 1, 3), pads=(0, 1, 0, 2), strides=(1, 2), dilations=(1, 2), group=2),
    dict(x=(1, 5, 17, 19), w=(7, 5, 3, 2), pads=(2, 0, 1, 3), strides=(3, 2), dilations=(2, 1)),
])
def test_conv_columns_read_a_padded_phase_split_copy(cfg):
    """im2col + GEMM reads its columns from a zero-padded copy of the input made once (for a strided
    conv split into stride phases, so a column's lanes are consecutive floats): no bounds test is
    left in the column build, and the result is the convolution's for strides, dilations, uneven
    pads, groups, batch 2 and row widths that do or do not fill whole column tiles."""
    from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args
    from tvmlite.ops.conv import conv

    x = RNG.standard_normal(cfg["x"]).astype(np.float32)
    w = RNG.standard_normal(cfg["w"]).astype(np.float32)
    b = RNG.standard_normal(cfg["w"][0]).astype(np.float32)
    attrs = {k: cfg[k] for k in ("pads", "strides", "dilations", "group") if k in cfg}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    kd = KC.conv2d_gemm("c", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Silu")]), lanes=16)
    args, outs = kernel_args(kd, {"x": x})
    build_kernel(kd)["main"](*args)
    ref = conv(x, w, b, pads=list(cfg["pads"]), strides=list(cfg["strides"]),
               dilations=list(cfg.get("dilations", (1, 1))), group=cfg.get("group", 1))
    ref = ref / (1 + np.exp(-ref))
    np.testing.assert_allclose(outs[0].numpy().reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
    text = kd.func.script()
    column_build = text[text.index('T.sblock("im2col")'):text.index('T.sblock("acc_init")')]
    assert 'T.sblock("pad")' in text and "if_then_else" not in column_build
    if cfg["w"][2:] == (1, 1):  # only the subsampled input is copied
        assert "pad = T.sblock_alloc_buffer((1, 8, 1, 1, 8, 9))" in text
    assert "pad_input" in kd.steps


@pytest.mark.parametrize("hw,direct", [((7, 7), True), ((14, 14), True), ((28, 28), False), ((56, 56), False)])
def test_pointwise_conv_on_a_small_image_takes_the_direct_kernel(hw, direct):
    """A 1x1 conv whose GEMM would pad the pixels by a tenth or more (7x7: 49 of 64) runs as the
    direct kernel, reading the input itself (no padded copy); larger images stay a plain GEMM."""
    w = np.zeros((256, 128, 1, 1), np.float32)
    geom = WindowGeometry.conv({}, (1, 128) + hw, w.shape)
    assert KC.use_direct_conv(w.shape, geom, 16) is direct
    assert not KC.use_direct_conv((256, 64, 1, 1), geom, 16)  # a short reduction never does
    grouped = WindowGeometry.conv({"group": 2}, (1, 256) + hw, w.shape)
    assert not KC.use_direct_conv(w.shape, grouped, 16)


def test_pointwise_direct_conv_with_residual_matches_onnxruntime():
    w = (RNG.standard_normal((64, 160, 1, 1)) * 0.1).astype(np.float32)
    b = RNG.standard_normal(64).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Add", ["c", "res"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 160, 7, 7]), tensor("res", [1, 64, 7, 7])],
                       [tensor("y", [1, 64, 7, 7])], [("w", w), ("b", b)])
    geom = WindowGeometry.conv({}, (1, 160, 7, 7), w.shape)
    assert KC.use_direct_conv(w.shape, geom, 16)
    kd = KC.conv2d_direct("d", "x", (1, 160, 7, 7), w, b, geom, out_value="y", epilogue=KC.Epilogue(), lanes=16)
    assert 'T.sblock("pad")' not in kd.func.script() and "pad_input" not in kd.steps
    feeds = {"x": RNG.standard_normal((1, 160, 7, 7)).astype(np.float32),
             "res": RNG.standard_normal((1, 64, 7, 7)).astype(np.float32)}
    assert build_and_compare(model, feeds).kernel_count == 1
