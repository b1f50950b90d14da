"""Resize (opset 10+) and Upsample as one gather kernel: per axis an index table (nearest) or
two taps with weights (linear), computed on the host in float64 with the NumPy backend's own
ONNX formulas (`tvmlite.ops.nn`), so no rounding decision is left to float32 in the kernel."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.errors import UnsupportedError
from tvmlite.ir.graph import Node
from tvmlite.ops import nn as R

RESIZE_COORD_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                      "half_pixel_symmetric", "tf_half_pixel_for_nn")
RESIZE_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resize_maps(node: Node, in_shape: tuple, out_shape: tuple, const, opset: int) -> list:
    """Per axis, how a Resize/Upsample output index reads the input (see `kernels.tensor.resize`):
    index tables and linear weights computed on the host in float64 with the NumPy backend's own
    ONNX formulas; anything those formulas or the kernel do not cover raises UnsupportedError."""
    a = node.attrs
    ins = list(node.inputs) + [""] * 4
    mode = a.get("mode", "nearest")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if node.op_type == "Upsample" or opset < 11:  # Upsample-7/9, Resize-10: asymmetric, onnxruntime's rounding
        coord, nearest_mode = "asymmetric", "simple"
        mode = "linear" if mode == "bilinear" else mode
        if opset < 9 and node.op_type == "Upsample":
            scales, roi, sizes = a.get("scales"), None, None
        else:
            scales, roi, sizes = const(ins[1]) if ins[1] else None, None, None
            if scales is None:
                raise UnsupportedError("non-constant scales")
        axes, policy, antialias = None, "stretch", 0
    else:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest_mode = a.get("nearest_mode", "round_prefer_floor")
        roi = const(ins[1]) if ins[1] else None
        scales = const(ins[2]) if ins[2] else None
        sizes = const(ins[3]) if ins[3] else None
        if (ins[2] and scales is None) or (ins[3] and sizes is None) or (ins[1] and roi is None):
            raise UnsupportedError("non-constant roi/scales/sizes")
        axes, policy = a.get("axes"), a.get("keep_aspect_ratio_policy", "stretch")
        antialias = int(a.get("antialias", 0))
    if mode not in ("nearest", "linear"):
        raise UnsupportedError(f"mode={mode}")
    if coord not in RESIZE_COORD_MODES:
        raise UnsupportedError(f"coordinate_transformation_mode={coord}")
    if mode == "nearest" and nearest_mode not in RESIZE_NEAREST_MODES + ("simple",):
        raise UnsupportedError(f"nearest_mode={nearest_mode}")
    if antialias:
        raise UnsupportedError("antialias=1")
    dummy = np.empty(in_shape, np.float32)  # only its shape is read
    scales_full, sizes_full, _, from_sizes = R._resize_args(dummy, roi, scales, sizes, axes, policy)
    if from_sizes and policy not in ("stretch", None):
        from_sizes = False
    if tuple(sizes_full) != tuple(out_shape):
        raise UnsupportedError(f"output shape {tuple(out_shape)} disagrees with scales/sizes {tuple(sizes_full)}")
    maps = []
    for ax, (in_len, out_len) in enumerate(zip(in_shape, out_shape)):
        scale = float(scales_full[ax])
        if out_len == 0:
            raise UnsupportedError("empty output")
        if out_len == in_len and np.isclose(scale, 1.0):  # the reference skips such axes too
            maps.append(None)
            continue
        xo = R._x_original(coord, out_len, in_len, scale, out_w=float(out_len) if from_sizes else None)
        if mode == "nearest":
            idx = R._nearest_index(xo, nearest_mode, in_len, scale < 1)
            o = np.arange(out_len)
            if np.array_equal(idx, o * in_len // out_len):  # e.g. asymmetric floor, integer scale
                maps.append(("div", int(in_len), int(out_len)))
            else:
                maps.append(("nearest", idx.astype(np.int32)))
        else:
            if ax < len(in_shape) - 2:
                raise UnsupportedError(f"linear resize of axis {ax} (only the last two axes)")
            idx, wts = R._taps(xo, "linear", scale, in_len, -0.75, False, bool(a.get("exclude_outside", 0)))
            maps.append(("linear", idx.astype(np.int32), wts.astype(np.float32)))
    return maps


@emitter("Resize", "Upsample")
def emit_resize(low, node: Node) -> None:
    x = node.inputs[0]
    if any(n and low.const(n) is None for n in node.inputs[1:]):
        raise UnsupportedError("non-constant roi/scales/sizes")  # before the output shape, unknown then
    xs = low.shape(x)
    out = node.outputs[0]
    maps = resize_maps(node, xs, low.shape(out), low.const, low.opset)
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    out_shape = low.shape(out)

    def make():
        from tvmlite.backends.tvm.kernels.tensor import resize

        return resize(name, x, xs, axes_maps=maps, out_shape=out_shape, out_value=final, epilogue=epi,
                      lanes=low.lanes)
    low.add(make, node, final, labels)
