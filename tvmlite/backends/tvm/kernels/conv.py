"""Convolution kernels over NCHW, all taking a 2-D `WindowGeometry` (`defs.window_2d` lifts 1-D):
the direct kernel (output channels x one row's pixels in registers, reading the padded input),
im2col + GEMM (columns made per tile inside `gemm.column_gemm`), chosen per conv by the work each
pads (`use_direct_conv`); depthwise conv in depthwise.py; ConvTranspose as a 1x1 GEMM
plus a col2im gather."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import F32, Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up
from tvmlite.backends.tvm.kernels.depthwise import depthwise_conv2d  # noqa: F401 - the emitter's name for it
from tvmlite.backends.tvm.kernels.epilogue import UNARY, bind_epilogue
from tvmlite.backends.tvm.kernels.gemm import column_gemm, conv_tile
from tvmlite.backends.tvm.kernels.tile_order import IMAGE_CHANNELS, channel_row_block, pixel_tiles_outer, row_tasks
from tvmlite.ops.geometry import WindowGeometry


def conv2d_gemm(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
                epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Conv2D as im2col + GEMM (per group: the groups are a batch dim of the GEMM). The im2col
    columns are packed [P/nr, K, nr] and made per column tile inside the GEMM; the weights are
    packed [CO/mr, K, mr] at build time; bias and ``epilogue`` are applied to the register tile
    on its way out."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = w.shape
    g = geom.group
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl, pb, pr = geom.pads
    oh, ow = geom.out_spatial
    p, k = oh * ow, ci * kh * kw
    # a 1x1, stride-1, unpadded conv reads its columns straight from the input rows
    pointwise = geom.pointwise
    tile = tile or conv_tile(co // g, p, lanes)
    nr = int(tile.nr)
    pp = round_up(p, nr)
    b = Builder(name)
    X = b.input(x, (n, c, h * wd) if pointwise else (n, c, h, wd))
    khw = kh * kw
    # the columns read a zero-padded copy of the input made once per call: no bounds test per
    # column entry (4 compares and a select on every gather: what made the 3->16 stem conv 2x
    # onnxruntime's time). A strided conv's copy is split into stride phases
    # [.., sh, sw, H/sh, W/sw], so the lanes of a column (consecutive output x) read consecutive
    # floats of one phase instead of a strided gather.
    strided = sh > 1 or sw > 1
    staged = not pointwise and (strided or any((pt, pl, pb, pr))) and (steps is None or "pad_input" in steps)
    hp = max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl + pr, (ow - 1) * sw + (kw - 1) * dw + 1)
    src = None
    if staged and strided:
        src = phase_planes(X, (n, c, h, wd), (hp, wp), (pt, pl), (sh, sw), (kh, kw))
    elif staged:
        src = zero_padded(X, (n, c, h, wd), (hp, wp), pt, pl)
    # a column tile that never crosses an output row (nr divides the row) has one row index and a
    # run of x for its lanes: (j // nr, j % nr) split exactly by the tile, so no division per lane
    whole_rows = ow % nr == 0

    def im2col(nn, gg, kk, j):
        if pointwise:
            if pp == p:
                return X[nn, gg * ci + kk, j]
            # the padding columns of the last tile read the last pixel (their results are
            # dropped); the clamp is a per-lane gather, so only that tile takes it: a branch on
            # the tile (j // nr, a scalar) keeps every other tile's lanes one contiguous load
            return tirx.if_then_else(j // nr < p // nr, X[nn, gg * ci + kk, j],
                                     X[nn, gg * ci + kk, tirx.min(j, p - 1)])
        cc, r = kk // khw, kk % khw
        if whole_rows:  # j = jt * nr + ji (`column_gemm`): jt, ji come out whole
            t = j // nr
            oy, ox = t // (ow // nr), (t % (ow // nr)) * nr + j % nr
        else:
            jj = tirx.min(j, p - 1)  # the tile's padding columns read the last pixel's: dropped
            oy, ox = jj // ow, jj % ow
        ky, kx = (r // kw) * dh, (r % kw) * dw
        if src is not None and strided:
            return src[nn, gg * ci + cc, ky % sh, kx % sw, oy + ky // sh, ox + kx // sw]
        y, xx = oy * sh + ky, ox * sw + kx
        if src is not None:
            return src[nn, gg * ci + cc, y, xx]
        if not any((pt, pl, pb, pr)):  # unpadded: every window is inside the input
            return X[nn, gg * ci + cc, y, xx]
        y, xx = y - pt, xx - pl
        inside = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(inside, X[nn, gg * ci + cc, y, xx], tirx.const(0.0, F32))

    kd = column_gemm(name, b, im2col, w.reshape(g, co // g, k), bias, out_shape=(n, co, oh, ow),
                     out_value=out_value, epilogue=epilogue, lanes=lanes, tile=tile, steps=steps,
                     pad="pad" if src is not None else None)
    return kd


def direct_tile(cog: int, ow: int, lanes: int, taps: int = 1, *, strided: bool = False) -> S.GemmTile:
    """Register tile for the direct conv: ``nr`` output channels (SIMD lanes: two vectors when
    that pads the channels no more than one does, so 48 channels take 3 x 16, not 2 x 32 with a
    quarter wasted) by ``mr`` output pixels of one row. ``mr`` is the width, up to 12 pixels
    and the host's accumulator registers (`S.accumulator_vectors`: AVX-512 20 vectors, 10 pixels
    at two vectors of channels, 12 at one; wider tiles measured slower; AVX2 8,
    4 pixels), that pads the row least, the widest among equals. A conv of several ``taps``
    (3x3) takes one vector of channels instead where its wider pixel tile pads the row less
    (AVX2: 7 x 8 at 7x7 and 14x14, 1.21x -> 1.02x and 1.14x -> 0.99x of onnxruntime's Conv on
    ResNet-50's 512 and 256-channel 3x3 convs; its 1x1 convs ran slower that way, 1.36x -> 1.76x).
    AVX2's two-vector tile takes a 5th pixel (10 accumulators, 13 of the 16 registers) where that
    alone fills the row better: rows of 55, 15, 25 (one thread, CPU time, against onnxruntime's
    Conv, bench/conv_tiles.py) 16->64 3x3 at 55x55 5 x 8 0.96x -> 5 x 16 0.86x (4 x 16 0.90x),
    64->192 1.09x -> 0.96x (1.01x), 48->48 at 15x15 0.77x -> 0.68x (0.75x); where 4 pixels fill the
    row as well (the detector's 160 ... 20) the 8-accumulator tile stays (5 x 16 measured alike).
    A ``strided`` conv of several taps keeps the two-vector tile up to 8% of row padding (5% at
    stride 1): its pixels' input is spread over twice the floats, so the one-vector tile's
    extra broadcast per multiply-add costs more. AVX2, one thread, CPU time, against onnxruntime's
    Conv (interleaved medians, load 9-12), 3x3 stride 2 to 14 wide, 7 x 8 -> 5 x 16: ResNet-50's
    256->256 1.12-1.14x -> 1.04-1.06x, Inception-v2's 96->96 1.08x -> 0.86x, 128->160 1.05x ->
    0.96x, 128->192 1.04x -> 0.98x; to 7 wide (4 x 16 pads 1 of 8) 7 x 8 stays (512->512: 1.10x,
    4 x 16 1.11x, 5 x 16 1.40x); the same convs at stride 1 keep 7 x 8 (256->256 at 14x14 0.98x
    against 1.04x)."""
    budget = S.accumulator_vectors(lanes)

    def pixels(vectors: int) -> int:
        cap = min(12, max(1, budget // vectors))
        if ow <= cap:
            return ow
        lo = min(4, cap)
        m = min(range(lo, cap + 1), key=lambda m: (round_up(ow, m) - ow, -m))
        if vectors == 2 and budget <= 8 and round_up(ow, cap + 1) - ow < round_up(ow, m) - ow:
            return cap + 1  # AVX2: a 5th pixel (10 accumulators) where it alone pads the row less
        return m
    if not (cog >= 2 * lanes and round_up(cog, 2 * lanes) == round_up(cog, lanes)):
        return S.GemmTile(mr=pixels(1), nr=lanes)
    mr = pixels(2)
    if taps > 1:
        mr1 = pixels(1)
        pad2 = round_up(ow, mr) - ow
        # a 2-vector tile that pads the row by 5% or less keeps its weight reuse (AlexNet's 11x11
        # stride-4 stem to 54 wide: 6 x 8 1.09-1.14x -> 5 x 16 1.01-1.02x of onnxruntime's Conv);
        # strided, 8% or less (1 of 15 kept, 1 of 8 not)
        if round_up(ow, mr1) - ow < pad2 and pad2 > (0.08 if strided else 0.05) * round_up(ow, mr):
            return S.GemmTile(mr=mr1, nr=lanes)
    return S.GemmTile(mr=mr, nr=2 * lanes)


def use_direct_conv(w_shape, geom: WindowGeometry, lanes: int) -> bool:
    """Whether `conv2d_direct` fits a conv better than im2col + GEMM, from the work each pads:
    the direct kernel rounds the channels up to its vector tile and the row to its pixel tile,
    the GEMM rounds the channels up to 8 rows and the pixels (all rows) up to 2 vectors; the
    direct kernel is taken when it wastes no more, so it also saves the im2col gathers. A strided
    conv takes it unless it wastes a third more: there the GEMM's columns are strided gathers,
    and it ran 2-3x slower than the direct kernel on the detector's stride-2 convs; a stride-1
    conv whose GEMM column tiles cross output rows (a width of no whole number of tiles: 27, 13)
    takes it on AVX2 unless it wastes a tenth more, as there every column lane divides and
    gathers (AVX-512's wider direct tiles already fill those rows). Not for an
    unpadded 1x1 conv (a plain GEMM over the input rows, or for a strided one over its subsampled
    copy, `phase_planes`) unless the GEMM pads a small image's pixels by a tenth or more, and not
    for a short reduction
    (`short_reduction`: K < 8 vectors; with AVX2's tiles 3 vectors where the conv has several taps
    and at least 3 channels, with AVX-512's where the GEMM's column tiles cross output rows):
    the direct tile leaves through a transposing write of its mr x nr
    values (shuffles, a store per channel), which only a long K hides. An RGB stem (3x3, K = 27)
    needs K of 3 AVX2 vectors: there the GEMM's strided, padded column gathers cost more
    than the direct tile's write (one vector store per channel's pixel run,
    `S.vectorize_pixel_run`). AVX2, one thread, CPU time, with SiLU, against onnxruntime's Conv
    (bench/conv_tiles.py): 3->16 s2 at 320x320 GEMM 1.23-1.33x -> direct 0.94-1.04x, 3->24 s2 at
    224x224 1.34x -> 1.05x, PP-OCR cls' 3->8 s2 0.87x -> 0.82x, 3->24 at 32x32 and 96x96 alike;
    without SiLU 3->32 s2 at 224x224 1.29x -> 0.71x, 3->64 at 224x224 0.94x -> 0.70x. A 1-channel
    conv stays a GEMM (5x5, K = 25: 0.81x against 0.94x direct, measured with the scalar writes
    of before).
    """
    co, ci, kh, kw = (int(d) for d in w_shape)
    cog = co // geom.group
    oh, ow = geom.out_spatial
    gt = conv_tile(cog, oh * ow, lanes)
    if short_reduction(ci, kh * kw, lanes, gemm_crosses_rows=ow % gt.nr != 0):
        return False
    dt = direct_tile(cog, ow, lanes, kh * kw, strided=max(geom.strides) > 1)
    direct = cog / round_up(cog, dt.nr) * ow / round_up(ow, dt.mr)
    gemm = cog / round_up(cog, gt.mr) * (oh * ow) / round_up(oh * ow, gt.nr)
    if (kh, kw) == (1, 1) and not geom.padded:  # strided too: a GEMM over the subsampled copy
        if geom.group > 1 and S.accumulator_vectors(lanes) > 8:
            return False  # AVX-512: measured on plain 1x1 convs only (shufflenet's grouped ones ran slower)
        # AVX2 (one thread, CPU time, the kernels alone, interleaved, load 11-12): ShuffleNet's
        # 544->544 group-4 at 7x7 direct 7 x 8 0.94x of the GEMM's time (best runs 0.93x); at 14x14
        # the rule keeps the GEMM (272->272 g4: direct 1.22x of it)
        # the plain GEMM unless its pixel tiles pad a small image by a tenth or more (7x7: 49 of
        # 64 columns, 14x14: 196 of 224), where the direct tile (a row's pixels) wastes nothing:
        # one thread, against onnxruntime's Conv, 2048->512 at 7x7 1.18x -> 1.02x, 512->128 at
        # 14x14 1.02x -> 0.91x; at 28x28 and up the GEMM stays ahead. ResNet-50's stride-2 1x1
        # convs (AVX2, one thread, CPU time, bench/conv_tiles.py): 256->512 from 56x56 direct
        # 1.24x -> GEMM 0.81x of onnxruntime, 512->1024 from 28x28 1.42x -> 0.89x
        return 0.9 * direct >= gemm
    if max(geom.strides) > 1:
        return direct >= 0.75 * gemm
    if ow % gt.nr and S.accumulator_vectors(lanes) <= 8:  # measured with AVX2's tiles
        # the GEMM's column tiles cross output rows: each column lane divides its pixel index by
        # the width and gathers, per k. AVX2, one thread, CPU time, against onnxruntime's Conv
        # (bench/conv_tiles.py): GEMM -> direct 1.13x -> 0.87x at 32->128 3x3 27x27,
        # 1.17x -> 0.96x at 128->192, 1.14x -> 0.77x at 16->32 5x5 27x27; 13x13 (7 x 8 tile)
        # 0.87x -> 0.83x at 48->192, 0.93x -> 0.91x at 64->256
        return direct >= 0.9 * gemm
    return direct >= gemm


def short_reduction(channels: int, taps: int, lanes: int, *, gemm_crosses_rows: bool = False) -> bool:
    """Whether a reduction of K = ``channels`` x ``taps`` is too short for the direct conv
    (`use_direct_conv`): its tile leaves through a transposing write that only a long K hides.
    8 vectors with AVX-512's 20-accumulator tiles; AVX2's 8-accumulator tiles write a third as much
    per tile, and there 3 vectors do for a conv of several taps and at least 3 channels (a 1x1 or
    1-channel conv keeps the 8-vector rule): 3-channel 3x3 stems (K = 27, one thread, CPU time,
    against onnxruntime's Conv, bench/conv_tiles.py) ran GEMM -> direct 1.31x -> 0.70x at 3->64
    stride 2 to 111x111 (squeezenet's stem: a row of 111 is no whole number of GEMM column tiles,
    so every column lane divides), 1.24x -> 0.69x at 3->32 stride 2 from 224x224, 0.97x -> 0.82x
    at 3->16 from 320x320. AVX-512 takes the same 3 AVX2 vectors (24 floats) for an image stem
    (at most IMAGE_CHANNELS channels) where
    the GEMM's column tiles (2 vectors of pixels) cross output rows (``gemm_crosses_rows``: every
    column lane then divides and gathers, `use_direct_conv`); where they do not, the GEMM stays.
    AVX-512 (Sapphire Rapids, 16 lanes), one thread, CPU time, against onnxruntime's Conv
    (bench/conv_tiles.py, 40-60 interleaved rounds, load 3-4 on 2 cores), GEMM -> direct: rows
    crossed, 3x3 stride 2 from 224x224 (112 wide) 3->16 1.93x -> 1.01x, 3->24 (ShuffleNet's stem)
    1.30x -> 0.94x, 3->32 1.34x -> 0.91x, 3->64 0.98x -> 0.81x; whole rows kept as GEMM: 3->16
    from 320x320 0.94x (direct 0.99-1.03x), from 48x320 0.97x (1.04-1.10x), 3->64 at 224x224
    stride 1 (VGG's stem) 0.73x (0.80x; a noisier rerun had it the other way)."""
    k = channels * taps
    stem = channels <= IMAGE_CHANNELS and gemm_crosses_rows  # AVX-512: measured on image stems only
    if taps > 1 and channels >= 3 and (S.accumulator_vectors(lanes) <= 8 or stem):
        return k < 3 * 8
    return k < 8 * lanes


def conv2d(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
           epilogue: Epilogue, lanes: int) -> KernelDef:
    """Conv2D: direct (`conv2d_direct`) where `use_direct_conv` says so, else im2col + GEMM."""
    fn = conv2d_direct if use_direct_conv(w.shape, geom, lanes) else conv2d_gemm
    return fn(name, x, x_shape, w, bias, geom, out_value=out_value, epilogue=epilogue, lanes=lanes)


def zero_padded(X, x_shape, padded_hw, top: int, left: int):
    """X [n, c, h, w] placed at (top, left) in a zero plane of ``padded_hw`` (the "pad" stage
    conv kernels read instead of bounds-checking every tap)."""
    n, c, h, wd = x_shape
    hp, wp = padded_hw
    return te.compute((n, c, hp, wp), lambda nn, cc, y, xx: tirx.if_then_else(
        tirx.all(y >= top, y < top + h, xx >= left, xx < left + wd), X[nn, cc, y - top, xx - left],
        tirx.const(0.0, F32)), name="pad")


def phase_planes(X, x_shape, padded_hw, pads_begin, strides, kernel):
    """The zero-padded plane of `zero_padded` split into stride phases: [n, c, sh, sw, Hp/sh, Wp/sw]
    with P[.., py, px, y, x] = padded[.., y*sh + py, x*sw + px], so a strided window read at output
    x, x+1, ... is a contiguous run of one phase. A 1-tap kernel dim reads phase 0 only: a strided
    1x1 conv's copy is the subsampled input alone."""
    n, c, h, wd = x_shape
    hp, wp = padded_hw
    top, left = pads_begin
    sh, sw = strides
    hq, wq = -(-hp // sh), -(-wp // sw)
    ph, pw = (1 if kernel[0] == 1 else sh), (1 if kernel[1] == 1 else sw)

    def at(nn, cc, py, px, y, xx):
        iy, ix = y * sh + py - top, xx * sw + px - left
        return tirx.if_then_else(tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd), X[nn, cc, iy, ix],
                                 tirx.const(0.0, F32))
    return te.compute((n, c, ph, pw, hq, wq), at, name="pad")


def conv2d_direct(name: str, x: str, x_shape, w: np.ndarray, bias, geom: WindowGeometry, *, out_value: str,
                  epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Conv2D without im2col columns: the register tile is nr output channels (vector lanes) by
    mr pixels of one output row; per (input channel, ky, kx) it loads nr packed weights and
    broadcasts mr input pixels read straight from the zero-padded input (strided for a strided
    conv). Nothing of size K x P is made, no gathers, and the pixel tile follows the row width,
    so small outputs (7x7) are not padded to a vector of pixels. Weights are packed
    [G, CO/nr, CI, KH, KW, nr] at build time; bias and ``epilogue`` are applied on the way out."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = (int(d) for d in w.shape)
    g = geom.group
    cog = co // g
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl, pb, pr = geom.pads
    oh, ow = geom.out_spatial
    tile = tile or direct_tile(cog, ow, lanes, kh * kw, strided=max(geom.strides) > 1)
    mr, nr = int(tile.mr), int(tile.nr)
    cop, owp = round_up(cog, nr), round_up(ow, mr)
    # padded plane: the pads plus the columns read by the last pixel tile's padding
    hp = max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl + pr, (owp - 1) * sw + (kw - 1) * dw + 1)
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    wmat = np.zeros((g, cop, ci, kh, kw), np.float32)
    wmat[:, :cog] = w.reshape(g, cog, ci, kh, kw)
    packing = steps is None or "pack_array" in steps
    W = b.const(pack_direct_weights(wmat, nr, S.weight_run(nr, lanes)) if packing else wmat, (g, cop, ci, kh, kw))
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(g, cog), label="bias") if bias is not None else None
    pre, rest = unary_prefix(epilogue)
    apply = bind_epilogue(rest, b, (n, co, oh, ow))

    # nothing to pad (a 1x1 conv whose pixel tiles fill the row): read the input itself, not a copy
    unpadded = (pt, pl, hp, wp) == (0, 0, h, wd)
    pad = X if unpadded else zero_padded(X, (n, c, h, wd), (hp, wp), pt, pl)
    rc = te.reduce_axis((0, ci), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    # channels last: the register tile [mr, nr] has its vector lanes contiguous
    acc = te.compute((n, g, oh, owp, cop), lambda nn, gg, y, xx, i: te.sum(
        pad[nn, gg * ci + rc, y * sh + ry * dh, xx * sw + rx * dw] * W[gg, i, rc, ry, rx], axis=[rc, ry, rx]),
        name="acc")
    # the NCHW write below only transposes (and runs the rest of the epilogue)
    tile_out = tile_activation(acc, pre, b, B, (n, co, oh, ow), cog)

    def out(nn, gg, cc, y, xx):
        v = tile_out[nn, gg, y, xx, cc]
        if B is not None and not pre.ops:
            v = v + B[gg, cc]
        return apply(v, (nn, gg * cog + cc, y, xx))

    Y = te.compute((n, g, cog, oh, ow), out, name="epilogue")
    outer = pixel_tiles_outer(geom, n * c * h * wd, w.size, nchw_out_channels=ci)
    return finish_direct(b, out_value, Y, tile, lanes=lanes, steps=steps, unpadded=unpadded, act=bool(pre.ops),
                         work=n * co * oh * ow * ci * kh * kw, w_index=w_index if packing else None,
                         pixels_outer=outer, row_block=0 if outer else channel_row_block(geom, ci * wp, w.shape, nr),
                         row_tasks=row_tasks(geom, w.size))


def finish_direct(b: Builder, out_value: str, Y, tile: S.GemmTile, *, lanes: int, steps, unpadded: bool, act: bool,
                  work: int, w_index: int | None, pixels_outer: bool = False, row_block: int = 0,
                  row_tasks: int = 0) -> KernelDef:
    """A direct conv's kernel from its epilogue tensor ``Y`` (blocks "pad" unless ``unpadded``,
    "acc", "act" with ``act``, "epilogue"): scheduled by `S.schedule_direct_conv`; ``w_index``:
    the parameter of the packed weights (their shape becomes the packed array's);
    ``pixels_outer``, ``row_block``: the tile loops' order (`pixel_tiles_outer`, `channel_row_block`);
    ``row_tasks``: the parallel blocks of rows that pad their own input (`row_tasks`)."""
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.schedule_direct_conv(sch, None if unpadded else "pad", "acc", "epilogue", tile, lanes=lanes, steps=steps,
                           parallel=S.worth_parallel(work), act="act" if act else None, pixels_outer=pixels_outer,
                           row_block=row_block, row_tasks=row_tasks)
    params = b.params
    if w_index is not None:
        params[w_index].shape = params[w_index].array.shape
    names = direct_step_names(steps)
    return KernelDef(b.name, params, sch.mod["main"],
                     steps=[n for n in names if n != "pad_input"] if unpadded else names)


def tile_activation(acc, pre: Epilogue, b: Builder, B, out_shape, cog: int):
    """The direct conv's register tile ``acc`` [n, g, rows, pixels, channels] with the bias ``B``
    and ``pre`` (the leading unary ops: SiLU, sigmoid...) applied in its own layout, a vector of
    channels at a time (the "act" block); ``acc`` itself when ``pre`` is empty."""
    if not pre.ops:
        return acc
    apply_pre = bind_epilogue(pre, b, out_shape)

    def act(nn, gg, y, xx, i):
        v = acc[nn, gg, y, xx, i]
        if B is not None:
            v = v + B[gg, tirx.min(i, cog - 1)]  # padded channels: computed, never stored
        return apply_pre(v, ())
    return te.compute(tuple(acc.shape), act, name="act")


def unary_prefix(epilogue: Epilogue) -> tuple[Epilogue, Epilogue]:
    """(leading ops that read nothing but the value, the rest): the part the direct conv can run
    on its channels-last register tile."""
    k = 0
    while k < len(epilogue.ops) and epilogue.ops[k].op in UNARY:
        k += 1
    return Epilogue(epilogue.ops[:k], epilogue.layouts), Epilogue(epilogue.ops[k:], epilogue.layouts)


def pack_direct_weights(wmat: np.ndarray, nr: int, run: int = 0) -> np.ndarray:
    """[G, CO, CI, KH, KW] -> [G, CO/nr, CI, KH, KW, nr], with ``run`` (`S.weight_run`) below nr
    [G, CO/nr, nr/run, CI, KH, KW, run] (`S.pack_direct_weights`' layout)."""
    g, cop, ci, kh, kw = wmat.shape
    run = run or nr
    if run == nr:
        return np.ascontiguousarray(wmat.reshape(g, cop // nr, nr, ci, kh, kw).transpose(0, 1, 3, 4, 5, 2))
    return np.ascontiguousarray(wmat.reshape(g, cop // nr, nr // run, run, ci, kh, kw).transpose(0, 1, 2, 4, 5, 6, 3))


def direct_step_names(steps) -> list[str]:
    return [s for s in S.DIRECT_CONV_STEPS if steps is None or s in steps]


def conv_transpose_gemm_weights(w: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weights [C, M/g, *k] as the weights of a grouped 1x1 conv producing the
    columns [N, M*K, H, W]: column channel (m*K + tap) of group g is W[g*Cg + c, m, tap] summed
    over c, i.e. the transposed per-group matrix."""
    c, mg = w.shape[:2]
    k = int(np.prod(w.shape[2:]))
    cg = c // group
    wt = w.reshape(group, cg, mg * k).transpose(0, 2, 1)
    return np.ascontiguousarray(wt.reshape(group * mg * k, cg, 1, 1), dtype=np.float32)


def col2im(name: str, cols: str, cols_shape, bias, geom: WindowGeometry, *, out_value: str, epilogue: Epilogue,
           lanes: int) -> KernelDef:
    """The second half of ConvTranspose: every output pixel gathers the column entries of the
    taps that land on it (scatter-add turned into a gather, so no two threads write one pixel),
    adds the bias and applies ``epilogue``. ``cols`` is [N, M*K, H, W] (`conv2d_gemm` with
    `conv_transpose_gemm_weights`); ``geom`` is the transposed conv's window from the columns'
    H, W to its output, read for kernel, strides, dilations and the begin pads (negative: the
    output starts before the first tap)."""
    n, mk, h, wd = (int(d) for d in cols_shape)
    kh, kw = geom.kernel
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl = geom.pad_begin
    m = mk // (kh * kw)
    out_shape = (n, m) + tuple(geom.out_spatial)
    assert mk == m * kh * kw, (cols_shape, geom)
    b = Builder(name)
    X = b.input(cols, (n, mk, h, wd))
    B = b.const(np.asarray(bias, np.float32).reshape(m), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, out_shape)
    zero = tirx.const(0.0, F32)
    # stride = kernel, no dilation (2x2 stride-2 upsampling): exactly one tap per pixel
    disjoint = (kh, kw) == (sh, sw) and dh == dw == 1

    def read(nn, mm, ty, tx, ky, kx):
        iy, ix = ty // sh, tx // sw  # floor division: ty may be negative
        ok = tirx.all(ty >= 0, iy < h, tx >= 0, ix < wd)
        if not disjoint:
            ok = tirx.all(ok, ty % sh == 0, tx % sw == 0)
        ch = mm * (kh * kw) + ky * kw + kx
        v = X[nn, ch, tirx.min(tirx.max(iy, 0), h - 1), tirx.min(tirx.max(ix, 0), wd - 1)]
        return tirx.if_then_else(ok, v, zero)

    def out(nn, mm, oy, ox):
        py, px = oy + pt, ox + pl
        if disjoint:
            v = read(nn, mm, py, px, py % sh, px % sw)
        else:  # few taps (a kernel's area): unrolled, so the block stays purely spatial
            v = None
            for ky in range(kh):
                for kx in range(kw):
                    t = read(nn, mm, py - ky * dh, px - kx * dw, ky, kx)
                    v = t if v is None else v + t
        if B is not None:
            v = v + B[mm]
        return apply(v, (nn, mm, oy, ox))

    Y = te.compute(out_shape, out, name="ew")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    S.parallel_vectorize(sch, "ew", lanes,
                         parallel=S.worth_parallel(int(np.prod(out_shape)) * (1 if disjoint else kh * kw)))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])
