"""One kernel alone: compiled for the host and given its arguments, for benchmarks and tests of
single kernels (whole graphs go through compile.compile_model)."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.kernels.target import import_tvm


def build_kernel(kd, target=None):
    """One kernel alone, compiled for ``target`` (default: this host): for benchmarks and tests of
    single kernels."""
    from tvmlite.backends.tvm.kernels.target import host_target

    tvm = import_tvm()
    return tvm.compile(tvm.IRModule({"main": kd.func}), target=target or host_target())


def kernel_args(kd, feeds: dict) -> tuple[list, list]:
    """The argument list of a single kernel built by build_kernel: its inputs from ``feeds``, its
    constants, and new output tensors (also returned on their own)."""
    tvm = import_tvm()
    args, outs = [], []
    for p in kd.params:
        if p.kind == "input":
            args.append(tvm.runtime.tensor(np.ascontiguousarray(feeds[p.name].reshape(p.shape))))
        elif p.kind == "const":
            args.append(tvm.runtime.tensor(p.array))
        else:
            outs.append(tvm.runtime.empty(p.shape, "float32", tvm.cpu()))
            args.append(outs[-1])
    return args, outs
