"""Convolution kernels: Conv, ConvTranspose, Col2Im.

The geometry (kernel shape, strides, dilations, pads with ``auto_pad`` resolved, output shape,
group) is a :class:`tvmlite.ops.geometry.WindowGeometry`, built once per node and input shape;
the Conv strategies are in :mod:`tvmlite.ops.conv_paths`, the window layout helpers (im2col,
padding) in :mod:`tvmlite.ops.im2col`. Hot paths stay in the input dtype (float32 in float32 out)
and never loop in Python over pixels.

The names other packages import from here (``resolve_pads``, ``im2col``, ...) are re-exported.
"""
from __future__ import annotations

import numpy as np

from tvmlite import limits
from tvmlite.errors import UnsupportedError
from tvmlite.ops.conv_paths import (_conv1x1_fn, _dense_fn, _depthwise, _depthwise_fn,  # noqa: F401
                                    _depthwise_flat_fn)
from tvmlite.ops.conv_shapes import (_norm, conv_output_shape, conv_transpose_pads,  # noqa: F401
                                     kernel_geometry, resolve_pads)
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.im2col import check_conv_sizes, col2im, im2col, pad_spatial  # noqa: F401
from tvmlite.ops.registry import kernel

__all__ = [
    "resolve_pads",
    "conv_output_shape",
    "conv_transpose_pads",
    "kernel_geometry",
    "pad_spatial",
    "im2col",
    "col2im",
    "conv_nd",
]


def _conv_fn(xshape, xdtype, w, b=None, **attrs):
    """``x -> Conv(x, w, b)`` for inputs of exactly ``xshape`` / ``xdtype``: every choice and
    weight layout that depends only on shapes and weights is made here, once (the Conv kernel's
    ``prepare`` caches these per input shape when the weights are constants). ``attrs`` are the
    node's Conv attributes; absent ones (or None) take ONNX's defaults in
    :meth:`WindowGeometry.conv`, the one place that knows them."""
    xdtype = np.dtype(xdtype)
    w = np.asarray(w)
    if xdtype.itemsize < 4 or w.dtype.itemsize < 4:
        # half precision: accumulate in float32, round once at the end
        odt = np.result_type(xdtype, w.dtype)
        f32 = _conv_fn(xshape, np.float32, w.astype(np.float32),
                       None if b is None else np.asarray(b).astype(np.float32), **attrs)
        return lambda x: f32(x.astype(np.float32)).astype(odt)
    if len(xshape) < 3:
        raise UnsupportedError(f"Conv input must have rank >= 3, got {len(xshape)}")
    g = WindowGeometry.conv(attrs, xshape, w.shape)  # EmptyWindowError, as onnxruntime refuses it
    n = g.n
    N, C = (int(v) for v in xshape[:2])
    M = w.shape[0]
    group = g.group
    dt = np.result_type(xdtype, w.dtype)
    check_conv_sizes(xshape, M, g.kernel, g.pads, g.out_spatial, dt, "Conv")
    if C != w.shape[1] * group or M % group:
        raise UnsupportedError(
            f"Conv channels do not fit: input C={C}, weight {list(w.shape)}, group={group}")
    K = int(np.prod(g.kernel, dtype=np.int64))
    P = int(np.prod(g.out_spatial, dtype=np.int64))
    if b is not None:
        b = np.asarray(b).astype(dt, copy=False)

    if group > 1 and group == C and w.shape[1] == 1 and K > 1:
        # depthwise (with optional channel multiplier): large kernels over large images go tap by
        # tap (the K-fold im2col copy costs more there), everything else per-channel GEMV
        if K >= 16 and P >= 4096:
            return lambda x: _depthwise(x, w, b, g, M // C)
        # stride 1, one image (measured: with a batch the per-image loop gains nothing over the
        # batched path below)
        if N == 1 and all(s == 1 for s in g.strides) and all(v >= 0 for v in g.pads) and xdtype == dt:
            return _depthwise_flat_fn(N, C, M // C, w, b, g, dt)
        return _depthwise_fn(N, C, M // C, w, b, g, dt)
    if K == 1 and not g.padded and group == 1:
        return _conv1x1_fn(N, C, M, w, b, g, dt)
    if group == 1 and dt == xdtype == w.dtype:
        return _dense_fn(N, C, M, w, b, g, dt)

    def run(x):
        cols = im2col(x, g.kernel, g.strides, g.dilations, g.pads)  # [N, C*K, P]
        if group == 1:
            y = np.matmul(w.reshape(M, C * K), cols)
        else:
            Cg, Mg = C // group, M // group
            y = np.matmul(w.reshape(group, Mg, Cg * K), cols.reshape(N, group, Cg * K, P))
        if y.dtype != dt:
            y = y.astype(dt)
        y = y.reshape((N, M) + g.out_spatial)
        if b is not None:
            y += b.reshape((1, M) + (1,) * n)
        return y

    return run


def conv_nd(x, w, b=None, **attrs):
    """Conv over any spatial rank (``attrs``: the Conv attributes); see :func:`_conv_fn`."""
    x = np.asarray(x)
    return _conv_fn(x.shape, x.dtype, w, b, **attrs)(x)


# the attributes' defaults are WindowGeometry.conv's: None here means absent
def conv(x, w, b=None, *, auto_pad=None, dilations=None, group=None, kernel_shape=None,
         pads=None, strides=None):
    return conv_nd(x, w, b, auto_pad=auto_pad, dilations=dilations, group=group,
                   kernel_shape=kernel_shape, pads=pads, strides=strides)


def _conv_prepare(consts, attrs):
    """Constant weights (and bias): weight layouts and per-input-shape strategy built once."""
    w = consts[1] if len(consts) > 1 else None
    if w is None or consts[0] is not None:
        return None
    b = consts[2] if len(consts) > 2 else None
    cache: dict = {}

    def run(x, w_, b_=None):
        if b_ is not b:  # a bias computed at run time
            return conv(x, w_, b_, **attrs)
        x = np.asarray(x)
        key = (x.shape, x.dtype)
        f = cache.get(key)
        if f is None:
            f = cache[key] = _conv_fn(x.shape, x.dtype, w, b, **attrs)
        return f(x)

    return run


# every path (prepared or not) returns a new array: the plan may write into it
kernel("Conv", since=1, prepare=_conv_prepare, fresh_output=True)(conv)


# --------------------------------------------------------------------------------------------------
# ConvTranspose
# --------------------------------------------------------------------------------------------------

@kernel("ConvTranspose", since=1, fresh_output=True)
def conv_transpose(x, w, b=None, *, auto_pad=None, dilations=None, group=None, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    """(the attributes' defaults are :meth:`WindowGeometry.conv_transpose`'s: None means absent)"""
    x = np.asarray(x)
    w = np.asarray(w)
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                 output_padding=output_padding, output_shape=output_shape, pads=pads, strides=strides)
    if x.dtype.itemsize < 4 or w.dtype.itemsize < 4:
        odt = np.result_type(x.dtype, w.dtype)
        y = conv_transpose(x.astype(np.float32), w.astype(np.float32),
                           None if b is None else np.asarray(b).astype(np.float32), **attrs)
        return y.astype(odt)
    g = WindowGeometry.conv_transpose(attrs, x.shape, w.shape)  # EmptyWindowError when empty
    n = g.n
    N, C = x.shape[:2]
    group, kshape, strides, dilations = g.group, g.kernel, g.strides, g.dilations
    p, out_shape = g.pads, g.out_spatial
    limits.check_tensor([x.shape[0], w.shape[1] * group] + list(out_shape), x.dtype,
                        "ConvTranspose output")
    dt = np.result_type(x.dtype, w.dtype)
    Mg = w.shape[1]
    M = Mg * group
    Cg = C // group
    if C != w.shape[0] or C % group:
        raise UnsupportedError(
            f"ConvTranspose channels do not fit: input C={C}, weight {list(w.shape)}, group={group}")
    K = int(np.prod(kshape, dtype=np.int64))
    HW = int(np.prod(x.shape[2:], dtype=np.int64))
    # cols[n, g, Mg*K, HW] = W[g]^T @ x[n, g]
    wg = w.reshape(group, Cg, Mg * K).transpose(0, 2, 1)
    xg = x.reshape(N, group, Cg, HW)
    cols = np.matmul(wg, xg).astype(dt, copy=False).reshape(N, M * K, HW)
    # scatter-add into the full (uncropped) output, then crop the pads
    full = [strides[i] * (x.shape[2 + i] - 1) + (kshape[i] - 1) * dilations[i] + 1 for i in range(n)]
    if (all(strides[i] == kshape[i] and dilations[i] == 1 for i in range(n))
            and all(0 <= p[i] and p[i] + out_shape[i] <= full[i] for i in range(n))):
        # taps do not overlap (stride = kernel, e.g. 2x2 stride-2 upsampling): each tap's plane
        # of cols goes (plus the bias) to its strided slots of the output, one pass per tap
        c2 = cols.reshape((N, M) + tuple(kshape) + tuple(x.shape[2:]))
        y = np.empty((N, M) + tuple(full), dtype=dt)
        yv = y.reshape((N, M) + tuple(a for i in range(n) for a in (x.shape[2 + i], kshape[i])))
        bb = None if b is None else np.asarray(b).astype(dt, copy=False).reshape((1, M) + (1,) * n)
        for tap in np.ndindex(*kshape):
            dst = yv[(slice(None), slice(None)) + tuple(a for t in tap for a in (slice(None), t))]
            src = c2[(slice(None), slice(None)) + tap]
            if bb is None:
                np.copyto(dst, src)
            else:
                np.add(src, bb, out=dst)
        if any(p[i] or p[i] + out_shape[i] != full[i] for i in range(n)):
            crop = (slice(None), slice(None)) + tuple(
                slice(p[i], p[i] + out_shape[i]) for i in range(n))
            y = np.ascontiguousarray(y[crop])
        return y
    lo = [min(0, p[i]) for i in range(n)]  # negative pads: output extends before the buffer
    size = [max(full[i], p[i] + out_shape[i]) - lo[i] for i in range(n)]
    buf = np.zeros((N, M) + tuple(size), dtype=dt)
    c6 = cols.reshape((N, M) + tuple(kshape) + tuple(x.shape[2:]))
    for tap in np.ndindex(*kshape):
        sl = (slice(None), slice(None)) + tuple(
            slice(tap[i] * dilations[i] - lo[i],
                  tap[i] * dilations[i] - lo[i] + (x.shape[2 + i] - 1) * strides[i] + 1, strides[i])
            for i in range(n))
        buf[sl] += c6[(slice(None), slice(None)) + tap]
    crop = (slice(None), slice(None)) + tuple(
        slice(p[i] - lo[i], p[i] - lo[i] + out_shape[i]) for i in range(n))
    y = np.ascontiguousarray(buf[crop])
    if b is not None:
        y += np.asarray(b).astype(dt, copy=False).reshape((1, M) + (1,) * n)
    return y


# --------------------------------------------------------------------------------------------------
# Col2Im
# --------------------------------------------------------------------------------------------------

@kernel("Col2Im", since=18)
def col2im_op(x, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    x = np.asarray(x)
    image_shape = [int(v) for v in np.asarray(image_shape).reshape(-1)]
    block_shape = [int(v) for v in np.asarray(block_shape).reshape(-1)]
    n = len(image_shape)
    strides = _norm(strides, n, 1)
    dilations = _norm(dilations, n, 1)
    pads = _norm(pads, 2 * n, 0)
    in_spatial = conv_output_shape(image_shape, block_shape, strides, dilations, pads)
    L = int(np.prod(in_spatial, dtype=np.int64))
    if x.shape[2] != L:
        raise UnsupportedError(f"Col2Im: input has {x.shape[2]} blocks, expected {L}")
    return np.ascontiguousarray(
        col2im(x, image_shape, block_shape, strides, dilations, pads, in_spatial))
