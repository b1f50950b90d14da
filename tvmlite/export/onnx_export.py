"""tvmlite Model -> ONNX ModelProto / file.

What a pass did not change is written back as it was read (tensor and attribute protos are reused), so
an import/export round trip is lossless. Files are written through a `tvmlite.outputs.Outputs`
transaction: staged beside the target, renamed into place together, so a failure leaves no
half-written model.
"""
from __future__ import annotations

import os

import onnx
from onnx import helper, numpy_helper
from google.protobuf.message import EncodeError

from tvmlite.export.functions import TVMLITE_OPSET, tvmlite_functions, untyped_tvmlite_inputs
from tvmlite.ir.attrs import python_to_attr
from tvmlite.ir.graph import Graph, Model, Value
from tvmlite.outputs import OutputError, Outputs, model_files

#: the newest IR version onnxruntime 1.31 loads (checked: 13 loads, 14 is refused); onnx 1.23
#: would write 14 by default
MAX_IR_VERSION = 13
#: protobuf cannot serialize a message over 2 GiB; above this, tensors go to an external file
EXTERNAL_THRESHOLD = 2**31 - 2**26


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


def _tensor(v: Value) -> onnx.TensorProto:
    if v._proto is not None:
        return v._proto
    t = numpy_helper.from_array(v.const, v.name)
    return t


def export_graph(g: Graph, overloads: dict | None = None) -> onnx.GraphProto:
    gp = onnx.GraphProto()
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
            t = _tensor(v)
            if t.name != name:
                t = onnx.TensorProto()
                t.CopyFrom(_tensor(v))
                t.name = name
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
        np_ = export_node(node, overloads)
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


def export_node(node, overloads: dict | None = None) -> onnx.NodeProto:
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
        np_.attribute.append(_attribute(node, name, value, overloads))
    return np_


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
    if orig is not None and _same(orig[0], value):
        return orig[1]
    attr_type = orig[1].type if orig is not None else None
    a = python_to_attr(name, value, attr_type, graph_saver=lambda sg: export_graph(sg, overloads))
    if orig is not None and orig[1].doc_string:
        a.doc_string = orig[1].doc_string
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
    """The ONNX model. With ``infer``, graph outputs a pass left untyped get their inferred types
    (ONNX requires output types), and so do the inputs of tvmlite ops (their functions are
    specialized on input types)."""
    g = model.graph
    if infer:
        want = [n for n in g.outputs if n in g.values and g.values[n].type is None]
        want += untyped_tvmlite_inputs(model)
        if want:
            # shape inference runs on the exported proto, so it imports this module: a local import
            from tvmlite.export.shapes import inferred_types

            types = inferred_types(model)
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
    mp.graph.CopyFrom(export_graph(model.graph, overloads))
    mp.functions.extend(model.functions)
    mp.functions.extend(functions)
    mp.training_info.extend(model.training_info)
    if model.configuration:
        mp.configuration.extend(model.configuration)
    return mp


def save(model: Model | onnx.ModelProto, path: str, *, source_path: str | None = None,
         outputs=None) -> str:
    """Write ``model`` to ``path``; tensors that came from external data stay external, in
    ``path + ".data"``. With ``outputs`` (a `tvmlite.outputs.Outputs`), the files are staged in that
    transaction and land when it commits; without, they land now, together. Either way nothing is
    written over ``source_path``, its external data, a non-regular file, or a ``.data`` file that
    belongs to something else. Returns where the model file is now: the staged path until
    ``outputs`` commits, else ``path``."""
    path = os.fspath(path)
    if outputs is None:
        with Outputs(lambda: model_files(source_path)) as own:
            save(model, path, outputs=own)
        return path
    proto = model if isinstance(model, onnx.ModelProto) else export_model(model)
    external = (not isinstance(model, onnx.ModelProto) and bool(model.external_data)) \
        or proto_bytes(proto) > globals()["EXTERNAL_THRESHOLD"]
    staged = outputs.file(path, "output model", existing_ok=True)
    if external:
        data_path = path + ".data"
        _check_data_sibling(path, data_path)
        outputs.file(data_path, "external data file", existing_ok=True)
        # the staged model and data lie side by side under their final names: `location` is right
        onnx.save_model(proto, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(data_path), size_threshold=1024)
    else:
        with open(staged, "wb") as f:
            f.write(proto.SerializeToString())
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
