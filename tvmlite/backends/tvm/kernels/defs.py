"""What a kernel builder takes and returns, without TVM: the lowering (emitters, epilogue fusion,
`unsupported_ops`) builds these and must not pay for importing TVM's compiler.

A builder returns a `KernelDef`: the scheduled PrimFunc and its parameters in order (runtime
inputs by graph value name, constants as NumPy arrays already in the layout the schedule asked
for, outputs). Elementwise ops that follow an anchor reach the builder as an `Epilogue` of
`EwOp`s. Window geometry comes as `tvmlite.ops.geometry.WindowGeometry`, always 2-D here:
`window_2d` runs a 1-D window as a 2-D one of unit height.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry

#: element types a kernel reads and writes, the dtypes of a plan's buffers (artifact_check refuses
#: others when loading): float32, and the integer/bool values data movement and indexing take
KERNEL_DTYPES = ("float32", "int64", "int32", "uint8", "int8", "bool")


@dataclass
class Param:
    kind: str               # "input" (graph value), "const" (array), "output" (graph value)
    name: str               # graph value name, or the constant's name
    shape: tuple            # shape the PrimFunc sees (a view of the value's buffer)
    array: np.ndarray | None = None


@dataclass
class KernelDef:
    name: str
    params: list[Param]
    func: object            # scheduled PrimFunc
    nodes: list[str] = field(default_factory=list)  # labels of the graph nodes it computes
    steps: list[str] = field(default_factory=list)  # schedule steps applied


@dataclass
class EwOp:
    """One elementwise op: ``op`` applied to the running value and ``operands``
    (("value", name, shape) or ("const", array)), ONNX-broadcast to the output."""
    op: str
    operands: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    first: int = 0  # position of the running value among the op's inputs (Sub/Div are not symmetric)
    shape: tuple | None = None  # the op's index space when a view (Reshape...) came between: the
    # kernel's output index is flattened and unflattened into it; None: the kernel's own shape


@dataclass
class Epilogue:
    """Elementwise ops applied, in order, to a kernel's value before it is stored."""
    ops: list = field(default_factory=list)
    #: operand value -> the name of its channels-last buffer, for operands stored NHWC
    #: (float_layout.py); the ops still index them at their logical NCHW index
    layouts: dict = field(default_factory=dict)


def window_2d(geom: WindowGeometry) -> WindowGeometry:
    """``geom`` as the 2-D window the kernels take: a 1-D window becomes one of unit height
    (kernel 1, stride 1, no pads along the new leading axis)."""
    if geom.n == 2:
        return geom
    if geom.n != 1:
        raise UnsupportedError(f"{geom.n}-D window")
    (pb,), (pe,) = geom.pad_begin, geom.pad_end
    return WindowGeometry((1,) + geom.kernel, (1,) + geom.strides, (1,) + geom.dilations, (0, pb, 0, pe),
                          (1,) + geom.in_spatial, (1,) + geom.out_spatial, geom.group, geom.ceil_mode)


def channel_vector(c: int, lanes: int) -> int:
    """The vector width a channels-last kernel gives ``c`` channels: the widest of ``lanes``,
    half and a quarter of it that divides ``c`` (0: none does, the value stays NCHW)."""
    for v in (lanes, lanes // 2, lanes // 4):
        if v >= 4 and c % v == 0:
            return v
    return 0


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def unflatten(i, dims):
    """ONNX index of flat row ``i`` over leading dims ``dims``."""
    if len(dims) <= 1:
        return (i,) if dims else ()
    out = []
    for d in reversed(dims):
        out.append(i % d)
        i = i // d
    return tuple(reversed(out))
