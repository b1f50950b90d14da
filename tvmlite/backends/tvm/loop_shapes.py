"""Static shapes of Loop outputs, which onnx's inference leaves unknown even when no value decides
them, so that the kernels after a host-run Loop (a recurrent net's state and per-step outputs) get
static shapes too.

A Loop's outputs are static when it runs a fixed number of steps (a constant trip count, no
condition input or a constant true one, and a body that passes its condition through unchanged)
and its body, inferred with the step's inputs typed (the loop-carried values with their outer
shapes, the outer-scope values it reads with theirs), gives each carried value back in its own
shape and each per-step output in a static one. Those shapes hold whatever the input values are
(inference never saw them); the host call still checks every output's shape against its buffer
on each run.
"""
from __future__ import annotations

import numpy as np
import onnx

from tvmlite.export.onnx_export import export_graph
from tvmlite.export.shapes import inferred_types
from tvmlite.ir.graph import Model, tensor_type, type_elem, type_shape

ONNX = ("", "ai.onnx")


def add_loop_shapes(m: Model, shapes: dict) -> bool:
    """Record the static output shapes of ``m``'s fixed-count Loops in ``shapes`` and on their
    values, then the shapes inference now finds after them. True when anything was added."""
    g = m.graph
    found = False
    for node in g.toposort():
        if node.op_type != "Loop" or node.domain not in ONNX or all(o in shapes for o in node.outputs if o):
            continue
        got = _loop_outputs(m, node, shapes)
        if got is None:
            continue
        for name, (dtype, shape) in got.items():
            g.values[name].type = tensor_type(dtype, shape)
            shapes[name] = shape
        found = True
    if found:
        propagate_shapes(m, shapes)
    return found


def propagate_shapes(m: Model, shapes: dict) -> None:
    """Add to ``shapes`` the static shapes inference finds from the types recorded on values
    (the Loop outputs'), which it keeps."""
    g = m.graph
    for name, t in inferred_types(m).items():  # the recorded Loop types flow on to their readers
        v = g.values.get(name)
        s = type_shape(t)
        if v is None or name in shapes or s is None or not all(isinstance(d, int) and d >= 0 for d in s):
            continue
        if v.elem_type is None and type_elem(t):
            v.type = t
        shapes[name] = tuple(int(d) for d in s)


def _trips(g, node) -> int | None:
    """The number of steps ``node`` surely runs, or None."""
    ins = list(node.inputs) + ["", ""]
    m = g.const_value(ins[0]) if ins[0] else None
    if m is None or m.size != 1:
        return None
    if ins[1]:
        c = g.const_value(ins[1])
        if c is None or c.size != 1 or not bool(c.reshape(-1)[0]):
            return None
    body = node.attrs["body"]
    cond_in, cond_out = body.inputs[1], body.outputs[0]
    if cond_out != cond_in:
        p = body.producer(cond_out)
        c = body.const_value(cond_out)
        passes = p is not None and p.op_type == "Identity" and p.domain in ONNX and p.inputs[0] == cond_in
        if not passes and not (c is not None and c.size == 1 and bool(c.reshape(-1)[0])):
            return None
    return int(m.reshape(-1)[0])


def body_proto(m: Model, body, shapes: dict, inputs: dict) -> onnx.ModelProto | None:
    """Subgraph ``body`` of a node of ``m`` as a model of its own: its inputs typed by ``inputs``
    ({name: (dtype, shape)}), the outer-scope values it reads as graph inputs (constants as
    initializers). None when one of them has no static shape or known type. The output shapes are
    left to inference."""
    g = m.graph
    outer = [n for n in body.outer_references() if n]
    if not all(n in shapes or g.const_value(n) is not None for n in outer):
        return None
    gp = onnx.GraphProto()
    gp.CopyFrom(export_graph(body))
    del gp.input[:]
    for name in body.inputs:
        dt, shape = inputs[name]
        if dt is None:
            return None
        gp.input.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)),
                                                           list(shape)))
    for name in outer:  # outer-scope values the body reads: graph inputs of the standalone body
        c = g.const_value(name)
        if c is not None:
            gp.initializer.append(onnx.numpy_helper.from_array(c, name))
        else:
            dt = g.values[name].dtype
            if dt is None:
                return None
            gp.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), list(shapes[name])))
    for vi in gp.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    del gp.value_info[:]
    return onnx.helper.make_model(gp, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in m.opsets.items()],
                                  ir_version=8)


def body_output_types(proto: onnx.ModelProto) -> dict | None:
    """{output: (dtype, static shape or None)} of a standalone body, by onnx's inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # noqa: BLE001 - inference is best effort: no shapes, the body stays host-run
        return None
    result = {}
    for vi in inferred.output:
        s = type_shape(vi.type) if vi.type.HasField("tensor_type") else None
        static = s is not None and all(isinstance(d, int) and d >= 0 for d in s)
        elem = type_elem(vi.type) if vi.type.HasField("tensor_type") else 0
        dt = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else None
        result[vi.name] = (dt, tuple(int(d) for d in s) if static else None)
    return result


def loop_body_shapes(m: Model, node, shapes: dict, body=None,
                     extra: dict | None = None) -> tuple[onnx.ModelProto | None, dict | None, str]:
    """(standalone body, {body output: (dtype, shape)}, '') when ``node``'s carried values keep
    their shapes from step to step and its per-step outputs have static shapes; else (None, None,
    why not). ``body``: a rewritten copy of the node's body whose inputs after its own are
    ``extra`` ({name: (dtype, shape)})."""
    g = m.graph
    body = body or node.attrs["body"]
    carried = list(node.inputs[2:])
    if not all(n and n in shapes for n in carried):
        return None, None, "a loop-carried value has no static shape"
    inputs = {body.inputs[0]: (np.int64, ()), body.inputs[1]: (np.bool_, ())}
    inputs.update({b: (g.values[o].dtype, shapes[o]) for b, o in zip(body.inputs[2:], carried)})
    inputs.update(extra or {})
    proto = body_proto(m, body, shapes, inputs)
    if proto is None:
        return None, None, "a value the body reads has no static shape"
    types = body_output_types(proto)
    if types is None:
        return None, None, "the body's shapes cannot be inferred"
    for k, name in enumerate(body.outputs[1:]):
        dt, s = types.get(name, (None, None))
        if s is None or dt is None:
            return None, None, f"body output {name!r} has no static shape"
        if k < len(carried) and s != tuple(shapes[carried[k]]):
            return None, None, f"loop-carried {carried[k]!r} changes shape from step to step"
    return proto, types, ""


def _loop_outputs(m: Model, node, shapes: dict) -> dict | None:
    """{output: (dtype, shape)} of a fixed-count Loop whose body keeps its shapes, else None."""
    trips = _trips(m.graph, node)
    if trips is None or trips < 0:
        return None
    proto, types, _ = loop_body_shapes(m, node, shapes)
    if proto is None:
        return None
    body = node.attrs["body"]
    n_carried = len(node.inputs) - 2
    result = {}
    for k, name in enumerate(node.outputs):
        if name:
            dt, s = types[body.outputs[k + 1]]
            result[name] = (dt, s if k < n_carried else (trips,) + s)
    return result
