"""From a tvmlite Graph to TVM kernels and host calls: prepare, walk, fuse, ask the emitter registry.

`prepare` (prepare.py) fixes the input shapes and folds constants, Shape arithmetic and
BatchNormalization. `Lowering.run` walks the result in topological order and asks
`emitters.lookup` for each node's emitter (one per op, registered with ``@emitter`` in the family
modules of emitters/): an anchor (Conv, Gemm, MatMul, pool, softmax, reduction, or the first of
a run of elementwise ops) becomes a kernel, a view (Reshape, Flatten, ...) shares its input's
buffer. Elementwise ops that follow an anchor through a value nobody else reads become the
anchor's epilogue (fusion.py). A node without an emitter, or one its emitter refuses (another
dtype than float32, control flow, a shape known only at run time, ...), runs as a host call: its
NumPy kernel from the op registry, between the TVM kernels; consecutive host nodes form one
`HostSegment` (host.py runs them). The build report names each host-run op and why; ``strict``
refuses such a model instead, with every reason in one line.

`unsupported_ops` lists every node that would be host-run (op and reason) in one pass, without
importing TVM's compiler.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

import numpy as np

from tvmlite.backends.tvm import control, fusion
from tvmlite.backends.tvm.concat_views import enabled as concat_views_enabled, place as place_concats
from tvmlite.backends.tvm.emitters import lookup, nhwc
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: F401 - the lowering's vocabulary
from tvmlite.backends.tvm.loop_shapes import add_loop_shapes, propagate_shapes
from tvmlite.backends.tvm.nhwc_concat import place as place_nhwc_concats
from tvmlite.backends.tvm.prepare import ONNX, prepare
from tvmlite.backends.tvm.prepare import fold_static_shapes
from tvmlite.backends.tvm.qdq_buffers import value_grid
from tvmlite.errors import TvmliteError, UnsupportedError, first_line
from tvmlite.frontend.onnx_import import import_model
from tvmlite.inputs import graph_inputs
from tvmlite.ir.graph import Model, Node
from tvmlite.ops.registry import canonical_domain, lookup as lookup_kernel
from tvmlite.passes.cleanup import DeadCodeElimination, FoldConstants


@dataclass
class HostSegment:
    """Consecutive nodes without a TVM kernel, run on the host by their NumPy kernels."""
    nodes: list                                       # Node, in run order
    reasons: list                                     # why each one is host-run
    inputs: list = field(default_factory=list)        # values read from outside (subgraphs' too)
    outputs: list = field(default_factory=list)       # values read after it, or graph outputs
    body: control.Body | None = None                  # a control-flow node's compiled bodies


@dataclass
class Lowered:
    kernels: list = field(default_factory=list)       # KernelDef in execution order
    views: dict = field(default_factory=dict)         # value -> value whose buffer it shares
    shapes: dict = field(default_factory=dict)
    consts: dict = field(default_factory=dict)        # graph outputs that are constants
    inputs: list = field(default_factory=list)        # (name, shape, dtype)
    outputs: list = field(default_factory=list)
    order: list = field(default_factory=list)         # KernelDef and HostSegment in run order
    model: Model | None = None                        # the prepared model the nodes belong to
    host_problems: list = field(default_factory=list)  # [op, reason, count] of host-run nodes
    body_kernels: list = field(default_factory=list)  # KernelDef of compiled control-flow bodies
    slices: dict = field(default_factory=dict)        # value -> (Concat output it lives in, offset)
    winograd: list = field(default_factory=list)      # prepare's Winograd decisions (winograd_choice.py)


@dataclass
class _HostNode:
    node: Node
    reason: str
    body: control.Body | None = None


class Lowering:
    """One walk over a prepared graph. Emitters read the graph through it (``shape``, ``const``,
    ``const_input``, ``operand``, ``check_float``), fuse with ``epilogue`` and register kernels
    with ``add``; with ``emit=False`` nothing is built (no TVM needed), only problems counted."""

    def __init__(self, model: Model, shapes: dict, lanes: int = 16, emit: bool = True,
                 concat_views: bool = False):
        self.m = model
        self.g = model.graph
        self.shapes = shapes
        self.lanes = lanes
        self.emit = emit  # False: only check what can be emitted (no TVM needed)
        self.absorbed: set = set()
        self.taken: list = []  # nodes absorbed into epilogues, in order (undone when a node fails)
        self.problems: collections.Counter = collections.Counter()  # (op, reason) -> host-run nodes
        self.driven: collections.Counter = collections.Counter()  # those with compiled bodies
        self.unrunnable: collections.Counter = collections.Counter()  # no NumPy kernel either
        self.kernels: list = []
        self.keys: list = []
        self.views: dict[str, str] = {}
        self.opset = model.opset
        self.pos: dict = {}
        self.body_kernels: list = []
        self.n_bodies = 0
        # Concats whose inputs may be written into their output (concat_views.py): kernel -> info
        self.concat_views = concat_views and concat_views_enabled()
        self.concats: dict = {}
        self.host_made: set = set()
        self.graph_inputs = set(graph_inputs(self.g))
        self.nhwc: dict[str, str] = {}  # float value -> its channels-last buffer (emitters/nhwc.py)
        self.nhwc_keys: dict[str, int] = {}  # such a value -> its producer's run position
        self.promised: set = set()  # values a later conv is to write NHWC (nhwc.promise_residuals)
        self.nhwc_concats: dict = {}  # channels-last Concat kernels whose inputs may move (nhwc_concat.py)

    # --------------------------------------------------------------------------------- helpers
    def grid(self, name: str):
        """The quantization grid float value ``name`` lies on (qdq_buffers.value_grid), else None."""
        return value_grid(self.g, name)

    def const(self, name: str):
        return self.g.const_value(name) if name else None

    def shape(self, name: str) -> tuple:
        c = self.const(name)
        if c is not None:
            return tuple(c.shape)
        if name not in self.shapes:
            raise UnsupportedError("an input shape is not static")
        return self.shapes[name]

    def dtype(self, name: str) -> np.dtype | None:
        """The element type of value ``name`` (a constant's own, else the recorded or inferred one)."""
        c = self.const(name)
        if c is not None:
            return c.dtype
        dt = self.g.value(name).dtype
        return None if dt is None else np.dtype(dt)

    def check_float(self, node: Node) -> None:
        for name in list(node.inputs[:1]) + list(node.outputs[:1]):
            if not name:
                continue
            v = self.g.value(name)
            dt = v.dtype if v.dtype is not None else (self.const(name).dtype if self.const(name) is not None else None)
            if dt is not None and np.dtype(dt) != np.float32:
                raise UnsupportedError(f"dtype {np.dtype(dt)} (only float32 is emitted)")

    def operand(self, name: str):
        c = self.const(name)
        if c is not None:
            if c.dtype.kind != "f":
                raise UnsupportedError(f"non-float operand {name!r}")
            return ("const", c.astype(np.float32))
        dt = self.g.value(name).dtype
        if dt is not None and np.dtype(dt) != np.float32:
            raise UnsupportedError(f"dtype {np.dtype(dt)} operand (only float32 is emitted)")
        return ("value", name, self.shape(name))

    def const_input(self, node: Node, index: int, what: str, required: bool = False):
        """The constant array at input ``index`` (None when the optional input is absent);
        UnsupportedError when it is given but not constant."""
        name = node.inputs[index] if len(node.inputs) > index else ""
        c = self.const(name) if name else None
        if c is None and (name or required):
            raise UnsupportedError(f"non-constant {what}")
        return c

    def kernel_name(self, node: Node) -> str:
        base = re.sub(r"[^0-9A-Za-z_]", "_", node.name or node.outputs[0])[:40]
        return f"k{len(self.kernels):03d}_{node.op_type.lower()}_{base}"

    def epilogue(self, node: Node, tables: bool = False):
        """(Epilogue, value the kernel writes, labels of the nodes fused) for ``node``'s output;
        ``tables``: the kernel reads a leading "GridTable" op itself (fusion.absorb)."""
        out = node.outputs[0]
        epi, final, taken = fusion.absorb(self, out, self.shape(out), tables)
        epi.layouts = nhwc.layouts_of(self, epi)
        self.taken.extend(taken)
        return epi, final, [n.label for n in taken]

    def add(self, kd_factory, node: Node, out: str, epi_nodes=(), key=None):
        # key: run position for a kernel whose output is no graph value (a node's first half)
        self.keys.append(self.pos[self.g.producer(out)] if key is None else key)
        if self.emit:
            kd = kd_factory()
            kd.nodes = [node.label] + list(epi_nodes)
            self.kernels.append(kd)
        else:
            self.kernels.append(None)

    # ---------------------------------------------------------------------------------- walk
    def run(self) -> Lowered:
        g = self.g
        order = g.toposort()
        self.pos = {n: i for i, n in enumerate(order)}
        for node in order:
            if node in self.absorbed:
                continue
            if node.op_type == "Constant" and node.domain in ONNX:
                continue
            mark = (len(self.kernels), len(self.keys), len(self.taken))
            try:
                self.emit_node(node)
            except UnsupportedError as e:
                self._undo(mark)
                if node.subgraphs and node.domain in ONNX:
                    self.host(node, *self.control(node))
                else:
                    self.host(node, str(e))
            except TvmliteError:
                raise
            except Exception as e:  # noqa: BLE001 - an emitter failing on this node's types or attributes
                # (TVM's own checks: an int64 Less against a float, a Where on an int condition the
                # NumPy kernel accepts): the node runs as its NumPy kernel, and the report says why
                self._undo(mark)
                self.host(node, f"TVM emitter failed: {first_line(e)}")
        if self.emit:
            nhwc.materialize(self)
        low = Lowered(views=self.views, shapes=self.shapes, model=self.m, body_kernels=self.body_kernels)
        low.host_problems = [[op, why, n] for (op, why), n in self.problems.items()]
        # a fused kernel runs where its last node was: the operands of its epilogue (a residual
        # made by a later branch, say) are ready by then
        low.order = _segments(g, [k for _, k in sorted(zip(self.keys, self.kernels), key=lambda t: t[0])],
                              self.views)
        if self.emit:
            place_concats(self, low, self.lanes)
            place_nhwc_concats(self, low)
        low.kernels = [k for k in low.order if not isinstance(k, HostSegment)]
        low.inputs = [(n, self.shape(n), np.dtype(g.value(n).dtype or np.float32)) for n in graph_inputs(g)]
        low.outputs = list(g.outputs)
        for o in g.outputs:
            c = self.const(o)
            if c is not None:
                low.consts[o] = c
        return low

    def emit_node(self, node: Node) -> None:
        if node.domain == "tvmlite":
            em = lookup(node.domain, node.op_type)
            if em is None:
                raise UnsupportedError("tvmlite op without a TVM emitter")
            if not em.checks_dtype:
                self.check_float(node)
            em.fn(self, node)
            return
        if node.domain not in ONNX:
            raise UnsupportedError(f"domain {node.domain!r}")
        if node.subgraphs:
            raise UnsupportedError("control flow")
        if all(self.const(n) is not None for n in node.inputs if n) and node.inputs:
            raise UnsupportedError("constant computation left unfolded")
        self.lower_node(node)

    def control(self, node: Node) -> tuple[str, control.Body | None]:
        """(reason, compiled bodies or None) of a control-flow node: a Loop whose state keeps its
        shape and an If whose branches have static shapes get their bodies lowered (control.py);
        the host still drives them, so they stay in the report (and ``strict`` refuses them)."""
        if node.op_type == "Loop":
            got = control.loop_body(self.m, node, self.shapes)
            parts, info = (None, got) if isinstance(got, str) else ([got[:2]], got[2])
        elif node.op_type == "Scan" and self.opset >= 9:  # opset 8's Scan has a batch axis
            got = control.scan_body(self.m, node, self.shapes)
            parts, info = (None, got) if isinstance(got, str) else ([got[:2]], got[2])
        elif node.op_type == "If":
            got = control.if_branches(self.m, node, self.shapes)
            parts, info = (None, got) if isinstance(got, str) else (got, {
                "cond": node.inputs[0], "node_outputs": list(node.outputs)})
        else:
            return "control flow", None
        if parts is None:
            return f"control flow (body not compiled: {info})", None

        def host_run(walk: Lowering) -> str | None:
            left = walk.problems - walk.driven  # nested control flow with compiled bodies runs
            return f"control flow (body not compiled: {'; '.join(problem_list(left))})" if left else None

        lows, n = [], 0
        for proto, in_shapes in parts:
            try:
                prepared, shapes = prepared_model(import_model(proto, check=False), in_shapes)
                check = Lowering(prepared, shapes, emit=False)
                check.run()
                if why := host_run(check):
                    return why, None
                low = None
                if self.emit:  # the emitting walk builds the TE: TVM's own type checks fail only here
                    body = Lowering(prepared, shapes, lanes=self.lanes)
                    low = body.run()
                    if why := host_run(body):
                        return why, None
            except Exception as e:  # noqa: BLE001 - any failure to lower a body leaves it to the NumPy plan
                return f"control flow (body not compiled: {first_line(e)})", None
            n += len(check.kernels)
            if low is not None:
                lows.append(low)
        for k, low in enumerate(lows):
            control.name_kernels(low, f"c{self.n_bodies}" + (f"b{k}" if len(lows) > 1 else ""))
            self.body_kernels += low.kernels + low.body_kernels
        self.n_bodies += 1
        kind = node.op_type.lower()
        return f"control flow, body compiled to {n} TVM kernel{'s' if n != 1 else ''}", control.Body(kind, lows, info)

    def host(self, node: Node, reason: str, body: control.Body | None = None) -> None:
        """``node`` runs as a host call (its NumPy kernel) at its place in the run order."""
        self.problems[(node.op_type, reason)] += 1
        if body is not None:
            self.driven[(node.op_type, reason)] += 1
        self.host_made.update(o for o in node.outputs if o)
        domain = canonical_domain(node.domain)
        version = opset_versions(self.m.opsets).get(domain)
        if lookup_kernel(node.op_type, domain, version) is None:
            name = f"{domain}::{node.op_type}" if domain else node.op_type
            self.unrunnable[f"{name} (opset {version if version is not None else '?'})"] += 1
        self.keys.append(self.pos[node])
        self.kernels.append(_HostNode(node, reason, body if self.emit else None))

    def _undo(self, mark) -> None:
        """Forget what a node's emitter did before it refused the node (kernels, fused nodes)."""
        n_kernels, n_keys, n_taken = mark
        del self.kernels[n_kernels:], self.keys[n_keys:]
        for n in self.taken[n_taken:]:
            self.absorbed.discard(n)
        del self.taken[n_taken:]

    def lower_node(self, node: Node) -> None:
        """An ONNX node through its registered emitter."""
        em = lookup(node.domain, node.op_type)
        if em is None or not em.checks_dtype:
            self.check_float(node)
        if em is None:
            raise UnsupportedError("no TVM emitter")
        em.fn(self, node)


def opset_versions(opsets: dict) -> dict[str, int]:
    """The model's opsets by canonical domain ("ai.onnx" is "", as the registry keys them)."""
    return {canonical_domain(d): int(v) for d, v in opsets.items()}


def _segments(g, entries: list, views: dict) -> list:
    """``entries`` (kernels and host nodes in run order) with each run of host nodes made one
    HostSegment, its inputs and outputs found. A host node that reads a view (a Reshape sharing
    a buffer) of a value its run made starts a new segment: the view is read from the buffer,
    which the segment before fills."""
    out: list = []
    made: set = set()
    for e in entries:
        if not isinstance(e, _HostNode):
            out.append(e)
            continue
        if not out or not isinstance(out[-1], HostSegment) or e.body or out[-1].body or any(
                views.get(n, n) in made and n not in made
                for n in list(e.node.inputs) + list(e.node.implicit_inputs) if n):
            out.append(HostSegment([], []))
            made = set()
        made.update(e.node.outputs)
        out[-1].nodes.append(e.node)
        out[-1].reasons.append(e.reason)
        out[-1].body = e.body
    for seg in out:
        if isinstance(seg, HostSegment):
            inside = set(seg.nodes)
            made = {o for n in seg.nodes for o in n.outputs if o}
            for n in seg.nodes:
                for name in list(n.inputs) + list(n.implicit_inputs):
                    if name and name not in made and name not in seg.inputs:
                        seg.inputs.append(name)
            seg.outputs = [o for n in seg.nodes for o in n.outputs if o and (
                o in g.outputs or any(c not in inside for c in g.consumers(o)))]
    return out


def prepared_model(model: Model, input_shapes: dict, winograd: list | None = None) -> tuple[Model, dict]:
    """`prepare` (``winograd`` receives its Winograd decisions), plus the static shapes of fixed-count Loops' outputs and what follows them, and
    what follows an If whose branches differ in shape moved into its branches
    (control.sink_into_branches)."""
    prepared, shapes = prepare(model, input_shapes, winograd)
    for _ in range(4):
        if not add_loop_shapes(prepared, shapes):
            break
        # shapes known only now (after a Loop): fold the Shape/Size that read them and what they
        # feed (a ConstantOfShape, a Range over a length), as prepare did before the Loop
        if not fold_static_shapes(prepared, shapes):
            break
        FoldConstants(max_growth=float("inf"))(prepared)
        DeadCodeElimination()(prepared)
        propagate_shapes(prepared, shapes)
    control.sink_into_branches(prepared, shapes, lambda n: bool(n.subgraphs) or n.op_type == "Constant"
                               or lookup(n.domain, n.op_type) is not None)
    return prepared, shapes


def unsupported_ops(model: Model, input_shapes: dict) -> list[str]:
    """Each op the TVM backend would run as a host call, as 'Op (reason) xN', after folding."""
    prepared, shapes = prepared_model(model, input_shapes)
    low = Lowering(prepared, shapes, emit=False, concat_views=True)
    low.run()
    return problem_list(low.problems)


def _rows(problems) -> list[tuple[str, str, int]]:
    """(op, reason, count) of ``problems``: a Counter by (op, reason), or the plan's [op, reason, n]."""
    if hasattr(problems, "items"):
        return [(op, why, n) for (op, why), n in problems.items()]
    return [(op, why, n) for op, why, n in problems]


def problem_list(problems) -> list[str]:
    """'Op (reason) xN' per host-run op kind: what `unsupported_ops` returns."""
    return [f"{op} ({why}) x{n}" if n > 1 else f"{op} ({why})" for op, why, n in _rows(problems)]


def refusal(problems) -> UnsupportedError:
    """The one-line error of a strict build of a model with host-run ops."""
    probs = problem_list(problems)
    return UnsupportedError(f"the TVM backend cannot emit {len(probs)} op kind(s): " + "; ".join(probs))


def host_report(problems) -> list[str]:
    """The build report's line per host-run op kind: 'LayerNormalization x13: no TVM emitter'."""
    return [f"{op} x{n}: {why}" if n > 1 else f"{op}: {why}" for op, why, n in _rows(problems)]


def lower(model: Model, input_shapes: dict, lanes: int, strict: bool = False) -> Lowered:
    """The kernels and host segments of ``model``; with ``strict``, UnsupportedError when any
    node would be host-run. Nodes with neither an emitter nor a NumPy kernel always refuse."""
    winograd: list = []
    prepared, shapes = prepared_model(model, input_shapes, winograd)
    check = Lowering(prepared, shapes, emit=False, concat_views=True)  # cheap: every problem before emitting
    check.run()
    if check.unrunnable:
        probs = [f"{k} x{n}" if n > 1 else k for k, n in check.unrunnable.items()]
        raise UnsupportedError(f"{len(probs)} op kind(s) have neither a TVM emitter nor a NumPy kernel: "
                               + "; ".join(probs))
    if strict and check.problems:
        raise refusal(check.problems)
    low = Lowering(prepared, shapes, lanes=lanes, concat_views=True).run()
    if strict and low.host_problems:  # an emitter that failed inside TVM only (the emitting walk)
        raise refusal(low.host_problems)
    low.winograd = winograd
    return low
