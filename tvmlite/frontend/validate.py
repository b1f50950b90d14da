"""Checks at import that onnx.checker leaves out and that would otherwise fail deep inside NumPy.

- every tensor (initializer, Constant/attribute tensor, sparse values): a known data_type, a rank and
  element count within :mod:`tvmlite.limits`, and exactly as much data as its dims ask for (the
  checker accepts ``raw_data`` longer than the dims; onnxruntime refuses it). Checked on the
  protobuf's field lengths, without decoding the data, so big models stay lazy.
- every declared type (graph inputs, outputs, value_info): a known elem_type, a rank within the
  limit, and graph inputs whose static shape is within the element limit (tvmlite allocates
  random inputs from it).
- Loops whose constant trip count is above the limit and which cannot stop earlier (their
  condition is absent or constant and the body passes it through unchanged): refused here, before
  any backend sees them, since onnxruntime and TVM would run them until killed.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from tvmlite import limits
from tvmlite.errors import ModelLoadError

#: bits per element of the packed sub-byte types (raw_data holds ceil(n * bits / 8) bytes)
_PACKED_BITS = {TensorProto.UINT4: 4, TensorProto.INT4: 4, TensorProto.FLOAT4E2M1: 4}
for _name, _bits in (("UINT2", 2), ("INT2", 2)):
    if hasattr(TensorProto, _name):
        _PACKED_BITS[getattr(TensorProto, _name)] = _bits
_NO_RAW_CHECK = {getattr(TensorProto, n) for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(TensorProto, n)}
#: typed-data field -> values per element (complex numbers take two)
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def elem_np_dtype(elem_type: int, where: str) -> np.dtype:
    """The NumPy dtype of an ONNX elem type; ModelLoadError for 0 or an unknown number."""
    if elem_type == TensorProto.UNDEFINED:
        raise ModelLoadError(f"{where}: data type is UNDEFINED (0)")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        raise ModelLoadError(f"{where}: data type {elem_type} is not an ONNX tensor type") from None


def check_tensor_proto(t: TensorProto, where: str, raw_len: int | None = None) -> None:
    """Refuse a TensorProto whose type, size or data length is wrong (see the module docstring).
    ``raw_len``: the length of its raw_data when the caller read it already (each read of the
    field copies it: 0.4 s for VGG-19's weights)."""
    dtype = elem_np_dtype(t.data_type, where)
    n = limits.check_tensor(t.dims, dtype, where)
    if t.data_location == TensorProto.EXTERNAL and not t.HasField("raw_data"):
        return  # checked again once read in (read_model_file loads it before import)
    if t.HasField("raw_data"):
        if t.data_type == TensorProto.STRING:
            raise ModelLoadError(f"{where}: a string tensor cannot use raw_data")
        if t.data_type in _NO_RAW_CHECK:
            return
        bits = _PACKED_BITS.get(t.data_type, dtype.itemsize * 8)
        want = (n * bits + 7) // 8
        have = len(t.raw_data) if raw_len is None else raw_len
        if have != want:
            raise ModelLoadError(f"{where}: raw_data has {have:,} bytes, its dims {list(t.dims)} of "
                                 f"{TensorProto.DataType.Name(t.data_type)} need {want:,}")
        return
    have = {f: len(getattr(t, f)) for f in _TYPED_FIELDS if len(getattr(t, f))}
    if not have:
        if n:
            raise ModelLoadError(f"{where}: dims {list(t.dims)} need {n:,} values, the tensor has none")
        return
    if len(have) > 1:
        raise ModelLoadError(f"{where}: data in more than one field ({', '.join(have)})")
    field, count = next(iter(have.items()))
    allowed = {n, 2 * n} if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else {n}
    if t.data_type in _PACKED_BITS:  # int32_data holds one packed byte per value
        allowed = {(n * _PACKED_BITS[t.data_type] + 7) // 8, n}
    if count not in allowed:
        raise ModelLoadError(f"{where}: {field} has {count:,} values, its dims {list(t.dims)} "
                             f"need {n:,}")


def check_sparse_proto(sp: onnx.SparseTensorProto, where: str) -> None:
    check_tensor_proto(sp.values, f"{where} (values)")
    check_tensor_proto(sp.indices, f"{where} (indices)")
    limits.check_tensor(sp.dims, elem_np_dtype(sp.values.data_type, where), where)


def check_type_proto(tp: onnx.TypeProto, where: str, *, allocated: bool = False) -> None:
    """Known elem types and ranks inside a (possibly nested) type; ``allocated``: tvmlite may make
    an array of this shape (a graph input), so its static size must be within the limits too."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type" or kind == "sparse_tensor_type":
        tt = getattr(tp, kind)
        dtype = elem_np_dtype(tt.elem_type, where) if tt.elem_type else None
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if len(dims) > limits.max_rank():
                raise limits.LimitError(f"{where}: rank {len(dims)} is above the limit of "
                                        f"{limits.max_rank()} (TVMLITE_MAX_RANK)")
            # exporters write -1 for unknown dims (invalid ONNX, but common): treated as unknown
            static = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value > 0]
            if allocated and dtype is not None:
                limits.check_tensor(static, dtype, where)
    elif kind == "sequence_type":
        check_type_proto(tp.sequence_type.elem_type, where)
    elif kind == "optional_type":
        check_type_proto(tp.optional_type.elem_type, where)
    elif kind == "map_type":
        check_type_proto(tp.map_type.value_type, where)


def _contradict(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    """Two tensor types no one tensor can have: elem types, ranks or fixed dims differ (a negative
    dim, as exporters write for a dynamic one, is unknown: ir.types.type_shape)."""
    if a.WhichOneof("value") != "tensor_type" or b.WhichOneof("value") != "tensor_type":
        return a.WhichOneof("value") != b.WhichOneof("value")
    ta, tb = a.tensor_type, b.tensor_type
    if ta.elem_type and tb.elem_type and ta.elem_type != tb.elem_type:
        return True
    if not ta.HasField("shape") or not tb.HasField("shape"):
        return False
    da, db = ta.shape.dim, tb.shape.dim
    return len(da) != len(db) or any(x.HasField("dim_value") and y.HasField("dim_value") and min(x.dim_value, y.dim_value) >= 0
                                     and x.dim_value != y.dim_value for x, y in zip(da, db))


def check_graph_proto(gp: onnx.GraphProto, where: str, raw: dict | None = None) -> None:
    """Tensors and declared types of one GraphProto (not its subgraphs: the importer calls this
    for each graph it imports). ``raw``: initializers' raw_data the caller read already, by name."""
    raw = raw or {}
    for t in gp.initializer:
        got = raw.get(t.name)
        check_tensor_proto(t, f"{where}: initializer {t.name!r}", None if got is None else len(got))
    for sp in gp.sparse_initializer:
        check_sparse_proto(sp, f"{where}: sparse initializer {sp.values.name!r}")
    for vi in gp.input:
        if vi.HasField("type"):
            check_type_proto(vi.type, f"{where}: input {vi.name!r}", allocated=True)
    inputs = {vi.name for vi in gp.input}
    for kind, vis in (("output", gp.output), ("value_info", gp.value_info)):
        for vi in vis:
            if vi.HasField("type"):  # an entry named like an input also sets the input's type
                check_type_proto(vi.type, f"{where}: {kind} {vi.name!r}", allocated=vi.name in inputs)
    input_types = {vi.name: vi.type for vi in gp.input if vi.HasField("type")}
    output_types: dict = {}
    for vi in (vi for vi in gp.output if vi.HasField("type")):  # onnxruntime reads the first, tvmlite the last
        if vi.name in input_types and _contradict(input_types[vi.name], vi.type):
            raise ModelLoadError(f"{where}: output {vi.name!r} is also an input, declared there with another type")
        if output_types.setdefault(vi.name, vi.type) != vi.type:
            raise ModelLoadError(f"{where}: output {vi.name!r} is listed twice with different types")


def check_attribute(a: onnx.AttributeProto, where: str, raw_len: int | None = None) -> None:
    """``raw_len``: the length of a tensor attribute's raw_data, when the caller read it already."""
    if a.type == onnx.AttributeProto.TENSOR:
        check_tensor_proto(a.t, f"{where} attribute {a.name!r}", raw_len)
    elif a.type == onnx.AttributeProto.TENSORS:
        for t in a.tensors:
            check_tensor_proto(t, f"{where} attribute {a.name!r}")
    elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
        check_sparse_proto(a.sparse_tensor, f"{where} attribute {a.name!r}")
    elif a.type == onnx.AttributeProto.SPARSE_TENSORS:
        for sp in a.sparse_tensors:
            check_sparse_proto(sp, f"{where} attribute {a.name!r}")
    elif a.type == onnx.AttributeProto.TYPE_PROTO:
        check_type_proto(a.tp, f"{where} attribute {a.name!r}")


# ------------------------------------------------------------------------------------------- loops
def _const_true(graph, name: str) -> bool:
    c = graph.const_value(name)
    return c is not None and c.size == 1 and bool(np.asarray(c).reshape(-1)[0])


def _passes_condition_through(body) -> bool:
    """The body's condition output is its condition input (maybe via Identity) or constant true."""
    if len(body.outputs) < 1:
        return False
    out = body.outputs[0]
    cond_in = body.inputs[1] if len(body.inputs) > 1 else None
    seen = 0
    while seen < 64:  # a chain of Identity nodes
        if out == cond_in or _const_true(body, out):
            return True
        p = body.producer(out)
        if p is None or p.op_type != "Identity" or p.domain not in ("", "ai.onnx"):
            return False
        out = p.inputs[0]
        seen += 1
    return False


def check_loop_trip_counts(model) -> None:
    """LimitError for a Loop (at any depth) that would run more iterations than the limit no
    matter what: constant trip count (or none) above it, and a condition that cannot turn false."""
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for node in g.nx.nodes:
            stack.extend(node.subgraphs)
            if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
                continue
            body = node.attrs.get("body")
            ins = list(node.inputs) + ["", ""]
            if ins[1]:  # with a condition input, the body's condition output decides too
                if not _const_true(g, ins[1]) or body is None or not _passes_condition_through(body):
                    continue
            m = g.const_value(ins[0]) if ins[0] else None
            if ins[0] and m is None:
                continue  # trip count computed at run time: the NumPy backend counts
            if m is not None and m.size != 1:
                continue  # not a scalar: the backends refuse it
            trip = math.inf if m is None else int(np.asarray(m).reshape(-1)[0])
            if trip > limits.max_loop_iterations():
                what = "no trip count and no condition that can stop it" if trip is math.inf \
                    else f"trip count {trip:,} and no condition that can stop it earlier"
                raise limits.LimitError(
                    f"Loop node {node.label!r}: {what}; above the limit of "
                    f"{limits.max_loop_iterations():,} iterations (TVMLITE_MAX_LOOP_ITERATIONS), "
                    "refused before any backend runs it")
