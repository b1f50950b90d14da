"""Schedules: the classic CPU steps, each a named function over an `s_tir.Schedule`.

The GEMM recipe follows TVM's "How to optimize GEMM on CPU" tutorial and the im2col/packing
notes of seed 000, one step per function so each can be applied, tested and measured alone:

    tile_for_cache       split rows/columns into a register tile (mr x nr) and order the loops
                         column tile, row tile, k, row, column (loop permutation)
    pack_array           array packing: a [K, N]-indexed buffer stored as [N/nb, K, nb] so the
                         inner loop reads one contiguous line per k
    write_cache          accumulate the tile in a local (register) buffer, write it out once
                         through the epilogue (bias, activation, residual) placed under the tile
    vectorize_columns    the nr columns become SIMD lanes (AVX-512: 16 float32 per register)
    unroll_rows          unroll the mr rows so the tile lives in registers
    parallel_outer       the outermost tile loops run on all cores
    finish_reduction     split the accumulator's init from its update (must come last)

Pool, elementwise and reduction kernels use `parallel_vectorize`: fuse the outer loops across
cores and vectorize the innermost loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvmlite.backends.tvm.kernels.parallel import (  # noqa: F401 - the schedules' names for them
    DEPTHWISE_WEIGHT, PARALLEL_TASKS, POOL_TAP_WEIGHT, _extent, chunk_count, depthwise_work,
    min_parallel_work, parallel_chunks, parallel_outer, parallel_tiles, pool_work, worth_parallel)


def accumulator_vectors(lanes: int) -> int:
    """Vector registers a register tile may fill with accumulators: 20 of AVX-512's 32 (with
    ``lanes`` 16), 8 of AVX2's 16 (``lanes`` 8). The rest hold the tile's operands (a vector of
    packed weights or columns per tile column, a broadcast); past the budget LLVM spills the
    tile to the stack on every multiply-add. On an AVX2 host (Zen 1, one thread, against
    onnxruntime's Conv) the 12 x 16 direct tile (24 accumulators) ran the detector's 3x3 convs
    at 1.2-2.3x, 4 x 16 (8) at 0.6-1.0x, 5 x 16 (10) alike, 6 x 16 (12) between the two
    (bench/conv_tiles.py). On AVX-512 (Sapphire Rapids, one thread, CPU time, the same bench,
    3x3 stride-1 direct convs, 30 interleaved rounds, load 3.6-3.8) the two-vector direct tiles of
    11 and 12 pixels (22, 24 accumulators) ran slower than 8-10: 12 x 32 against 8 x 32 1.42x /
    0.82x of onnxruntime's Conv at 48->64 48x48, 1.81x / 0.85x at 64->64 40x40, 1.94x / 0.96x at
    128->128 27x27 (9 x 32 0.79x); 11 x 32 against 10 x 32 at 16->64 55x55 writing NHWC
    0.83-0.90x / 0.81x (8 x 32 0.70-0.76x, 5 x 32 0.77x), at 32->128 27x27 0.87x / 0.79x (9 x 32
    0.72x). The GEMM's 8 x 2 vectors (16) are unchanged."""
    return 20 if lanes >= 16 else 8


@dataclass
class GemmTile:
    mr: int = 8     # rows in the register tile
    nr: int = 32    # columns in the register tile (a multiple of the vector lanes)
    kc: int = 0     # k block for L2 reuse; 0 = no k blocking


def tile_for_cache(sch, block, tile: GemmTile):
    """Split (…, i, j, k) into (…, jo, io, [ko,] k, ii, ji) and return the loop handles: the
    outer tile loop (columns) is "first", the inner one (rows) "second". Columns outside means a
    packed column panel [K, nr] is made once and reused by every row tile while it is in cache."""
    loops = sch.get_loops(block)
    outer, (i, j, k) = loops[:-3], loops[-3:]
    io, ii = sch.split(i, factors=[None, int(tile.mr)])
    jo, ji = sch.split(j, factors=[None, int(tile.nr)])
    first, second = jo, io
    if tile.kc:
        ko, ki = sch.split(k, factors=[None, int(tile.kc)])
        sch.reorder(first, ko, second, ki, ii, ji)
        return {"outer": list(outer), "first": first, "second": second, "ko": ko, "k": ki,
                "ii": ii, "ji": ji}
    sch.reorder(first, second, k, ii, ji)
    return {"outer": list(outer), "first": first, "second": second, "k": k, "ii": ii, "ji": ji}


def pack_array(sch, block, buffer, nb: int, *, along: str = "cols", leading: int = 0):
    """Array packing. ``along="cols"``: a B operand [..., K, N] stored as [..., N/nb, K, nb];
    ``along="rows"``: an A operand [..., M, K] stored as [..., M/nb, K, nb]. Either way the
    register tile reads nb consecutive floats per k.

    For a constant weight this changes the function's parameter: the caller passes the array
    packed by `pack_host_array` (once, at build time). For an intermediate (im2col columns) the
    producer writes the packed layout directly."""
    nb = int(nb)
    if along == "cols":
        def packed(k, n):
            return (n // nb, k, n % nb)
    else:
        def packed(m, k):
            return (m // nb, k, m % nb)
    if leading == 0:
        index_map = packed
    elif leading == 1:
        def index_map(b, x, y):
            return (b,) + packed(x, y)
    elif leading == 2:
        def index_map(b, g, x, y):
            return (b, g) + packed(x, y)
    else:
        raise ValueError("pack_array supports at most two leading dims")
    sch.transform_layout(block, buffer, index_map)


def pack_host_array(array, nb: int, *, along: str = "cols", leading: int = 0):
    """NumPy side of `pack_array` (the packed dim must divide by nb)."""
    import numpy as np

    a = np.asarray(array)
    *lead, x, y = a.shape
    assert len(lead) == leading, (a.shape, leading)
    if along == "cols":
        assert y % nb == 0, (a.shape, nb)
        out = a.reshape(*lead, x, y // nb, nb).swapaxes(-3, -2)
    else:
        assert x % nb == 0, (a.shape, nb)
        out = a.reshape(*lead, x // nb, nb, y).swapaxes(-2, -1)
    return np.ascontiguousarray(out)


def write_cache(sch, block, epilogue, loop):
    """The accumulator becomes a register tile; the epilogue block moves under ``loop``."""
    sch.set_scope(block, 0, "local")
    sch.reverse_compute_at(epilogue, loop, preserve_unit_loops=True)


def vectorize_columns(sch, loop, epilogue=None):
    sch.vectorize(loop)
    if epilogue is not None:
        inner = sch.get_loops(epilogue)[-1]
        if ragged_run(sch, epilogue, inner):
            sch.unroll(inner)
        else:
            sch.vectorize(inner)


def ragged_run(sch, block, inner) -> bool:
    """Whether ``block``'s last axis (the columns an epilogue writes) is no whole number of runs
    of ``inner``'s extent, so its last tile is cut short by a predicate (T.where). TVM does not
    vectorize a predicated loop: it writes every tile's run scalar, a compare and branch per
    element. Unrolled instead, LLVM writes the whole tiles in vectors and only the last one
    element by element: a 16->64 1x1 conv at 55x55 (3025 pixels, AVX2 one thread, CPU time)
    0.33 -> 0.27 ms (56x56, no ragged tile: 0.23-0.27 ms)."""
    extent = _extent(sch, inner)
    axis = sch.get(block).iter_vars[-1].dom.extent
    try:
        return extent is not None and int(axis) % extent != 0
    except TypeError:  # a symbolic axis
        return False


def unroll_rows(sch, loop):
    sch.unroll(loop)


def finish_reduction(sch, block, loop):
    sch.decompose_reduction(block, loop)


GEMM_STEPS = ["tile_for_cache", "pack_array", "write_cache", "vectorize_columns", "unroll_rows",
              "parallel_outer", "finish_reduction"]


def schedule_gemm(sch, acc: str, epilogue: str, tile: GemmTile, *, packs=(), producer=None,
                  parallel_rows: bool = False, parallel: bool = True, steps=None):
    """All GEMM steps in order; ``steps`` (a set of step names) applies only some, for tests.

    ``packs``: (block name, ("read"|"write", i), along, leading) buffers to pack with nb = the
    tile's mr (rows) or nr (cols). ``producer``: an im2col block computed per column tile,
    right before the tile uses it (packing on the fly, the columns stay in L2)."""
    on = (lambda s: True) if steps is None else (lambda s: s in steps)
    block = sch.get_sblock(acc)
    epi = sch.get_sblock(epilogue)
    lp = tile_for_cache(sch, block, tile) if on("tile_for_cache") else None
    if on("pack_array"):
        for name, buf, along, leading in packs:
            pack_array(sch, sch.get_sblock(name), buf, tile.nr if along == "cols" else tile.mr,
                       along=along, leading=leading)
    if lp is None:
        return sch
    if on("write_cache"):
        write_cache(sch, block, epi, lp["second"])
    if producer is not None:
        pblock = sch.get_sblock(producer)
        sch.compute_at(pblock, lp["first"], preserve_unit_loops=True)
        if on("vectorize_columns"):
            sch.vectorize(sch.get_loops(pblock)[-1])
    if on("vectorize_columns"):
        vectorize_columns(sch, lp["ji"], epi if on("write_cache") else None)
    if on("unroll_rows"):
        unroll_rows(sch, lp["ii"])
    if on("parallel_outer") and parallel:
        inner_too = parallel_rows and producer is None and "ko" not in lp
        parallel_tiles(sch, lp["outer"] + [lp["first"]] + ([lp["second"]] if inner_too else []))
    if on("finish_reduction"):
        finish_reduction(sch, block, lp.get("ko") or lp["k"])
    return sch


def parallel_vectorize(sch, block: str, lanes: int, *, parallel_loops: int | None = None,
                       min_parallel: int = 2, parallel: bool = True):
    """Fuse the outer spatial loops across cores and vectorize the innermost one when it is long
    enough. Reduction loops (if any) stay inside, unchanged."""
    b = sch.get_sblock(block)
    loops = sch.get_loops(b)
    if not loops:
        return sch
    spatial = _spatial_loops(sch, b, loops)
    if not spatial:
        return sch
    n_par = len(spatial) - 1 if parallel_loops is None else min(parallel_loops, len(spatial))
    if len(spatial) == len(loops):
        vectorize_inner(sch, spatial[-1], lanes)
    par = spatial[:n_par] if n_par > 0 and parallel else []
    if par:
        total = 1
        for lp in par:
            total *= _extent(sch, lp) or 1
        if total >= min_parallel:
            parallel_outer(sch, par)
    return sch


def vectorize_inner(sch, inner, lanes: int) -> bool:
    """Vectorize the loop ``inner`` when it holds at least one vector: in vectors of ``lanes``
    where it is a whole number of them or longer than 4, else whole. False (left alone) when it is
    shorter or symbolic."""
    extent = _extent(sch, inner)
    if extent is None or extent < lanes:
        return False
    if extent % lanes == 0 or extent > 4 * lanes:
        _, vi = sch.split(inner, factors=[None, int(lanes)])
        sch.vectorize(vi)
    else:
        sch.vectorize(inner)
    return True


def _spatial_loops(sch, block, loops):
    """The leading loops of a TE-made block that are data parallel (TE puts reduce loops last)."""
    n_spatial = sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0)
    return list(loops[:n_spatial]) if len(loops) >= n_spatial else []


# ------------------------------------------------------------------------------ direct convolution
DIRECT_CONV_STEPS = ["pad_input", "tile_for_cache", "pack_array", "write_cache", "vectorize_columns",
                     "unroll_rows", "parallel_outer", "finish_reduction"]


# A padded copy's element weighs this many GEMM multiply-adds in `worth_parallel` (a load and a
# store, no reuse). Sapphire Rapids, 2 threads, the kernel alone with SiLU, best of 400 interleaved
# (bench/conv_threads_ab.py, old -> padrows): the detector's 3->16 stride-2 stem from 320x320
# (im2col + GEMM, a 311K-element copy in stride phases, on one core ahead of the parallel GEMM)
# 0.66 -> 0.50 of one thread (264 -> 203 us); a 153K-element copy (3->32 stride 2 from 224x224,
# direct) 0.57 -> 0.52, left on one core with the copies below it.
PAD_ELEMENT_WEIGHT = 4


def pad_input(sch, pad: str, lanes: int, *, parallel: bool = True):
    """The zero-padded input is made once per call, in vectors, so the tile's inner loop reads
    it with no bounds checks. Without this step the padding is inlined: every multiply-add tests
    its coordinates. Across cores (with ``parallel``, the conv's own choice) only where the copy
    is worth it by its own elements (`worth_parallel`, at PAD_ELEMENT_WEIGHT each): each parallel
    loop is a wake and a barrier of the thread pool, and the copy ahead of SqueezeNet's 3x3
    expand convs (16 x 57 x 57 and smaller) is a few microseconds of work on one core. Split by
    the fewest outer loops that make 4 tasks a thread (`copy_tasks_loops`): an image's 3 channels
    split over 2 threads by channel alone left one thread two thirds of the copy; split by every
    row (the stem's 1932) it ran 3% slower at one thread than by its 12 channel phases (best of 400,
    406 against 396 us, the copy on one core 383 us; at 2 threads 213 against 205 us)."""
    size = block_elements(sch, pad)
    parallel_vectorize(sch, pad, lanes, parallel_loops=copy_tasks_loops(sch, pad),
                       parallel=parallel and (size is None or worth_parallel(PAD_ELEMENT_WEIGHT * size)))


def copy_tasks_loops(sch, block: str) -> int:
    """How many of ``block``'s outer loops to run across cores: the fewest whose iterations
    number 4 a thread (all but the innermost at most; 2 where an extent is symbolic)."""
    from tvmlite.backends.tvm.kernels.target import host_threads

    loops = sch.get_loops(sch.get_sblock(block))
    total = 1
    for i, lp in enumerate(loops[:-1]):
        ext = _extent(sch, lp)
        if ext is None:
            return 2
        total *= ext
        if total >= 4 * host_threads():
            return i + 1
    return max(1, len(loops) - 1)


def block_elements(sch, block: str) -> int | None:
    """Elements a block writes: the product of its data-parallel axes' extents (None if one is
    symbolic)."""
    total = 1
    for iv in sch.get(sch.get_sblock(block)).iter_vars:
        if int(iv.iter_type) == 0:
            try:
                total *= int(iv.dom.extent)
            except Exception:  # noqa: BLE001 - a symbolic extent
                return None
    return total


def tile_direct_conv(sch, block, tile: GemmTile, *, pixels_outer: bool = False, row_block: int = 0,
                     row_tasks: int = 0):
    """Split (n, g, y, x, co, rc, ry, rx) into (n, g, co/nr, y, x/mr, rc, ry, rx, mr, nr): one
    weight panel (all k for nr channels) is reused by every pixel tile of the image while it is
    in L2, and each (rc, ry, rx) step is one row of packed weights times mr broadcast pixels.
    With ``pixels_outer`` the channel tiles run inside the pixel tiles, (n, g, y, x/mr, co/nr, ...):
    the input is read once and the whole weights once per pixel tile, for a conv whose input is
    larger than its weights (`tile_order.pixel_tiles_outer`). With ``row_block`` (channel tiles outside)
    the output rows run in blocks of that many, each block's channel tiles inside it,
    (n, g, y/rb, co/nr, rb, x/mr, ...): the input rows one block reads stay in the L2 across its
    channel tiles (`tile_order.channel_row_block`). With ``row_tasks`` the output rows are cut
    into that many blocks outermost, (n, g, y/(oh/row_tasks), then the order above within a
    block): the loop "rows" a block's padded input rows are made under (`schedule_direct_conv`)."""
    nl, gl, yl, xl, il, rc, ry, rx = sch.get_loops(block)
    io, ii = sch.split(il, factors=[None, int(tile.nr)])
    xo, xi = sch.split(xl, factors=[None, int(tile.mr)])
    if row_tasks:
        yo, yi = sch.split(yl, factors=[int(row_tasks), None])
        if pixels_outer:
            sch.reorder(yo, yi, xo, io, rc, ry, rx, xi, ii)
        else:
            sch.reorder(yo, io, yi, xo, rc, ry, rx, xi, ii)
        return {"outer": [nl, gl, yo], "rows": yo, "k": rc, "ii": xi, "ji": ii,
                "second": io if pixels_outer else xo}
    if pixels_outer:
        sch.reorder(yl, xo, io, rc, ry, rx, xi, ii)
        return {"outer": [nl, gl, yl, xo, io], "k": rc, "ii": xi, "ji": ii, "second": io}
    if row_block:
        yo, yi = sch.split(yl, factors=[None, int(row_block)])
        sch.reorder(yo, io, yi, xo, rc, ry, rx, xi, ii)
        return {"outer": [nl, gl, yo, io, yi, xo], "k": rc, "ii": xi, "ji": ii, "second": xo}
    sch.reorder(io, yl, xo, rc, ry, rx, xi, ii)
    return {"outer": [nl, gl, io, yl, xo], "k": rc, "ii": xi, "ji": ii, "second": xo}


def weight_run(nr: int, lanes: int) -> int:
    """The output channels a direct conv's packed weights keep contiguous per (ci, ky, kx): all
    ``nr`` of its tile (one stream through the channel tile's panel), or on AVX-512 (``lanes``
    16) one vector's, so that a tile of several vectors of channels reads one stream per vector
    (`pack_direct_weights`). A deep layer's weights are read once per call and arrive cold (ResNet-50's
    7x7 convs read 4-9 MiB each, 100 MiB in all); the first pixel tile of each channel tile waits
    on them, and the hardware prefetcher keeps more lines in flight over several streams.
    Sapphire Rapids, one thread, CPU time, the kernel alone with its weights rotated through 24
    copies (cold, 24-192 MiB), interleaved medians, one stream -> one per vector: 7 x 32 tiles,
    512->2048 1x1 at 7x7 0.94x, 2048->512 0.89x, 1024->256 at 14x14 0.97x, 256->1024 0.95x,
    1024->2048 stride 2 from 14x14 0.92x, 512->512 3x3 at 7x7 (read NCHW) 0.80x, stride 2 from
    14x14 0.84x; warm (one copy) 512->2048 0.96x. AVX2 (8 lanes) keeps one stream: not measured there."""
    nr, lanes = int(nr), int(lanes)
    return lanes if lanes >= 16 and nr > lanes and nr % lanes == 0 else nr


def pack_direct_weights(sch, block, nr: int, run: int = 0):
    """Weights [G, CO, CI, KH, KW] stored [G, CO/nr, nr/run, CI, KH, KW, run] (``run``: nr when
    0, `weight_run`): the ``run`` channels of one (ci, ky, kx) are one contiguous vector load,
    and a channel tile's panel is contiguous, its nr/run streams one after another."""
    nr = int(nr)
    run = int(run) or nr
    if run == nr:
        sch.transform_layout(block, ("read", 1),
                             lambda g, i, c, y, x: (g, i // nr, c, y, x, i % nr))
    else:
        sch.transform_layout(block, ("read", 1),
                             lambda g, i, c, y, x: (g, i // nr, i % nr // run, c, y, x, i % run))


def schedule_direct_conv(sch, pad: str | None, acc: str, epilogue: str, tile: GemmTile, *, lanes: int,
                         parallel: bool = True, steps=None, act: str | None = None, pixels_outer: bool = False,
                         row_block: int = 0, row_tasks: int = 0):
    """The direct conv's steps in order (``steps``: apply only these, for tests). ``act``: a
    block between the accumulator and the epilogue in the tile's channels-last layout (the
    activation); with write_cache it is a second register tile, vectorized over the channels,
    so an exp-heavy activation runs in vectors instead of per element in the transposing write.
    ``pixels_outer``, ``row_block``: the tile loops' order (`tile_direct_conv`). ``row_tasks``
    (a parallel conv with a pad, `tile_order.row_tasks`): the parallel loop is that many blocks of
    output rows, each making the padded input rows it reads itself (`pad_rows`)."""
    on = (lambda s: True) if steps is None else (lambda s: s in steps)
    if act is not None and not (on("tile_for_cache") and on("write_cache")):
        sch.compute_inline(sch.get_sblock(act))
        act = None
    if pad is None or row_block or not parallel or not all(
            on(s) for s in ("pad_input", "tile_for_cache", "parallel_outer")):
        row_tasks = 0
    if pad is None:  # the kernel reads its input unpadded
        pass
    elif row_tasks:  # made per block of rows, below
        pass
    elif on("pad_input"):
        pad_input(sch, pad, lanes, parallel=parallel)
    else:
        sch.compute_inline(sch.get_sblock(pad))
    block = sch.get_sblock(acc)
    epi = sch.get_sblock(epilogue)
    lp = tile_direct_conv(sch, block, tile, pixels_outer=pixels_outer, row_block=row_block,
                          row_tasks=row_tasks) if on("tile_for_cache") else None
    if row_tasks:
        pad_rows(sch, pad, lp["rows"], lanes)
    run = weight_run(tile.nr, lanes)
    if on("pack_array"):
        pack_direct_weights(sch, block, tile.nr, run)
    if lp is None:
        return sch
    if on("write_cache"):
        if act is not None:
            ablock = sch.get_sblock(act)
            sch.set_scope(ablock, 0, "local")
            sch.reverse_compute_at(ablock, lp["second"], preserve_unit_loops=True)
        write_cache(sch, block, epi, lp["second"])
    if on("vectorize_columns"):
        if run < tile.nr:  # a vector per stream: the tile's channels as nr/run unrolled vectors
            jo, ji = sch.split(lp["ji"], factors=[None, run])
            sch.unroll(jo)
            sch.vectorize(ji)
        else:
            sch.vectorize(lp["ji"])
        if act is not None:
            sch.vectorize(sch.get_loops(sch.get_sblock(act))[-1])
        if on("write_cache"):
            vectorize_pixel_run(sch, epi)
    if on("unroll_rows"):
        unroll_rows(sch, lp["ii"])
    if on("parallel_outer") and parallel:
        (parallel_outer if row_tasks else parallel_tiles)(sch, lp["outer"])
    if on("finish_reduction"):
        finish_reduction(sch, block, lp["k"])
    return sch


def pad_rows(sch, pad: str, rows, lanes: int):
    """The zero-padded input made under the loop ``rows`` over blocks of output rows (the
    parallel one): each task pads the input rows its block reads (its rows and the window's
    overlap) itself, in vectors, and its tiles read them from its own core's cache. Made once
    ahead of the parallel loop, by the calling thread, the worker's tiles read the copy from the
    other core's cache; see `tile_order.row_tasks` for the figures."""
    block = sch.get_sblock(pad)
    sch.compute_at(block, rows, preserve_unit_loops=True)
    vectorize_inner(sch, sch.get_loops(block)[-1], lanes)


def vectorize_pixel_run(sch, epi):
    """The direct conv's NCHW write of its [mr pixels, nr channels] register tile, vectorized
    along the tile's run of mr pixels of one output row (contiguous in NCHW): LLVM transposes
    the tile in registers with shuffles and writes each channel's run with one vector store,
    where the scalar loop wrote mr x nr floats one at a time. AVX2, one thread, CPU time,
    against onnxruntime's Conv + SiLU (the detector's stride-2 convs, whose K is short):
    3->16 at 320x320 1.12x -> 0.94x, 16->32 at 160x160 1.44-1.54x -> 1.30-1.39x, 16->16 at
    80x80 0.89x -> 0.84x; long-K convs unchanged (256->256 3x3 at 14x14 1.02x -> 0.99x)."""
    sch.vectorize(sch.get_loops(epi)[-1])
