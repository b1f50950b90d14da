"""The cache-driven loop order of the direct conv kernels (`conv.conv2d_direct`,
`conv_nhwc.conv2d_nhwc`): whether the pixel tiles run outside the channel tiles
(`pixel_tiles_outer`) and, where they do not, the output rows per block (`channel_row_block`),
from the sizes of the input, the weights and the L2 they are read from."""
from __future__ import annotations

import numpy as np

from tvmlite.ops.geometry import WindowGeometry


#: the per-core L2 in floats of Zen 1 (512 KiB), where the cache rules were first measured
L2_FLOATS = 512 * 1024 // 4


def l2_floats() -> int:
    """This host's per-core L2 in floats (`target.l2_cache_bytes`: Sapphire Rapids 2 MiB)."""
    from tvmlite.backends.tvm.kernels.target import l2_cache_bytes

    return l2_cache_bytes() // 4


# Input channels (per group) up to which a direct conv writing NCHW keeps its channel tiles
# outside (`pixel_tiles_outer`): an image stem's RGB(A) or gray planes.
IMAGE_CHANNELS = 4


def pixel_tiles_outer(geom: WindowGeometry, input_size: int, weight_size: int, *, nchw_out_channels: int = 0,
                      wide_nchw_write: bool = False) -> bool:
    """Whether a direct conv's pixel tiles should run outside its channel tiles
    (`S.tile_direct_conv`). Channel tiles outside (the default) read the whole input once per
    channel tile: from memory where the input is larger than the L2 (Zen 1: 512 KiB), about
    stride^2 / (nr x taps) floats per multiply-add, which a 3x3 stride-1 window (9 taps) hides and
    a 1x1 or stride-2 conv does not. Pixel tiles outside read the input once and the whole weights
    once per pixel tile, from the L2 where they fit it. So: a group-1 conv whose input is larger
    than the L2 and than its weights, whose weights fit the L2, with fewer than 9 taps per
    stride^2. AVX2, one thread, CPU time, against onnxruntime's Conv (interleaved medians, load
    5-10): ResNet-50's 1x1 convs at 56x56 reading NHWC 256->64 1.13x -> 0.78x, 256->128 1.17x ->
    0.84x, 64->64 0.89x -> 0.77x, 64->256 1.00x -> 0.90x, 256->512 stride 2 0.63x -> 0.56x; the
    detector's 3x3 convs with SiLU, stride 2, 16->32 at 160x160 1.31x -> 1.03x, 32->48 at 80x80
    1.01x -> 0.90x (a rerun, 80 rounds, `bench/conv_tiles.py --orders`: 1.12x -> 1.08x and 0.86x ->
    0.89x, inside the +-0.1 two builds of one kernel differed by there; the 1x1 gains held:
    256->64 1.12x -> 0.77x, 256->128 1.25x -> 0.86x). Kept: weights the larger operand (1024->2048 1x1 stride 2 from 14x14 1.02x,
    1.76x the other way; 256->256 3x3 at 14x14 0.98x against 1.19x), weights past the L2 (VGG's
    128->128 3x3 at 112x112, 576 KiB: 1.08x against 1.15x), an input that fits the L2 (48->64 3x3
    stride 2 at 40x40: 0.70x against 0.76x), 3x3 stride 1 (VGG's 64->128 at 112x112 1.01x
    against 1.05x, 64->64 at 224x224 0.98x against 1.00x). Grouped convs: not measured.
    ``nchw_out_channels``: the input channels per group of a conv that writes NCHW (`conv2d_direct`;
    0: not known or not NCHW). An image stem (at most IMAGE_CHANNELS of them, K = 27 for 3x3)
    keeps its channel tiles outside: there the transposing NCHW write weighs as much as the
    multiply-adds, and channel tiles outside write each channel plane's rows in turn (AVX2, one
    thread, CPU time, against onnxruntime's Conv, bench/conv_tiles.py --orders, load 13, channels
    outside -> pixels outside: 3->24 3x3 stride 2 from 224x224 (ShuffleNet's stem) 0.75x / 0.81x
    against 0.90x / 0.91x, 3->64 0.69x against 0.76x, 3->32 0.71x against 0.77x); written NHWC
    (`conv_nhwc.conv2d_nhwc`) the order did not matter or the pixels outside won (3->24 0.92x
    against 0.71x), so that kernel does not pass it.
    ``wide_nchw_write``: the NHWC-reading kernel (`conv_nhwc.conv2d_nhwc`) writing NCHW from an
    AVX-512 tile keeps its channel tiles outside: there they won or tied on every conv timed
    (Sapphire Rapids, one thread, CPU time, bench/conv_tiles.py --orders, 30 rounds, load 2.9,
    pixels outside -> channels outside, of onnxruntime's Conv): ResNet-50's 256->64 1x1 at 56x56
    0.87x -> 0.77x (a rerun 0.72x -> 0.67x), 512->128 at 28x28 0.86x -> 0.80x (0.77x -> 0.79x),
    64->256 at 56x56 1.19x -> 0.75x, 512->2048 at 7x7 1.67x -> 0.87x, its 128->128 3x3 stride 2
    from 56x56 0.99x -> 0.93x; read NHWC and written NHWC the pixels outside stay (64->256
    0.65x / 0.64x).
    The L2 here stays Zen 1's 512 KiB (`L2_FLOATS`) on every host, as a measured size, not this
    host's L2 (`l2_floats`): with Sapphire Rapids' 2 MiB the rule flips ResNet-50's 64-channel
    1x1 convs at 56x56, its 512->128 at 28x28 and SqueezeNet's 1x1s at 55x55 and 27x27 to channel
    tiles outside, and there the pixels outside still won (one thread, CPU time, bench/conv_tiles.py
    --orders, load 3.6, 50 rounds: 64->256 read NCHW, written NHWC 0.74x against 0.92x of
    onnxruntime's Conv; 64->64 0.66x against 0.69x; 512->128 0.77x against 0.79x); whole models
    (bench/tree_ab.py, one thread, CPU time, load 2.4) ResNet-50 1.020x, SqueezeNet 0.988x,
    Inception-v2 0.992x, DenseNet-121 0.995x of the fixed size."""
    l2 = L2_FLOATS
    taps, step = int(np.prod(geom.kernel)), int(np.prod(geom.strides))
    if 0 < nchw_out_channels <= IMAGE_CHANNELS or wide_nchw_write:
        return False
    return (geom.group == 1 and weight_size <= l2 and input_size > max(weight_size, l2)
            and taps < 9 * step)


def channel_row_block(geom: WindowGeometry, row_floats: int, w_shape, nr: int) -> int:
    """Output rows per block for a direct conv whose channel tiles run outside its pixel tiles
    (`S.tile_direct_conv`'s ``row_block``), 0 for none. Channel tiles outside read the whole
    input once per channel tile; where it is larger than the L2 and the window
    reads few taps per stride^2 (the `pixel_tiles_outer` test: a stride-2 3x3, not a stride-1
    one), every tile's k-steps, a few floats of one channel plane after another, miss to the L3.
    In blocks of output rows whose input rows fit half the L2 beside one channel tile's weight
    panel, a block's channel tiles find them in the L2; the weights are then read once per block,
    so only where they are no larger than the input. Group-1 convs; ``row_floats``: one padded
    input row of every channel the kernel reads; ``w_shape``: the conv's weights; ``nr``: its
    tile's channels. The block is the most rows that divide the output height and fit, fewer than
    all. AVX2, one thread, CPU time, against onnxruntime's Conv (interleaved medians, load 11-13): ResNet-50's 128->128 3x3 stride 2 from 56x56 1.11-1.19x ->
    0.97-0.98x (2 rows; 1, 4, 7, 14 rows 0.97-1.03x); not taken: its 256->256 stride 2 from
    28x28, weights 2.6x its input (2 rows 1.12x -> 1.13-1.19x). The L2 is this host's
    (`l2_floats`: Zen 1 512 KiB, Sapphire Rapids 2 MiB, where ResNet-50's conv above fits whole
    and SqueezeNet's stem takes none instead of 37-row blocks: one thread, CPU time, against the
    Zen 1 size, SqueezeNet 0.993x, ResNet-50 1.003x, bench/tree_ab.py, load 2.4)."""
    l2 = l2_floats()
    (kh, kw), (sh, sw), (dh, _) = geom.kernel, geom.strides, geom.dilations
    oh = geom.out_spatial[0]
    weight_size = int(np.prod(w_shape))

    def footprint(rows: int) -> int:  # the input rows a block of output rows reads
        return ((rows - 1) * sh + (kh - 1) * dh + 1) * row_floats
    if geom.group != 1 or kh * kw >= 9 * sh * sw or footprint(oh) <= l2 or weight_size > footprint(oh):
        return 0
    budget = l2 // 2 - int(np.prod(w_shape[1:])) * nr  # one channel tile's weight panel
    fits = [r for r in range(1, oh) if oh % r == 0 and footprint(r) <= budget]
    return max(fits, default=0)


def row_tasks(geom: WindowGeometry, weight_size: int) -> int:
    """Blocks of output rows the parallel loop of a padded direct conv runs (`S.tile_direct_conv`'s
    ``row_tasks``, each block padding its own input rows: `S.pad_rows`), 0 for the chunked tile loop
    with the pad made ahead of it. One block per thread (the last one a row short where they do
    not divide: SqueezeNet's 55, 27 and 13 rows) where each gets at least two rows and every
    thread's copy of the weights fits half this host's L2 (each block reads all the weights,
    where a thread of the chunked loop reads its channel tiles' alone); group-1 convs.
    Made ahead of the chunked loop by the calling thread, the padded copy sits in that core's
    cache and the worker's tiles read their input taps from it across cores, a channel plane's
    few floats at a time: on Sapphire Rapids (2 threads, the kernel alone with SiLU, best of 300
    interleaved, load 1.9, bench/conv_threads_ab.py) 64->64 3x3 at 20x20 137 us at 1 thread, 129
    us at 2 chunked (0.94x), 72 us in row blocks (0.52x); 48->64 3x3 stride 2 from 40x40 112 us,
    92 us (0.81x), 60 us (0.54x). One thread runs the blocks in turn: no slower. Weights past half
    the L2 keep the chunked loop, whose threads read half of them each: ResNet-50's 256->256 at
    14x14 (2.3 MiB) split 0.52x chunked and 0.50x in row blocks, its 512->512 at 7x7 0.53x and 0.57x
    (one thread 1189 against 1305 us; best of 200, load 1.4)."""
    from tvmlite.backends.tvm.kernels.target import host_threads

    th = host_threads()
    oh = geom.out_spatial[0]
    if th < 2 or geom.group != 1 or oh < 2 * th or weight_size > l2_floats() // 2:
        return 0
    return th


# Channel tiles below which a parallel flat 1x1 conv runs its pixel tiles outside; below the
# second where it reads at most SHORT_K input channels
FLAT_SPLIT_CHANNEL_TILES = 4, 8
SHORT_K = 64


def flat_pixels_split(channel_tiles: int, parallel: bool, k: int = 0) -> bool:
    """Whether a flat 1x1 conv (`conv_nhwc.conv2d_nhwc`: stride 1, unpadded, the image one row of
    pixels) should run its pixel tiles outside its channel tiles because it runs in parallel with
    fewer than FLAT_SPLIT_CHANNEL_TILES channel tiles: the chunked loop then splits by channel
    tile, every thread reads the whole input (written by the previous kernel, half of it in the
    other core's cache). Split by pixels each thread reads and writes its own half. Sapphire
    Rapids, `bench/kernel_threads.py` (best runs, in the plan, load 1.0-1.4, channels -> pixels
    outside), writing NHWC: SqueezeNet's 16->64 expand 1x1s at 55x55 (2 tiles) 2 threads 67 -> 36
    us and 70 -> 37 us (0.92 / 1.05 of one thread -> 0.57 / 0.60), one thread 74 -> 64 and 67 -> 61
    us; Inception-v2's 576->96 at 14x14 (3 tiles) 72-74 -> 60-63 us, one thread 120-123 -> 108 us.
    Writing NCHW, where one thread keeps the channel tiles outside (`pixel_tiles_outer`'s
    ``wide_nchw_write``): ResNet-50's 64->64 and 256->64 at 56x56 2 threads 132 -> 102, 364 -> 302,
    358 -> 299 us (0.63-0.68 -> 0.50), one thread 195 -> 205, 576 -> 598, 560 -> 588 us (the kernel
    built for 2 threads; a build for one keeps the order); SqueezeNet's squeeze 1x1s at 13x13
    28 -> 22, 38 -> 27, 40 -> 30, 49 -> 38 us, one thread alike; Inception-v2's ten such kernels 2
    threads 770 -> 737 us together, one thread 1300 -> 1276. With a short reduction (``k``, the
    input channels, at most SHORT_K) the tile's work is mostly reading its input and writing its
    output, and up to 7 channel tiles split by pixels: SqueezeNet's 32->128 expand 1x1s at 27x27
    (4 tiles) 43 -> 21 and 46 -> 23 us (1.04 / 1.17 of one thread before), 48->192 at 13x13 (6)
    16 -> 13 us, one thread 39-41 -> 35-38 us; with 320-1024 input channels (Inception-v2's 18 at
    14x14 and 7x7, 4-7 tiles) 2 threads 1820 -> 1813 us together, one thread 3123 -> 3269: kept."""
    few, short = FLAT_SPLIT_CHANNEL_TILES
    return parallel and channel_tiles < (short if 0 < k <= SHORT_K else few)
