"""Conv and ConvTranspose (1-D or 2-D; 1-D runs as 2-D with a unit height). Geometry is resolved
once into a `WindowGeometry` (auto_pad, defaults, group) and handed to the kernels as is."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters import nhwc
from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.backends.tvm.emitters.tensor import channel_shuffle, reads_shuffle
from tvmlite.backends.tvm.kernels.defs import Epilogue, window_2d
from tvmlite.errors import UnsupportedError
from tvmlite.ops.conv import conv_transpose_pads
from tvmlite.ops.conv_shapes import _norm, kernel_geometry
from tvmlite.ops.geometry import WindowGeometry

def conv_operands(low, node):
    """(input, constant weights, constant bias or None, input shape, spatial rank) of a
    Conv/ConvTranspose the backend can emit (1-D or 2-D), else UnsupportedError."""
    x = node.inputs[0]
    w = low.const_input(node, 1, "weights", required=True)
    bias = low.const_input(node, 2, "bias")
    xs = low.shape(x)
    if len(xs) not in (3, 4):
        raise UnsupportedError(f"{len(xs) - 2}-D {node.op_type}")
    return x, w, bias, xs, len(xs) - 2


@emitter("Conv")
def emit_conv(low, node) -> None:
    x, w, bias, xs, nsp = conv_operands(low, node)
    geom = window_2d(WindowGeometry.conv(node.attrs, xs, w.shape))
    if nsp == 1:  # 1-D as 2-D with a unit height
        xs = (xs[0], xs[1], 1, xs[2])
        w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
    group = geom.group
    c = xs[1]
    if group == c and group > 1 and w.shape[1] == 1 and w.shape[0] % c == 0:
        depthwise = True
    elif c % group == 0 and w.shape[0] % group == 0 and w.shape[1] * group == c:
        depthwise = False
    else:
        raise UnsupportedError(f"group={group} does not fit {c} input and {w.shape[0]} output channels")
    # a depthwise conv reads a channel shuffle's input itself (the Transpose made no kernel)
    shuffled = channel_shuffle(low, x) if depthwise and nsp == 2 and reads_shuffle(low, node) else None
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    w32 = w.astype(np.float32)
    b32 = None if bias is None else bias.astype(np.float32)
    if nsp == 2 and group == 1:  # channels-last buffers between convs (emitters/nhwc.py)
        x_nhwc = x in low.nhwc and nhwc.reads_nhwc(low, node)
        y_nhwc = final in low.promised or nhwc.writes_nhwc(low, node, final)
        if y_nhwc:
            nhwc.promise_residuals(low, node, epi)
        if x_nhwc or y_nhwc:
            src = low.nhwc[x] if x_nhwc else x
            out = nhwc.buffer_of(final) if y_nhwc else final
            lanes = low.lanes

            def make_nhwc():
                from tvmlite.backends.tvm.kernels.conv_nhwc import NHWC, conv2d_nhwc

                return conv2d_nhwc(name, src, xs, w32, b32, geom, out_value=out, epilogue=epi, lanes=lanes,
                                   x_layout=NHWC if x_nhwc else "NCHW", y_layout=NHWC if y_nhwc else "NCHW")
            low.add(make_nhwc, node, final, labels)
            if y_nhwc:
                nhwc.store_nhwc(low, final)
            return

    def make():
        from tvmlite.backends.tvm.kernels import conv as K
        from tvmlite.backends.tvm.kernels import grouped

        if depthwise:
            src, groups = shuffled or (x, None)
            return K.depthwise_conv2d(name, src, xs, w32, b32, geom, out_value=final, epilogue=epi,
                                      lanes=low.lanes, shuffle=groups)
        fn = grouped.grouped_pointwise if grouped.use_grouped_pointwise(w32.shape, geom, low.lanes) else K.conv2d
        return fn(name, x, xs, w32, b32, geom, out_value=final, epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)


@emitter("ConvTranspose")
def emit_conv_transpose(low, node) -> None:
    """A grouped 1x1 GEMM making every tap's contribution (the columns), then a gather
    (col2im) that sums the taps landing on each output pixel, adds the bias and runs the
    epilogue: two kernels, no redundant multiply-adds whatever the stride."""
    x, w, bias, xs, nsp = conv_operands(low, node)
    a = node.attrs
    kshape, strides, dil = kernel_geometry(w.shape, nsp, a.get("kernel_shape"), a.get("strides"),
                                           a.get("dilations"))
    out_pad = _norm(a.get("output_padding"), nsp, 0)
    group = int(a.get("group", 1))
    c = xs[1]
    if w.shape[0] != c or c % group:
        raise UnsupportedError(f"group={group} does not fit {c} input channels and weights {list(w.shape)}")
    pads, out_sp = conv_transpose_pads(a.get("auto_pad", "NOTSET"), xs[2:], kshape, strides, dil,
                                       a.get("pads"), out_pad, a.get("output_shape"))
    out = node.outputs[0]
    m = w.shape[1] * group
    if (xs[0], m, *out_sp) != low.shape(out):
        raise UnsupportedError(f"output shape {low.shape(out)} disagrees with the attributes")
    # the transposed window, from the input's pixels (the columns' H, W) to the output's
    geom = window_2d(WindowGeometry(tuple(kshape), tuple(strides), tuple(dil), tuple(int(p) for p in pads),
                                    tuple(int(d) for d in xs[2:]), tuple(int(d) for d in out_sp), group))
    if nsp == 1:  # 1-D as 2-D with a unit height
        xs = (xs[0], xs[1], 1, xs[2])
        w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
    n, _, h, wd = xs
    taps = geom.kernel[0] * geom.kernel[1]
    cols = f"{out}::cols"
    low.shapes[cols] = (n, m * taps, h, wd)
    gemm_geom = WindowGeometry.conv({"group": group}, xs, (m * taps, c // group, 1, 1))
    gemm_name = low.kernel_name(node) + "_gemm"
    w_cols = w.astype(np.float32)

    def make_gemm():
        from tvmlite.backends.tvm.kernels import conv as K

        return K.conv2d_gemm(gemm_name, x, xs, K.conv_transpose_gemm_weights(w_cols, group), None, gemm_geom,
                             out_value=cols, epilogue=Epilogue(), lanes=low.lanes)
    low.add(make_gemm, node, out, key=low.pos[node])
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node) + "_col2im"
    b32 = None if bias is None else bias.astype(np.float32)
    cols_shape = low.shapes[cols]

    def make():
        from tvmlite.backends.tvm.kernels import conv as K

        return K.col2im(name, cols, cols_shape, b32, geom, out_value=final, epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)
