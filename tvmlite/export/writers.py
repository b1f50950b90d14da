"""Writing an exported model (`onnx_export.Exported`: placeholders in the proto, the arrays beside it)
to files without copying its arrays: with external data (`write_external`) or as one file in
protobuf's wire format (`write_inline`); and the placeholder tensors both sides recognize. Split out
of onnx_export.py, which re-exports these names."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:  # the type only: onnx_export imports this module
    from tvmlite.export.onnx_export import Exported


def is_placeholder(t: onnx.TensorProto) -> bool:
    """An external-data tensor whose data is not in the proto (read into an array aside, or left
    out on purpose)."""
    return t.data_location == onnx.TensorProto.EXTERNAL and not t.HasField("raw_data")


def set_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = key, val


def write_external(exp: "Exported", model_path: str, data_path: str, location: str) -> None:
    """``exp`` as ``model_path`` and ``data_path`` (named ``location`` in the model): each array is
    written from its own buffer (no copy), then every other initializer (subgraphs' too, not
    attribute tensors) with raw data of at least 1 KiB, as onnx's save_as_external_data would."""
    from onnx.external_data_helper import _get_initializer_tensors

    with open(data_path, "wb") as f:
        for t in exp.proto.graph.initializer:
            if t.name in exp.offsets and is_placeholder(t):
                arr = exp.arrays[t.name]
                f.seek(exp.offsets[t.name])
                f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
                set_external(t, location, exp.offsets[t.name], arr.nbytes)
        end = exp.data_bytes
        for t in _get_initializer_tensors(exp.proto):
            if t.HasField("raw_data") and sys.getsizeof(t.raw_data) >= 1024:
                data = t.raw_data
                f.seek(end)
                f.write(data)
                t.ClearField("raw_data")
                set_external(t, location, end, len(data))
                end += len(data)
                del data
    with open(model_path, "wb") as f:
        f.write(exp.proto.SerializeToString())


def write_inline(exp: "Exported", model_path: str) -> None:
    """``exp`` as one file, its arrays written in from their own buffers. Protobuf has no call for
    that (a proto with the arrays in it and its serialization were two more copies of every weight),
    so the graph and its initializers are put in protobuf's wire format here: a field may come in any
    order, so the graph's initializers follow its other fields, each in the order read."""
    def tag_len(field_number: int, length: int) -> bytes:
        return _varint(field_number << 3 | 2) + _varint(length)

    graph = onnx.GraphProto()
    graph.CopyFrom(exp.proto.graph)  # placeholders and small tensors only
    del graph.initializer[:]
    pieces = []  # per initializer: its bytes, and the array that follows them (or None)
    for t in exp.proto.graph.initializer:
        if t.name in exp.offsets and is_placeholder(t):
            head = onnx.TensorProto()
            head.CopyFrom(t)
            del head.external_data[:]
            head.ClearField("data_location")
            arr = np.ascontiguousarray(exp.arrays[t.name])
            head_bytes = head.SerializeToString() + tag_len(9, arr.nbytes)  # 9: raw_data
            pieces.append((tag_len(5, len(head_bytes) + arr.nbytes) + head_bytes, arr))  # 5: initializer
        else:
            body = t.SerializeToString()
            pieces.append((tag_len(5, len(body)) + body, None))
    rest = graph.SerializeToString()
    graph_len = len(rest) + sum(len(b) + (0 if a is None else a.nbytes) for b, a in pieces)
    model = onnx.ModelProto()
    model.CopyFrom(exp.proto)
    model.ClearField("graph")
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())
        f.write(tag_len(7, graph_len) + rest)  # 7: ModelProto.graph
        for b, a in pieces:
            f.write(b)
            if a is not None:
                f.write(memoryview(a).cast("B"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
