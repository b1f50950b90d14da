"""Value: a named tensor (or sequence/optional) of a graph, with its type and, for an initializer, its
array.

An initializer keeps the TensorProto it was read from until a pass assigns a new array, and is written
back as read. A big one of a plain type (BIG_ARRAY_BYTES) is an array from import on (read from its
external data or decoded once) beside a placeholder proto that keeps its other fields: the weights are
held once, and exports leave them out (export/onnx_export.py, `export_lean`). Arrays may be shared between copies of a model
(tvmlite.ir.clone): a shared array is read-only, and a pass that changes a weight assigns a new one
through ``Value.const``."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tvmlite.errors import ModelLoadError, message_line
from tvmlite.ir.types import tensor_type, type_elem, type_shape

if TYPE_CHECKING:
    from tvmlite.ir.graph import Node

#: element types whose raw ONNX bytes are a NumPy array's buffer as it is (no packing, no
#: conversion): such tensors can be read from a file, and written, straight from the array
PLAIN_TYPES = frozenset(getattr(onnx.TensorProto, t) for t in (
    "FLOAT", "DOUBLE", "FLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "BOOL", "COMPLEX64", "COMPLEX128"))
#: an initializer of a plain type and at least this many bytes is held as an array from import on
#: (read from its file or decoded once) and left out of lean exports (`onnx_export.export_lean`):
#: below, a copy costs less than the placeholder and the shared buffer onnxruntime keeps for each
BIG_ARRAY_BYTES = 2**20


class Value:
    """A named tensor (or sequence/optional) flowing between nodes."""

    __slots__ = ("name", "type", "doc_string", "metadata", "producer", "_const", "_proto",
                 "sparse", "_annotations")

    def __init__(self, name: str, type: onnx.TypeProto | None = None, *, const: np.ndarray | None = None,
                 proto: onnx.TensorProto | None = None, doc_string: str = "", metadata=None):
        self.name = name
        self.type = type
        self.doc_string = doc_string
        self.metadata = list(metadata or [])
        self.producer: Node | None = None
        self._const = const
        self._proto = proto  # the initializer as read, written back while the array is unchanged
        self.sparse = False
        self._annotations: dict = {}

    # A small initializer's array is decoded on first use only (the big ones are arrays already).
    @property
    def const(self) -> np.ndarray | None:
        if self._const is None and self._proto is not None:
            try:
                self._const = numpy_helper.to_array(self._proto)
            except Exception as e:  # noqa: BLE001 - onnx raises several kinds for corrupt data
                msg = message_line(e)
                raise ModelLoadError(f"initializer {self.name!r} cannot be decoded: {msg}") from None
        return self._const

    @const.setter
    def const(self, array: np.ndarray | None) -> None:
        self._const = array
        self._proto = None
        if array is not None:
            self.type = tensor_type(array.dtype, array.shape)

    @property
    def is_initializer(self) -> bool:
        return self._const is not None or self._proto is not None

    @property
    def elem_type(self) -> int | None:
        if self._proto is not None:
            return self._proto.data_type
        if self._const is not None:
            return helper.np_dtype_to_tensor_dtype(self._const.dtype)
        return type_elem(self.type)

    @property
    def dtype(self) -> np.dtype | None:
        e = self.elem_type
        return None if e is None else helper.tensor_dtype_to_np_dtype(e)

    @property
    def shape(self) -> tuple | None:
        if self._proto is not None:
            return tuple(int(d) for d in self._proto.dims)
        if self._const is not None:
            return tuple(self._const.shape)
        return type_shape(self.type)

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.dtype}, {self.shape})"

