"""Convolution kernels: Conv, ConvTranspose, Col2Im, plus shared padding / im2col helpers.

Layout conventions (reused by pool.py, quant.py and the conv-lowering work):

* ``pads`` is ONNX's flat list ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``.
* :func:`resolve_pads` turns ``auto_pad`` + explicit pads into that explicit list.
* :func:`im2col` returns the column matrix of shape ``[N, C * prod(kernel), prod(out_spatial)]``:
  row ``c * prod(kernel) + k`` where ``k`` is the row-major index of the kernel tap
  (``k = kh_i * kw + kw_i`` in 2-D), column ``p`` the row-major index of the output position.
  This matches ``W.reshape(M, C * prod(kernel))`` so that ``Y[n] = W2 @ cols[n]``.

Hot paths stay in the input dtype (float32 in float32 out) and never loop in Python over pixels:
1x1 convs are a single matmul, general convs one strided im2col copy then BLAS GEMM, grouped convs a
batched matmul, depthwise convs a sum over kernel taps of strided slices times per-channel weights.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tvmlite import limits
from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.conv_shapes import (_auto_pad_str, _norm, conv_output_shape,  # noqa: F401
                                      kernel_geometry, resolve_pads)
from tvmlite.ops.registry import kernel

__all__ = [
    "resolve_pads",
    "conv_output_shape",
    "pad_spatial",
    "im2col",
    "col2im",
    "conv_nd",
]


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


# --------------------------------------------------------------------------------------------------
# Conv
# --------------------------------------------------------------------------------------------------

def _depthwise(x, w, b, pads, strides, dilations, out_shape, mult):
    """Depthwise conv: x [N, C, *spatial], w [C*mult, 1, *k] -> [N, C*mult, *out].

    A sum over kernel taps of per-channel weight times a shifted slice of the padded input. The
    padded input is split into stride phases (space-to-depth; a no-op for stride 1) and flattened,
    so every tap is one *contiguous* 1-D slice per channel (the output is computed on the phase
    grid, whose extra columns are cropped at the end): ~2 vectorised passes per tap. Used for large
    images with large kernels, where the im2col copy of :func:`_depthwise_fn` costs more.
    """
    N, C = x.shape[:2]
    n = len(out_shape)
    kshape = [int(k) for k in w.shape[2:]]
    dt = np.result_type(x.dtype, w.dtype)
    M = C * mult
    # pad so each spatial size is a multiple of its stride and covers every tap
    Q = []
    for i in range(n):
        need = (out_shape[i] - 1) * strides[i] + (kshape[i] - 1) * dilations[i] + 1
        padded = max(need, x.shape[2 + i] + pads[i] + pads[i + n])
        Q.append(-(-padded // strides[i]))
    ends = [Q[i] * strides[i] - x.shape[2 + i] - pads[i] for i in range(n)]
    xp = pad_spatial(x, pads[:n], ends)
    if xp.dtype != dt:
        xp = xp.astype(dt)
    # stride phases, each [N, C, prod(Q)] contiguous
    phases = {}

    def phase(ph):
        if ph not in phases:
            if all(s == 1 for s in strides):
                v = xp
            else:
                v = xp[(slice(None), slice(None)) + tuple(
                    slice(ph[i], None, strides[i]) for i in range(n))]
            phases[ph] = np.ascontiguousarray(v).reshape(N, C, 1, -1)
        return phases[ph]

    qstrides = [int(np.prod(Q[i + 1:], dtype=np.int64)) for i in range(n)]
    L = sum((out_shape[i] - 1) * qstrides[i] for i in range(n)) + 1
    Qtot = int(np.prod(Q, dtype=np.int64))
    wk = w.reshape((C, mult, -1)).astype(dt, copy=False)
    out = np.empty((N, C, mult, Qtot), dtype=dt)
    o = out[..., :L]
    tmp = np.empty((N, C, mult, L), dtype=dt)
    for t, tap in enumerate(np.ndindex(*kshape)):
        pos = [tap[i] * dilations[i] for i in range(n)]
        ph = tuple(p % s for p, s in zip(pos, strides))
        off = sum((pos[i] // strides[i]) * qstrides[i] for i in range(n))
        xs = phase(ph)[..., off:off + L]
        wt = wk[:, :, t].reshape(1, C, mult, 1)
        if t == 0:
            np.multiply(xs, wt, out=o)
        else:
            np.multiply(xs, wt, out=tmp)
            o += tmp
    full = out.reshape((N, M) + tuple(Q))
    view = full[(slice(None), slice(None)) + tuple(slice(0, out_shape[i]) for i in range(n))]
    y = np.empty((N, M) + tuple(out_shape), dtype=dt)
    if b is not None:
        np.add(view, b.reshape((1, M) + (1,) * n), out=y)
    else:
        np.copyto(y, view)
    return y


#: target size of one im2col chunk: keeps the column block cache-resident between the strided copy
#: and the GEMM that consumes it
IM2COL_CHUNK_BYTES = 1 << 19
#: but never fewer GEMM columns than this per chunk (GEMM efficiency)
IM2COL_MIN_COLS = 512
#: 1x1 convs: GEMM over blocks of about this many bytes of input + output columns
GEMM_CHUNK_BYTES = 1 << 20
#: depthwise convs: bytes of per-channel column matrices built at once
DW_CHUNK_BYTES = 1 << 20


#: convs with more multiply-adds than this split their chunks over CONV_THREADS threads (NumPy
#: releases the GIL in copies and BLAS calls; the plan keeps BLAS itself single-threaded)
PARALLEL_MIN_MACS = 1 << 24
CONV_THREADS = max(1, min(2, os.cpu_count() or 1))
_POOL = None


def _split_run(work, items: list, macs: int, make_buf) -> None:
    """``work(items[a:b], buf)`` over all items: on two threads (each with its own buffer from
    ``make_buf()``) for large convs, else in the calling thread."""
    global _POOL
    if CONV_THREADS < 2 or len(items) < 2 or macs < PARALLEL_MIN_MACS:
        work(items, make_buf())
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(CONV_THREADS - 1, thread_name_prefix="tvmlite-conv")
    h = len(items) // 2
    fut = _POOL.submit(work, items[h:], make_buf())
    try:
        work(items[:h], make_buf())
    finally:
        fut.result()


def _row_chunks(total_rows: int, rows: int):
    return [(r0, min(total_rows, r0 + rows)) for r0 in range(0, total_rows, max(1, rows))]


def _depthwise_fn(N, C, mult, w, b, p, kshape, strides, dilations, out_shape, dt):
    """Depthwise conv (w [C*mult, 1, *k]) as per-channel im2col + batched GEMV, in chunks of
    (channels, output rows) so each column block stays in cache: ``y[c] = w[c] @ cols[c]``."""
    n = len(kshape)
    K = int(np.prod(kshape, dtype=np.int64))
    inner = int(np.prod(out_shape[1:], dtype=np.int64))
    P = out_shape[0] * inner
    isz = dt.itemsize
    per_ch = K * P * isz
    if per_ch <= DW_CHUNK_BYTES:
        cb, rows = max(1, min(C, DW_CHUNK_BYTES // per_ch)), out_shape[0]
    else:
        cb, rows = 1, max(1, DW_CHUNK_BYTES // (K * inner * isz))
    chunks = [(c0, min(C, c0 + cb), r0, r1) for c0 in range(0, C, cb)
              for r0, r1 in _row_chunks(out_shape[0], rows)]
    w3 = np.ascontiguousarray(w.reshape(C, mult, K).astype(dt, copy=False))
    b3 = None if b is None else np.ascontiguousarray(b.reshape(C, mult, 1).astype(dt, copy=False))
    buf_size = max((c1 - c0) * K * (r1 - r0) * inner for c0, c1, r0, r1 in chunks)
    kidx = (slice(None),) * n
    rest = tuple(out_shape[1:])

    items = [(i,) + c for i in range(N) for c in chunks]
    macs = N * C * mult * K * P

    def run(x):
        if x.dtype != dt:
            x = x.astype(dt)
        xp = pad_spatial(x, p[:n], p[n:])
        win = _windows(xp, kshape, strides, dilations, out_shape)  # [N, C, *k, *out]
        y = np.empty((N, C, mult, P), dtype=dt)
        _split_run(lambda its, buf: work(its, buf, win, y), items, macs,
                   lambda: np.empty(buf_size, dtype=dt))
        return y.reshape((N, C * mult) + tuple(out_shape))

    def work(its, buf, win, y):
        for i, c0, c1, r0, r1 in its:
            nc = c1 - c0
            cols = buf[:nc * K * (r1 - r0) * inner]
            np.copyto(cols.reshape((nc,) + tuple(kshape) + (r1 - r0,) + rest),
                      win[(i, slice(c0, c1)) + kidx + (slice(r0, r1),)])
            yc = y[i, c0:c1, :, r0 * inner:r1 * inner]
            np.matmul(w3[c0:c1], cols.reshape(nc, K, -1), out=yc)
            if b3 is not None:
                yc += b3[c0:c1]

    return run


_SCRATCH = threading.local()
#: per-thread scratch buffers up to this size are kept between calls
SCRATCH_KEEP_BYTES = 1 << 22


def _scratch(name, n, dt):
    """A per-thread buffer ``name`` of ``n`` elements of ``dt``, shared by all convs of the thread
    (each is done with it before the next one runs), so small convs do not allocate (and fault
    in) fresh memory per call; buffers above SCRATCH_KEEP_BYTES are not kept."""
    nbytes = n * dt.itemsize
    if nbytes > SCRATCH_KEEP_BYTES:
        return np.empty(n, dtype=dt)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[name] = np.empty(max(nbytes, 1 << 16), dtype=np.uint8)
    return buf[:nbytes].view(dt)


def _depthwise_flat_fn(N, C, mult, w, b, p, kshape, dilations, out_shape, dt):
    """Stride-1 depthwise conv (w [C*mult, 1, *k]) as per-channel im2col + batched GEMV on the
    *flattened* padded image: with row-major flattening every kernel tap of every output position
    is one fixed offset, so a channel's column matrix is K contiguous 1-D slices (one long copy
    each, instead of one short row per output row) and the GEMV computes the output on the padded
    grid (the few columns past each output row are cropped in the pass that adds the bias). One
    image at a time, in per-thread scratch buffers."""
    n = len(kshape)
    K = int(np.prod(kshape, dtype=np.int64))
    M = C * mult
    padded = [out_shape[i] + (kshape[i] - 1) * dilations[i] for i in range(n)]
    qs = [int(np.prod(padded[i + 1:], dtype=np.int64)) for i in range(n)]
    Qtot = int(np.prod(padded, dtype=np.int64))
    tail = sum((out_shape[i] - 1) * qs[i] for i in range(1, n)) + 1  # extent of one output row
    isz = dt.itemsize
    row_bytes = K * qs[0] * isz
    if row_bytes * out_shape[0] <= DW_CHUNK_BYTES:
        cb, rows = max(1, min(C, DW_CHUNK_BYTES // (row_bytes * out_shape[0]))), out_shape[0]
    else:
        cb, rows = 1, max(1, DW_CHUNK_BYTES // row_bytes)
    chunks = []
    for c0 in range(0, C, cb):
        for r0, r1 in _row_chunks(out_shape[0], rows):
            chunks.append((c0, min(C, c0 + cb), r0 * qs[0], (r1 - r0 - 1) * qs[0] + tail))
    w3 = np.ascontiguousarray(w.reshape(C, mult, K).astype(dt, copy=False))
    bb = None if b is None else b.reshape((M,) + (1,) * n).astype(dt, copy=False)
    tap_strides = tuple(dilations[i] * qs[i] * isz for i in range(n))
    buf_size = max((c1 - c0) * K * lc for c0, c1, _, lc in chunks)
    in_sp = [padded[i] - p[i] - p[i + n] for i in range(n)]
    interior = (slice(None),) + tuple(slice(p[i], p[i] + in_sp[i]) for i in range(n))
    # the border of the padded image, as slices (zeroed per call: the scratch buffer is shared)
    border = []
    for i in range(n):
        lead = (slice(None),) + tuple(slice(p[j], p[j] + in_sp[j]) if j < i else slice(None)
                                      for j in range(i))
        if p[i]:
            border.append(lead + (slice(0, p[i]),))
        if p[i + n]:
            border.append(lead + (slice(p[i] + in_sp[i], None),))
    crop = (slice(None),) + tuple(slice(0, o) for o in out_shape)
    grid_shape = (M, out_shape[0]) + tuple(padded[1:])

    def run(x):
        y = np.empty((N, M) + tuple(out_shape), dtype=dt)
        xp = _scratch("dw_pad", C * Qtot, dt).reshape((C,) + tuple(padded))
        grid = _scratch("dw_grid", M * out_shape[0] * qs[0], dt)
        buf = _scratch("dw_cols", buf_size, dt)
        g3 = grid.reshape(C, mult, -1)
        xf = xp.reshape(C, Qtot)
        cs = xf.strides[0]
        for sl in border:
            xp[sl] = 0
        view = grid.reshape(grid_shape)[crop]
        for i in range(N):
            xp[interior] = x[i]
            for c0, c1, start, lc in chunks:
                nc = c1 - c0
                src = as_strided(xf[c0, start:], shape=(nc,) + tuple(kshape) + (lc,),
                                 strides=(cs,) + tap_strides + (isz,), writeable=False)
                cols = buf[:nc * K * lc]
                np.copyto(cols.reshape(src.shape), src)
                np.matmul(w3[c0:c1], cols.reshape(nc, K, lc), out=g3[c0:c1, :, start:start + lc])
            if bb is None:
                np.copyto(y[i], view)
            else:
                np.add(view, bb, out=y[i])
        return y

    return run


def _conv1x1_fn(N, C, M, w, b, strides, out_shape, dt):
    """1x1 conv without padding: one GEMM per image over cache-sized blocks of columns (bias
    added while each block is hot); a strided conv first takes the strided slice."""
    P = int(np.prod(out_shape, dtype=np.int64))
    w2 = np.ascontiguousarray(w.reshape(M, C).astype(dt, copy=False))
    bcol = None if b is None else b.reshape(M, 1).astype(dt, copy=False)
    step = max(256, GEMM_CHUNK_BYTES // ((C + M) * dt.itemsize))
    blocks = [(p0, min(P, p0 + step)) for p0 in range(0, P, step)]
    strided = any(s != 1 for s in strides)
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)

    items = [(i, p0, p1) for i in range(N) for p0, p1 in blocks]
    macs = N * M * C * P
    yshape = (N, M) + tuple(out_shape)

    def run(x):
        if strided:
            x = np.ascontiguousarray(x[sl], dtype=dt)
        elif x.dtype != dt:
            x = x.astype(dt)
        xs = x.reshape(N, C, P)
        if len(blocks) == 1 and (N == 1 or macs < PARALLEL_MIN_MACS):
            # small (SE blocks, low resolution): one batched GEMM, no chunking or threads
            y = np.matmul(w2, xs)
            if bcol is not None:
                y += bcol
            return y.reshape(yshape)
        y = np.empty((N, M, P), dtype=dt)
        _split_run(lambda its, _: work(its, xs, y), items, macs, lambda: None)
        return y.reshape(yshape)

    def work(its, xs, y):
        for i, p0, p1 in its:
            yc = y[i, :, p0:p1]
            np.matmul(w2, xs[i, :, p0:p1], out=yc)
            if bcol is not None:
                yc += bcol

    return run


def _dense_fn(N, C, M, w, b, p, kshape, strides, dilations, out_shape, dt):
    """Dense conv as im2col + GEMM, in chunks of output rows: each chunk's columns are one strided
    copy from the padded input into a reused buffer, then one BLAS GEMM written straight into the
    output (bias added while the chunk is hot)."""
    n = len(kshape)
    K = int(np.prod(kshape, dtype=np.int64))
    CK = C * K
    inner = int(np.prod(out_shape[1:], dtype=np.int64))
    P = out_shape[0] * inner
    rows = IM2COL_CHUNK_BYTES // max(1, CK * inner * dt.itemsize)
    rows = max(rows, -(-IM2COL_MIN_COLS // max(1, inner)), 1)
    rows = min(rows, out_shape[0])
    chunks = _row_chunks(out_shape[0], rows)
    w2 = np.ascontiguousarray(w.reshape(M, CK).astype(dt, copy=False))
    bcol = None if b is None else b.reshape(M, 1).astype(dt, copy=False)
    kidx = (slice(None),) * (1 + n)
    rest = tuple(out_shape[1:])

    def run(x):
        xp = pad_spatial(x, p[:n], p[n:])
        win = _windows(xp, kshape, strides, dilations, out_shape)  # [N, C, *k, *out]
        y = np.empty((N, M, P), dtype=dt)
        _split_run(lambda its, buf: work(its, buf, win, y), items, macs,
                   lambda: np.empty(CK * rows * inner, dtype=dt))
        return y.reshape((N, M) + tuple(out_shape))

    items = [(i, r0, r1) for i in range(N) for r0, r1 in chunks]
    macs = N * M * CK * P

    def work(its, buf, win, y):
        for i, r0, r1 in its:
            cols = buf[:CK * (r1 - r0) * inner]  # contiguous prefix of the reused buffer
            np.copyto(cols.reshape((C,) + tuple(kshape) + (r1 - r0,) + rest),
                      win[(i,) + kidx + (slice(r0, r1),)])
            yc = y[i, :, r0 * inner:r1 * inner]
            np.matmul(w2, cols.reshape(CK, -1), out=yc)
            if bcol is not None:
                yc += bcol

    return run


def _conv_fn(xshape, xdtype, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1,
             kernel_shape=None, pads=None, strides=None):
    """``x -> Conv(x, w, b)`` for inputs of exactly ``xshape`` / ``xdtype``: every choice and
    weight layout that depends only on shapes and weights is made here, once (the Conv kernel's
    ``prepare`` caches these per input shape when the weights are constants)."""
    xdtype = np.dtype(xdtype)
    w = np.asarray(w)
    if xdtype.itemsize < 4 or w.dtype.itemsize < 4:
        # half precision: accumulate in float32, round once at the end
        odt = np.result_type(xdtype, w.dtype)
        f32 = _conv_fn(xshape, np.float32, w.astype(np.float32),
                       None if b is None else np.asarray(b).astype(np.float32), auto_pad=auto_pad,
                       dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                       strides=strides)
        return lambda x: f32(x.astype(np.float32)).astype(odt)
    if len(xshape) < 3:
        raise UnsupportedError(f"Conv input must have rank >= 3, got {len(xshape)}")
    n = len(xshape) - 2
    N, C = (int(v) for v in xshape[:2])
    M = w.shape[0]
    group = int(group)
    kshape, strides, dilations = kernel_geometry(w.shape, n, kernel_shape, strides, dilations)
    p = resolve_pads(auto_pad, xshape[2:], kshape, strides, dilations, pads)
    out_shape = conv_output_shape(xshape[2:], kshape, strides, dilations, p)
    if min(out_shape) <= 0:  # onnxruntime refuses it too
        raise ShapeError(f"Conv output spatial shape {out_shape} is empty (input {list(xshape)}, "
                         f"kernel {kshape}, pads {p})")
    dt = np.result_type(xdtype, w.dtype)
    check_conv_sizes(xshape, w.shape[0], kshape, p, out_shape, dt, "Conv")
    if C != w.shape[1] * group or M % group:
        raise UnsupportedError(
            f"Conv channels do not fit: input C={C}, weight {list(w.shape)}, group={group}")
    K = int(np.prod(kshape, dtype=np.int64))
    P = int(np.prod(out_shape, dtype=np.int64))
    if b is not None:
        b = np.asarray(b).astype(dt, copy=False)

    if group > 1 and group == C and w.shape[1] == 1 and K > 1:
        # depthwise (with optional channel multiplier): large kernels over large images go tap by
        # tap (the K-fold im2col copy costs more there), everything else per-channel GEMV
        if K >= 16 and P >= 4096:
            return lambda x: _depthwise(x, w, b, p, strides, dilations, out_shape, M // C)
        # stride 1, one image (measured: with a batch the per-image loop gains nothing over the
        # batched path below)
        if N == 1 and all(s == 1 for s in strides) and all(v >= 0 for v in p) and xdtype == dt:
            return _depthwise_flat_fn(N, C, M // C, w, b, p, kshape, dilations, out_shape, dt)
        return _depthwise_fn(N, C, M // C, w, b, p, kshape, strides, dilations, out_shape, dt)
    if K == 1 and not any(p) and group == 1:
        return _conv1x1_fn(N, C, M, w, b, strides, out_shape, dt)
    if group == 1 and dt == xdtype == w.dtype:
        return _dense_fn(N, C, M, w, b, p, kshape, strides, dilations, out_shape, dt)

    def run(x):
        cols = im2col(x, kshape, strides, dilations, p)  # [N, C*K, P]
        if group == 1:
            y = np.matmul(w.reshape(M, C * K), cols)
        else:
            Cg, Mg = C // group, M // group
            y = np.matmul(w.reshape(group, Mg, Cg * K), cols.reshape(N, group, Cg * K, P))
        if y.dtype != dt:
            y = y.astype(dt)
        y = y.reshape((N, M) + tuple(out_shape))
        if b is not None:
            y += b.reshape((1, M) + (1,) * n)
        return y

    return run


def conv_nd(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
            pads=None, strides=None):
    """Conv over any spatial rank; see module docstring for the strategy."""
    x = np.asarray(x)
    return _conv_fn(x.shape, x.dtype, w, b, auto_pad=auto_pad, dilations=dilations, group=group,
                    kernel_shape=kernel_shape, pads=pads, strides=strides)(x)


def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
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

def conv_transpose_pads(auto_pad, in_shape, kernel, strides, dilations, pads, output_padding,
                        output_shape):
    """(explicit pads, output spatial shape) for ConvTranspose, per the ONNX spec."""
    n = len(in_shape)
    auto_pad = _auto_pad_str(auto_pad)
    full = [strides[i] * (int(in_shape[i]) - 1) + output_padding[i]
            + (kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    if output_shape is not None and len(output_shape) > 0:
        out = [int(v) for v in output_shape][-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [int(in_shape[i]) * strides[i] for i in range(n)]
    else:
        if auto_pad not in ("NOTSET", "VALID"):
            raise UnsupportedError(f"auto_pad={auto_pad!r} is not supported")
        p = [0] * (2 * n) if auto_pad == "VALID" else _norm(pads, 2 * n, 0)
        return p, [full[i] - p[i] - p[i + n] for i in range(n)]
    begins, ends = [], []
    for i in range(n):
        total = full[i] - out[i]
        if auto_pad == "SAME_UPPER":
            begins.append(total // 2)
            ends.append(total - total // 2)
        else:
            begins.append(total - total // 2)
            ends.append(total // 2)
    return begins + ends, out


@kernel("ConvTranspose", since=1, fresh_output=True)
def conv_transpose(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    x = np.asarray(x)
    w = np.asarray(w)
    if x.dtype.itemsize < 4 or w.dtype.itemsize < 4:
        odt = np.result_type(x.dtype, w.dtype)
        y = conv_transpose(x.astype(np.float32), w.astype(np.float32),
                           None if b is None else np.asarray(b).astype(np.float32),
                           auto_pad=auto_pad, dilations=dilations, group=group,
                           kernel_shape=kernel_shape, output_padding=output_padding,
                           output_shape=output_shape, pads=pads, strides=strides)
        return y.astype(odt)
    n = x.ndim - 2
    N, C = x.shape[:2]
    group = int(group)
    kshape, strides, dilations = kernel_geometry(w.shape, n, kernel_shape, strides, dilations)
    output_padding = _norm(output_padding, n, 0)
    p, out_shape = conv_transpose_pads(auto_pad, x.shape[2:], kshape, strides, dilations, pads,
                                       output_padding, output_shape)
    if min(out_shape, default=1) <= 0:
        raise ShapeError(f"ConvTranspose output spatial shape {list(out_shape)} is empty")
    limits.check_tensor([x.shape[0], w.shape[1] * int(group)] + list(out_shape), x.dtype,
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
