"""Kernels for tvmlite's own conv-lowering ops (the output of the `lower-conv` and `winograd`
passes): Im2Col, MecLower / MecMatMul, WinogradInput / WinogradOutput with separable transforms.
The GEMMs between them are `gemm.const_a_batch_gemm`."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule, unrolled_sum
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef
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


def winograd_input(name: str, x: str, x_shape, *, m: int, r: int, pads, bt: np.ndarray, out_value: str,
                   lanes: int) -> KernelDef:
    """tvmlite WinogradInput: V[a*α+b, c, tile] = (Bᵀ d B)[a, b] of every α×α input tile d (zero
    beyond the pads), tiles ordered (n, ty, tx). Separable: rows first (T = Bᵀ d, α terms per
    entry), then columns; both sums are unrolled so each stage is a plain vectorized map over
    the tiles."""
    n, c, h, wd = (int(d) for d in x_shape)
    alpha = m + r - 1
    pt, pl, pb, pr = (int(p) for p in pads)
    oh, ow = h + pt + pb - r + 1, wd + pl + pr - r + 1
    th, tw = -(-oh // m), -(-ow // m)
    p = n * th * tw
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    BT = b.const(np.asarray(bt, np.float32), label="bt")

    def tile_read(cc, t, i, j):
        nn, ty, tx = t // (th * tw), (t // tw) % th, t % tw
        y, xx = ty * m + i - pt, tx * m + j - pl
        ok = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), wd - 1)],
                                 tirx.const(0.0, F32))

    rows = te.compute((alpha, alpha, c, p), lambda a, j, cc, t: unrolled_sum(
        [BT[a, i] * tile_read(cc, t, i, j) for i in range(alpha)]), name="rows")
    V = te.compute((alpha * alpha, c, p), lambda ab, cc, t: unrolled_sum(
        [BT[ab % alpha, j] * rows[ab // alpha, j, cc, t] for j in range(alpha)]), name="ew")
    func = b.finish([(out_value, V)])
    sch = schedule(func)
    par = S.worth_parallel(alpha * alpha * c * p * alpha * 2)
    S.parallel_vectorize(sch, "rows", lanes, parallel=par)
    S.parallel_vectorize(sch, "ew", lanes, parallel=par)
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def winograd_output(name: str, mt: str, mt_shape, bias, *, m: int, r: int, out_shape, at: np.ndarray,
                    out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """tvmlite WinogradOutput: Y[n, M, y, x] = (Aᵀ Mt A)[y % m, x % m] of tile (n, y//m, x//m),
    cropped to ``out_shape`` (+ bias, epilogue). Separable: columns first into Z[a, M, tile, q],
    then rows inside the output map. With q innermost in Z, an output row reads Z contiguously
    (tile x//m, column x%m is Z's flat index tile*m + q) and the row coefficient is one scalar
    per row: the columns stage vectorizes over tiles and stores with stride m instead (7x faster
    than Z[a, q, M, tile], whose output rows gathered two varying indices)."""
    a2, mm, p = (int(d) for d in mt_shape)
    alpha = m + r - 1
    out_shape = tuple(int(d) for d in out_shape)
    n, _, oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    b = Builder(name)
    T = b.input(mt, (a2, mm, p))
    AT = b.const(np.asarray(at, np.float32), label="at")
    B = b.const(np.asarray(bias, np.float32).reshape(mm), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, out_shape)
    Z = te.compute((alpha, mm, p, m), lambda a, ch, t, q: unrolled_sum(
        [AT[q, bb] * T[a * alpha + bb, ch, t] for bb in range(alpha)]), name="cols")

    def out(nn, ch, y, xx):
        t = (nn * th + y // m) * tw + xx // m
        v = unrolled_sum([AT[y % m, a] * Z[a, ch, t, xx % m] for a in range(alpha)])
        if B is not None:
            v = v + B[ch]
        return apply(v, (nn, ch, y, xx))

    Y = te.compute(out_shape, out, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    par = S.worth_parallel(alpha * m * mm * p * alpha * 2)
    al, cl, tl, ql = sch.get_loops(sch.get_sblock("cols"))
    if p >= lanes:
        to, ti = sch.split(tl, factors=[None, int(lanes)])
        sch.reorder(to, ql, ti)
        sch.unroll(ql)
        sch.vectorize(ti)
    if par:
        S.parallel_outer(sch, [al, cl])
    S.parallel_vectorize(sch, "ew", lanes, parallel=par)
    return KernelDef(name, b.params, sch.mod["main"], steps=["tile_for_cache", "vectorize_columns", "parallel_outer"])


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
