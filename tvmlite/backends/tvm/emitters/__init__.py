"""TVM emitters, one module per op family, each op registered with ``@emitter("Conv")``.

    registry.py     the registry: emitter, lookup, registered
    elementwise.py  unary / binary ops, BatchNormalization; EwOp chains (also used by fusion)
    conv.py         Conv, ConvTranspose
    gemm.py         Gemm, MatMul
    pool.py         MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool
    reduce.py       Softmax, LogSoftmax, Reduce*, LRN
    tensor.py       views (Reshape, Flatten, ...), Concat, Transpose, Slice
    resize.py       Resize, Upsample (index tables on the host)
    lowered.py      tvmlite's Im2Col, MecLower, MecMatMul, WinogradInput, WinogradOutput

No module here imports TVM: an emitter hands ``low.add`` a factory that imports the kernel
builder (backends/tvm/kernels) only when the kernel is built, so `unsupported_ops` stays cheap.
Importing this package registers every family.
"""
from tvmlite.backends.tvm.emitters import conv, elementwise, gemm, index, lowered, pool, reduce, resize, tensor  # noqa: F401
from tvmlite.backends.tvm.emitters.registry import Emitter, emitter, lookup, registered  # noqa: F401
