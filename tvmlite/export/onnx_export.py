"""tvmlite Model -> ONNX ModelProto / file.

What a pass did not change is written back as it was read (tensor and attribute protos are reused), so
an import/export round trip is lossless. Files are written through a `tvmlite.outputs.Outputs`
transaction: staged beside the target, renamed into place together, so a failure leaves no
half-written model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from google.protobuf.message import EncodeError

from tvmlite.export.functions import TVMLITE_OPSET, tvmlite_functions, untyped_tvmlite_inputs
from tvmlite.export.writers import is_placeholder, set_external, write_external, write_inline
from tvmlite.ir.attrs import python_to_attr
from tvmlite.ir.graph import Graph, Model, Value
from tvmlite.ir.value import BIG_ARRAY_BYTES, PLAIN_TYPES
from tvmlite.outputs import OutputError, Outputs, model_files

#: the newest IR version onnxruntime 1.31 loads (checked: 13 loads, 14 is refused); onnx 1.23
#: would write 14 by default
MAX_IR_VERSION = 13
#: protobuf cannot serialize a message over 2 GiB; above this, tensors go to an external file
EXTERNAL_THRESHOLD = 2**31 - 2**26
#: `export_lean` leaves out initializers of at least this many bytes
ASIDE_MIN_BYTES = BIG_ARRAY_BYTES
#: where a lean export's placeholders point until a writer gives them a file
ASIDE_LOCATION = "tvmlite.aside.data"
#: external data files put each left-out array at an offset this aligned (onnxruntime maps
#: page-aligned external data instead of reading it into memory)
DATA_ALIGNMENT = 4096


def proto_bytes(proto: onnx.ModelProto) -> int:
    """The serialized size of ``proto``. Past protobuf's 2 GiB limit ByteSize() raises: then the
    sum of the tensors' data, which is nearly all of such a model."""
    try:
        return proto.ByteSize()
    except EncodeError:
        from onnx.external_data_helper import _get_all_tensors

        return sum(len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data)
                   + len(t.double_data)) for t in _get_all_tensors(proto))


def _value_info(v: Value, name: str | None = None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.name = name or v.name
    if v.type is not None:
        vi.type.CopyFrom(v.type)
    elif v.is_initializer:
        vi.type.CopyFrom(helper.make_tensor_type_proto(v.elem_type, list(v.shape)))
    if v.doc_string:
        vi.doc_string = v.doc_string
    for k, val in v.metadata:
        p = vi.metadata_props.add()
        p.key, p.value = k, val
    return vi


def _tensor(v: Value, aside: dict | None = None) -> onnx.TensorProto:
    """The initializer's TensorProto: as read while its array is unchanged; with ``aside`` (a dict),
    a big plain array is not copied in but put there, and a placeholder written (`Exported`)."""
    if aside is not None and _goes_aside(v):
        arr = v.const
        aside[v.name] = arr
        return _placeholder(v, arr)
    if v._proto is not None and not is_placeholder(v._proto):
        return v._proto
    t = numpy_helper.from_array(v.const, v.name)
    if v._proto is not None:  # read from external data: the array was read aside, the rest is as read
        _keep_fields(v._proto, t)
    return t


def _keep_fields(read: onnx.TensorProto, t: onnx.TensorProto) -> None:
    if read.doc_string:
        t.doc_string = read.doc_string
    t.metadata_props.extend(read.metadata_props)


def _goes_aside(v: Value) -> bool:
    if v.sparse or not (v._const is not None or (v._proto is not None and is_placeholder(v._proto))):
        return False  # a TensorProto not decoded stays as read: decoding it would copy it
    if v.elem_type not in PLAIN_TYPES:
        return False
    shape = v.shape
    return shape is not None and int(np.prod(shape, dtype=np.int64)) * v.dtype.itemsize >= ASIDE_MIN_BYTES


def _placeholder(v: Value, arr: np.ndarray) -> onnx.TensorProto:
    t = _aside_tensor(v.name, arr)
    if v._proto is not None:
        _keep_fields(v._proto, t)
    return t


def _aside_tensor(name: str, arr: np.ndarray, dtype: int | None = None) -> onnx.TensorProto:
    """A placeholder for ``arr``: its dtype (``dtype``: as an ONNX type already) and dims, its data
    at ASIDE_LOCATION."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype) if dtype is None else dtype
    t.dims.extend(arr.shape)
    set_external(t, ASIDE_LOCATION, 0, arr.nbytes)
    return t


def export_graph(g: Graph, overloads: dict | None = None, *, aside: dict | None = None,
                 gp: onnx.GraphProto | None = None, lean_constants: bool = False) -> onnx.GraphProto:
    """``g`` as a GraphProto (written into ``gp`` when given). ``aside``: see `_tensor`;
    ``lean_constants``: see `export_node`."""
    gp = onnx.GraphProto() if gp is None else gp
    gp.name = g.name
    if g.doc_string:
        gp.doc_string = g.doc_string
    for k, val in g.metadata:
        p = gp.metadata_props.add()
        p.key, p.value = k, val
    for name in g.initializers:
        v = g.values[name]
        if v.sparse:
            gp.sparse_initializer.append(_sparse(v))
        else:
            t = _tensor(v, aside)
            if t.name != name:
                c = onnx.TensorProto()
                c.CopyFrom(t)
                c.name = name
                t = c
            gp.initializer.append(t)
    for name in g.inputs:
        gp.input.append(_value_info(g.values[name]))
    out_protos = getattr(g, "_output_protos", {})
    for name in g.outputs:
        if name in g.values:
            gp.output.append(_value_info(g.values[name]))
        elif name in out_protos:
            gp.output.append(out_protos[name])
        else:
            gp.output.append(helper.make_empty_tensor_value_info(name))
    written = set(g.inputs) | set(g.outputs) | set(g.initializers)
    nodes = g.toposort()
    vi_names = list(g.value_info_order)
    for node in nodes:
        vi_names.extend(node.outputs)
    for name in vi_names:
        if name in written or name not in g.values:
            continue
        v = g.values[name]
        if v.type is not None or v.doc_string or v.metadata:
            gp.value_info.append(_value_info(v))
        written.add(name)
    for node in nodes:
        np_ = export_node(node, overloads, lean_constants=lean_constants)
        gp.node.append(np_)
    return gp


def _sparse(v: Value) -> onnx.SparseTensorProto:
    import numpy as np

    arr = v.const
    flat = arr.reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[idx], v.name)
    indices = numpy_helper.from_array(idx, v.name + "_indices")
    return helper.make_sparse_tensor(values, indices, list(arr.shape))


def export_node(node, overloads: dict | None = None, *, lean_constants: bool = False) -> onnx.NodeProto:
    """``node`` as a NodeProto. ``lean_constants``: a Constant's big tensor (ASIDE_MIN_BYTES or
    more) becomes a placeholder of its dtype and dims (`export_for_inference`)."""
    np_ = onnx.NodeProto()
    np_.op_type = node.op_type
    if node.domain:
        np_.domain = node.domain
    if node.name:
        np_.name = node.name
    np_.input.extend(node.inputs)
    np_.output.extend(node.outputs)
    if node.doc_string:
        np_.doc_string = node.doc_string
    overload = (overloads or {}).get(node, node.overload)
    if overload:
        np_.overload = overload
    for k, val in node.metadata:
        p = np_.metadata_props.add()
        p.key, p.value = k, val
    for name, value in node.attrs.items():
        if lean_constants and name == "value" and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            a = _constant_placeholder(node, value)
            if a is not None:
                np_.attribute.append(a)
                continue
        np_.attribute.append(_attribute(node, name, value, overloads))
    return np_


def _constant_placeholder(node, value) -> onnx.AttributeProto | None:
    """A Constant's ``value`` attribute holding a placeholder of its tensor's dtype and dims, where
    the tensor is a plain array of ASIDE_MIN_BYTES or more; else None."""
    if not isinstance(value, np.ndarray) or value.nbytes < ASIDE_MIN_BYTES:
        return None
    try:
        dtype = helper.np_dtype_to_tensor_dtype(value.dtype)
    except (KeyError, TypeError, ValueError):
        return None
    if dtype not in PLAIN_TYPES:
        return None
    return helper.make_attribute("value", _aside_tensor(node.outputs[0], value, dtype))


def _same(a, b) -> bool:
    """Is attribute value ``b`` still the one imported as ``a``? Subgraphs are always re-exported:
    passes may have edited them in place."""
    if isinstance(a, Graph) or isinstance(b, Graph) or (isinstance(a, list) and a and isinstance(a[0], Graph)):
        return False
    if a is b:
        return True
    if hasattr(a, "shape") or hasattr(b, "shape"):
        return False
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _attribute(node, name, value, overloads=None) -> onnx.AttributeProto:
    orig = node.attr_protos.get(name)
    # a tensor read aside at import (onnx_import.decode_big_initializers) is encoded afresh
    kept = orig is not None and not (orig[1].type == onnx.AttributeProto.TENSOR and is_placeholder(orig[1].t))
    if kept and _same(orig[0], value):
        return orig[1]
    attr_type = orig[1].type if orig is not None else None
    a = python_to_attr(name, value, attr_type, graph_saver=lambda sg: export_graph(sg, overloads))
    if orig is not None:
        if orig[1].doc_string:
            a.doc_string = orig[1].doc_string
        if a.type == onnx.AttributeProto.TENSOR and orig[1].type == a.type:
            a.t.name = orig[1].t.name
            if orig[1].t.doc_string:
                a.t.doc_string = orig[1].t.doc_string
    return a


def choose_ir_version(model: Model) -> int:
    """The model's own IR version while its opsets are those it was read with (onnxruntime runs an
    IR-3 model differently from the same graph at IR 4, so raising it would change outputs); raised
    only as far as new opsets or model-local functions need, and never above what onnxruntime loads."""
    ir = model.ir_version or 0
    if not ir or model.opsets != model.imported_opsets:
        opsets = [helper.make_opsetid(d, v) for d, v in model.opsets.items()]
        try:
            ir = max(ir, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
        except Exception:
            ir = max(ir, 3)
    if model.functions:
        ir = max(ir, 8)
    return min(ir, MAX_IR_VERSION)


def export_model(model: Model, *, infer: bool = True) -> onnx.ModelProto:
    """The ONNX model, every tensor in it. With ``infer``, graph outputs a pass left untyped get
    their inferred types (ONNX requires output types), and so do the inputs of tvmlite ops (their
    functions are specialized on input types)."""
    return _export(model, infer, None)


def export_lean(model: Model, *, infer: bool = True) -> Exported:
    """The ONNX model with its big arrays left out (see `Exported`): nothing is copied but the
    small tensors, so exporting to check, infer types, measure or save costs no weight memory."""
    aside: dict = {}
    proto = _export(model, infer, aside)
    return Exported(proto, aside, bool(model.external_data))


def export_for_inference(model: Model) -> onnx.ModelProto:
    """The ONNX model as shape inference needs it: big initializers and big Constant values
    (weights kept in Constant nodes, as PP-OCR's are) as placeholders of their dtype and dims, no
    array copied. onnx's inference reads neither (a Shape of one still propagates its dims); a
    proto holding light_vgg19's 548 MB of Constant weights cost 9 s per inference, nearly all of it
    the kernel faulting in pages for protobuf's copies (this KVM host)."""
    return _export(model, False, {}, lean_constants=True)


def _export(model: Model, infer: bool, aside: dict | None, lean_constants: bool = False) -> onnx.ModelProto:
    g = model.graph
    if infer:
        want = [n for n in g.outputs if n in g.values and g.values[n].type is None]
        want += untyped_tvmlite_inputs(model)
        if want:
            # shape inference runs on the exported proto, so it imports this module: a local import
            from tvmlite.export.shapes import inferred_types

            types = inferred_types(model)  # of a lean export: no weights copied
            for n in want:
                v = g.values.get(n)
                if v is not None and v.type is None and n in types:
                    v.type = types[n]

    functions, overloads = tvmlite_functions(model)
    opsets = dict(model.opsets)
    if functions:
        opsets.setdefault("tvmlite", TVMLITE_OPSET)
    mp = onnx.ModelProto()
    mp.ir_version = max(choose_ir_version(model), 10) if functions else choose_ir_version(model)
    for domain, version in opsets.items():
        mp.opset_import.append(helper.make_opsetid(domain, version))
    if model.producer_name:
        mp.producer_name = model.producer_name
    if model.producer_version:
        mp.producer_version = model.producer_version
    if model.domain:
        mp.domain = model.domain
    if model.model_version:
        mp.model_version = model.model_version
    if model.doc_string:
        mp.doc_string = model.doc_string
    for k, val in model.metadata:
        p = mp.metadata_props.add()
        p.key, p.value = k, val
    # in place: CopyFrom copied every tensor
    export_graph(model.graph, overloads, aside=aside, gp=mp.graph, lean_constants=lean_constants)
    mp.functions.extend(model.functions)
    mp.functions.extend(functions)
    mp.training_info.extend(model.training_info)
    if model.configuration:
        mp.configuration.extend(model.configuration)
    return mp


@dataclass
class Exported:
    """A model exported with its big arrays left out: ``proto`` holds a placeholder per array (an
    external-data tensor at ``ASIDE_LOCATION``, at its offset in a data file laid out here) and
    ``arrays`` the arrays themselves, shared with the IR, never copied. Writers put the arrays in a
    file (`save`); onnxruntime sessions take them as shared initializers (runtime/ort.py); shape
    inference and onnx.checker need only the placeholders. ``external``: the model was read with
    external data, so it is written with it."""

    proto: onnx.ModelProto
    arrays: dict = field(default_factory=dict)
    external: bool = False
    offsets: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        end = 0
        for t in self.proto.graph.initializer:
            if t.name in self.arrays and is_placeholder(t):
                end = -(-end // DATA_ALIGNMENT) * DATA_ALIGNMENT
                self.offsets[t.name] = end
                set_external(t, ASIDE_LOCATION, end, self.arrays[t.name].nbytes)
                end += self.arrays[t.name].nbytes
        self.data_bytes = end

    @property
    def nbytes(self) -> int:
        """The size of the model written as one file (about: protobuf field headers aside)."""
        return proto_bytes(self.proto) + sum(a.nbytes for a in self.arrays.values())

    def check(self) -> None:
        """onnx.checker on the model (raises its ValidationError): in memory, or by path when
        placeholders stand for arrays (the checker wants the files they point to; it does not
        read them, nor would it the arrays: it checks the structure)."""
        import tempfile

        if not self.arrays:
            onnx.checker.check_model(self.proto)
            return
        with tempfile.TemporaryDirectory(prefix="tvmlite-check-") as d:
            onnx.checker.check_model(self.placeholder_files(d))

    def placeholder_files(self, folder: str, name: str = "model.onnx") -> str:
        """Write the lean model to ``folder/name`` with a sparse file of zeros where its placeholders
        point (no disk blocks, never read: the arrays come as shared initializers); returns the path."""
        with open(os.path.join(folder, ASIDE_LOCATION), "wb") as f:
            f.truncate(self.data_bytes)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(self.proto.SerializeToString())
        return path


def save(model: Model | onnx.ModelProto | Exported, path: str, *, source_path: str | None = None,
         outputs=None) -> str:
    """Write ``model`` to ``path``; tensors that came from external data stay external, in
    ``path + ".data"``. With ``outputs`` (a `tvmlite.outputs.Outputs`), the files are staged in that
    transaction and land when it commits; without, they land now, together. Either way nothing is
    written over ``source_path``, its external data, a non-regular file, or a ``.data`` file that
    belongs to something else. Returns where the model file is now: the staged path until
    ``outputs`` commits, else ``path``. A Model (or its lean export) is written without copying its
    big arrays when they go to external data."""
    path = os.fspath(path)
    if outputs is None:
        with Outputs(lambda: model_files(source_path)) as own:
            save(model, path, outputs=own)
        return path
    if isinstance(model, Model):
        model = export_lean(model)
    if isinstance(model, Exported):
        external = model.external or model.nbytes > globals()["EXTERNAL_THRESHOLD"]
    else:
        external = proto_bytes(model) > globals()["EXTERNAL_THRESHOLD"]
    staged = outputs.file(path, "output model", existing_ok=True)
    if external:
        data_path = path + ".data"
        _check_data_sibling(path, data_path)
        staged_data = outputs.file(data_path, "external data file", existing_ok=True)
        # the staged model and data lie side by side under their final names: `location` is right
        if isinstance(model, Exported):
            write_external(model, staged, staged_data, os.path.basename(data_path))
        else:
            onnx.save_model(model, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(data_path), size_threshold=1024)
    elif isinstance(model, Exported):
        write_inline(model, staged)
    else:
        with open(staged, "wb") as f:
            f.write(model.SerializeToString())
    return staged


def _check_data_sibling(path: str, data_path: str) -> None:
    """An existing ``X.onnx.data`` is replaced only when the existing ``X.onnx`` uses it: any other
    file of that name is someone else's."""
    if not os.path.lexists(data_path):
        return
    ours = any(os.path.exists(p) and os.path.samefile(p, data_path) for p, _ in model_files(path)[1:])
    if not ours:
        raise OutputError(f"the output's external data goes to {data_path}, which exists and is not the data "
                          f"file of {path}: remove it or choose another output path")
