"""Window layout helpers shared by the convolution and pooling kernels (and the conv-lowering
passes): padding, strided window views, im2col / col2im, and the size check made before a window
op allocates.

* ``pads`` is ONNX's flat list ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``
  (:func:`tvmlite.ops.conv_shapes.resolve_pads` turns ``auto_pad`` + explicit pads into it).
* :func:`im2col` returns the column matrix of shape ``[N, C * prod(kernel), prod(out_spatial)]``:
  row ``c * prod(kernel) + k`` where ``k`` is the row-major index of the kernel tap
  (``k = kh_i * kw + kw_i`` in 2-D), column ``p`` the row-major index of the output position.
  This matches ``W.reshape(M, C * prod(kernel))`` so that ``Y[n] = W2 @ cols[n]``.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tvmlite import limits
from tvmlite.ops.conv_shapes import _norm, conv_output_shape


def check_conv_sizes(xshape, m, kshape, pads, out_shape, dtype, what: str) -> None:
    """LimitError before allocating a window op's padded input or output (pads of 2**40 made a
    Conv allocate until killed). The patch matrix is not checked: the dense path builds it in
    row chunks."""
    n = len(kshape)
    N, C = int(xshape[0]), int(xshape[1])
    padded = [int(xshape[2 + i]) + max(pads[i], 0) + max(pads[i + n], 0) for i in range(n)]
    limits.check_tensor([N, C] + padded, dtype, f"{what} padded input")
    limits.check_tensor([N, int(m)] + list(out_shape), dtype, f"{what} output")


def pad_spatial(x: np.ndarray, begins, ends, value=0) -> np.ndarray:
    """Pad the spatial axes (2..) of ``x`` by ``begins``/``ends`` (which may be negative = crop)."""
    n = x.ndim - 2
    if not any(begins) and not any(ends):
        return x
    # crop negative pads first
    sl = [slice(None), slice(None)]
    for i in range(n):
        b = -begins[i] if begins[i] < 0 else 0
        e = x.shape[2 + i] + ends[i] if ends[i] < 0 else x.shape[2 + i]
        sl.append(slice(b, e))
    x = x[tuple(sl)]
    begins = [max(0, b) for b in begins]
    ends = [max(0, e) for e in ends]
    if not any(begins) and not any(ends):
        return x
    shape = x.shape[:2] + tuple(x.shape[2 + i] + begins[i] + ends[i] for i in range(n))
    if value == 0:
        out = np.zeros(shape, dtype=x.dtype)
    else:
        out = np.full(shape, value, dtype=x.dtype)
    inner = (slice(None), slice(None)) + tuple(
        slice(begins[i], begins[i] + x.shape[2 + i]) for i in range(n))
    out[inner] = x
    return out


def _windows(xp: np.ndarray, kernel, strides, dilations, out_shape) -> np.ndarray:
    """Strided view ``[N, C, *kernel, *out_shape]`` of the padded input (no copy)."""
    n = len(kernel)
    st = xp.strides
    shape = xp.shape[:2] + tuple(kernel) + tuple(out_shape)
    strides_ = st[:2] + tuple(st[2 + i] * dilations[i] for i in range(n)) + tuple(
        st[2 + i] * strides[i] for i in range(n))
    return as_strided(xp, shape=shape, strides=strides_, writeable=False)


def im2col(x: np.ndarray, kernel_shape, strides=None, dilations=None, pads=None,
           pad_value=0) -> np.ndarray:
    """Column matrix ``[N, C * prod(kernel_shape), prod(out_spatial)]`` of ``x`` ([N, C, *spatial]).

    Row index ``c * prod(kernel) + tap`` (tap = row-major index in the kernel window), column index
    the row-major output position; the output spatial shape is
    ``conv_output_shape(x.shape[2:], kernel_shape, strides, dilations, pads)``. ``pads`` are explicit
    ``[begins..., ends...]`` (use :func:`resolve_pads` for auto_pad). Built as one strided copy.
    """
    n = x.ndim - 2
    kernel_shape = [int(k) for k in kernel_shape]
    strides = _norm(strides, n, 1)
    dilations = _norm(dilations, n, 1)
    pads = _norm(pads, 2 * n, 0)
    out_shape = conv_output_shape(x.shape[2:], kernel_shape, strides, dilations, pads)
    xp = pad_spatial(x, pads[:n], pads[n:], pad_value)
    win = _windows(xp, kernel_shape, strides, dilations, out_shape)
    N, C = x.shape[:2]
    K = int(np.prod(kernel_shape, dtype=np.int64))
    P = int(np.prod(out_shape, dtype=np.int64))
    cols = np.empty(win.shape, dtype=x.dtype)
    np.copyto(cols, win)
    return cols.reshape(N, C * K, P)


def col2im(cols: np.ndarray, out_spatial, kernel_shape, strides=None, dilations=None,
           pads=None, in_spatial=None) -> np.ndarray:
    """Inverse of :func:`im2col` with summation: ``cols`` [N, C*prod(kernel), prod(in_spatial)]
    scattered-added into an image [N, C, *out_spatial] (``in_spatial`` = the column grid; derived
    from out_spatial when omitted). Pads are cropped from the padded image."""
    n = len(kernel_shape)
    kernel_shape = [int(k) for k in kernel_shape]
    strides = _norm(strides, n, 1)
    dilations = _norm(dilations, n, 1)
    pads = _norm(pads, 2 * n, 0)
    if in_spatial is None:
        in_spatial = conv_output_shape(out_spatial, kernel_shape, strides, dilations, pads)
    N = cols.shape[0]
    K = int(np.prod(kernel_shape, dtype=np.int64))
    C = cols.shape[1] // K
    # padded buffer large enough for every tap
    full = [max(int(out_spatial[i]) + pads[i] + pads[i + n],
                (in_spatial[i] - 1) * strides[i] + (kernel_shape[i] - 1) * dilations[i] + 1)
            for i in range(n)]
    buf = np.zeros((N, C) + tuple(full), dtype=cols.dtype)
    c6 = cols.reshape((N, C) + tuple(kernel_shape) + tuple(in_spatial))
    for tap in np.ndindex(*kernel_shape):
        sl = (slice(None), slice(None)) + tuple(
            slice(tap[i] * dilations[i], tap[i] * dilations[i] + (in_spatial[i] - 1) * strides[i] + 1,
                  strides[i]) for i in range(n))
        buf[sl] += c6[(slice(None), slice(None)) + tap]
    crop = (slice(None), slice(None)) + tuple(
        slice(pads[i], pads[i] + int(out_spatial[i])) for i in range(n))
    return buf[crop]
