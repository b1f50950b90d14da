"""The NumPy Conv's strategies, each built once per (input shape, weights) by
:func:`tvmlite.ops.conv._conv_fn` and called per run: 1x1 convs are a single GEMM, general convs
one strided im2col copy per chunk of output rows then BLAS GEMM, depthwise convs a per-channel
GEMV (or, for large kernels over large images, a sum over taps of contiguous slices). Every
function here takes the resolved :class:`tvmlite.ops.geometry.WindowGeometry`; none loops in
Python over pixels.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tvmlite.ops.im2col import _windows, pad_spatial


def _depthwise(x, w, b, g, mult):
    """Depthwise conv: x [N, C, *spatial], w [C*mult, 1, *k] -> [N, C*mult, *out].

    A sum over kernel taps of per-channel weight times a shifted slice of the padded input. The
    padded input is split into stride phases (space-to-depth; a no-op for stride 1) and flattened,
    so every tap is one *contiguous* 1-D slice per channel (the output is computed on the phase
    grid, whose extra columns are cropped at the end): ~2 vectorised passes per tap. Used for large
    images with large kernels, where the im2col copy of :func:`_depthwise_fn` costs more.
    """
    pads, strides, dilations, out_shape = g.pads, g.strides, g.dilations, g.out_spatial
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


def _conv_pool():
    """The helper threads of `_split_run`, started on first use with SIGINT and SIGTERM blocked.
    A thread that ThreadPoolExecutor starts inside ``submit`` is registered for its exit-time stop
    only after it has started; the CLI's signal handler raising KeyboardInterrupt in between (a
    Ctrl-C as the first large conv ran) left a thread nobody stopped, and the interpreter waited
    for it at exit forever (`tvmlite run` printed "interrupted" and hung: 2 runs of ~30 of the
    hardening test). Blocked, the signal waits until the threads are registered; the helpers keep
    it blocked (Python runs handlers in the main thread only)."""
    global _POOL
    if _POOL is None:
        import signal
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(CONV_THREADS - 1, thread_name_prefix="tvmlite-conv")
        mask = getattr(signal, "pthread_sigmask", None)
        old = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if mask else None
        try:
            for f in [pool.submit(int) for _ in range(CONV_THREADS - 1)]:
                f.result()
        finally:
            if mask:
                mask(signal.SIG_SETMASK, old)
        _POOL = pool
    return _POOL


def _split_run(work, items: list, macs: int, make_buf) -> None:
    """``work(items[a:b], buf)`` over all items: on two threads (each with its own buffer from
    ``make_buf()``) for large convs, else in the calling thread."""
    if CONV_THREADS < 2 or len(items) < 2 or macs < PARALLEL_MIN_MACS:
        work(items, make_buf())
        return
    pool = _conv_pool()
    h = len(items) // 2
    fut = pool.submit(work, items[h:], make_buf())
    try:
        work(items[:h], make_buf())
    finally:
        fut.result()


def _row_chunks(total_rows: int, rows: int):
    return [(r0, min(total_rows, r0 + rows)) for r0 in range(0, total_rows, max(1, rows))]


def _depthwise_fn(N, C, mult, w, b, g, dt):
    """Depthwise conv (w [C*mult, 1, *k]) as per-channel im2col + batched GEMV, in chunks of
    (channels, output rows) so each column block stays in cache: ``y[c] = w[c] @ cols[c]``."""
    p, kshape, strides, dilations, out_shape = g.pads, g.kernel, g.strides, g.dilations, g.out_spatial
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


def _depthwise_flat_fn(N, C, mult, w, b, g, dt):
    """Stride-1 depthwise conv (w [C*mult, 1, *k]) as per-channel im2col + batched GEMV on the
    *flattened* padded image: with row-major flattening every kernel tap of every output position
    is one fixed offset, so a channel's column matrix is K contiguous 1-D slices (one long copy
    each, instead of one short row per output row) and the GEMV computes the output on the padded
    grid (the few columns past each output row are cropped in the pass that adds the bias). One
    image at a time, in per-thread scratch buffers."""
    p, kshape, dilations, out_shape = g.pads, g.kernel, g.dilations, g.out_spatial
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


def _conv1x1_fn(N, C, M, w, b, g, dt):
    """1x1 conv without padding: one GEMM per image over cache-sized blocks of columns (bias
    added while each block is hot); a strided conv first takes the strided slice."""
    strides, out_shape = g.strides, g.out_spatial
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


def _dense_fn(N, C, M, w, b, g, dt):
    """Dense conv as im2col + GEMM, in chunks of output rows: each chunk's columns are one strided
    copy from the padded input into a reused buffer, then one BLAS GEMM written straight into the
    output (bias added while the chunk is hot)."""
    p, kshape, strides, dilations, out_shape = g.pads, g.kernel, g.strides, g.dilations, g.out_spatial
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
