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
    if not found:
        return False
    for name, t in inferred_types(m).items():  # the recorded Loop types flow on to their readers
        v = g.values.get(name)
        s = type_shape(t)
        if v is None or name in shapes or s is None or not all(isinstance(d, int) and d >= 0 for d in s):
            continue
        if v.elem_type is None and type_elem(t):
            v.type = t
        shapes[name] = tuple(int(d) for d in s)
    return True


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


def _loop_outputs(m: Model, node, shapes: dict) -> dict | None:
    """{output: (dtype, shape)} of a fixed-count Loop whose body keeps its shapes, else None."""
    g = m.graph
    trips = _trips(g, node)
    body = node.attrs["body"]
    carried = list(node.inputs[2:])
    if trips is None or trips < 0 or not all(n and n in shapes for n in carried):
        return None
    outer = [n for n in node.implicit_inputs if n]
    if not all(n in shapes or g.const_value(n) is not None for n in outer):
        return None
    gp = onnx.GraphProto()
    gp.CopyFrom(export_graph(body))
    typed = {body.inputs[0]: (np.int64, ()), body.inputs[1]: (np.bool_, ())}
    typed.update({b: (g.values[o].dtype, shapes[o]) for b, o in zip(body.inputs[2:], carried)})
    del gp.input[:]
    for name in body.inputs:
        dt, shape = typed[name]
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
    proto = onnx.helper.make_model(gp, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in m.opsets.items()],
                                   ir_version=8)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # noqa: BLE001 - inference is best effort: no shapes, the Loop's readers stay host-run
        return None
    out_types = {vi.name: vi.type for vi in inferred.output}
    result = {}
    n_carried = len(carried)
    for k, name in enumerate(node.outputs):
        if not name:
            continue
        t = out_types.get(body.outputs[k + 1])
        s = type_shape(t) if t is not None else None
        if s is None or not all(isinstance(d, int) and d >= 0 for d in s):
            return None
        s = tuple(int(d) for d in s)
        dt = onnx.helper.tensor_dtype_to_np_dtype(type_elem(t))
        if k < n_carried:
            if s != tuple(shapes[carried[k]]):
                return None  # the state changes shape from step to step
            result[name] = (dt, s)
        else:
            result[name] = (dt, (trips,) + s)
    return result
