"""ONNX ModelProto / file -> tvmlite Model, keeping everything export needs to write it back."""
from __future__ import annotations

import collections
import itertools
import os
import sys

import numpy as np
import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import external_data_helper

from tvmlite.errors import ModelLoadError, TvmliteError, message_line
from tvmlite.frontend.validate import check_attribute, check_graph_proto, check_loop_trip_counts
from tvmlite.ir.attrs import attr_to_python, sparse_to_array
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.ir.value import BIG_ARRAY_BYTES, PLAIN_TYPES


def load(source, *, check: bool = True) -> Model:
    """Import a model from a path, bytes or a ModelProto."""
    if isinstance(source, onnx.ModelProto):
        return import_model(source, check=check)
    arrays: dict = {}
    proto, external = read_model_file(source, check=check, arrays=arrays)
    try:
        model = import_model(proto, check=False, arrays=arrays)
    except TvmliteError as e:  # say which file
        where = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
        raise type(e)(f"{where}: {e}") from None
    model.external_data = external
    return model


def read_model_file(source, *, check: bool = False,
                    arrays: dict | None = None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Parse an .onnx file (with its external data) or bytes; one clear error when it is not one.
    ``check``: run onnx's checker, before the external data is read in (a model over 2 GiB cannot
    be serialized for the checker once it is). ``arrays`` (a dict): the main graph's external
    initializers of plain element types are read straight into NumPy arrays there, by name, and
    their protos keep no data (onnx's loader put each in a bytes object and then the proto, two
    copies of every weight; see `read_external_arrays`)."""
    if isinstance(source, (bytes, bytearray)):
        data, where, base = bytes(source), "<bytes>", None
    else:
        where = os.fspath(source)
        if not os.path.exists(where):
            raise ModelLoadError(f"model file not found: {where}")
        if os.path.isdir(where):
            raise ModelLoadError(f"model path is a directory, not an .onnx file: {where}")
        if not os.path.isfile(where):  # a FIFO would block the read, a device never end it
            raise ModelLoadError(f"model path is not a regular file: {where}")
        try:
            with open(where, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelLoadError(f"cannot read model file {where}: {e.strerror}") from None
        base = os.path.dirname(os.path.abspath(where))
    if not data:
        raise ModelLoadError(f"{where}: file is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{where}: not a valid ONNX model (protobuf decoding failed: {e})") from None
    del data
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{where}: not a valid ONNX model (no graph or no opset_import)")
    bad = _invalid_text(proto)
    if bad:
        raise ModelLoadError(f"{where}: not a valid ONNX model ({bad} is not valid UTF-8)")
    external: dict[str, str] = {}
    for t in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(t):
            info = {e.key: e.value for e in t.external_data}
            external[t.name] = info.get("location", "")
    if check:  # by path when data lies beside the file: the checker resolves it from there
        check_proto(where if external and base is not None else proto)
    if arrays is not None and (any(_decodable(t) for t in proto.graph.initializer)
                               or any(_big_constant(n) is not None for n in proto.graph.node)):
        proto = decode_big_initializers(proto, arrays)
    if external:
        if base is None:
            raise ModelLoadError(f"{where}: model has external-data tensors but was given as bytes")
        try:
            _read_external_data(proto, base, arrays)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{where}: cannot read its external data: {e}") from None
    return proto, external


def _decodable(t: onnx.TensorProto) -> bool:
    if t.data_type not in PLAIN_TYPES or not t.HasField("raw_data") or sys.byteorder != "little":
        return False
    return _nbytes(t) >= BIG_ARRAY_BYTES


def _raw_view(t: onnx.TensorProto, raw: bytes) -> np.ndarray:
    """``t``'s array as a read-only view of ``raw`` (its raw_data, read once: each read copies)."""
    return np.frombuffer(raw, onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).reshape([int(d) for d in t.dims])


#: where a Constant's tensor decoded by `decode_big_initializers` points: its array is in ``arrays``
#: under CONSTANT_KEY + the Constant's output name
DECODED_LOCATION, CONSTANT_KEY = "tvmlite.decoded", "\0constant\0"


def _big_constant(node: onnx.NodeProto) -> onnx.AttributeProto | None:
    """A main-graph Constant's ``value`` attribute whose tensor `_decodable` takes, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    a = next((a for a in node.attribute if a.name == "value"), None)
    return a if a is not None and a.type == onnx.AttributeProto.TENSOR and _decodable(a.t) else None


def decoded_constant(node: onnx.NodeProto, a: onnx.AttributeProto, arrays: dict | None) -> np.ndarray | None:
    """The array `decode_big_initializers` took from Constant ``node``'s attribute ``a``, or None."""
    if arrays is None or a.type != onnx.AttributeProto.TENSOR or not external_data_helper.uses_external_data(a.t):
        return None
    return arrays.get(CONSTANT_KEY + node.output[0]) if _decoded_aside(a.t) else None


def _decoded_aside(t: onnx.TensorProto) -> bool:
    """Whether ``t`` is a placeholder `decode_big_initializers` made of a Constant's tensor."""
    return any(e.key == "location" and e.value == DECODED_LOCATION for e in t.external_data)


def _decode(t: onnx.TensorProto, location: str | None = None) -> np.ndarray | None:
    """``t``'s array, and ``t`` made a placeholder without data (pointing at ``location``); None
    where its data does not match its dims (left as read: it fails where it always did)."""
    raw = t.raw_data  # a copy of its own: the array is a read-only view of it, no second copy
    if len(raw) != _nbytes(t):
        return None
    arr = _raw_view(t, raw)
    del raw
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL  # a placeholder: the data is the array
    if location is not None:
        e = t.external_data.add()
        e.key, e.value = "location", location
    return arr


def decode_big_initializers(proto: onnx.ModelProto, arrays: dict) -> onnx.ModelProto:
    """The main graph's embedded initializers of plain types and BIG_ARRAY_BYTES or more, decoded
    into ``arrays`` once, by name, and so are its Constants' tensors that big (by CONSTANT_KEY + the
    output name: PP-OCR's and other exporters' weights); returned is a copy of ``proto`` with each
    of them a placeholder without data. A parsed message keeps the whole file's bytes until all of
    it is gone (protobuf's arena), so the copy is what lets them go: the IR then holds each weight
    once, as an array, where it held the file's bytes and decoded a second copy on first use
    (light_vgg19 with its weights in Constants: 1160 MiB loaded for 575 MB of weights)."""
    names = collections.Counter(t.name for t in proto.graph.initializer)
    for t in proto.graph.initializer:
        if not _decodable(t) or names[t.name] > 1:
            continue
        arr = _decode(t)
        if arr is not None:
            arrays[t.name] = arr
    outputs = collections.Counter(o for n in proto.graph.node for o in n.output)
    for node in proto.graph.node:
        a = _big_constant(node)
        if a is not None and outputs[node.output[0]] == 1 and CONSTANT_KEY + node.output[0] not in arrays:
            arr = _decode(a.t, DECODED_LOCATION)
            if arr is not None:
                arrays[CONSTANT_KEY + node.output[0]] = arr
    compact = onnx.ModelProto()
    compact.CopyFrom(proto)
    return compact


def _read_external_data(proto: onnx.ModelProto, base: str, arrays: dict | None) -> None:
    """Every external tensor's data: into ``arrays`` where `read_external_arrays` takes it, else
    into its proto (onnx's loader)."""
    if arrays is not None:
        read_external_arrays(proto.graph, base, arrays)
    # onnx lists the main graph's initializers first: those read aside keep their placeholders
    skip = len(proto.graph.initializer) if arrays else 0
    for t in itertools.islice(external_data_helper._get_all_tensors(proto), skip, None):
        if external_data_helper.uses_external_data(t) and not _decoded_aside(t):
            external_data_helper.load_external_data_for_tensor(t, base)
    if arrays is not None:
        for t in proto.graph.initializer:
            if external_data_helper.uses_external_data(t) and t.name not in arrays:
                external_data_helper.load_external_data_for_tensor(t, base)


def read_external_arrays(gp: onnx.GraphProto, base: str, arrays: dict) -> None:
    """Read ``gp``'s external initializers of plain element types into ``arrays`` (one copy: the
    file's bytes land in the array); their protos stay placeholders without data."""
    for t in gp.initializer:
        if not external_data_helper.uses_external_data(t) or t.data_type not in PLAIN_TYPES or t.name in arrays:
            continue  # (in arrays: an embedded one decode_big_initializers took)
        info = external_data_helper.ExternalDataInfo(t)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        shape = tuple(int(d) for d in t.dims)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.length is not None and info.length != size:
            raise ValueError(f"tensor {t.name!r}: external data length {info.length} does not match its "
                             f"shape {list(shape)} ({size} bytes)")
        arr = np.empty(shape, dtype)
        # onnx's own opening: the location must stay inside the model's folder
        fd = external_data_helper._open_external_data_fd(base, info.location, t.name, True)
        with os.fdopen(fd, "rb") as f:
            f.seek(info.offset or 0)
            got = f.readinto(memoryview(arr.reshape(-1)).cast("B")) if size else 0
        if got != size:
            raise ValueError(f"tensor {t.name!r}: {info.location} ends {size - got} bytes early")
        arrays[t.name] = arr


def _invalid_text(msg, path: str = "model") -> str | None:
    """The first string field that is not valid UTF-8 (protobuf hands those back as bytes)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    for field, value in msg.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == F.LABEL_REPEATED
        if field.type == F.TYPE_STRING:
            values = value if repeated else [value]
            if any(isinstance(v, bytes) for v in values):
                return f"{path}.{field.name}"
        elif field.type == F.TYPE_MESSAGE:
            values = value if repeated else [value]
            plain_nodes = field.message_type.name == "NodeProto"
            for v in values:
                if plain_nodes and not v.attribute and not v.metadata_props \
                        and not getattr(v, "device_configurations", None):
                    bad = _invalid_node_text(v)  # most nodes: no generic walk (100k nodes: 1 s)
                    if bad:
                        return f"{path}.{field.name}.{bad}"
                    continue
                bad = _invalid_text(v, f"{path}.{field.name}")
                if bad:
                    return bad
    return None


def _invalid_node_text(n) -> str | None:
    """_invalid_text of a NodeProto without attributes or metadata."""
    for name in ("name", "op_type", "domain", "doc_string", "overload"):
        if isinstance(getattr(n, name, ""), bytes):
            return name
    for name in ("input", "output"):
        if any(isinstance(v, bytes) for v in getattr(n, name)):
            return name
    return None


def check_proto(proto) -> None:
    """onnx's checker on a ModelProto or a file path, as one ModelLoadError line. A ModelProto is
    checked without the data of its big tensors (`_without_big_data`): the checker serializes
    what it is given to hand it to C++, 1.3 s of VGG-19's 2.7 s import; the data's length is
    tvmlite's own check (validate.check_tensor_proto), on the bytes it decodes anyway."""
    if isinstance(proto, onnx.ModelProto):
        proto = _without_big_data(proto)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        first = message_line(e)
        raise ModelLoadError(f"not a valid ONNX model: {first}") from None
    except (ValueError, EncodeError) as e:  # > 2 GiB in memory: checked again per tensor on export
        if isinstance(e, ValueError) and "2GB" not in str(e) and "2 GB" not in str(e):
            raise ModelLoadError(f"not a valid ONNX model: {e}") from None


def _big_raw(t: onnx.TensorProto) -> bool:
    """A tensor whose raw_data the checker need not see (tvmlite checks its length itself)."""
    return t.data_type != onnx.TensorProto.STRING and t.HasField("raw_data") \
        and _nbytes(t) >= BIG_ARRAY_BYTES


def _nbytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0  # an unknown type: the checker names it
    return int(np.prod([max(int(d), 0) for d in t.dims], dtype=np.float64)) * itemsize


def _copy_fields(src, dst, skip=()) -> None:
    """``dst`` gets ``src``'s fields but those named in ``skip``, never reading those (reading a
    bytes field copies it)."""
    for f in src.DESCRIPTOR.fields:
        if f.name in skip:
            continue
        value = getattr(src, f.name)
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
        if repeated:
            if len(value):
                getattr(dst, f.name).extend(value)
        elif src.HasField(f.name):
            if f.message_type is not None:
                getattr(dst, f.name).CopyFrom(value)
            else:
                setattr(dst, f.name, value)


def _stub(t: onnx.TensorProto, dst: onnx.TensorProto) -> None:
    """``t`` without its data: same name, type and rank, no elements."""
    _copy_fields(t, dst, ("raw_data", "dims"))
    dst.dims.extend([0] * len(t.dims))


def _without_big_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """What onnx's checker sees of ``proto``: the main graph's big raw tensors (initializers and
    Constant values) as empty tensors of the same name, type and rank; ``proto`` itself when it
    has none. Nothing of the data is copied."""
    gp = proto.graph
    big_init = any(_big_raw(t) for t in gp.initializer)
    big_node = [any(a.type == onnx.AttributeProto.TENSOR and _big_raw(a.t) for a in n.attribute) for n in gp.node]
    if not big_init and not any(big_node):
        return proto
    light = onnx.ModelProto()
    _copy_fields(proto, light, ("graph",))
    _copy_fields(gp, light.graph, ("initializer", "node"))
    for t in gp.initializer:
        if _big_raw(t):
            _stub(t, light.graph.initializer.add())
        else:
            light.graph.initializer.add().CopyFrom(t)
    for n, big in zip(gp.node, big_node):
        if not big:
            light.graph.node.add().CopyFrom(n)
            continue
        dst = light.graph.node.add()
        _copy_fields(n, dst, ("attribute",))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and _big_raw(a.t):
                da = dst.attribute.add()
                _copy_fields(a, da, ("t",))
                _stub(a.t, da.t)
            else:
                dst.attribute.add().CopyFrom(a)
    return light


def _read_big_raw(gp: onnx.GraphProto, arrays: dict | None) -> dict[str, bytes]:
    """The raw_data of ``gp``'s big embedded initializers of plain types, by name, each read once
    (a read copies it): checked for length from here and decoded as views of these bytes."""
    names = collections.Counter(t.name for t in gp.initializer)
    return {t.name: t.raw_data for t in gp.initializer
            if names[t.name] == 1 and _decodable(t) and not (arrays and t.name in arrays)}


def import_model(proto: onnx.ModelProto, *, check: bool = True, arrays: dict | None = None) -> Model:
    """``arrays``: main-graph initializers read aside (`read_external_arrays`), by name."""
    if check:
        check_proto(proto)
    opsets = {}
    for o in proto.opset_import:
        opsets[o.domain] = int(o.version)
    model = Model(import_graph(proto.graph, arrays=arrays), opsets)
    check_loop_trip_counts(model)
    model.ir_version = int(proto.ir_version)
    model.producer_name = proto.producer_name
    model.producer_version = proto.producer_version
    model.domain = proto.domain
    model.model_version = int(proto.model_version)
    model.doc_string = proto.doc_string
    model.metadata = [(p.key, p.value) for p in proto.metadata_props]
    # tvmlite's own functions are regenerated from the ops on export
    model.functions = [f for f in proto.functions if f.domain != "tvmlite"]
    model.training_info = list(proto.training_info)
    if hasattr(proto, "configuration"):
        model.configuration = list(proto.configuration)
    return model


def _props(msg) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in getattr(msg, "metadata_props", [])]


def import_graph(gp: onnx.GraphProto, parent: Graph | None = None, *, arrays: dict | None = None) -> Graph:
    raw = _read_big_raw(gp, arrays)
    check_graph_proto(gp, "graph" if parent is None else f"subgraph {gp.name!r}", raw)
    g = Graph(gp.name, parent)
    g.doc_string = gp.doc_string
    g.metadata = _props(gp)
    for init in gp.initializer:
        v = g.add_initializer(init.name, proto=init)
        if arrays and init.name in arrays and external_data_helper.uses_external_data(init):
            v._const = arrays[init.name]  # the proto, without data, keeps the rest as read
        elif init.name in raw:  # a read-only view of the bytes read for the check; the proto stays as read
            v._const = _raw_view(init, raw[init.name])
    for sp in gp.sparse_initializer:
        name = sp.values.name
        v = g.add_initializer(name, sparse_to_array(sp))
        v.sparse = True
    for vi in gp.input:
        v = g.add_input(vi.name, vi.type if vi.HasField("type") else None)
        v.doc_string = vi.doc_string
        v.metadata = _props(vi)
    for vi in gp.value_info:
        v = g.values.get(vi.name) or g.add_value(vi.name)
        v.type = vi.type
        v.doc_string = vi.doc_string
        v.metadata = _props(vi)
        g.value_info_order.append(vi.name)
    for np_ in gp.node:
        attrs, protos = {}, {}
        for a in np_.attribute:
            where = f"node {np_.name or np_.op_type + '->' + (np_.output[0] if np_.output else '?')!r}"
            decoded = decoded_constant(np_, a, arrays) if parent is None else None
            if decoded is not None:  # decoded and checked for length when the file was read
                val = decoded
            elif a.type == onnx.AttributeProto.TENSOR and _decodable(a.t):
                # a big Constant (the weights of many exported models): its bytes read once, for
                # the length check and as the array's buffer (each read of the field copies it)
                raw = a.t.raw_data
                check_attribute(a, where, len(raw))
                val = _raw_view(a.t, raw)
            else:
                check_attribute(a, where)
                val = attr_to_python(a, lambda sub: import_graph(sub, g))
            attrs[a.name] = val
            protos[a.name] = (val, a)
        node = Node(np_.op_type, np_.input, np_.output, attrs, domain=np_.domain, name=np_.name,
                    doc_string=np_.doc_string, metadata=_props(np_), overload=getattr(np_, "overload", ""))
        node.attr_protos = protos
        g._attach(node)
    for vi in gp.output:
        if vi.name not in g.values and (parent is None or not parent.has_value(vi.name)):
            g.add_value(vi.name)
        v = g.values.get(vi.name)
        if v is not None:
            if vi.HasField("type"):
                v.type = vi.type
            if vi.doc_string:
                v.doc_string = vi.doc_string
            if _props(vi):
                v.metadata = _props(vi)
        g.outputs.append(vi.name)
    g._output_protos = {vi.name: vi for vi in gp.output}  # outer-scope outputs keep their types
    return g
