"""TVM emitters, one module per op family, each op registered with ``@emitter("Conv")``.

    registry.py     the registry: emitter, lookup, registered
    elementwise.py  unary / binary ops, BatchNormalization; EwOp chains (also used by fusion)
    conv.py         Conv, ConvTranspose
    gemm.py         Gemm, MatMul
    pool.py         MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool
    reduce.py       Softmax, LogSoftmax, Reduce*, LRN
    transformer.py  LayerNormalization
    tensor.py       views (Reshape, Flatten, ...), Concat, Transpose, Slice, Split, Cast
    index.py        integer/bool ops: Gather, Cast, comparisons, logical ops, Where, Expand, int arithmetic
    resize.py       Resize, Upsample (index tables on the host)
    qdq.py          tvmlite's QDQConv, QDQMatMul (int8 VNNI kernels; made by qdq_fusion.py), QMaxPool, QConcat
    lowered.py      tvmlite's Im2Col, MecLower, MecMatMul, WinogradInput, WinogradOutput

No module here imports TVM: an emitter hands ``low.add`` a factory that imports the kernel
builder (backends/tvm/kernels) only when the kernel is built, so `unsupported_ops` stays cheap.
Importing this package registers every family.
"""
from tvmlite.backends.tvm.emitters import (conv, elementwise, gemm, index, lowered, pool, qdq, reduce,  # noqa: F401
                                          resize, tensor, transformer)
from tvmlite.backends.tvm.emitters.registry import Emitter, emitter, lookup, registered  # noqa: F401
