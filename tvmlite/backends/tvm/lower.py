"""From a tvmlite Graph to TVM kernels: prepare, walk, fuse, ask the emitter registry.

`prepare` (prepare.py) fixes the input shapes and folds constants, Shape arithmetic and
BatchNormalization. `Lowering.run` walks the result in topological order and asks
`emitters.lookup` for each node's emitter (one per op, registered with ``@emitter`` in the family
modules of emitters/): an anchor (Conv, Gemm, MatMul, pool, softmax, reduction, or the first of
a run of elementwise ops) becomes a kernel, a view (Reshape, Flatten, ...) shares its input's
buffer. Elementwise ops that follow an anchor through a value nobody else reads become the
anchor's epilogue (fusion.py). A node without an emitter, or one its emitter refuses, is a
problem: the build report names each op and reason.

`unsupported_ops` lists every node the backend cannot emit (op and reason) in one pass, without
importing TVM's compiler.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

import numpy as np

from tvmlite.backends.tvm import fusion
from tvmlite.backends.tvm.emitters import lookup
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: F401 - the lowering's vocabulary
from tvmlite.backends.tvm.prepare import ONNX, prepare
from tvmlite.errors import UnsupportedError
from tvmlite.inputs import graph_inputs
from tvmlite.ir.graph import Model, Node


@dataclass
class Lowered:
    kernels: list = field(default_factory=list)       # KernelDef in execution order
    views: dict = field(default_factory=dict)         # value -> value whose buffer it shares
    shapes: dict = field(default_factory=dict)
    consts: dict = field(default_factory=dict)        # graph outputs that are constants
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


class Lowering:
    """One walk over a prepared graph. Emitters read the graph through it (``shape``, ``const``,
    ``const_input``, ``operand``, ``check_float``), fuse with ``epilogue`` and register kernels
    with ``add``; with ``emit=False`` nothing is built (no TVM needed), only problems counted."""

    def __init__(self, model: Model, shapes: dict, lanes: int = 16, emit: bool = True):
        self.m = model
        self.g = model.graph
        self.shapes = shapes
        self.lanes = lanes
        self.emit = emit  # False: only check what can be emitted (no TVM needed)
        self.absorbed: set = set()
        self.problems: collections.Counter = collections.Counter()
        self.kernels: list = []
        self.keys: list = []
        self.views: dict[str, str] = {}
        self.opset = model.opset
        self.pos: dict = {}

    # --------------------------------------------------------------------------------- helpers
    def const(self, name: str):
        return self.g.const_value(name) if name else None

    def shape(self, name: str) -> tuple:
        c = self.const(name)
        if c is not None:
            return tuple(c.shape)
        if name not in self.shapes:
            raise UnsupportedError("an input shape is not static")
        return self.shapes[name]

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

    def epilogue(self, node: Node):
        """(Epilogue, value the kernel writes, labels of the nodes fused) for ``node``'s output."""
        out = node.outputs[0]
        epi, final, taken = fusion.absorb(self, out, self.shape(out))
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
            try:
                if node.domain == "tvmlite":
                    em = lookup(node.domain, node.op_type)
                    if em is None:
                        raise UnsupportedError("tvmlite op without a TVM emitter")
                    self.check_float(node)
                    em.fn(self, node)
                    continue
                if node.domain not in ONNX:
                    raise UnsupportedError(f"domain {node.domain!r}")
                if node.subgraphs:
                    raise UnsupportedError("control flow")
                if all(self.const(n) is not None for n in node.inputs if n) and node.inputs:
                    raise UnsupportedError("constant computation left unfolded")
                self.lower_node(node)
            except UnsupportedError as e:
                self.problems[f"{node.op_type} ({e})"] += 1
        if self.problems:
            return None
        # a fused kernel runs where its last node was: the operands of its epilogue (a residual
        # made by a later branch, say) are ready by then
        self.kernels = [k for _, k in sorted(zip(self.keys, self.kernels), key=lambda t: t[0])]
        low = Lowered(self.kernels, self.views, self.shapes)
        low.inputs = [(n, self.shape(n)) for n in graph_inputs(g)]
        low.outputs = list(g.outputs)
        for o in g.outputs:
            c = self.const(o)
            if c is not None:
                low.consts[o] = c
        return low

    def lower_node(self, node: Node) -> None:
        """An ONNX node through its registered emitter."""
        em = lookup(node.domain, node.op_type)
        if em is None or not em.checks_dtype:
            self.check_float(node)
        if em is None:
            raise UnsupportedError("no TVM emitter")
        em.fn(self, node)


def unsupported_ops(model: Model, input_shapes: dict) -> list[str]:
    """Each op the TVM backend cannot emit, as 'Op (reason) xN', after folding."""
    prepared, shapes = prepare(model, input_shapes)
    low = Lowering(prepared, shapes, emit=False)
    low.run()
    return _format(low.problems)


def _format(problems) -> list[str]:
    return [f"{p} x{n}" if n > 1 else p for p, n in problems.items()]


def lower(model: Model, input_shapes: dict, lanes: int) -> Lowered:
    prepared, shapes = prepare(model, input_shapes)
    check = Lowering(prepared, shapes, emit=False)  # cheap: report every problem before emitting
    check.run()
    if check.problems:
        probs = _format(check.problems)
        raise UnsupportedError(f"the TVM backend cannot emit {len(probs)} op kind(s): " + "; ".join(probs))
    return Lowering(prepared, shapes, lanes=lanes).run()
