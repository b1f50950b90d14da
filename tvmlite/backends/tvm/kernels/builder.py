"""The parameter collector every kernel builder starts from, and small TE helpers."""
from __future__ import annotations

import numpy as np
from tvm import te

from tvmlite.backends.tvm.kernels.defs import Param

F32 = "float32"


class Builder:
    """Collects placeholders and constants in parameter order for one kernel."""

    def __init__(self, name: str):
        self.name = name
        self.params: list[Param] = []
        self.tensors: list = []
        self._by_key: dict = {}

    def input(self, value: str, shape, dtype: str = F32) -> te.Tensor:
        key = ("input", value, tuple(shape))
        if key not in self._by_key:
            t = te.placeholder(tuple(int(d) for d in shape), dtype, name=f"in{len(self.params)}")
            self.params.append(Param("input", value, tuple(int(d) for d in shape)))
            self.tensors.append(t)
            self._by_key[key] = t
        return self._by_key[key]

    def const(self, array: np.ndarray, shape=None, label: str = "w", dtype=np.float32) -> te.Tensor:
        array = np.asarray(array, dtype=dtype, order="C")  # ascontiguousarray makes a 0-d array 1-d
        shape = tuple(int(d) for d in (array.shape if shape is None else shape))
        t = te.placeholder(shape, array.dtype.name, name=f"{label}{len(self.params)}")
        self.params.append(Param("const", f"{self.name}.{label}{len(self.params)}", shape, array))
        self.tensors.append(t)
        return t

    def table(self, array: np.ndarray, label: str = "idx") -> te.Tensor:
        """An int32 constant (gather indices computed on the host in float64, exactly as ONNX
        defines them, so no rounding decision is left to float32 arithmetic in the kernel)."""
        array = np.ascontiguousarray(array, dtype=np.int32)
        t = te.placeholder(array.shape, "int32", name=f"{label}{len(self.params)}")
        self.params.append(Param("const", f"{self.name}.{label}{len(self.params)}", array.shape, array))
        self.tensors.append(t)
        return t

    def finish(self, outputs: list[tuple[str, te.Tensor]]):
        for value, t in outputs:
            self.params.append(Param("output", value, tuple(int(d) for d in t.shape)))
            self.tensors.append(t)
        return te.create_prim_func(self.tensors)


def schedule(func):
    from tvm import s_tir

    return s_tir.Schedule(func)


def unrolled_sum(terms):
    v = terms[0]
    for t in terms[1:]:
        v = v + t
    return v
