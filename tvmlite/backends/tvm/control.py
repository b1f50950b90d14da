"""Control flow with TVM-compiled bodies: a Loop or Scan whose body keeps its shapes from step to
step, an If whose branches have static shapes.

Build side (`loop_body`, `if_branches`, `body_spec`): each body becomes a model of its own (its
inputs typed, the outer-scope values it reads as graph inputs, outer constants as initializers:
loop_shapes.body_proto) and is lowered like a whole graph; lower.py keeps the node a host call
(the host drives the steps) with the lowered bodies attached, their kernels go into the same LLVM
module as the graph's (named ``c<index>_...``), and `body_spec` stores each body's run plan, with
its constants renamed into the artifact's .npz, inside the node's host segment. A body that would
itself need a host call is not compiled: the node runs through the NumPy plan, with the reason.

A Loop body that reads an outer sequence of no static shape only one row per step
(``Gather(sequence, step number)``, an RNN over frames whose count a run decides) gets the row as
an input instead (`_step_slices`), so its shapes no longer depend on the length.

The runners are in control_run.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from tvmlite.backends.tvm.loop_shapes import body_output_types, body_proto, loop_body_shapes
from tvmlite.errors import TvmliteError
from tvmlite.export.shapes import inferred_types
from tvmlite.ir.clone import clone_graph, copy_proto
from tvmlite.ir.graph import Graph, type_shape

ONNX = ("", "ai.onnx")


@dataclass
class Body:
    """The compiled bodies of one control-flow node: ``lows`` (Lowered: the Loop's body, or the
    If's then and else branches) and ``info`` (JSON-able: how the runner binds their values)."""
    kind: str
    lows: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- build
def _step_slices(m, node, shapes: dict) -> tuple:
    """(body copy, {slice input: (dtype, shape)}, [[slice input, outer value]]): the outer values
    of no static shape (a sequence whose length a run decides) that the body reads only as
    ``Gather(value, step number)`` on axis 0 become inputs of the body, one row per step, so the
    body's shapes no longer depend on the length. (None, None, []) when there are none."""
    body = node.attrs["body"]
    step = body.inputs[0]
    uses: dict = {}
    for n in body.nodes:
        for name in n.inputs:
            if name and name not in body.values and name not in shapes and m.graph.const_value(name) is None:
                uses.setdefault(name, []).append(n)
    picked = {}
    types = None
    for name, readers in uses.items():
        if not all(n.op_type == "Gather" and n.domain in ONNX and list(n.inputs) == [name, step]
                   and n.attrs.get("axis", 0) == 0 for n in readers):
            continue
        types = types if types is not None else inferred_types(m)
        t = types.get(name, m.graph.values[name].type if name in m.graph.values else None)
        dims = type_shape(t) if t is not None and t.HasField("tensor_type") else None
        dt = m.graph.values[name].dtype if name in m.graph.values else None
        if dims and dt is not None and all(isinstance(d, int) and d >= 0 for d in dims[1:]):
            picked[name] = (readers, np.dtype(dt), tuple(int(d) for d in dims[1:]))
    if not picked:
        return None, None, []
    copy = clone_graph(body, body.parent)
    extra, slices = {}, []
    for name, (readers, dt, shape) in picked.items():
        for r in readers:
            n = copy.producer(r.outputs[0])
            copy.remove_node(n, remove_outputs=False)
            copy.add_input(n.outputs[0])
            extra[n.outputs[0]] = (dt, shape)
            slices.append([n.outputs[0], name])
    return copy, extra, slices


def loop_body(m, node, shapes: dict):
    """(standalone body proto, its input shapes, info) of a Loop whose body keeps its shapes, or
    the reason it does not as a string."""
    if any(n.subgraphs for n in node.attrs["body"].nodes):
        return "nested control flow"
    copy, extra, slices = _step_slices(m, node, shapes)
    proto, types, why = loop_body_shapes(m, node, shapes, copy, extra)
    if proto is None:
        return why
    body = node.attrs["body"]
    cond_in, cond_out = body.inputs[1], body.outputs[0]
    p = body.producer(cond_out)
    c = body.const_value(cond_out)
    # a condition passed through (or always true) is not an output of the compiled body: the
    # runner keeps it; without a condition input the body's is ignored (the ONNX spec's reading)
    fixed = (cond_out == cond_in or (p is not None and p.op_type == "Identity" and p.domain in ONNX
                                     and p.inputs[0] == cond_in)
             or (c is not None and c.size == 1 and bool(c.reshape(-1)[0])))
    computed = not fixed and len(node.inputs) > 1 and bool(node.inputs[1])
    if not computed:
        keep = [o for o in proto.graph.output if o.name != cond_out]
        del proto.graph.output[:]
        proto.graph.output.extend(keep)
    why = _passes_through(body, proto, [o.name for o in proto.graph.output])
    if why:
        return why
    n_carried = len(node.inputs) - 2
    in_shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in proto.graph.input}
    info = {"iter": body.inputs[0], "cond_in": cond_in, "cond_out": cond_out if computed else None,
            "states": [[body.inputs[2 + k], body.outputs[1 + k]] for k in range(n_carried)],
            "scans": [[o, list(types[o][1]), np.dtype(types[o][0]).name] for o in body.outputs[1 + n_carried:]],
            "node_inputs": list(node.inputs), "node_outputs": list(node.outputs), "slices": slices}
    return proto, in_shapes, info


def _passes_through(body, proto, outputs) -> str | None:
    """The first of ``outputs`` that is (through Identity nodes) a non-float input of the body
    ``proto``: with no kernel reading it, it has no buffer the run plan could return it from."""
    kinds = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    for name in outputs:
        src = name
        p = body.producer(src)
        while p is not None and p.op_type == "Identity" and p.domain in ONNX:
            src = p.inputs[0]
            p = body.producer(src)
        if kinds.get(src, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
            return f"body output {name!r} passes the non-float input {src!r} through"
    return None


def scan_body(m, node, shapes: dict):
    """(standalone body proto, its input shapes, info) of a Scan (opset 9 on) whose body keeps its
    state's shapes, or the reason it does not as a string."""
    body = node.attrs["body"]
    if any(n.subgraphs for n in body.nodes):
        return "nested control flow"
    g = m.graph
    n_scan = int(node.attrs["num_scan_inputs"])
    n_state = len(node.inputs) - n_scan
    if not all(n and n in shapes and g.values[n].dtype is not None for n in node.inputs):
        return "an input has no static shape"
    ranks = [len(shapes[n]) for n in node.inputs[n_state:]]
    in_axes = [a % r for a, r in zip(node.attrs.get("scan_input_axes") or [0] * n_scan, ranks)]
    in_dirs = node.attrs.get("scan_input_directions") or [0] * n_scan
    inputs = {b: (g.values[o].dtype, shapes[o]) for b, o in zip(body.inputs[:n_state], node.inputs[:n_state])}
    for b, o, ax in zip(body.inputs[n_state:], node.inputs[n_state:], in_axes):
        inputs[b] = (g.values[o].dtype, shapes[o][:ax] + shapes[o][ax + 1:])
    proto = body_proto(m, body, shapes, inputs)
    types = body_output_types(proto) if proto is not None else None
    if types is None:
        return "the body's shapes cannot be inferred"
    for k, name in enumerate(body.outputs):
        dt, s = types.get(name, (None, None))
        if s is None or dt is None:
            return f"body output {name!r} has no static shape"
        if k < n_state and s != tuple(shapes[node.inputs[k]]):
            return f"scan state {node.inputs[k]!r} changes shape from step to step"
    why = _passes_through(body, proto, body.outputs)
    if why:
        return why
    n_out = len(body.outputs) - n_state
    out_axes = node.attrs.get("scan_output_axes") or [0] * n_out
    out_dirs = node.attrs.get("scan_output_directions") or [0] * n_out
    in_shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in proto.graph.input}
    info = {"states": [[body.inputs[k], body.outputs[k]] for k in range(n_state)],
            "slices": [[b, o, int(ax), int(d)] for b, o, ax, d in
                       zip(body.inputs[n_state:], node.inputs[n_state:], in_axes, in_dirs)],
            "scans": [[o, list(types[o][1]), np.dtype(types[o][0]).name, int(ax), int(d)]
                      for o, ax, d in zip(body.outputs[n_state:], out_axes, out_dirs)],
            "node_inputs": list(node.inputs), "node_outputs": list(node.outputs)}
    return proto, in_shapes, info


def if_branches(m, node, shapes: dict):
    """[(branch proto, its input shapes)] for the then and else branches of an If whose branches
    have static output shapes, or the reason they do not as a string. A branch may hold control
    flow of its own (what `sink_into_branches` moved there): onnx's inference leaves the shapes
    after a Loop unknown, so the branch's lowering (which finds them) decides instead."""
    out = []
    for key in ("then_branch", "else_branch"):
        branch = node.attrs[key]
        nested = any(n.subgraphs for n in branch.nodes)
        proto = body_proto(m, branch, shapes, {})
        if proto is None:
            return "a value a branch reads has no static shape"
        types = body_output_types(proto)
        if types is None or any((s is None and not nested) or dt is None for dt, s in types.values()):
            return f"{key} has outputs without a static shape"
        why = _passes_through(branch, proto, branch.outputs)
        if why:
            return why
        in_shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in proto.graph.input}
        out.append((proto, in_shapes))
    return out


# at most this many nodes are copied into an If's branches (each is built twice)
MAX_SUNK = 2000


def sink_into_branches(m, shapes: dict, emittable) -> list[str]:
    """Move what follows an If whose branches make outputs of different static shapes (a
    featurizer picked by the sample rate, frames of 31 or 63 steps) into both branches, so each
    branch is one static graph the TVM backend compiles whole; the If then makes the graph
    outputs instead. Without it everything after such an If has shapes known only at run time and
    runs on the host (VAD with its If: 2.4x onnxruntime, without the If 1.1x). Top-level Ifs only,
    one after another, and only when every node to move has a TVM emitter (``emittable(node)``;
    nested control flow counts): one that has none would keep the whole If on the host, where
    today only it and what follows do. Returns the labels of the Ifs rewritten."""
    g = m.graph
    done: list = []
    for _ in range(4):  # each rewrite doubles what follows the If: a few at most
        for node in g.toposort():
            if node.op_type == "If" and node.domain in ONNX and _sinkable(m, node, shapes, emittable):
                _sink(g, node, shapes)
                done.append(node.label)
                break
        else:
            break
    return done


def _after(g, node) -> list:
    """The nodes that read (through any path, subgraphs' reads too) an output of ``node``."""
    made, out = set(node.outputs) - {""}, []
    for n in g.toposort():
        if n is not node and any(i in made for i in n.inputs + n.implicit_inputs if i):
            out.append(n)
            made.update(o for o in n.outputs if o)
    return out


def _sinkable(m, node, shapes: dict, emittable) -> bool:
    g = m.graph
    if all(o in shapes for o in node.outputs if o):
        return False  # its outputs have static shapes: what follows compiles already
    after = _after(g, node)
    outs = [o for n in [node] + after for o in n.outputs if o in g.outputs]
    if not after or not outs or len(after) > MAX_SUNK or not all(map(emittable, after)):
        return False
    if any(set(n.implicit_inputs) & set(outs) for n in after):
        return False  # a subgraph reads a graph output: it would need renaming inside it
    for key in ("then_branch", "else_branch"):
        proto = body_proto(m, node.attrs[key], shapes, {})
        types = body_output_types(proto) if proto is not None else None
        if types is None or any(s is None or dt is None for dt, s in types.values()):
            return False
    return True


def _sink(g, node, shapes: dict) -> None:
    """Copy the nodes after ``node`` into each branch (the If's outputs under their own names,
    the graph outputs renamed there), drop them from ``g`` and let the If make the graph outputs."""
    after = _after(g, node)
    outs = [o for n in [node] + after for o in n.outputs if o in g.outputs]
    for key in ("then_branch", "else_branch"):
        b = node.attrs[key]
        rename = {o: b.fresh_name(f"{o}_{key[:4]}") for o in outs}
        for k, o in enumerate(node.outputs):
            if o:
                b.add_node("Identity", [b.outputs[k]], [rename.get(o, o)], name=b.fresh_node_name(f"{o}_in_{key[:4]}"))
        for n in after:
            attrs = {a: clone_graph(v, b) if isinstance(v, Graph) else
                     [clone_graph(x, b) for x in v] if isinstance(v, list) and v and isinstance(v[0], Graph) else v
                     for a, v in n.attrs.items()}
            b.add_node(n.op_type, [rename.get(i, i) for i in n.inputs], [rename.get(o, o) for o in n.outputs],
                       attrs, domain=n.domain, name=n.name)
        for n in [node] + after:
            for o in n.outputs:
                t = g.values[o].type if o and o in g.values else None
                if t is not None:
                    b.values[rename.get(o, o)].type = copy_proto(t)
        b.outputs = [rename[o] for o in outs]
    for n in reversed(after):
        g.remove_node(n, remove_outputs=False)
    g.remove_node(node, remove_outputs=False)
    for n in [node] + after:
        for o in n.outputs:
            shapes.pop(o, None)
            if o and o not in outs:
                g.values.pop(o, None)
    g.add_node("If", node.inputs, outs, node.attrs, domain=node.domain, name=node.name)


def name_kernels(low, prefix: str) -> None:
    """Give a body's kernels (and those of the bodies nested in it) names of their own in the
    shared LLVM module."""
    for kd in low.kernels + low.body_kernels:
        kd.name = f"{prefix}_{kd.name}"


def body_spec(body: Body, index: int, plan_of, prefix: str = "") -> tuple[dict, dict]:
    """The host segment's ``body`` entry (each body's run plan, its constants' keys starting
    ``<prefix>c<index>.b<k>.``) and the constants it adds to the artifact. ``plan_of``:
    module.plan_of. A body plan's own host calls can only be nested control flow with compiled
    bodies (an If branch holding a Loop): anything else would have kept the node on the host."""
    plans, arrays = [], {}
    for k, low in enumerate(body.lows):
        plan, consts = plan_of(low, f"{prefix}c{index}.b{k}.")
        if any("body" not in spec for spec in plan.get("host", [])):
            raise TvmliteError(f"control-flow body {index} has host calls: it should not have been compiled")
        arrays.update(consts)
        plans.append(plan)
    return {"kind": body.kind, "info": body.info, "plans": plans, "consts": sorted(arrays)}, arrays
