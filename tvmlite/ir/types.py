"""ONNX TypeProtos as the IR keeps them: build a tensor type, read its element type and dims.

Types stay TypeProtos (not a tvmlite class) so sequence/optional types, symbolic dims and denotations
survive a round trip untouched."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper

def tensor_type(dtype: Any, shape: Iterable | None = None) -> onnx.TypeProto:
    """TypeProto of a tensor; dtype is a numpy dtype or an onnx elem type, dims are ints, str or None."""
    elem = dtype if isinstance(dtype, int) else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_type_proto(elem, None if shape is None else list(shape))


def type_elem(tp: onnx.TypeProto | None) -> int | None:
    if tp is not None and tp.HasField("tensor_type") and tp.tensor_type.elem_type:
        return tp.tensor_type.elem_type
    return None


def type_shape(tp: onnx.TypeProto | None) -> tuple | None:
    """Dims as ints, symbolic names (str) or None for unknown; None when the rank is unknown. A
    negative dim (invalid ONNX; exporters write -1 for a dynamic one) is unknown, as onnxruntime
    reads it."""
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in tp.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value) if d.dim_value >= 0 else None)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)



def tensor_shapes(tp: onnx.TypeProto):
    """The TensorShapeProtos inside a (possibly nested) type."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(tp, kind)
        if tt.HasField("shape"):
            yield tt.shape
    elif kind in ("sequence_type", "optional_type"):
        yield from tensor_shapes(getattr(tp, kind).elem_type)
    elif kind == "map_type":
        yield from tensor_shapes(tp.map_type.value_type)
