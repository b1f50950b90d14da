"""ONNX attributes <-> plain Python values.

Kernels and passes see attributes as plain values: int, float, str, list of those, numpy arrays for
tensors, :class:`tvmlite.ir.Graph` for subgraphs. ``attr_to_python`` takes a ``graph_loader`` so the
frontend can turn GraphProto bodies into IR graphs; everything else needs no context.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from tvmlite.errors import ModelLoadError, UnsupportedError, message_line

A = AttributeProto


def tensor_to_array(t: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - onnx raises several kinds for corrupt data
        msg = message_line(e)
        raise ModelLoadError(f"tensor {t.name!r} cannot be decoded: {msg}") from None


def sparse_to_array(t: onnx.SparseTensorProto) -> np.ndarray:
    values = tensor_to_array(t.values)
    indices = tensor_to_array(t.indices)
    dense = np.zeros(tuple(t.dims), dtype=values.dtype)
    flat = dense.reshape(-1)
    try:
        if indices.ndim == 1:
            flat[indices] = values
        else:  # [NNZ, rank] coordinates
            dense[tuple(indices.T)] = values
    except (IndexError, ValueError, TypeError) as e:
        msg = message_line(e)
        raise ModelLoadError(f"sparse tensor {t.values.name!r}: indices do not fit dims "
                             f"{list(t.dims)}: {msg}") from None
    return dense


def constant_value(attrs: dict) -> np.ndarray:
    """The array a Constant node with these attributes produces (here, not in tvmlite.ops, because
    the IR's Graph.const_value needs it and the IR imports nothing above itself)."""
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "sparse_value" in attrs:
        return np.asarray(attrs["sparse_value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    if "value_string" in attrs:
        return np.array(attrs["value_string"], dtype=object)
    if "value_strings" in attrs:
        return np.array(attrs["value_strings"], dtype=object)
    raise UnsupportedError("Constant node has no value attribute")


def _decode(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def attr_to_python(a: AttributeProto, graph_loader: Callable[[onnx.GraphProto], Any] | None = None) -> Any:
    t = a.type
    if t == A.INT:
        return int(a.i)
    if t == A.FLOAT:
        return float(a.f)
    if t == A.STRING:
        return _decode(a.s)
    if t == A.TENSOR:
        return tensor_to_array(a.t)
    if t == A.SPARSE_TENSOR:
        return sparse_to_array(a.sparse_tensor)
    if t == A.GRAPH:
        return graph_loader(a.g) if graph_loader else a.g
    if t == A.TYPE_PROTO:
        return a.tp
    if t == A.INTS:
        return [int(v) for v in a.ints]
    if t == A.FLOATS:
        return [float(v) for v in a.floats]
    if t == A.STRINGS:
        return [_decode(v) for v in a.strings]
    if t == A.TENSORS:
        return [tensor_to_array(v) for v in a.tensors]
    if t == A.SPARSE_TENSORS:
        return [sparse_to_array(v) for v in a.sparse_tensors]
    if t == A.GRAPHS:
        return [graph_loader(g) if graph_loader else g for g in a.graphs]
    if t == A.TYPE_PROTOS:
        return list(a.type_protos)
    if t == A.UNDEFINED and a.ref_attr_name:
        return None
    raise ValueError(f"attribute {a.name!r} has unknown type {t}")


def python_to_attr(name: str, value: Any, attr_type: int | None = None,
                   graph_saver: Callable[[Any], onnx.GraphProto] | None = None) -> AttributeProto:
    """Build an AttributeProto; ``attr_type`` (from import) disambiguates empty lists and bytes."""
    from tvmlite.ir.graph import Graph  # local: graph.py imports this module

    if isinstance(value, Graph):
        return onnx.helper.make_attribute(name, graph_saver(value))
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Graph):
        return onnx.helper.make_attribute(name, [graph_saver(g) for g in value])
    if isinstance(value, np.ndarray):
        return onnx.helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return onnx.helper.make_attribute(name, [], attr_type=attr_type or A.INTS)
    if isinstance(value, (list, tuple)) and isinstance(value[0], np.ndarray):
        return onnx.helper.make_attribute(name, [numpy_helper.from_array(v) for v in value])
    if attr_type == A.FLOAT and isinstance(value, (int, np.integer)):
        value = float(value)
    if attr_type == A.FLOATS:
        value = [float(v) for v in value]
    return onnx.helper.make_attribute(name, value)
