"""Conv / pool / Resize / quantization kernels against onnxruntime on random data."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.helper import np_dtype_to_tensor_dtype

from helpers import u8u8_inputs
from tvmlite.errors import UnsupportedError
from tvmlite.ops.conv import conv_output_shape, im2col, resolve_pads
from tvmlite.ops.testing import run_node

ort = pytest.importorskip("onnxruntime")

OPSET = 17


def _ort(op, inputs, attrs=None, opset=OPSET, out_types=None):
    """Run a one-node model in onnxruntime; returns (outputs, node)."""
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    ins = [helper.make_tensor_value_info(nm, np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for nm, v in zip(names, inputs) if v is not None]
    out_types = out_types or [np_dtype_to_tensor_dtype(inputs[0].dtype)]
    outs = [helper.make_tensor_value_info(f"o{k}", t, None) for k, t in enumerate(out_types)]
    node = helper.make_node(op, names, [f"o{k}" for k in range(len(out_types))], **(attrs or {}))
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # onnxruntime 1.31 refuses onnx 1.23's default IR version
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {nm: v for nm, v in zip(names, inputs) if v is not None}
    return sess.run(None, feeds), node


def _check_close(op, inputs, attrs, opset=OPSET, rtol=1e-4, atol=1e-4, n_out=1, out_types=None):
    refs, node = _ort(op, inputs, attrs, opset, out_types)
    got = run_node(node, inputs, opset)
    for g, r in zip(got[:n_out], refs[:n_out]):
        assert g.dtype == r.dtype and g.shape == r.shape, (g.dtype, r.dtype, g.shape, r.shape)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
    return got, refs


def _check_exact(op, inputs, attrs, out_type, opset=OPSET):
    """NumPy equals onnxruntime exactly; a uint8 x int8 op's reference runs as uint8 x uint8 where
    the CPU has no VNNI (onnxruntime's AVX2 u8s8 kernels saturate: helpers.u8u8_inputs)."""
    (ref,), node = _ort(op, u8u8_inputs(op, inputs), attrs, opset, [out_type])
    (got,) = run_node(node, inputs, opset)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def test_resolve_pads_and_output_shape():
    assert resolve_pads("SAME_UPPER", [7, 8], [3, 3], [2, 2], [1, 1], None) == [1, 0, 1, 1]
    assert resolve_pads("SAME_LOWER", [7, 8], [3, 3], [2, 2], [1, 1], None) == [1, 1, 1, 0]
    assert resolve_pads("VALID", [7], [3], [1], [1], [5, 5]) == [0, 0]
    assert resolve_pads("NOTSET", [7], [3], [1], [1], [1, 2]) == [1, 2]
    assert conv_output_shape([7, 8], [3, 3], [2, 2], [1, 1], [1, 0, 1, 1]) == [4, 4]
    # ceil mode drops a window that would start in the end padding
    assert conv_output_shape([4], [2], [2], [1], [0, 1], ceil_mode=True) == [2]


def test_im2col_layout():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    cols = im2col(x, [2, 3], [1, 2], [1, 1], [0, 1, 0, 1])
    oh, ow = conv_output_shape([5, 6], [2, 3], [1, 2], [1, 1], [0, 1, 0, 1])
    assert cols.shape == (2, 3 * 6, oh * ow) and cols.dtype == np.float32
    xp = np.pad(x, [(0, 0), (0, 0), (0, 0), (1, 1)])
    # row c*K + (i*kw + j), column r*OW + s  ==  xp[n, c, r*sh + i, s*sw + j]
    n, c, i, j, r, s = 1, 2, 1, 2, 3, 1
    assert cols[n, c * 6 + i * 3 + j, r * ow + s] == xp[n, c, r + i, 2 * s + j]


# --------------------------------------------------------------------------------------------------
# Conv / ConvTranspose
# --------------------------------------------------------------------------------------------------

_CONV_CASES = []
for sp, k in [((11,), (3,)), ((9, 10), (3, 3)), ((8, 7), (1, 1)), ((10, 10), (5, 5)),
              ((5, 6, 5), (3, 2, 3))]:
    for st, dil, group, ap in itertools.product([1, 2], [1, 2], ["1", "2", "dw", "dw2"],
                                                ["NOTSET", "SAME_UPPER", "VALID"]):
        if ap == "SAME_UPPER" and dil > 1:
            continue
        if len(sp) == 3 and (group in ("2", "dw2") or ap == "VALID"):
            continue
        if any((kk - 1) * dil + 1 > s for kk, s in zip(k, sp)):
            continue
        _CONV_CASES.append((sp, k, st, dil, group, ap))


@pytest.mark.parametrize("sp,k,st,dil,group,ap", _CONV_CASES)
def test_conv_vs_ort(sp, k, st, dil, group, ap):
    rng = np.random.default_rng(hash((sp, k, st, dil, group, ap)) % 2 ** 32)
    n = len(sp)
    C = 4
    g, M = {"1": (1, 6), "2": (2, 6), "dw": (C, C), "dw2": (C, 2 * C)}[group]
    x = rng.standard_normal((2, C) + sp).astype(np.float32)
    w = rng.standard_normal((M, C // g) + k).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    attrs = dict(strides=[st] * n, dilations=[dil] * n, group=g, auto_pad=ap)
    if ap == "NOTSET":
        attrs["pads"] = [1] * n + [1 + (st > 1)] * n
    _check_close("Conv", [x, w, b], attrs)


def test_conv_1x1_no_bias_and_batch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16, 7, 9)).astype(np.float32)
    w = rng.standard_normal((8, 16, 1, 1)).astype(np.float32)
    _check_close("Conv", [x, w], {})
    _check_close("Conv", [x, w], {"strides": [2, 2]})


def test_conv_float16_accumulates_in_float32():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float16)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float16)
    _check_close("Conv", [x, w], {"pads": [1, 1, 1, 1]}, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("sp,k,st,dil,group,op_pad,ap", [
    ((5,), (3,), 2, 1, 1, 1, "NOTSET"),
    ((4, 5), (3, 3), 2, 1, 2, 1, "NOTSET"),
    ((4, 5), (3, 3), 1, 2, 1, 0, "NOTSET"),
    ((4, 4), (2, 2), 2, 1, 1, 0, "SAME_UPPER"),
    ((4, 4), (3, 3), 2, 1, 1, 0, "SAME_LOWER"),
    ((3, 4, 3), (2, 3, 2), 2, 1, 2, 1, "NOTSET"),
])
def test_conv_transpose_vs_ort(sp, k, st, dil, group, op_pad, ap):
    rng = np.random.default_rng(3)
    n = len(sp)
    x = rng.standard_normal((2, 4) + sp).astype(np.float32)
    w = rng.standard_normal((4, 3) + k).astype(np.float32)
    b = rng.standard_normal(3 * group).astype(np.float32)
    attrs = dict(strides=[st] * n, dilations=[dil] * n, group=group, output_padding=[op_pad] * n,
                 auto_pad=ap)
    if ap == "NOTSET":
        attrs["pads"] = [1] * n + [0] * n
    _check_close("ConvTranspose", [x, w, b], attrs)


def test_conv_transpose_output_shape():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    _check_close("ConvTranspose", [x, w], dict(strides=[2, 2], output_shape=[6, 7]))


# --------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------

_POOL_CASES = [
    (op, sp, k, st, pad, ceil, cip)
    for op in ("MaxPool", "AveragePool", "LpPool")
    for sp, k in [((9, 10), (3, 3)), ((8, 8), (2, 2)), ((11,), (3,)), ((5, 6, 7), (2, 3, 2))]
    for st, pad, ceil, cip in [(2, 0, 1, 0), (2, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1), (1, 1, 0, 1),
                               (2, 0, 0, 0)]
    if not (op != "AveragePool" and cip) and pad < min(k)
]


@pytest.mark.parametrize("op,sp,k,st,pad,ceil,cip", _POOL_CASES)
def test_pool_vs_ort(op, sp, k, st, pad, ceil, cip):
    rng = np.random.default_rng(5)
    n = len(sp)
    x = rng.standard_normal((2, 3) + sp).astype(np.float32)
    attrs = dict(kernel_shape=list(k), strides=[st] * n, pads=[pad] * (2 * n), ceil_mode=ceil)
    if op == "AveragePool":
        attrs["count_include_pad"] = cip
    out_types = [TensorProto.FLOAT, TensorProto.INT64] if op == "MaxPool" else None
    _check_close(op, [x], attrs, opset=19, n_out=2 if op == "MaxPool" else 1,
                 out_types=out_types)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices_dilations(storage_order):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    attrs = dict(kernel_shape=[2, 3], strides=[2, 1], dilations=[2, 1], pads=[1, 0, 0, 1],
                 storage_order=storage_order)
    _check_close("MaxPool", [x], attrs, opset=12, n_out=2,
                 out_types=[TensorProto.FLOAT, TensorProto.INT64])


def test_global_pools():
    x = np.random.default_rng(7).standard_normal((2, 5, 6, 7)).astype(np.float32)
    for op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        _check_close(op, [x], {})


# --------------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,coord,nearest,target", [
    ("nearest", "asymmetric", "floor", (2.0, 2.0)),
    ("nearest", "asymmetric", "floor", (0.5, 0.5)),
    ("nearest", "half_pixel", "round_prefer_floor", (1.5, 2.5)),
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_ceil", (2.0, 3.0)),
    ("linear", "half_pixel", "round_prefer_floor", (2.0, 2.0)),
    ("linear", "half_pixel", "round_prefer_floor", (0.5, 0.75)),
    ("linear", "align_corners", "round_prefer_floor", (2.0, 2.0)),
    ("linear", "pytorch_half_pixel", "round_prefer_floor", (1.75, 0.5)),
    ("cubic", "half_pixel", "round_prefer_floor", (2.0, 1.5)),
    ("cubic", "asymmetric", "round_prefer_floor", (0.5, 2.0)),
])
def test_resize_scales_vs_ort(mode, coord, nearest, target):
    x = np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)
    scales = np.array((1.0, 1.0) + target, np.float32)
    opset = 11 if coord == "tf_half_pixel_for_nn" else 13
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest)
    _check_close("Resize", [x, np.array([], np.float32), scales], attrs, opset=opset)


@pytest.mark.parametrize("mode,coord", [("nearest", "asymmetric"), ("linear", "half_pixel"),
                                        ("linear", "align_corners"), ("cubic", "half_pixel")])
def test_resize_sizes_vs_ort(mode, coord):
    x = np.random.default_rng(9).standard_normal((2, 2, 7, 9)).astype(np.float32)
    sizes = np.array([2, 2, 13, 5], np.int64)
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, nearest_mode="floor")
    _check_close("Resize", [x, None, None, sizes], attrs, opset=13)


def test_resize_keeps_float32_and_uint8():
    x = np.random.default_rng(10).integers(0, 256, (1, 1, 4, 4)).astype(np.uint8)
    scales = np.array([1, 1, 2, 2], np.float32)
    _check_close("Resize", [x, None, scales], dict(mode="linear"), opset=13, atol=1)


def test_resize_antialias_nearest_is_unsupported():
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest", antialias=1)
    with pytest.raises(UnsupportedError):
        run_node(node, [np.zeros((1, 1, 4, 4), np.float32), None,
                        np.array([1, 1, 0.5, 0.5], np.float32)], 18)


# --------------------------------------------------------------------------------------------------
# Quantization (bit-exact)
# --------------------------------------------------------------------------------------------------

_QT = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8, np.uint16: TensorProto.UINT16,
       np.int16: TensorProto.INT16}


_QUANT_GRID = list(itertools.product([np.uint8, np.int8, np.uint16, np.int16], [False, True]))


@pytest.mark.parametrize("dt,per_axis", _QUANT_GRID)
def test_quantize_dequantize_exact(dt, per_axis):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((2, 4, 5, 6)) * 60).astype(np.float32)
    x.flat[:8] = [0.5, 1.5, 2.5, -0.5, -1.5, 1e6, -1e6, 3.5]  # ties and saturation
    info = np.iinfo(dt)
    if per_axis:
        s = rng.uniform(0.01, 1, 4).astype(np.float32)
        zp = rng.integers(max(info.min, -50), 50, 4).astype(dt)
        attrs = {"axis": 1}
    else:
        s = np.array(0.37, np.float32)
        zp = np.array(3 if info.min == 0 else -2, dt)
        attrs = {}
    _check_exact("QuantizeLinear", [x, s, zp], attrs, _QT[dt], opset=21)
    q = run_node(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs),
                 [x, s, zp], 21)[0]
    (ref,), node = _ort("DequantizeLinear", [q, s, zp], attrs, 21, [TensorProto.FLOAT])
    (got,) = run_node(node, [q, s, zp], 21)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), ref.view(np.int32))


def test_dynamic_quantize_linear_exact():
    x = (np.random.default_rng(12).standard_normal((5, 7)) + 1.3).astype(np.float32)
    refs, node = _ort("DynamicQuantizeLinear", [x], {}, 13,
                      [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8])
    got = run_node(node, [x], 13)
    np.testing.assert_array_equal(got[0], refs[0])
    assert got[1].dtype == np.float32 and got[1] == refs[1] and got[2] == refs[2]


@pytest.mark.parametrize("adt,bdt,shapes", [
    (np.uint8, np.uint8, ((5, 16), (16, 7))),
    (np.uint8, np.int8, ((2, 3, 300), (300, 9))),
    (np.int8, np.int8, ((4, 64), (64, 33))),
])
def test_qlinear_matmul_exact(adt, bdt, shapes):
    rng = np.random.default_rng(13)
    a = rng.integers(np.iinfo(adt).min, np.iinfo(adt).max + 1, shapes[0]).astype(adt)
    b = rng.integers(np.iinfo(bdt).min, np.iinfo(bdt).max + 1, shapes[1]).astype(bdt)
    for ys in (0.5, 3.7, 40.0):
        ins = [a, np.array(0.05, np.float32), np.array(7, adt), b, np.array(0.031, np.float32),
               np.array(3, bdt), np.array(ys, np.float32), np.array(5, adt)]
        _check_exact("QLinearMatMul", ins, {}, _QT[adt], opset=13)
    _check_exact("MatMulInteger", [a, b, np.array(9, adt), np.array(2, bdt)], {},
                 TensorProto.INT32, opset=13)


@pytest.mark.parametrize("xdt,wdt,shapes,attrs,per_channel", [
    (np.uint8, np.int8, ((1, 8, 9, 9), (16, 8, 3, 3)), dict(pads=[1, 1, 1, 1]), False),
    (np.uint8, np.int8, ((1, 8, 9, 9), (16, 8, 3, 3)), dict(pads=[1, 1, 1, 1]), True),
    (np.uint8, np.uint8, ((2, 6, 10, 8), (6, 2, 3, 3)), dict(group=3, strides=[2, 2]), False),
    (np.int8, np.int8, ((1, 8, 9, 9), (8, 1, 3, 3)), dict(group=8, pads=[1, 1, 1, 1]), True),
    (np.uint8, np.int8, ((1, 64, 7, 7), (32, 64, 1, 1)), {}, True),
    (np.int8, np.int8, ((1, 4, 11), (5, 4, 3)), dict(dilations=[2]), False),
])
def test_qlinear_conv_exact(xdt, wdt, shapes, attrs, per_channel):
    rng = np.random.default_rng(14)
    x = rng.integers(np.iinfo(xdt).min, np.iinfo(xdt).max + 1, shapes[0]).astype(xdt)
    w = rng.integers(np.iinfo(wdt).min, np.iinfo(wdt).max + 1, shapes[1]).astype(wdt)
    M = shapes[1][0]
    b = rng.integers(-2000, 2000, M).astype(np.int32)
    wzp0 = 0 if wdt == np.int8 else 128
    wsc = (rng.uniform(0.001, 0.02, M).astype(np.float32) if per_channel
           else np.array(0.01, np.float32))
    wzp = np.full(M, wzp0, wdt) if per_channel else np.array(wzp0, wdt)
    ins = [x, np.array(0.05, np.float32), np.array(11, xdt), w, wsc, wzp,
           np.array(0.2, np.float32), np.array(6, xdt), b]
    _check_exact("QLinearConv", ins, attrs, _QT[xdt], opset=13)
    if not per_channel:
        _check_exact("ConvInteger", [x, w, np.array(11, xdt), wzp], attrs, TensorProto.INT32,
                     opset=13)
