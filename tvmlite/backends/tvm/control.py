"""Control flow with TVM-compiled bodies: a Loop whose body keeps its shapes from step to step, an
If whose branches have static shapes.

Build side (`loop_body`, `if_branches`, `body_spec`): each body becomes a model of its own (its
inputs typed, the outer-scope values it reads as graph inputs, outer constants as initializers:
loop_shapes.body_proto) and is lowered like a whole graph; lower.py keeps the node a host call
(the host drives the steps) with the lowered bodies attached, their kernels go into the same LLVM
module as the graph's (named ``c<index>_...``), and `body_spec` stores each body's run plan, with
its constants renamed into the artifact's .npz, inside the node's host segment. A body that would
itself need a host call is not compiled: the node runs through the NumPy plan, with the reason.

Run side (`runner`): `LoopRunner` binds the outer values and the initial state once per run, then
per step sets the step number, runs the body's kernels and copies each new state into the state
input (NumPy views of the TVM buffers: no conversion), collecting the per-step outputs in place;
`IfRunner` runs the branch the condition picks. Both check the shapes they are handed against the
build (the body plan's `set_inputs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from tvmlite.backends.tvm.artifact_check import _check_schema
from tvmlite.backends.tvm.loop_shapes import body_output_types, body_proto, loop_body_shapes
from tvmlite.errors import InputError, TvmliteError
from tvmlite.export.shapes import inferred_types
from tvmlite.ir.clone import clone_graph
from tvmlite.ir.graph import type_shape

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
    have static output shapes, or the reason they do not as a string."""
    out = []
    for key in ("then_branch", "else_branch"):
        branch = node.attrs[key]
        if any(n.subgraphs for n in branch.nodes):
            return "nested control flow"
        proto = body_proto(m, branch, shapes, {})
        if proto is None:
            return "a value a branch reads has no static shape"
        types = body_output_types(proto)
        if types is None or any(s is None or dt is None for dt, s in types.values()):
            return f"{key} has outputs without a static shape"
        why = _passes_through(branch, proto, branch.outputs)
        if why:
            return why
        in_shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in proto.graph.input}
        out.append((proto, in_shapes))
    return out


def name_kernels(low, prefix: str) -> None:
    """Give a body's kernels names of their own in the shared LLVM module."""
    for kd in low.kernels:
        kd.name = f"{prefix}_{kd.name}"


def body_spec(body: Body, index: int, plan_of) -> tuple[dict, dict]:
    """The host segment's ``body`` entry (each body's run plan, constants renamed ``c<index>.b<k>.``)
    and the constants it adds to the artifact. ``plan_of``: module.plan_of."""
    plans, arrays = [], {}
    for k, low in enumerate(body.lows):
        plan, consts = plan_of(low)
        if plan.get("host"):
            raise TvmliteError(f"control-flow body {index} has host calls: it should not have been compiled")
        rename = {n: f"c{index}.b{k}.{n}" for n in consts}
        for c in plan["calls"]:
            c["args"] = [[rename.get(n, n), s] for n, s in c["args"]]
        for o in plan["outputs"]:
            if o.get("const"):
                o["buffer"] = rename[o["buffer"]]
        arrays.update({rename[n]: a for n, a in consts.items()})
        plans.append(plan)
    return {"kind": body.kind, "info": body.info, "plans": plans, "consts": sorted(arrays)}, arrays


# ---------------------------------------------------------------------------------------------- run
def runner(spec: dict, sub_model, where: str):
    """The runner of a stored ``body`` entry; ``sub_model(plan)``: a CompiledModel of a body plan
    over the artifact's library and constants."""
    try:
        kind, info, plans = spec["kind"], spec["info"], spec["plans"]
        if kind not in ("loop", "scan", "if") or not isinstance(plans, list) or len(plans) != (2 if kind == "if" else 1):
            raise TvmliteError(f"{where}: a compiled body of unknown kind {kind!r}")
        for p in plans:
            _check_schema(p, where)
        models = []
        for p in plans:
            try:
                models.append(sub_model(p))
            except TvmliteError:
                raise
            except Exception as e:  # noqa: BLE001 - TVM's own errors: a kernel the library lacks, say
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise TvmliteError(f"{where}: its compiled body does not load: {msg}") from None
        return {"loop": LoopRunner, "scan": ScanRunner}[kind](info, models[0]) if kind != "if" else \
            IfRunner(info, models)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise TvmliteError(f"{where}: its compiled body is malformed ({type(e).__name__}: {e})") from None


def _reader(model, name: str):
    """(function giving body output ``name`` as a NumPy array, the view of its buffer or None)."""
    for t, o in model._outputs:
        if o["name"] != name:
            continue
        if t is not None:
            view = np.from_dlpack(t)
            return (lambda: view), view
        if o.get("const"):
            arr = np.asarray(model._host_consts[o["buffer"]])
            return (lambda: arr), None
        return (lambda: np.asarray(model._env[name])), None  # an input passed through
    raise TvmliteError(f"compiled body has no output {name!r}")


class _States:
    """The values a body hands to its next step (state, or a computed condition). Where a new
    state has a buffer of its own (a kernel's output of the state's shape and dtype), the two
    buffers swap roles each step instead of being copied: the body plan's calls run in two
    versions, the second with each such pair exchanged, step k running version k % 2, and the
    readers of body outputs follow. Other states are copied into their input's buffer (or kept
    among the body plan's host values when no kernel reads them)."""

    def __init__(self, model, pairs):
        self.m = model
        self.parity = 0
        tensors = dict(zip(model.input_names, model._inputs))
        self.slots = []
        for b_in, b_out in pairs:
            t = tensors.get(b_in)
            read, out_view = _reader(model, b_out)
            self.slots.append((b_in, np.from_dlpack(t) if t is not None else None, read, out_view))
        # a new state in another state's input buffer (states passed round each step) is copied
        # out before any input is written, and nothing is swapped
        ins = [v for _, v, _, _ in self.slots if v is not None]
        self.snapshot = any(np.shares_memory(o, v) for _, _, _, o in self.slots if o is not None for v in ins)
        outs = {o["name"]: o for o in model.plan["outputs"]}
        bufs = model.plan["buffers"]
        self.swap: dict = {}
        for (b_in, view, _, _), (_, b_out) in zip(self.slots, pairs):
            o = outs.get(b_out, {})
            r = o.get("buffer")
            if self.snapshot or view is None or o.get("host") or o.get("const") or r == b_in or r in self.swap \
                    or b_in in self.swap or bufs.get(r, {}).get("kind") != "temp" \
                    or (bufs[r]["shape"], bufs[r].get("dtype")) != (bufs[b_in]["shape"], bufs[b_in].get("dtype")):
                continue
            self.swap[b_in], self.swap[r] = r, b_in
        self.calls = [model._calls, [(fn, [_tvm_view(model, self.swap.get(n, n), sh) for n, sh in c["args"]])
                                     for (fn, _), c in zip(model._calls, model.plan["calls"])]
                      if self.swap else model._calls]
        self.copied = [(name, view, self.read(b_out)) for (name, view, _, _), (_, b_out) in zip(self.slots, pairs)
                       if name not in self.swap]

    def read(self, name: str):
        """A function giving body output ``name`` of the step just run (before `step`)."""
        for t, o in self.m._outputs:
            if o["name"] == name and t is not None:
                views = [np.from_dlpack(_tvm_view(self.m, b, o["shape"])) for b in
                         (o["buffer"], self.swap.get(o["buffer"], o["buffer"]))]
                return lambda: views[self.parity]
        return _reader(self.m, name)[0]

    def execute(self) -> None:
        for fn, args in self.calls[self.parity]:
            fn(*args)

    def step(self) -> None:
        self.parity ^= 1 if self.swap else 0
        new = [np.array(r()) if self.snapshot or v is None else r() for _, v, r in self.copied]
        for (name, view, _), value in zip(self.copied, new):
            if view is None:
                self.m._env[name] = value
            else:
                np.copyto(view, value)

    def values(self) -> list:
        """The current states (copies)."""
        out = []
        for name, view, _, _ in self.slots:
            if view is None:
                out.append(np.array(self.m._env[name]))
            elif name in self.swap and self.parity:
                out.append(np.array(np.from_dlpack(self.m._store[self.swap[name]])).reshape(view.shape))
            else:
                out.append(np.array(view))
        return out


def _tvm_view(model, name: str, shape):
    t = model._store[name]
    return t if tuple(t.shape) == tuple(shape) else t._create_view(tuple(shape))


class LoopRunner:
    """A Loop over a compiled body: ``run(feeds)`` -> the node's outputs, by name."""

    def __init__(self, info: dict, model):
        self.m = model
        self.info = info
        it = dict(zip(model.input_names, model._inputs)).get(info["iter"])
        self.iter_view = np.from_dlpack(it) if it is not None else None
        pairs = [tuple(p) for p in info["states"]]
        if info["cond_out"]:  # the next step reads the condition this one computed
            pairs.append((info["cond_in"], info["cond_out"]))
        self.states = _States(model, pairs)
        self.n_states = len(info["states"])
        self.scans = [(self.states.read(name), tuple(shape), np.dtype(dt)) for name, shape, dt in info["scans"]]
        self.cond = self.states.read(info["cond_out"]) if info["cond_out"] else None
        tensors = dict(zip(model.input_names, model._inputs))
        # an outer sequence read one row per step (_step_slices): the row's buffer
        self.slices = [(np.from_dlpack(tensors[b]) if tensors.get(b) is not None else None, b, o)
                       for b, o in info.get("slices", [])]

    def run(self, feeds: dict) -> dict:
        info = self.info
        rows = [np.asarray(feeds[o]) for _, _, o in self.slices]
        ins = info["node_inputs"] + ["", ""]
        trips = int(np.asarray(feeds[ins[0]]).reshape(-1)[0]) if ins[0] else None
        cond = bool(np.asarray(feeds[ins[1]]).reshape(-1)[0]) if ins[1] else True
        body_feeds = {n: feeds[n] for n in self.m.input_names if n in feeds}
        body_feeds[info["iter"]] = np.array(0, np.int64)
        body_feeds[info["cond_in"]] = np.array(cond)
        for (_, b, _), x in zip(self.slices, rows):
            body_feeds[b] = x[0] if len(x) else np.zeros(x.shape[1:], x.dtype)
        for (b_in, _), outer in zip(info["states"], info["node_inputs"][2:]):
            body_feeds[b_in] = feeds[outer]
        self.states.parity = 0  # set_inputs writes the first state to the inputs' own buffers
        try:
            self.m.set_inputs(body_feeds)  # the outer values and the first state: bound once
        except InputError as e:
            raise TvmliteError(f"Loop body: {e}") from None
        steps = [np.empty((trips,) + s, dt) for _, s, dt in self.scans] if trips is not None and \
            info["cond_out"] is None else None
        grown = [[] for _ in self.scans]
        i = 0
        while (trips is None or i < trips) and cond:
            if self.iter_view is not None:
                self.iter_view[...] = i
            else:
                self.m._env[info["iter"]] = np.array(i, np.int64)
            for (view, b, o), x in zip(self.slices, rows):
                if i >= len(x):  # what the Gather it stands for would say
                    raise TvmliteError(f"Loop body: step {i} reads row {i} of {o!r}, which has {len(x)}")
                if view is not None:
                    np.copyto(view, x[i])
                else:
                    self.m._env[b] = x[i]
            self.states.execute()
            for k, (read, _, _) in enumerate(self.scans):
                if steps is not None:
                    steps[k][i] = read()
                else:
                    grown[k].append(read().copy())
            if self.cond is not None:
                cond = bool(self.cond().reshape(-1)[0])
            self.states.step()
            i += 1
        if steps is None:
            steps = [np.stack(g) if g else None for g in grown]
        if i == 0:  # no step ran: empty per-step outputs of shape (0,), as onnxruntime and the NumPy plan
            steps = [np.empty((0,), dt) for _, _, dt in self.scans]
        finals = self.states.values()[:self.n_states]
        return dict(zip(info["node_outputs"], finals + steps))


class ScanRunner:
    """A Scan over a compiled body: ``run(feeds)`` -> the node's outputs, by name. Each step's
    slices are copied into the body's slice inputs (the scan input moved to the front once)."""

    def __init__(self, info: dict, model):
        self.m = model
        self.info = info
        tensors = dict(zip(model.input_names, model._inputs))
        self.states = _States(model, [tuple(p) for p in info["states"]])
        # a slice no kernel reads has no buffer: nothing to copy each step
        self.slices = [(np.from_dlpack(tensors[b]) if tensors.get(b) is not None else None, b, o, ax, d)
                       for b, o, ax, d in info["slices"]]
        self.scans = [(self.states.read(name), tuple(shape), np.dtype(dt), ax, d)
                      for name, shape, dt, ax, d in info["scans"]]

    def run(self, feeds: dict) -> dict:
        info = self.info
        xs = []
        for _, _, outer, ax, d in self.slices:
            x = np.moveaxis(np.asarray(feeds[outer]), ax, 0)
            xs.append(x[::-1] if d else x)
        length = xs[0].shape[0] if xs else 0
        body_feeds = {n: feeds[n] for n in self.m.input_names if n in feeds}  # outer values: bound once
        body_feeds.update({b: feeds[o] for (b, _), o in zip(info["states"], info["node_inputs"])})
        body_feeds.update({b: x[0] if length else np.zeros(x.shape[1:], x.dtype)
                           for (b, _, _, _), x in zip(info["slices"], xs)})
        self.states.parity = 0
        try:
            self.m.set_inputs(body_feeds)
        except InputError as e:
            raise TvmliteError(f"Scan body: {e}") from None
        steps = [np.empty((length,) + s, dt) for _, s, dt, _, _ in self.scans]
        for t in range(length):
            if t:
                for (view, name, _, _, _), x in zip(self.slices, xs):
                    if view is not None:
                        np.copyto(view, x[t])
                    else:
                        self.m._env[name] = x[t]
            self.states.execute()
            for (read, _, _, _, _), y in zip(self.scans, steps):
                y[t] = read()
            self.states.step()
        finals = self.states.values()
        outs = []
        for (_, _, _, ax, d), y in zip(self.scans, steps):
            y = y[::-1] if d else y
            outs.append(np.ascontiguousarray(np.moveaxis(y, 0, ax % y.ndim)))
        return dict(zip(info["node_outputs"], finals + outs))


class IfRunner:
    """An If over two compiled branches: ``run(feeds)`` -> the node's outputs, by name."""

    def __init__(self, info: dict, models: list):
        self.info = info
        self.models = models

    def run(self, feeds: dict) -> dict:
        cond = bool(np.asarray(feeds[self.info["cond"]]).reshape(-1)[0])
        m = self.models[0 if cond else 1]
        try:
            outs = m.run({n: feeds[n] for n in m.input_names})
        except InputError as e:
            raise TvmliteError(f"If branch: {e}") from None
        return dict(zip(self.info["node_outputs"], outs))
