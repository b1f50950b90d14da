"""Which kernels run across the cores, and how their parallel loops are cut: the work a kernel
must weigh to be worth waking the pool (`worth_parallel`, with the weights of the ops whose
operations cost more than a GEMM multiply-add), and the parallel loop forms the schedules use
(`parallel_outer`, `parallel_tiles`, `parallel_chunks`). Split out of schedules.py, which
re-exports every name (kernels call them as ``S.worth_parallel`` and so on).
"""
from __future__ import annotations


def worth_parallel(work: int) -> bool:
    """Whether a kernel doing ``work`` operations gains from running on all cores. Waking the
    pool costs microseconds on a quiet machine and far more on a busy one (a barrier waits for a
    descheduled thread), so small kernels run on one core. $TVMLITE_MIN_PARALLEL_WORK overrides."""
    from tvmlite.backends.tvm.kernels.target import host_threads

    if host_threads() < 2:
        return False
    return work >= min_parallel_work()


# A depthwise multiply-add weighs this many GEMM ones in `worth_parallel`: one tap per output
# per load, no register tile reusing an operand. AVX2, one thread, PP-OCR cls's float 5x5
# depthwise convs alone (best of 20, load 6-9): 0.96M multiply-adds in 0.26 ms, 0.63M in 0.15 ms,
# 3.5-3.7 G/s, against 20-22 G/s for a float im2col + GEMM conv (NOTES-TVM: 115M in 1.31 ms on
# 2 threads); by their raw count they stayed on one core where onnxruntime splits them.
DEPTHWISE_WEIGHT = 4


def depthwise_work(n: int, c: int, oh: int, ow: int, kh: int, kw: int) -> int:
    """The work `worth_parallel` weighs for a depthwise conv (float or int8): its multiply-adds
    at DEPTHWISE_WEIGHT GEMM multiply-adds each."""
    return DEPTHWISE_WEIGHT * n * c * oh * ow * kh * kw


# A pooling window's tap (a load and a max or add, no register reuse) weighs this many GEMM
# multiply-adds in `worth_parallel`. AVX2, one thread, CPU time, the window kernels alone (load 11),
# measured on the depthwise kernel the NCHW pools share (depthwise.WindowPlane): 3x3 with Relu 219
# ps a tap at 28x28 (136 channels), 263 with stride 2 from 56x56 (112), 158 at 14x14 (272), 254 at
# 7x7 (544); GEMM and direct convs 73-130 ps a multiply-add. Counted by their taps alone,
# ShuffleNet's stem MaxPool and SqueezeNet's second MaxPool ran on one core at 2 threads. The
# 2-thread gain itself is not measured: at load 11-16 every parallel kernel ran slower than serial.
POOL_TAP_WEIGHT = 2


def pool_work(n: int, c: int, oh: int, ow: int, kh: int, kw: int) -> int:
    """The work `worth_parallel` weighs for an NCHW pool: its taps at POOL_TAP_WEIGHT each."""
    return POOL_TAP_WEIGHT * n * c * oh * ow * kh * kw


def min_parallel_work() -> int:
    """Operations (multiply-adds, elements) below which a kernel stays on one core. On the quiet
    2-core host the digits CNN (5-19M-MAC convs) runs in 0.62 ms with its convs parallel against
    1.11 ms on one core (onnxruntime: 0.44 ms). Under heavy load from other jobs the opposite held
    (4-16 ms parallel against 1.0-1.4 ms: a barrier waits for a descheduled worker), so a shared,
    busy host may want $TVMLITE_MIN_PARALLEL_WORK raised (33554432 kept those convs on one core)."""
    from tvmlite.limits import env_int

    return env_int("TVMLITE_MIN_PARALLEL_WORK", 1 << 20, nonnegative=True)


def parallel_outer(sch, loops):
    """Fuse ``loops`` (outermost first) and run them across cores."""
    loops = [lp for lp in loops if lp is not None]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
    return fused


def parallel_tiles(sch, loops):
    """Fuse the register-tile loops ``loops`` (outermost first) and run them across cores as
    contiguous chunks (`parallel_chunks`: `chunk_count`, else one per thread), each chunk's tiles
    in a serial loop. TVM allocates a buffer made under a parallel loop (the tile's accumulator,
    a GEMM's column panel) through the runtime's workspace on every iteration: with a tile per
    iteration, each tile called TVMBackendAllocWorkspace, memset its accumulator and freed it
    (the 1-thread build, serial, allocates once per call). The chunks share the tiles among the
    threads as TVM's static split of the fused loop did. Sapphire Rapids, 2 threads, the kernels
    alone (`conv_nhwc.conv2d_nhwc` NHWC in and out), process CPU time chunked / per tile,
    interleaved, load 3-4: 16->64 1x1 at 55x55 0.73x, 64->64 at 56x56 0.80x, 64->256 0.91x,
    512->2048 at 7x7 0.95x, 256->64 at 56x56 0.98x."""
    from tvmlite.backends.tvm.kernels.target import host_threads

    loops = [lp for lp in loops if lp is not None]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _extent(sch, fused)
    if ext is None:
        sch.parallel(fused)
        return fused
    chunks = chunk_count(ext)
    return parallel_chunks(sch, fused, chunks if chunks > 1 else max(2, host_threads()))


# Tasks a loop is cut into by `parallel_chunks`. A buffer made under a parallel loop (a depthwise
# conv's padded channel plane and register tile) is allocated and freed through the runtime's
# workspace on every iteration, where under a serial loop TVM allocates it once per call: PP-OCR
# cls's 200-channel 5x5 depthwise conv made 400 such calls per run and ran 7-10% slower at one
# thread with its channels parallel than serial (AVX2, interleaved, CPU time).
PARALLEL_TASKS = 8


def parallel_chunks(sch, loop, tasks: int = PARALLEL_TASKS):
    """Run ``loop`` across cores as ``tasks`` contiguous chunks (an outer parallel loop over a
    serial one), so what is allocated under it is allocated once per chunk."""
    ext = _extent(sch, loop)
    if ext is None or ext <= tasks:
        sch.parallel(loop)
        return loop
    outer, _ = sch.split(loop, factors=[int(tasks), None])
    sch.parallel(outer)
    return outer


def chunk_count(ext: int, tasks: int = PARALLEL_TASKS) -> int:
    """How many equal chunks to cut a parallel loop of ``ext`` iterations into: the most, up to
    ``tasks``, that divide it and share evenly among the host's threads; 1 where none does."""
    from tvmlite.backends.tvm.kernels.target import host_threads

    th = host_threads()
    return next((d for d in range(min(tasks, ext), 1, -1) if ext % d == 0 and d % th == 0), 1)


def _extent(sch, loop):
    try:
        return int(sch.get(loop).extent)
    except Exception:  # noqa: BLE001 - a symbolic extent
        return None
