"""float16: weights (default) or weights and activations.

Weights: every float32 weight (initializer or Constant) is stored as float16 and Cast back to float32
where it is read, halving the file; onnxruntime folds the Casts at load, so compute stays float32 and
as fast as before.

``activations=true``: the ops run in float16 too, where onnxruntime's CPU provider has a float16
kernel for them; the others stay in float32 between Casts. Which ops have one is asked of
onnxruntime itself (a one-node model per op signature, cached), since the answer depends on the
version and the build (on x86, 1.31 has float16 kernels for few ops and none for Conv). Graph inputs
and outputs keep their float32 types. Values beyond float16's range (65504) become inf: checked
pipelines (tvmlite optimize) catch that as output error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import DeadCodeElimination, is_onnx
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, tensor_type
from tvmlite.export.shapes import drop_new_types, infer_shapes, typed_values
from tvmlite.runtime.ort import graph_model, ort_session

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
#: ops whose attributes name a float type or that make tensors from attributes: left in float32
KEEP_FLOAT32 = {"Cast", "CastLike", "Constant", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform",
                "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "QuantizeLinear",
                "DequantizeLinear", "DynamicQuantizeLinear"}


@register_pass
class Float16Weights(Pass):
    name = "fp16"

    @dataclass
    class Options:
        #: weights smaller than this stay float32 (a Cast costs more than it saves)
        min_elements: int = 16
        #: also run the ops in float16 where onnxruntime's CPU provider can
        activations: bool = False

    def run(self, model: Model) -> PassResult:
        if self.options.activations:
            return self._activations(model)
        result = PassResult(self.name)
        g = model.graph
        names = [n for n in g.initializers if n not in g.inputs]
        names += [n.outputs[0] for n in g.toposort() if is_onnx(n, "Constant")]
        b = Builder(model)
        for name in names:
            a = g.const_value(name)
            if a is None or a.dtype != np.float32 or a.size < self.options.min_elements or name in g.outputs:
                continue
            if np.isfinite(a).all() and np.abs(a).max() > 65504:
                result.skip(name, "values beyond float16's range")
                continue
            readers = g.consumers(name)
            if not readers:
                continue
            half = b.const(a.astype(np.float16), f"{name}_fp16")
            back = b.op.Cast(half, to=FLOAT, name_hint=f"{name}_Cast", outputs=[f"{name}_fp32"])
            back.type = tensor_type(np.float32, a.shape)
            for reader in readers:
                g.set_inputs(reader, [back.name if n == name else n for n in reader.inputs])
            result.count("weights_fp16")
        DeadCodeElimination().run(model)
        return result

    # ---------------------------------------------------------------------------------- activations
    def _activations(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        before = typed_values(g)
        infer_shapes(model)
        half_of: dict[str, str] = {}  # float32 value -> its float16 version
        b = Builder(model)

        def as_half(name: str) -> str:
            if name not in half_of:
                c = g.const_value(name)
                if c is not None:
                    half_of[name] = b.const(c.astype(np.float16), f"{name}_fp16").name
                else:
                    h = b.op.Cast(name, to=FLOAT16, name_hint=f"{name}_to_fp16", outputs=[f"{name}_fp16"])
                    shape = g.value(name).shape
                    h.type = tensor_type(np.float16, shape) if shape is not None else None
                    half_of[name] = h.name
            return half_of[name]

        for node in g.toposort():
            why = self._why_float32(g, node)
            convert = None if why else _fp16_inputs(model.opset, *_signature(g, node))
            if convert is None:
                if why != "no float tensors":
                    result.skip(node, why or "onnxruntime's CPU provider has no float16 kernel for it")
                continue
            for i in convert:
                g.set_input(node, i, as_half(node.inputs[i]))
            for out in node.outputs:
                if not out or not _is_float32(g, out):
                    continue
                declared = g.value(out).type
                h = b.value_name(f"{out}_fp16")
                was_output = [k for k, o in enumerate(g.outputs) if o == out]
                g.rename_value(out, h)
                shape = g.value(h).shape
                g.value(h).type = tensor_type(np.float16, shape) if shape is not None else None
                # float32 readers (and graph outputs) get it back through a Cast named as before
                b.make_node("Cast", [h], [out], {"to": FLOAT}, name_hint=f"{out}_to_fp32")
                g.value(out).type = declared
                for reader in [r for r in g.consumers(h) if r.op_type != "Cast" or r.outputs[0] != out]:
                    g.set_inputs(reader, [out if n == h else n for n in reader.inputs])
                    if h in reader.implicit_inputs:  # If/Loop bodies keep reading float32
                        for sg in reader.subgraphs:
                            sg._rename_outer(h, out)
                        g.subgraph_changed(reader)
                for k in was_output:
                    g.outputs[k] = out
                half_of[out] = h
            result.rewrote(node, precision="float16", op=node.op_type)
        DeadCodeElimination().run(model)
        drop_new_types(g, before)
        return result

    @staticmethod
    def _why_float32(g, node) -> str | None:
        if not is_onnx(node, node.op_type) or node.subgraphs:
            return "not a plain ONNX op"
        if node.op_type in KEEP_FLOAT32:
            return "no float tensors" if node.op_type in ("Cast", "Constant") else f"{node.op_type} stays float32"
        floats = [n for n in list(node.inputs) + list(node.outputs) if n and _is_float(g, n)]
        if not floats:
            return "no float tensors"
        if any(not _is_float32(g, n) for n in floats):
            return "float tensors other than float32"
        if all(g.const_value(n) is not None for n in node.inputs if n):
            return "constant inputs only (folded, not run)"
        if any(o and g.value(o).dtype is None for o in node.outputs):
            return "output type not inferred"
        return None


def _is_float(g, name) -> bool:
    dt = g.value(name).dtype if g.value(name).dtype is not None else None
    if dt is None:
        c = g.const_value(name)
        dt = None if c is None else c.dtype
    return dt is not None and np.dtype(dt).kind == "f"


def _is_float32(g, name) -> bool:
    v = g.value(name)
    dt = v.dtype
    if dt is None:
        c = g.const_value(name)
        dt = None if c is None else c.dtype
    return dt is not None and np.dtype(dt) == np.float32


def _signature(g, node):
    """What decides which onnxruntime kernel runs: op, attributes, input and output element types and
    ranks (constant inputs by value: some kernels need them)."""
    ins = []
    for name in node.inputs:
        if not name:
            ins.append(None)
            continue
        c = g.const_value(name)
        v = g.value(name)
        if c is not None:
            ins.append(("const", c.dtype.str, c.shape, c.tobytes() if c.size <= 64 else None))
        else:
            shape = v.shape
            ins.append(("value", np.dtype(v.dtype).str if v.dtype is not None else None,
                        None if shape is None else len(shape)))
    outs = tuple(np.dtype(g.value(o).dtype).str if o and g.value(o).dtype is not None else None
                 for o in node.outputs)
    attrs = tuple(sorted((k, repr(v)) for k, v in node.attrs.items()))
    return node.op_type, node.domain, attrs, tuple(ins), outs, dict(node.attrs)


#: onnxruntime's answer per op signature (opset, op, domain, attributes, input and output types)
_PROBED: dict[tuple, tuple[int, ...] | None] = {}


def _fp16_inputs(opset, op_type, domain, attrs_key, ins, outs, attrs) -> tuple[int, ...] | None:
    """The inputs to give in float16 (all float32 ones, else only the first) so that onnxruntime's
    CPU provider runs the op in float16; None when it cannot. Asked once per signature."""
    key = (opset, op_type, domain, attrs_key, ins, outs)
    if key not in _PROBED:
        _PROBED[key] = _probe(opset, op_type, domain, ins, outs, attrs)
    return _PROBED[key]


def _probe(opset, op_type, domain, ins, outs, attrs) -> tuple[int, ...] | None:
    floats = [i for i, x in enumerate(ins) if x is not None and x[1] == np.dtype(np.float32).str]
    if not floats or not any(x and x[0] == "value" for x in ins):
        return None
    for convert in (floats, [i for i in floats[:1] if ins[i][0] == "value"]):
        if convert and _session_ok(opset, op_type, domain, ins, outs, attrs, set(convert)):
            return tuple(convert)
    return None


def _session_ok(opset, op_type, domain, ins, outs, attrs, convert) -> bool:
    """Whether onnxruntime loads the op with the inputs in ``convert`` in float16 (a one-node model
    of that signature, made and loaded through tvmlite.runtime.ort, graph optimizations off)."""
    def elem(dtype_str, half):
        return FLOAT16 if half else helper.np_dtype_to_tensor_dtype(np.dtype(dtype_str))

    g = Graph("probe")
    names = []
    for i, x in enumerate(ins):
        if x is None:
            names.append("")
            continue
        name = f"i{i}"
        names.append(name)
        if x[0] == "const":
            if x[3] is None:
                arr = np.zeros(x[2], np.dtype(x[1]))
            else:
                arr = np.frombuffer(x[3], np.dtype(x[1])).reshape(x[2])
            g.add_initializer(name, np.array(arr.astype(np.float16) if i in convert else arr))
        else:
            if x[1] is None:
                return False
            shape = None if x[2] is None else [f"d{k}" for k in range(x[2])]
            g.add_input(name, helper.make_tensor_type_proto(elem(x[1], i in convert), shape))
    if any(o is None for o in outs):
        return False
    out_names = [f"o{k}" for k in range(len(outs))]
    try:
        g.add_node(op_type, names, out_names, dict(attrs), domain=domain or "")
        for name, o in zip(out_names, outs):
            g.outputs.append(name)
            g.value(name).type = helper.make_tensor_type_proto(elem(o, o == np.dtype(np.float32).str), None)
        ort_session(graph_model(g, {"": opset}), optimize=False)
        return True
    except Exception:  # noqa: BLE001 - any failure means: keep the op in float32
        return False
