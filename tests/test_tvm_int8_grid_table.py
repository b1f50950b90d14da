"""TVM backend, int8: an elementwise chain of one value on a quantization grid (PP-OCR's spelled-out
HardSwish between fake-quant pairs) runs as a 256-entry table read (emitters/grid_table.py), in the
kernel that makes the value when nothing else reads it (fusion.grid_chain); chains that are not a
function of that value alone, or of a value on no grid, keep their elementwise ops."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_qdq, ort_unfused, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from test_tvm_int8 import QDQ, _out, _u8, conv_read_by_conv_and_float_op  # noqa: E402

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.emitters.grid_table import chain_table  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import EwOp  # noqa: E402
from tvmlite.backends.tvm.kernels.target import vector_lanes  # noqa: E402
from tvmlite.backends.tvm.lower import lower  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(15)
SHAPE = [1, 8, 6, 10]


def _hardswish(b: QDQ, x: str, tag: str, *, scale_by=None) -> str:
    """PaddleOCR's x * Clip(x + 3, 0, 6) / 6 with a fake-quant pair after each step, as onnxruntime's
    quantize_static writes it; ``scale_by``: a constant multiplied in first (not a scalar: the
    chain is no function of x alone)."""
    three, zero, six = (b.const(f"{tag}_{k}", np.array(v, np.float32)) for k, v in (("3", 3), ("0", 0), ("6", 6)))
    v = x
    if scale_by is not None:
        b.nodes.append(helper.make_node("Mul", [v, b.const(f"{tag}_k", scale_by)], [f"{tag}_m"]))
        v = f"{tag}_m"
    b.nodes.append(helper.make_node("Add", [v, three], [f"{tag}_a"]))
    a = b.fake_quant(f"{tag}_a", f"{tag}_aq", 0.04, _u8(0))
    b.nodes.append(helper.make_node("Clip", [a, zero, six], [f"{tag}_c"]))
    c = b.fake_quant(f"{tag}_c", f"{tag}_cq", 6 / 255, _u8(0))
    b.nodes.append(helper.make_node("Div", [c, six], [f"{tag}_d"]))
    d = b.fake_quant(f"{tag}_d", f"{tag}_dq", 1 / 255, _u8(0))
    b.nodes.append(helper.make_node("Mul", [v, d], [f"{tag}_y"]))
    return b.fake_quant(f"{tag}_y", f"{tag}_yq", 0.03, _u8(20))


def _conv_hardswish(signed=False, scale_by=None, grid="conv", also_out=False, shape=None):
    """A QDQ conv (``grid`` "conv"), a lone fake-quant pair on the input ("pair") or nothing
    ("none") makes the value the HardSwish reads; ``also_out``: that value is a graph output too."""
    b = QDQ()
    zp = np.array(-5, np.int8) if signed else _u8(131)
    x = b.fake_quant("x", "xd", 0.03, zp) if grid != "none" else "x"
    if grid == "conv":
        w = b.weights("w", (RNG.standard_normal((8, 8, 1, 1)) * 0.4).astype(np.float32), 0)
        b.nodes.append(helper.make_node("Conv", [x, w, b.const("bias", RNG.standard_normal(8).astype(np.float32))],
                                        ["c"]))
        v = b.fake_quant("c", "cq", 0.05, np.array(3, np.int8) if signed else _u8(120))
    else:
        v = x
    y = _hardswish(b, v, "hs", scale_by=scale_by)
    b.nodes.append(helper.make_node("Identity", [y], ["out"]))
    outs = [_out("out", 4)] + ([_out(v, 4)] if also_out else [])
    return make_model(b.nodes, [tensor("x", shape or SHAPE)], outs, b.inits, opset=17)


def _kernels(model, shape=SHAPE) -> list:
    return lower(load(model), {"x": tuple(shape)}, vector_lanes()).kernels


def _steps(model) -> list[str]:
    return [s for kd in _kernels(model) for s in kd.steps]


def _table_in_the_conv(model, shape=SHAPE) -> bool:
    """Whether the HardSwish ran as a table read in the int8 conv's own kernel, its "lookup" stage
    (one kernel for the whole model, no table kernel of its own)."""
    kernels = _kernels(model, shape)
    return len(kernels) == 1 and kernels[0].nodes[0].startswith("QDQConv") and "hs_y" in " ".join(kernels[0].nodes) \
        and 'T.sblock("lookup")' in kernels[0].func.script()


def _run(model, shape=SHAPE):
    x = (RNG.standard_normal(shape) * 4).astype(np.float32)
    got = compile_model(load(model), {"x": tuple(shape)}).run({"x": x})[0]
    return got, ort_qdq(model, {"x": x})[0]


@pytest.mark.parametrize("signed", [0, 1])
def test_hardswish_after_an_int8_conv_reads_a_table_in_the_conv(signed):
    model = _conv_hardswish(signed=signed)
    assert _table_in_the_conv(model)
    got, ref = _run(model)
    np.testing.assert_array_less(np.abs(got - ref), 0.03 + 1e-6)  # within one output step
    assert np.mean(got == ref) > 0.99  # onnxruntime's unfused QDQ arithmetic, almost everywhere


def test_hardswish_table_in_a_batched_conv():
    """Batch 2: the conv's epilogue is not tiled by rows (its NCHW output spans the batch), the
    lookup stage runs over the whole output."""
    shape = [2] + SHAPE[1:]
    model = _conv_hardswish(shape=shape)
    assert _table_in_the_conv(model, shape)
    got, ref = _run(model, shape)
    np.testing.assert_array_less(np.abs(got - ref), 0.03 + 1e-6)
    assert np.mean(got == ref) > 0.99


def test_table_stage_with_the_vnni_step(monkeypatch):
    """On an AVX-512 VNNI host the conv's dot step changes, not its table stage (lowered only: LLVM
    aborts on `vpdpbusd` where the CPU lacks it)."""
    from tvmlite.backends.tvm.kernels import target

    monkeypatch.setattr(target, "has_vnni", lambda: True)
    (kd,) = _kernels(_conv_hardswish())
    assert kd.steps == ["int8_vnni"] and 'T.sblock("lookup")' in kd.func.script()


def test_hardswish_after_a_lone_fake_quant_pair_reads_a_table():
    """The pair's float arithmetic (qdq_fusion._fake_quant) is an elementwise kernel, which takes
    no table into its epilogue (TVM would compute it lane by lane): the table is a kernel of its own."""
    model = _conv_hardswish(grid="pair")
    assert "grid_lookup" in _steps(model)
    got, ref = _run(model)
    np.testing.assert_array_less(np.abs(got - ref), 0.03 + 1e-6)
    assert np.mean(got == ref) > 0.99


def test_value_read_outside_the_chain_keeps_it_a_kernel_of_its_own():
    """The conv's value is a graph output too: the conv stores it and the HardSwish stays a table
    kernel reading it. Against the graph as written: onnxruntime's fused conv (VNNI host) put the
    conv's value one step off, which the HardSwish turned into two of its own."""
    model = _conv_hardswish(also_out=True)
    kernels = _kernels(model)
    assert len(kernels) == 2 and "grid_lookup" in kernels[1].steps
    x = (RNG.standard_normal(SHAPE) * 4).astype(np.float32)
    got = compile_model(load(model), {"x": tuple(SHAPE)}).run({"x": x})
    for g, r in zip(got, ort_unfused(model, {"x": x})):
        np.testing.assert_array_less(np.abs(g - r), 0.05 + 1e-6)


def test_chain_not_of_the_value_alone_or_off_grid_stays_elementwise():
    per_channel = np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(1, 8, 1, 1)
    for model in (_conv_hardswish(scale_by=per_channel), _conv_hardswish(grid="none")):
        assert "grid_lookup" not in _steps(model)
        assert not any("table" in kd.func.script() for kd in _kernels(model))
        got, ref = _run(model)
        np.testing.assert_array_less(np.abs(got - ref), 0.03 + 1e-6)


def test_chain_table_is_the_float32_chain_on_each_grid_value():
    ops = [EwOp("Add", [("const", np.float32(3))]), EwOp("Clip", attrs={"min": 0.0, "max": 6.0}),
           EwOp("Div", [("const", np.float32(6))]), EwOp("Mul", [("value", "x", (1, 4))]), EwOp("Round")]
    t = chain_table("x", (1, 4), ops, (0.1, 3, 1))
    x = (np.arange(-128, 128, dtype=np.float32) - np.float32(3)) * np.float32(0.1)
    np.testing.assert_array_equal(t, np.rint(x * (np.clip(x + np.float32(3), 0, 6) / np.float32(6))))
    assert t.dtype == np.float32 and t.shape == (256,)
    sub_from = [EwOp("Sub", [("const", np.float32(1))], first=1)]  # 1 - x: the operand comes first
    np.testing.assert_array_equal(chain_table("x", (4,), sub_from, (0.5, 0, 0)),
                                  np.float32(1) - np.arange(256, dtype=np.float32) * np.float32(0.5))
    refused = [
        [EwOp("Sigmoid")],                                         # no exact float32 form here
        [EwOp("Mul", [("const", np.ones((4,), np.float32))])],     # not a scalar
        [EwOp("Mul", [("value", "other", (1, 4))])],               # another value
        [EwOp("Mul", [("value", "x", (4,))])],                     # x broadcast differently
        [EwOp("Add", [("const", np.float32(1))], shape=(2, 2))],   # through a view
    ]
    for ops in refused:
        assert chain_table("x", (1, 4), ops, (0.1, 0, 0)) is None


def test_conv_input_on_its_own_grid_is_quantized_by_a_multiply():
    """A QDQ conv's output that a float op also reads stays float, on its output grid; the next
    conv quantizes it with the same parameters: x * (1 / scale) instead of x / scale (the value is
    a few ulps from an integer step, so both round alike), the same outputs as onnxruntime."""
    model = conv_read_by_conv_and_float_op()
    low = lower(load(model), {"x": (1, 4, 6, 6)}, vector_lanes())
    scripts = [kd.func.script() for kd in low.kernels if "qdqconv" in kd.name]
    assert len(scripts) == 2
    assert "/ T.float32(0.0199999" in scripts[0]  # the model input: on no grid, divided
    assert "/ T.float32(0.0500000" not in scripts[1] and "* T.float32(20.0)" in scripts[1]
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    for got, ref in zip(compile_model(load(model), {"x": (1, 4, 6, 6)}).run({"x": x}), ort_qdq(model, {"x": x})):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
