"""dtype and shape inference: onnx's inference for standard ops, tvmlite's own rules for its ops.

It sits above the IR, in the ONNX I/O layer, because onnx infers on the exported proto: the IR
never imports it. Export and inference need each other (export types a pass's untyped outputs by
inferring them), so `onnx_export.export_model` imports this module when it needs it and this module
imports the exporter at the top.
"""
from __future__ import annotations

import os
import re
import tempfile

import onnx

from tvmlite.errors import InputError
from tvmlite.export import onnx_export
from tvmlite.ir.graph import Model, tensor_type, type_elem, type_shape
from tvmlite.ir.types import tensor_shapes
from tvmlite.ops.registry import rule_outputs


def inferred_types(model: Model, input_shapes: dict | None = None) -> dict[str, onnx.TypeProto]:
    """Types onnx's shape inference finds for the model's values (symbolic dims kept).

    ``input_shapes`` (name -> dims) fixes the graph inputs' shapes first, e.g. to count MACs at a
    given image size."""
    # the big arrays left out (placeholders keep their types): inference never reads them, and a
    # copy of every weight (two over 2 GiB, through a file) cost more than the inference itself
    proto = onnx_export.export_for_inference(model)
    if input_shapes:
        # recorded types were inferred from the old input shapes: infer everything afresh
        del proto.graph.value_info[:]
        for vi in proto.graph.output:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
    _set_input_dims(proto, input_shapes or {})
    # exporters write -1 for a dynamic dim (invalid ONNX): onnx's inference computes with it (a
    # MaxPool halves it to 0, a Flatten gives [N, 0]) and onnxruntime refuses the model that records
    # those types; unknown dims, as onnxruntime reads them, infer what it computes
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for shape in tensor_shapes(vi.type):
            for d in shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.ClearField("dim_value")
    for _ in range(_ROUNDS):
        try:
            proto = _infer(proto)
        except Exception:  # inference is best effort: unknown custom ops or odd models
            return {}
        types = {}
        for vi in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
            if vi.HasField("type"):
                types[vi.name] = vi.type
        new = _apply_own_rules(model, types)
        if not new:
            break
        # onnx stopped at an op it has no rule for (com.microsoft GatherBlockQuantized): with the
        # outputs typed by tvmlite's rule, it infers what follows
        info = {vi.name: vi for vi in proto.graph.value_info}
        for name in new:
            vi = info.get(name) or proto.graph.value_info.add()
            vi.name = name
            vi.type.CopyFrom(types[name])
    return types


def _set_input_dims(proto: onnx.ModelProto, input_shapes: dict) -> None:
    """Declare the graph inputs of ``proto`` named in ``input_shapes``: an int > 0 fixes a dim, a
    str keeps it symbolic under that name, anything else leaves it unknown."""
    for vi in proto.graph.input:
        dims = input_shapes.get(vi.name)
        if dims is not None and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, int) and d > 0:
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d


def shape_conflict(model: Model, input_shapes: dict) -> str | None:
    """The first node onnx's strict shape inference refuses with the graph inputs at
    ``input_shapes`` (name -> dims; a str keeps a dim symbolic), as one line ("node 'fc1' (Gemm):
    Dimension mismatch ..."), or None. The recorded types of intermediates and outputs are
    dropped first (they were inferred at other shapes): only what the nodes compute is checked.
    Also None where onnx cannot infer at all (an op it has no schema for raises nothing here)."""
    proto = onnx_export.export_for_inference(model)
    del proto.graph.value_info[:]
    for vi in proto.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    _set_input_dims(proto, input_shapes)
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        return _first_inference_error(str(e))
    except Exception:  # noqa: BLE001 - protobuf limits, odd models: the check cannot tell
        return None
    return None


_INFERENCE_ERROR = re.compile(r"\(op_type:([^,)]*)(?:, node name: ([^)]*))?\): \[\w+\] (.*)")


def _first_inference_error(text: str) -> str:
    for line in text.splitlines():
        m = _INFERENCE_ERROR.search(line)
        if m:
            op, name, why = m.group(1), (m.group(2) or "").strip(), m.group(3).strip()
            return f"node {name!r} ({op}): {why}" if name else f"a {op} node: {why}"
    return " ".join(text.split())[:300]


#: inference runs at most: one more per chain of ops onnx has no shape rule for
_ROUNDS = 4


def _apply_own_rules(model: Model, types: dict) -> list[str]:
    """Ops outside the ONNX domain whose outputs onnx could not type (tvmlite's own through their
    function bodies, onnxruntime's contrib ops not at all) use their registered shape rule; returns
    the names it typed."""
    g = model.graph
    typed = []
    for node in g.toposort():
        if node.domain in ("", "ai.onnx") or all(o in types and type_shape(types[o]) for o in node.outputs if o):
            continue
        ins = []
        for n in node.inputs:
            v = g.values.get(n)
            tp = types.get(n, v.type if v is not None else None)
            if v is not None and v.is_initializer:
                ins.append((v.dtype, v.shape))
            elif tp is None or type_elem(tp) is None:
                ins.append(None)
            else:
                ins.append((onnx.helper.tensor_dtype_to_np_dtype(type_elem(tp)), type_shape(tp)))
        if any(t is None for t, n in zip(ins, node.inputs) if n):
            continue
        outs = rule_outputs(node.op_type, node.domain, ins, node.attrs)
        if outs is None:
            continue
        for name, (dtype, shape) in zip(node.outputs, outs):
            if name:
                types[name] = tensor_type(dtype, shape)
                typed.append(name)
    return typed


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    if onnx_export.proto_bytes(proto) <= onnx_export.EXTERNAL_THRESHOLD:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    # over protobuf's 2 GiB limit: infer from a file with external data, read back the types only
    with tempfile.TemporaryDirectory(prefix="tvmlite-infer-") as d:
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx_export.save(proto, src)
        onnx.shape_inference.infer_shapes_path(src, dst, check_type=False, strict_mode=False, data_prop=True)
        return onnx.load(dst, load_external_data=False)


def _more_specific(new: onnx.TypeProto, old: onnx.TypeProto | None) -> bool:
    if old is None:
        return True
    ns, os_ = type_shape(new), type_shape(old)
    if os_ is None:
        return ns is not None
    if ns is None or len(ns) != len(os_):
        return False
    return sum(isinstance(d, int) for d in ns) > sum(isinstance(d, int) for d in os_)


def infer_shapes(model: Model) -> int:
    """Write inferred types into the graph's values; returns how many values gained a type."""
    g = model.graph
    changed = 0
    for name, tp in inferred_types(model).items():
        v = g.values.get(name)
        if v is None or v.is_initializer or type_shape(tp) is None:
            continue  # a dtype without a shape adds nothing (and onnx.checker rejects it)
        if _more_specific(tp, v.type):
            v.type = tp
            changed += 1
    return changed


class TypeLookup:
    """Each value's (elem type, shape) as a pass reads them while it rewrites: the recorded type where
    it is complete (an elem type and every dim a number), else onnx's inference of the model as it was
    on first need (run once, lazily: values added later are not in it), else what is recorded."""

    def __init__(self, model: Model):
        self.model, self._inferred = model, None

    def type(self, name: str) -> tuple[int | None, tuple | None]:
        g = self.model.graph
        v = g.value(name) if g.has_value(name) else None
        elem, shape = (v.elem_type, v.shape) if v is not None else (None, None)
        if elem and shape is not None and all(isinstance(d, int) for d in shape):
            return elem, shape
        if self._inferred is None:
            self._inferred = inferred_types(self.model)
        tp = self._inferred.get(name)
        inferred = type_shape(tp)
        return type_elem(tp) or elem, shape if inferred is None else inferred

    def elem(self, name: str) -> int | None:
        return self.type(name)[0]

    def shape(self, name: str) -> tuple | None:
        return self.type(name)[1]

    def static_shape(self, name: str) -> tuple | None:
        """The shape when every dim is a known number (>= 0), else None."""
        s = self.shape(name)
        return s if s is not None and all(isinstance(d, int) and d >= 0 for d in s) else None


def typed_values(graph) -> tuple[set, list]:
    """The values that have a type now, and the value_info order: see drop_new_types."""
    return {n for n, v in graph.values.items() if v.type is not None}, list(graph.value_info_order)


def drop_new_types(graph, before: tuple[set, list]) -> None:
    """Forget the types a pass inferred for its own use (``before`` from typed_values): exported,
    every typed intermediate value becomes a value_info entry. Graph inputs and outputs keep theirs."""
    typed, info = before
    graph.value_info_order = [n for n in info if n in graph.values]
    keep = typed | set(graph.inputs) | set(graph.outputs) | set(graph.value_info_order)
    for name, v in graph.values.items():
        if v.type is not None and name not in keep and not v.is_initializer:
            v.type = None


def static_shapes(model: Model, input_shapes: dict | None = None, default_dim: int = 1) -> dict[str, tuple]:
    """Value name -> shape with symbolic or unknown dims (and ONNX's invalid -1) set to ``default_dim``."""
    out = {}
    g = model.graph
    types = inferred_types(model, input_shapes)
    for name, v in g.values.items():
        tp = types.get(name, v.type)
        s = v.shape if v.is_initializer else type_shape(tp)
        if s is not None:
            out[name] = tuple(d if isinstance(d, int) and d > 0 else default_dim for d in s)
    return out


def fix_input_shapes(model: Model, shapes: dict) -> None:
    """Declare the graph inputs' shapes (ints fix a dim, names keep it symbolic) and infer the rest,
    so passes that need static dims (conv lowering) see them."""
    check_input_shapes(model, shapes)
    g = model.graph
    for name, dims in shapes.items():
        v = g.values[name]
        v.type = tensor_type(v.elem_type, dims)
    infer_shapes(model)


def check_input_shapes(model: Model, shapes: dict) -> None:
    """InputError unless each of ``shapes`` names a graph input and fits its declared shape."""
    g = model.graph
    for name, dims in shapes.items():
        if name not in g.inputs or name in g.initializers:
            raise InputError(f"--shape names {name!r}, which is not an input of the model (inputs: "
                             f"{[n for n in g.inputs if n not in g.initializers]})")
        v = g.values[name]
        if v.shape is not None and len(v.shape) != len(dims):
            raise InputError(f"--shape {name}: rank {len(dims)} does not fit the model's {list(v.shape)}")
        for have, want in zip(v.shape or (), dims):
            if isinstance(have, int) and have > 0 and isinstance(want, int) and have != want:
                raise InputError(f"--shape {name}: dim {want} does not fit the model's {list(v.shape)}")
