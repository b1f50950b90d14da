"""Kernels for tvmlite's own conv-lowering ops (the output of the `lower-conv` and `winograd`
passes): Im2Col, MecLower / MecMatMul, WinogradInput / WinogradOutput with separable transforms.
The GEMMs between them are `gemm.const_a_batch_gemm`."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, channel_vector
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.gemm import column_gemm
from tvmlite.ops.geometry import WindowGeometry


def im2col(name: str, x: str, x_shape, geom: WindowGeometry, *, out_value: str, lanes: int) -> KernelDef:
    """tvmlite Im2Col (2-D; 1-D as a unit height): [N, C, H, W] -> [N, C*kh*kw, OH*OW]."""
    n, c, h, wd = (int(d) for d in x_shape)
    kh, kw = geom.kernel
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl = geom.pad_begin
    oh, ow = geom.out_spatial
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    khw = kh * kw

    def f(nn, row, col):
        cc, t = row // khw, row % khw
        y = (col // ow) * sh - pt + (t // kw) * dh
        xx = (col % ow) * sw - pl + (t % kw) * dw
        ok = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), wd - 1)],
                                 tirx.const(0.0, F32))

    Y = te.compute((n, c * khw, oh * ow), f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(n * c * khw * oh * ow))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def const_rows(mat: np.ndarray, k, terms):
    """Σ_j mat[k, j]·terms[j] with the constants written into the code: zeros dropped, ±1 as an add
    or subtract. ``k`` is a row number or a loop variable the schedule unrolls (one Select arm per
    row, folded once the loop is unrolled), so no coefficient is ever loaded from memory."""
    def row(i):
        v = None
        for c, t in zip(mat[i], terms):
            c = float(c)
            if c == 0.0:
                continue
            if v is None:
                v = t if c == 1.0 else (-t if c == -1.0 else tirx.const(c, F32) * t)
            else:
                v = v + t if c == 1.0 else (v - t if c == -1.0 else v + tirx.const(c, F32) * t)
        return v if v is not None else tirx.const(0.0, F32)

    if isinstance(k, int):
        return row(k)
    v = row(mat.shape[0] - 1)
    for i in reversed(range(mat.shape[0] - 1)):
        v = tirx.Select(k == i, row(i), v)
    return v


def vectorize_whole(sch, loop, lanes: int) -> None:
    """Vectorize ``loop`` with no guarded tail: whole when it holds at most 4 vectors (LLVM widens
    an odd length), else in the longest piece of at most 4 vectors that divides it."""
    extent = S._extent(sch, loop)
    if extent is None or extent < 2:
        return
    if extent <= 4 * lanes:
        sch.vectorize(loop)
        return
    piece = max(d for d in range(1, 4 * lanes + 1) if extent % d == 0)
    _, inner = sch.split(loop, factors=[None, int(piece)])
    sch.vectorize(inner)


def winograd_input(name: str, x: str, x_shape, *, m: int, r: int, pads, bt: np.ndarray, out_value: str,
                   lanes: int) -> KernelDef:
    """tvmlite WinogradInput: V[a*α+b, c, tile] = (Bᵀ d B)[a, b] of every α×α input tile d (zero
    beyond the pads), tiles ordered (n, ty, tx). Per (channel, image, tile row): the rows step
    (Bᵀ d) over the whole padded row band, vectorized along the image row, into a small α × row
    buffer, then the columns step, vectorized over the tiles of the row and unrolled over the α²
    outputs, each stored contiguously. The Bᵀ entries are constants in the code (zeros skipped).
    The input is zero-padded first (to whole tiles), so neither step tests bounds per element.
    The flat tile index is split exactly into (n, ty, tx): no division per element and no guarded
    vector tail. 1 thread, CPU time, interleaved (bench/winograd_convs.py, load ~12), F(4) conv
    time / direct kernel: 32->64 at 28x28 (7x7 tiles) 1.42 -> 0.64 with this and `winograd_output`
    against the flat-tile kernels (α²·C·P temp, coefficients loaded), 64->64 at 28x28 1.27 -> 0.57,
    128->32 at 28x28 ~1.7 -> 0.67."""
    n, c, h, wd = (int(d) for d in x_shape)
    alpha = m + r - 1
    pt, pl, pb, pr = (int(p) for p in pads)
    oh, ow = h + pt + pb - r + 1, wd + pl + pr - r + 1
    th, tw = -(-oh // m), -(-ow // m)
    hp, wp = th * m + r - 1, tw * m + r - 1
    p = n * th * tw
    bt = np.asarray(bt, np.float64)
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))

    def padded(nn, cc, y, xx):
        ok = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < wd + pl)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(y - pt, 0), h - 1),
                                       tirx.min(tirx.max(xx - pl, 0), wd - 1)], tirx.const(0.0, F32))

    Xp = te.compute((n, c, hp, wp), padded, name="pad")
    rows = te.compute((c, n, th, alpha, wp), lambda cc, nn, ty, a, xx: const_rows(
        bt, a, [Xp[nn, cc, ty * m + i, xx] for i in range(alpha)]), name="rows")

    def cols(ab, cc, t):
        nn, ty, tx = t // (th * tw), (t // tw) % th, t % tw
        return const_rows(bt, ab % alpha, [rows[cc, nn, ty, ab // alpha, tx * m + j] for j in range(alpha)])

    V = te.compute((alpha * alpha, c, p), cols, name="ew")
    func = b.finish([(out_value, V)])
    sch = schedule(func)
    par = S.worth_parallel(alpha * alpha * c * p * alpha * 2)
    ab, cl, tl = sch.get_loops(sch.get_sblock("ew"))
    nl, yl, xl = sch.split(tl, factors=[n, th, tw])
    sch.reorder(cl, nl, yl, ab, xl)
    sch.unroll(ab)
    vectorize_whole(sch, xl, lanes)
    rb = sch.get_sblock("rows")
    sch.compute_at(rb, yl)
    al, wl = sch.get_loops(rb)[-2:]
    sch.unroll(al)
    vectorize_whole(sch, wl, lanes)
    pb_ = sch.get_sblock("pad")
    pl_ = sch.get_loops(pb_)
    vectorize_whole(sch, pl_[-1], lanes)
    if par:
        S.parallel_outer(sch, pl_[:2])
        S.parallel_outer(sch, [cl, nl, yl])
    return KernelDef(name, b.params, sch.mod["main"],
                     steps=["pad_input", "tile_for_cache", "vectorize_columns", "parallel_outer"])


def winograd_output(name: str, mt: str, mt_shape, bias, *, m: int, r: int, out_shape, at: np.ndarray,
                    out_value: str, epilogue: Epilogue, lanes: int, y_layout: str = "NCHW") -> KernelDef:
    """tvmlite WinogradOutput: Y[n, M, y, x] = (Aᵀ Mt A)[y % m, x % m] of tile (n, y//m, x//m),
    cropped to ``out_shape`` (+ bias, epilogue), written ``y_layout`` (NCHW, or NHWC for readers
    that take it channels-last: `_output_nhwc`). Per (image, channel, tile row): the columns step
    (· A) into a small α × (tw·m) buffer Z[a, tx, q], vectorized over the row's tiles (contiguous
    loads, stores with stride m), then the rows step (Aᵀ ·) into the output rows, vectorized along
    the row, which reads Z contiguously (column x is Z's flat index (x//m)·m + x%m). The Aᵀ
    entries are constants in the code (zeros skipped); an output row past the crop is skipped
    once per row, never per element."""
    a2, mm, p = (int(d) for d in mt_shape)
    alpha = m + r - 1
    out_shape = tuple(int(d) for d in out_shape)
    n, _, oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    at = np.asarray(at, np.float64)
    b = Builder(name)
    T = b.input(mt, (a2, mm, p))
    B = b.const(np.asarray(bias, np.float32).reshape(mm), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, out_shape)
    if y_layout == "NHWC":
        return _output_nhwc(name, b, T, B, apply, m=m, alpha=alpha, out_shape=out_shape, at=at, out_value=out_value,
                            lanes=lanes)
    Z = te.compute((n, mm, th, alpha, tw, m), lambda nn, ch, ty, a, tx, q: const_rows(
        at, q, [T[a * alpha + bb, ch, (nn * th + ty) * tw + tx] for bb in range(alpha)]), name="cols")

    def out(nn, ch, y, xx):
        v = const_rows(at, y % m, [Z[nn, ch, y // m, a, xx // m, xx % m] for a in range(alpha)])
        if B is not None:
            v = v + B[ch]
        return apply(v, (nn, ch, y, xx))

    Y = te.compute(out_shape, out, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    par = S.worth_parallel(alpha * m * mm * p * alpha * 2)
    nl, cl, yl, xl = sch.get_loops(sch.get_sblock("ew"))
    tyl, ql = sch.split(yl, factors=[th, m])
    sch.unroll(ql)
    vectorize_whole(sch, xl, lanes)
    zb = sch.get_sblock("cols")
    sch.compute_at(zb, tyl)
    al, txl, qz = sch.get_loops(zb)[-3:]
    sch.reorder(qz, txl)
    sch.unroll(qz)
    vectorize_whole(sch, txl, lanes)
    if par:
        S.parallel_outer(sch, [nl, cl, tyl])
    return KernelDef(name, b.params, sch.mod["main"], steps=["tile_for_cache", "vectorize_columns", "parallel_outer"])


def _output_nhwc(name: str, b: Builder, T, B, apply, *, m: int, alpha: int, out_shape, at: np.ndarray,
                 out_value: str, lanes: int) -> KernelDef:
    """`winograd_output` written channels-last, Y[n, y, x, M], its block named "epilogue" so that a
    channels-last Concat can take it as a strided view (nhwc_concat.py). Per (image, tile row,
    block of cv channels): the columns step into Z[a, tx, q, cv], vectorized over the channels (the
    GEMM's output is channel-major, so each vector gathers cv channels of one tile), then the rows
    step into the output pixels, cv contiguous channels per store."""
    a2, mm, p = (int(d) for d in T.shape)
    n, _, oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    cv = channel_vector(mm, lanes) or mm
    Z = te.compute((n, th, alpha, tw, m, mm), lambda nn, ty, a, tx, q, ch: const_rows(
        at, q, [T[a * alpha + bb, ch, (nn * th + ty) * tw + tx] for bb in range(alpha)]), name="cols")

    def out(nn, y, xx, ch):
        v = const_rows(at, y % m, [Z[nn, y // m, a, xx // m, xx % m, ch] for a in range(alpha)])
        if B is not None:
            v = v + B[ch]
        return apply(v, (nn, ch, y, xx))

    Y = te.compute((n, oh, ow, mm), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    par = S.worth_parallel(alpha * m * mm * p * alpha * 2)
    nl, yl, xl, cl = sch.get_loops(sch.get_sblock("epilogue"))
    tyl, ql = sch.split(yl, factors=[th, m])
    col, cil = sch.split(cl, factors=[None, cv])
    sch.reorder(tyl, col, ql, xl, cil)
    sch.unroll(ql)
    vectorize_whole(sch, cil, lanes)
    zb = sch.get_sblock("cols")
    sch.compute_at(zb, col)
    al, txl, qz, cz = sch.get_loops(zb)[-4:]
    sch.unroll(qz)
    vectorize_whole(sch, cz, lanes)
    if par:
        S.parallel_outer(sch, [nl, tyl, col])
    return KernelDef(name, b.params, sch.mod["main"],
                     steps=["tile_for_cache", "vectorize_channels", "parallel_outer"])


def mec_lower(name: str, x: str, x_shape, geom: WindowGeometry, *, out_value: str, lanes: int) -> KernelDef:
    """tvmlite MecLower: [N, C, H, W] -> L[N, OW, Hp, C*KW], L[n, j, y, c*KW + t] = the padded
    input at row y, column j*sw + t*dw of channel c."""
    n, c, h, wd = (int(d) for d in x_shape)
    kw = geom.kernel[1]
    sw, dw = geom.strides[1], geom.dilations[1]
    pt, pl, pb, pr = geom.pads
    ow = geom.out_spatial[1]
    hp = h + pt + pb
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))

    def f(nn, j, y, q):
        cc, t = q // kw, q % kw
        iy, ix = y - pt, j * sw + t * dw - pl
        ok = tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(iy, 0), h - 1), tirx.min(tirx.max(ix, 0), wd - 1)],
                                 tirx.const(0.0, F32))

    Y = te.compute((n, ow, hp, c * kw), f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(n * ow * hp * c * kw))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def mec_matmul(name: str, lowered: str, l_shape, w: np.ndarray, bias, *, stride_h: int, dilation_h: int,
               out_h: int, out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """tvmlite MecMatMul: Y[n, M, o, j] = sum over (i, q) of L[n, j, o*s + i*d, q] W'[i, q, M]
    (+ bias): a GEMM whose columns (o, j) are read from MEC's lowered matrix on the fly, each
    window row shared by the KH output rows that use it, with `column_gemm`'s packed schedule."""
    n, ow, hp, ckw = (int(d) for d in l_shape)
    kh, _, m = (int(d) for d in w.shape)
    s, d = int(stride_h), int(dilation_h)
    b = Builder(name)
    L = b.input(lowered, (n, ow, hp, ckw))

    def columns(nn, gg, kk, j):
        i, q = kk // ckw, kk % ckw
        jc = tirx.min(j, out_h * ow - 1)  # past P: a valid read, the result is dropped
        return L[nn, jc % ow, (jc // ow) * s + i * d, q]

    wmat = np.asarray(w, np.float32).reshape(kh * ckw, m).T.reshape(1, m, kh * ckw)
    return column_gemm(name, b, columns, wmat, bias, out_shape=(n, m, out_h, ow), out_value=out_value,
                       epilogue=epilogue, lanes=lanes)
