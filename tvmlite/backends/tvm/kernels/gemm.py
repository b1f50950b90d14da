"""GEMM kernels with the named schedule steps of `schedules.schedule_gemm`: dense GEMM (Gemm,
MatMul with constant weights on the right), the column GEMM that convolutions lowered to columns
share (conv's im2col, MEC), the weights-on-the-left batched GEMM of lower-conv and Winograd, and
the batched MatMul of two runtime tensors."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.errors import UnsupportedError


def gemm_rows(lanes: int) -> int:
    """Rows of the GEMM register tile (by 2 vectors of columns): 8 with AVX-512, 4 with AVX2,
    where 8 x 2 vectors fills all 16 registers with accumulators (`S.accumulator_vectors`)."""
    return min(8, S.accumulator_vectors(lanes) // 2)


def conv_tile(co: int, p: int, lanes: int) -> S.GemmTile:
    """Register tile for Y[co, p] = W[co, k] cols[k, p]: up to `gemm_rows` rows x 2 vectors of
    columns."""
    nr = 2 * lanes if p >= 2 * lanes else lanes
    rows = gemm_rows(lanes)
    mr = rows if co >= rows else co
    return S.GemmTile(mr=mr, nr=nr)


def column_gemm(name: str, b: Builder, columns, w: np.ndarray, bias, *, out_shape, out_value: str,
                epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None,
                pad: str | None = None) -> KernelDef:
    """Y[n, g*CoG + co, p] = W[g, co, k] @ columns(n, g, k, p) (+ bias) then ``epilogue``, for
    convolutions lowered to a GEMM over columns made on the fly: ``columns(n, g, k, j)`` gives
    column entry (k, j) of image n, group g, for j up to P rounded to the tile (past P: any
    value read from valid memory). ``out_shape`` is NC + spatial, P the spatial size. The
    columns are packed [P/nr, K, nr] per column tile inside the GEMM; W is packed [CoG/mr, K, mr]
    at build time. The caller has made ``b``'s input placeholders; ``pad`` names a stage the
    columns read (the zero-padded input), made once per call before the GEMM."""
    g, cog, k = (int(d) for d in w.shape)
    n, co = int(out_shape[0]), int(out_shape[1])
    spatial = tuple(int(d) for d in out_shape[2:])
    p = int(np.prod(spatial))
    tile = tile or conv_tile(cog, p, lanes)
    cop, pp = round_up(cog, tile.mr), round_up(p, tile.nr)
    wmat = np.zeros((g, cop, k), np.float32)
    wmat[:, :cog] = w
    packing = steps is None or "pack_array" in steps
    W = b.const(S.pack_host_array(wmat, tile.mr, along="rows", leading=1) if packing else wmat, (g, cop, k))
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(g, cog), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, (n, co) + spatial)

    nr = int(tile.nr)
    # the columns are made in the packed layout [P/nr, K, nr] itself (not packed by a layout
    # transform): ``columns`` sees j = jt*nr + ji with ji a lane of its own, so a caller that
    # splits j by the tile (a conv whose rows are whole tiles) gets a per-tile scalar and a lane
    # run, where a transformed j // W per lane would be a gather
    cols = te.compute((n, g, pp // nr, k, nr), lambda nn, gg, jt, kk, ji: columns(nn, gg, kk, jt * nr + ji),
                      name="im2col")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((n, g, cop, pp), lambda nn, gg, i, j: te.sum(W[gg, i, r] * cols[nn, gg, j // nr, r, j % nr],
                                                                 axis=r), name="acc")

    def out(nn, gg, cc, j):
        v = acc[nn, gg, cc, j]
        if B is not None:
            v = v + B[gg, cc]
        return apply(v, (nn, gg * cog + cc) + unflatten(j, spatial))

    Y = te.compute((n, g, cog, p), out, name="epilogue")  # the NC... output, channels split by group
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, producer="im2col", parallel=S.worth_parallel(n * co * p * k),
                    packs=[("acc", ("read", 0), "rows", 1)], steps=steps)
    if pad is not None:
        S.pad_input(sch, pad, lanes, parallel=S.worth_parallel(n * co * p * k))
    params = b.params
    if packing:  # the transform changed the parameter's shape to the packed one
        params[w_index].shape = params[w_index].array.shape
    return KernelDef(name, params, sch.mod["main"], steps=gemm_step_names(steps) + (["pad_input"] if pad else []))


def dense_tile(m: int, nn: int, lanes: int) -> S.GemmTile:
    nr = 2 * lanes if nn >= 2 * lanes else lanes
    rows = gemm_rows(lanes)
    mr = rows if m >= rows else m
    return S.GemmTile(mr=mr, nr=nr)


# A dense GEMM with fewer rows than this streams its weights: each weight, loaded once, serves only
# m multiply-adds, so its time follows the weight bytes (`dense_work`)
STREAMED_ROWS = 4


def dense_work(m: int, nn: int, k: int) -> int:
    """The work `S.worth_parallel` weighs for a dense GEMM of m x k @ k x nn: its multiply-adds,
    counted as `STREAMED_ROWS` rows when it has fewer. With one row (a classifier's batch-1 fully
    connected layer) the kernel streams 4 bytes of weights per multiply-add and runs at a quarter
    or less of a conv's rate per multiply-add (AVX2, one thread: 2048x128 in ~40 us, 3072x256 in
    ~170-235 us), so by its multiply-adds alone it stayed on one core where two halve the stream.
    2 threads, the kernel alone, interleaved, load 8.5 (best runs; medians): 1x2048 @ 2048x128
    parallel 0.58x (0.68x) of serial, 1x3072 @ 3072x256 0.55x (its median lost to a descheduled
    worker), 1x512 @ 512x128 (262K by this count: still serial) 1.66x."""
    return max(m, STREAMED_ROWS) * nn * k


def dense_gemm(name: str, a: str, a_shape, w: np.ndarray, bias, *, out_value: str, out_shape,
               epilogue: Epilogue, lanes: int, trans_a: bool = False, tile: S.GemmTile | None = None,
               steps=None) -> KernelDef:
    """Y[m, n] = A[m, k] @ W[k, n] (+ bias[n]) then ``epilogue``; W is a constant packed
    [N/nr, K, nr]. Leading dims of A (MatMul on [.., M, K]) fold into M."""
    a_shape = tuple(int(d) for d in a_shape)
    if trans_a:
        k, m = a_shape
    else:
        k = a_shape[-1]
        m = int(np.prod(a_shape[:-1])) if len(a_shape) > 1 else 1
    kw_, nn = w.shape
    assert kw_ == k, (a_shape, w.shape)
    tile = tile or dense_tile(m, nn, lanes)
    mp, np_ = round_up(m, tile.mr), round_up(nn, tile.nr)
    b = Builder(name)
    A = b.input(a, (k, m) if trans_a else (m, k))
    if np_ == nn:  # no padding: the packing is the one copy (the weights may be a transposed view)
        wpad = np.asarray(w, np.float32)
    else:
        wpad = np.zeros((k, np_), np.float32)
        wpad[:, :nn] = w
    packing = steps is None or "pack_array" in steps
    W = b.const(S.pack_host_array(wpad, tile.nr, along="cols") if packing else wpad, (k, np_))
    del wpad
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(nn), label="bias") if bias is not None else None
    out_shape = tuple(int(d) for d in out_shape)
    apply = bind_epilogue(epilogue, b, out_shape)
    r = te.reduce_axis((0, k), name="k")
    last = m - 1

    def a_at(i, kk):  # rows past M (tile padding) read row M-1: valid memory, result dropped
        return A[kk, tirx.min(i, last)] if trans_a else A[tirx.min(i, last), kk]

    acc = te.compute((mp, np_), lambda i, j: te.sum(a_at(i, r) * W[r, j], axis=r), name="acc")
    lead = out_shape[:-1]

    def out(i, j):
        v = acc[i, j]
        if B is not None:
            v = v + B[j]
        return apply(v, unflatten(i, lead) + (j,))

    Y = te.compute((m, nn), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, packs=[("acc", ("read", 1), "cols", 0)],
                    parallel=S.worth_parallel(dense_work(m, nn, k)),
                    parallel_rows=m > tile.mr, steps=steps)
    params = b.params
    params[-1].shape = (m, nn)
    if packing:
        params[w_index].shape = params[w_index].array.shape
    return KernelDef(name, params, sch.mod["main"], steps=gemm_step_names(steps))


def batch_matmul(name: str, a: str, a_shape, bname: str, b_shape, *, out_value: str, out_shape,
                 epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """MatMul of two runtime tensors [.., M, K] @ [.., K, N] with broadcast batch dims
    (attention's Q @ K^T and probs @ V). The register tile of the dense GEMM, without packing: a
    B row of one batch entry is already contiguous along N, and attention's are small enough to
    stay in cache. M and N are rounded up to the tile; the padding reads row M-1 / column N-1
    (valid memory) and its results are dropped."""
    out_shape = tuple(int(d) for d in out_shape)
    a_shape, b_shape = tuple(int(d) for d in a_shape), tuple(int(d) for d in b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise UnsupportedError("MatMul with 1-D operands")
    k = a_shape[-1]
    m, nn = out_shape[-2], out_shape[-1]
    tile = tile or dense_tile(m, nn, lanes)
    mp, np_ = round_up(m, tile.mr), round_up(nn, tile.nr)
    b = Builder(name)
    A = b.input(a, a_shape)
    Bt = b.input(bname, b_shape)
    apply = bind_epilogue(epilogue, b, out_shape)
    r = te.reduce_axis((0, k), name="k")
    rank = len(out_shape)

    def read(t, shape, idx, last2):
        off = rank - len(shape)
        ix = [0 if shape[i] == 1 else idx[off + i] for i in range(len(shape) - 2)]
        return t[tuple(ix) + last2]

    def mac(*idx):
        i, j = tirx.min(idx[-2], m - 1), tirx.min(idx[-1], nn - 1)
        return te.sum(read(A, a_shape, idx, (i, r)) * read(Bt, b_shape, idx, (r, j)), axis=r)

    acc = te.compute(out_shape[:-2] + (mp, np_), mac, name="acc")
    Y = te.compute(out_shape, lambda *idx: apply(acc[idx], idx), name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, parallel=S.worth_parallel(int(np.prod(out_shape)) * k),
                    parallel_rows=True, steps=steps)
    return KernelDef(name, b.params, sch.mod["main"], steps=gemm_step_names(steps))


def const_a_batch_gemm(name: str, a: np.ndarray, bname: str, b_shape, *, out_value: str, out_shape,
                       epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Y[..., M, N] = A[..., M, K] @ B[..., K, N] with A constant and batch dims broadcast (the
    GEMMs of lower-conv and Winograd: weights on the left, columns/tiles on the right). The
    batch dims are flattened into one loop; A is packed [Ba, M/mr, K, mr] at build time; B's
    columns are packed [bt, N/nr, K, nr] per column tile inside the GEMM (as conv's im2col)."""
    out_shape = tuple(int(d) for d in out_shape)
    b_shape = tuple(int(d) for d in b_shape)
    m, k = (int(d) for d in a.shape[-2:])
    nn = b_shape[-1]
    batch = out_shape[:-2]
    bt = int(np.prod(batch)) if batch else 1
    a_batch, b_batch = tuple(a.shape[:-2]), b_shape[:-2]
    tile = tile or conv_tile(m, nn, lanes)
    mp, np_ = round_up(m, tile.mr), round_up(nn, tile.nr)
    b = Builder(name)
    ba = int(np.prod(a_batch)) if a_batch else 1
    apad = np.zeros((ba, mp, k), np.float32)
    apad[:, :m] = np.asarray(a, np.float32).reshape(ba, m, k)
    packing = steps is None or "pack_array" in steps
    A = b.const(S.pack_host_array(apad, tile.mr, along="rows", leading=1) if packing else apad, (ba, mp, k))
    a_index = len(b.params) - 1
    bb = int(np.prod(b_batch)) if b_batch else 1
    Bt = b.input(bname, (bb, k, nn))
    apply = bind_epilogue(epilogue, b, out_shape)

    def flat_index(idx, dims):
        """Flat index into a broadcast operand with batch ``dims`` (aligned right) of batch ``idx``."""
        off = len(batch) - len(dims)
        flat = 0
        for i, d in enumerate(dims):
            if d != 1:
                flat = flat * d + idx[off + i]
            # a broadcast dim contributes nothing
        return flat

    def split(t):
        return unflatten(t, batch) if batch else ()

    pack = te.compute((bt, k, np_), lambda t, kk, j: Bt[flat_index(split(t), b_batch), kk, tirx.min(j, nn - 1)],
                      name="pack")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((bt, mp, np_), lambda t, i, j: te.sum(A[flat_index(split(t), a_batch), i, r] * pack[t, r, j],
                                                          axis=r), name="acc")
    Y = te.compute((bt, m, nn), lambda t, i, j: apply(acc[t, i, j], split(t) + (i, j)), name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, producer="pack", parallel=S.worth_parallel(bt * m * nn * k),
                    packs=[("acc", ("read", 0), "rows", 1), ("pack", ("write", 0), "cols", 1)], steps=steps)
    if packing:
        b.params[a_index].shape = b.params[a_index].array.shape
    return KernelDef(name, b.params, sch.mod["main"], steps=gemm_step_names(steps))


def gemm_step_names(steps) -> list[str]:
    return [s for s in S.GEMM_STEPS if steps is None or s in steps]
