"""Winograd as a lowering choice of the TVM backend (backends/tvm/winograd_choice.py): which 3x3
convs `prepare` lowers and why, the $TVMLITE_WINOGRAD switch and its build-cache key, and a
whole build with a Winograd conv against onnxruntime, listed in the build report."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import make_model, ort_run, tensor

from tvmlite.backends.tvm import build_cache
from tvmlite.backends.tvm.prepare import prepare
from tvmlite.backends.tvm.winograd_choice import report_lines, plan_record
from tvmlite.limits import LimitError
from tvmlite.frontend import load

RNG = np.random.default_rng(0)


def _convs(x_shape, *outs, kernel=3, dtype=np.float32):
    """x -> Conv(outs[0]) -> Relu -> Conv(outs[1]) -> ...: 3x3 pads 1 (kernel 1: no pads)."""
    nodes, inits, c, prev = [], [], x_shape[1], "x"
    for i, k in enumerate(outs):
        w = (RNG.standard_normal((k, c, kernel, kernel)) / np.sqrt(kernel * kernel * c)).astype(dtype)
        inits += [(f"w{i}", w), (f"b{i}", (RNG.standard_normal(k) * 0.1).astype(dtype))]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[kernel // 2] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        c, prev = k, f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    et = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    return make_model(nodes, [tensor("x", list(x_shape), et)], [tensor("y", [x_shape[0], c, None, None], et)], inits)


def _decide(model, x_shape):
    got: list = []
    m, _ = prepare(load(model), {"x": x_shape}, got)
    return got, m


def _ops(m) -> set:
    return {n.op_type for n in m.graph.nodes}


def test_takes_a_wide_conv_with_f4_and_a_small_map_with_f2():
    got, m = _decide(_convs((1, 64, 16, 16), 128), (1, 64, 16, 16))
    assert got == [{"node": "conv0", "m": 4, "reason": "64->128 channels at 16x16, 16 tiles"}]
    assert {"WinogradInput", "WinogradOutput"} <= _ops(m) and "Conv" not in _ops(m)
    got, _ = _decide(_convs((1, 96, 8, 8), 96), (1, 96, 8, 8))
    assert got[0]["m"] == 2  # F(4) leaves 4 tiles: F(2) has 16


@pytest.mark.parametrize("x_shape,out,why", [
    ((1, 64, 56, 56), 64, "64->64 channels: C·M/(C+M) = 32.0 < 42"),           # ResNet-50's first stage
    ((1, 128, 28, 28), 32, "128->32 channels: C·M/(C+M) = 25.6 < 42"),         # DenseNet's growth convs
    ((1, 128, 112, 112), 128, "784 F(4) tiles of 112x112 > 256"),
    ((1, 512, 7, 7), 512, "512->512 channels at 7x7: 16.0 MiB of F(2) weights for 16 tiles (< 49)"),
    ((1, 256, 14, 14), 256, "256->256 channels at 14x14: 9.0 MiB of F(4) weights for 16 tiles (< 49)"),
    ((1, 128, 6, 6), 128, "6x6 output: fewer than 16 F(2) tiles"),
])
def test_refuses_with_the_reason(x_shape, out, why):
    got, m = _decide(_convs(x_shape, out), x_shape)
    assert got[0]["m"] is None and got[0]["reason"].startswith(why), got
    assert "WinogradInput" not in _ops(m) and "Conv" in _ops(m)


def test_small_convs_only_where_the_models_weights_stay_cached():
    from tvmlite.backends.tvm.winograd_choice import winograd_tile
    from tvmlite.passes.lowering import conv_info

    x = (1, 96, 28, 28)  # 65M multiply-adds
    m = load(_convs(x, 96))
    info = conv_info(m, next(n for n in m.graph.nodes if n.op_type == "Conv"))
    assert winograd_tile(info, 1 << 20)[0] == 4
    assert winograd_tile(info, 40 << 20) == (None, "96->96 channels at 28x28: 65M multiply-adds < 100M in a model "
                                                 "of 40 MiB of weights: the added kernels and buffers outweigh the saving")


def _with_reader(x_shape, out, reader: str):
    """conv0 (3x3, x_shape -> out channels) -> Relu -> ``reader`` (Concat with x, or a 1x1 conv)."""
    model = _convs(x_shape, out)
    g = model.graph
    g.node.pop()  # the Identity
    if reader == "Concat":
        g.node.append(helper.make_node("Concat", ["r0", "x"], ["y"], axis=1))
    else:
        g.initializer.append(onnx.numpy_helper.from_array(
            (RNG.standard_normal((16, out, 1, 1)) * 0.1).astype(np.float32), "w1x1"))
        g.node.append(helper.make_node("Conv", ["r0", "w1x1"], ["y"]))
    return model


@pytest.mark.parametrize("reader", ["Concat", "1x1"])
def test_a_conv_read_channels_last_pays_for_the_nhwc_output_transform(reader, monkeypatch):
    """A 1x1 conv or a Concat behind the conv (past the Relu) takes its output channels-last: the
    output transform writes NHWC (into the Concat's slice, test_tvm_lowered_ops.py), which costs
    NHWC_OUTPUT_COST times the NCHW one, so the channels must be wider: 128->128 still goes F(4),
    SqueezeNet's 64->256 stays direct (taken with float NHWC off, its output then NCHW)."""
    x = (1, 128, 16, 16)
    got, m = _decide(_with_reader(x, 128, reader), x)
    want = "Concat" if reader == "Concat" else "1x1 conv"
    assert got[0]["m"] == 4 and "WinogradOutput" in _ops(m)
    assert got[0]["reason"] == f"128->128 channels at 16x16, 16 tiles, written channels-last for Relu -> a {want}"
    x = (1, 64, 13, 13)
    got, _ = _decide(_with_reader(x, 256, reader), x)
    assert got[0]["m"] is None
    assert got[0]["reason"] == f"64->256 channels: C·M/(C+1.3·M) = 41.3 < 42 (read channels-last by Relu -> a {want}), " \
                               "the transforms outweigh the saving"
    monkeypatch.setenv("TVMLITE_FLOAT_NHWC", "0")
    got, _ = _decide(_with_reader(x, 256, reader), x)
    assert got[0]["m"] == 4 and got[0]["reason"] == "64->256 channels at 13x13, 16 tiles"


def test_only_float_3x3_stride1_convs_are_considered():
    got, _ = _decide(_convs((1, 64, 16, 16), 128, kernel=1), (1, 64, 16, 16))
    assert got == []  # not 3x3: not a candidate, not reported
    got, m = _decide(_convs((1, 64, 16, 16), 128, dtype=np.float16), (1, 64, 16, 16))
    assert got == [] and "WinogradInput" not in _ops(m)  # fp16 stays with its own kernels


def test_a_qdq_conv_is_left_alone():
    x = (1, 64, 16, 16)
    model = _convs(x, 128)
    g = model.graph
    g.initializer.extend([onnx.numpy_helper.from_array(np.float32(0.05), "s"),
                          onnx.numpy_helper.from_array(np.uint8(128), "z")])
    g.node.insert(0, helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]))
    g.node[2].input[0] = "xd"
    got, m = _decide(model, x)
    assert got[0]["m"] is None and "QDQ conv" in got[0]["reason"]


def test_switch_turns_the_choice_off_and_keys_the_cache(monkeypatch):
    x = (1, 64, 16, 16)
    model = _convs(x, 128)
    on = build_cache.key_parts(load(model), {"x": x}, "llvm")
    monkeypatch.setenv("TVMLITE_WINOGRAD", "0")
    got, m = _decide(model, x)
    assert got == [] and "WinogradInput" not in _ops(m)
    off = build_cache.key_parts(load(model), {"x": x}, "llvm")
    assert off["graph"] == on["graph"] and off["knobs"] != on["knobs"] and "winograd off" in off["knobs"]
    monkeypatch.setenv("TVMLITE_WINOGRAD", "yes")
    with pytest.raises(LimitError, match="TVMLITE_WINOGRAD"):
        _decide(model, x)


def test_report_lines():
    record = plan_record([{"node": "a", "m": 4, "reason": "r1"}, {"node": "b", "m": None, "reason": "no"},
                          {"node": "c", "m": 2, "reason": "r2"}, {"node": "d", "m": 4, "reason": "r3"}])
    assert report_lines(record) == ["3 of 4 3x3 convs as Winograd (F(4) x2, F(2) x1)", "a: F(4), r1", "c: F(2), r2",
                                    "d: F(4), r3"]
    assert report_lines(plan_record([{"node": "b", "m": None, "reason": "no"}])) == ["0 of 1 3x3 convs as Winograd"]
    assert report_lines(None) == []


def test_build_lowers_matches_onnxruntime_and_reports(tmp_path, capsys, monkeypatch):
    from tvm_support import require_tvm

    require_tvm()
    from tvmlite.backends.tvm import compile_model
    from tvmlite.cli import main

    monkeypatch.setenv("TVMLITE_CACHE", str(tmp_path / "cache"))
    x_shape = (1, 64, 16, 16)
    model = _convs(x_shape, 128, 128, 64)  # 64->128, 128->128 and 128->64 (C·M/(C+M) 42.7) go F(4)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    cm = compile_model(load(model), {"x": x_shape})
    assert cm.winograd[0] == "3 of 3 3x3 convs as Winograd (F(4) x3)"
    assert cm.winograd[1] == "conv0: F(4), 64->128 channels at 16x16, 16 tiles"
    assert sum("wino4_in" in " ".join(c.get("nodes", [])) for c in cm.plan["calls"]) == 3
    (got,) = cm.run({"x": x})
    (ref,) = ort_run(model, {"x": x})
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) <= 1e-4
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    assert main(["build", str(src), "-o", str(tmp_path / "m.so"), "-v"]) == 0
    out = capsys.readouterr().out
    assert "  winograd: 3 of 3 3x3 convs as Winograd (F(4) x3)\n    conv0: F(4), 64->128 channels" in out
    monkeypatch.setenv("TVMLITE_WINOGRAD", "0")
    assert main(["build", str(src), "-o", str(tmp_path / "off.so")]) == 0
    out = capsys.readouterr().out
    assert "winograd" not in out and "from the build cache" not in out
