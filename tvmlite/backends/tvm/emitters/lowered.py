"""tvmlite's own conv-lowering ops (domain "tvmlite", made by the `lower-conv` and `winograd`
passes): Im2Col and MecLower carry their window as kernel_shape / strides / dilations / explicit
pads, MecMatMul and the Winograd transforms their own attributes."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters import nhwc
from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.kernels.defs import window_2d
from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.lowered import winograd_matrices


def _window(node, xs: tuple) -> tuple[tuple, WindowGeometry]:
    """(4-D input shape, 2-D window) of an Im2Col / MecLower node; 1-D as unit height. The
    window is read like a pool's: there are no weights to take the kernel shape from."""
    a = node.attrs
    nsp = len(a["kernel_shape"])
    if nsp not in (1, 2) or len(xs) != nsp + 2:
        raise UnsupportedError(f"{nsp}-D window")
    geom = window_2d(WindowGeometry.pool(a, xs))
    return ((xs[0], xs[1], 1, xs[2]) if nsp == 1 else tuple(xs)), geom


@emitter("Im2Col", domain="tvmlite")
def emit_im2col(low, node) -> None:
    x = node.inputs[0]
    xs, geom = _window(node, low.shape(x))
    out = node.outputs[0]
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.lowered import im2col

        return im2col(name, x, xs, geom, out_value=out, lanes=low.lanes)
    low.add(make, node, out)


@emitter("MecLower", domain="tvmlite")
def emit_mec_lower(low, node) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    if len(xs) != 4:
        raise UnsupportedError(f"rank-{len(xs)} input")
    _, geom = _window(node, xs)
    out = node.outputs[0]
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.lowered import mec_lower

        return mec_lower(name, x, xs, geom, out_value=out, lanes=low.lanes)
    low.add(make, node, out)


@emitter("MecMatMul", domain="tvmlite")
def emit_mec_matmul(low, node) -> None:
    lowered = node.inputs[0]
    w = low.const_input(node, 1, "weights", required=True)
    bias = low.const_input(node, 2, "bias")
    a = node.attrs
    l_shape = low.shape(lowered)
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    w32 = w.astype(np.float32)
    b32 = None if bias is None else bias.astype(np.float32)

    def make():
        from tvmlite.backends.tvm.kernels.lowered import mec_matmul

        return mec_matmul(name, lowered, l_shape, w32, b32, stride_h=int(a["stride_h"]),
                          dilation_h=int(a["dilation_h"]), out_h=int(a["out_h"]), out_value=final,
                          epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)


@emitter("WinogradInput", domain="tvmlite")
def emit_winograd_input(low, node) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    if len(xs) != 4:
        raise UnsupportedError(f"rank-{len(xs)} input")
    a = node.attrs
    m, r = int(a["m"]), int(a.get("r", 3))
    pads = [int(v) for v in a["pads"]]
    _, _, bt = winograd_matrices(m, r)
    out = node.outputs[0]
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.lowered import winograd_input

        return winograd_input(name, x, xs, m=m, r=r, pads=pads, bt=bt, out_value=out, lanes=low.lanes)
    low.add(make, node, out)


@emitter("WinogradOutput", domain="tvmlite")
def emit_winograd_output(low, node) -> None:
    """The output transform writes NHWC where its readers take the conv's output channels-last (a
    1x1 conv, a channel Concat: emitters/nhwc.py), as the direct conv kernel does."""
    mt = node.inputs[0]
    bias = low.const_input(node, 1, "bias")
    a = node.attrs
    m, r = int(a["m"]), int(a.get("r", 3))
    at, _, _ = winograd_matrices(m, r)
    mt_shape = low.shape(mt)
    out = node.outputs[0]
    out_shape = low.shape(out)
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    b32 = None if bias is None else bias.astype(np.float32)
    y_nhwc = len(out_shape) == 4 and (final in low.promised or nhwc.writes_nhwc(low, node, final))
    if y_nhwc:
        nhwc.promise_residuals(low, node, epi)
    buf = nhwc.buffer_of(final) if y_nhwc else final

    def make():
        from tvmlite.backends.tvm.kernels.lowered import winograd_output

        return winograd_output(name, mt, mt_shape, b32, m=m, r=r, out_shape=out_shape, at=at, out_value=buf,
                               epilogue=epi, lanes=low.lanes, y_layout="NHWC" if y_nhwc else "NCHW")
    low.add(make, node, final, labels)
    if y_nhwc:
        nhwc.store_nhwc(low, final)
