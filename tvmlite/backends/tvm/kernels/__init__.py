"""TE computes for tvmlite's TVM backend, one builder per op family, each with its schedule.

    defs.py        Param, KernelDef, EwOp, Epilogue, window_2d (no TVM: the lowering imports it)
    target.py      the host CPU as a TVM target, TVM's thread pool, vector lanes
    schedules.py   the named schedule steps (GEMM recipe, direct conv, parallel_vectorize)
    builder.py     Builder: a kernel's placeholders and constants in parameter order
    epilogue.py    fused elementwise ops applied on the way out of a kernel
    gemm.py        dense GEMM, column GEMM, weights-on-the-left batched GEMM, batched MatMul
    conv.py        direct conv, im2col + GEMM, ConvTranspose (col2im)
    depthwise.py   depthwise conv (optionally through a channel shuffle), the padded-plane helper
    grouped.py     grouped 1x1 conv (ShuffleNet) with a group axis, input rows read in place
    pool.py        MaxPool / AveragePool, global pooling
    reduce.py      Softmax / LogSoftmax, Reduce*, LRN
    tensor.py      elementwise chains, Concat, Transpose, Slice, Resize
    index.py       Gather, and `mapped`: comparisons, logical ops, Where, Cast, Expand, int arithmetic
    lowered.py     tvmlite's Im2Col, MecLower / MecMatMul, WinogradInput / WinogradOutput

Window geometry comes as `tvmlite.ops.geometry.WindowGeometry` (2-D; `defs.window_2d` lifts a
1-D window to unit height). Integer and bool tensors go through `index.py` and the data movement
of `tensor.py`; the rest is float32. Every module but `defs` and `target` imports
TVM and is loaded only when a kernel is built; this package's own import loads nothing.
"""
