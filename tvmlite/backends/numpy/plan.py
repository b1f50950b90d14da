"""The NumPy backend: compile a Graph once into a flat plan, run it many times.

A plan is a list of steps (kernel, input slots, output slots, attributes, slots to free). Constants
(initializers, Constant nodes and whatever depends only on them) are computed at compile time. Each
intermediate's slot is cleared right after its last reader, so peak memory follows the live set, not
the whole graph.

Compile-time work per step (so the run loop does as little as possible):

* **prepare**: an op may register ``prepare(consts, attrs) -> callable | None`` (a field of its
  :class:`OpDef`). When a step has constant inputs and its op has a ``prepare``, the plan calls it
  once with ``consts`` (one entry per node input: the constant array, or None for an input
  computed at run time or absent) and the keyword attributes. The callable it returns is then
  called at run time *instead of* the kernel with the same positional inputs (constants included,
  attributes already bound) and must return what the kernel would; None keeps the plain kernel.
  Ops use it to do weight-only work once (Conv's GEMM weight layout, BatchNormalization's scale
  and shift).
* **pointwise fusion** (``fuse=True``, the default): the first run records each value's shape and
  dtype, then runs of consecutive pointwise steps become one step computed in place, bit-identical
  to the steps one by one (see :mod:`tvmlite.backends.numpy.fusion`). It saves an allocation and a
  pass per step on large tensors (det: Conv -> BN/affine -> HardSwish chains) and a dispatch per
  step on small ones. (Applied per block of the GEMM output inside the conv instead, it was slower:
  strided blocks.)
* **BLAS threads**: ``blas_threads`` (default 1) caps the BLAS thread pool while the plan runs
  (through threadpoolctl when it is installed): the GEMMs of a conv net are small, and a second BLAS
  thread that spin-waits on a busy machine costs far more than it gains. None leaves it alone.
"""
from __future__ import annotations

import collections
import contextlib
import functools
from dataclasses import dataclass

import numpy as np

from tvmlite.errors import ShapeError, TvmliteError, UnsupportedError, message_line
from tvmlite.limits import blas_limit
from tvmlite.ops.batchnorm_fold import fold_batchnorms
from tvmlite.ops.diagnose import explain
from tvmlite.ops.typecheck import check_declared_types
from tvmlite.ir.graph import Graph, Model
from tvmlite.backends.numpy.fusion import fuse_steps
from tvmlite.backends.numpy.validate import validate_graph
from tvmlite.ops.registry import (NONDETERMINISTIC, KernelContext, OpDef, canonical_domain,  # noqa: F401
                                  generation, kernel_attr_name, lookup)


@dataclass
class Step:
    fn: object
    ins: tuple
    outs: tuple
    attrs: dict
    free: tuple
    node: object
    needs_ctx: bool
    implicit: tuple  # (name, slot) pairs of outer values a subgraph reads
    call: object = None  # fn with attributes bound (or op.prepare's result), inputs positional
    op: OpDef | None = None  # the registry entry fn comes from (None for a fused step)


def _opset(node, opsets) -> tuple[str, int | None]:
    """(canonical domain, the model's opset version for it) of ``node``."""
    domain = canonical_domain(node.domain)
    return domain, opsets.get(domain, opsets.get("ai.onnx") if domain == "" else None)


def _resolve(node, opsets) -> OpDef | None:
    domain, version = _opset(node, opsets)
    return _lookup(node.op_type, domain, version, generation())


@functools.lru_cache(maxsize=4096)
def _lookup(op_type: str, domain: str, version, _generation: int) -> OpDef | None:
    """The registry's answer per (op, domain, opset), until a kernel is registered: a
    100k-node graph asks 200k times."""
    return lookup(op_type, domain, version)


def missing_kernels(graph: Graph, opsets: dict) -> list[str]:
    """Every problem that would stop the graph from running, each as 'op: reason', without duplicates."""
    problems: dict[str, int] = collections.Counter()
    for node in graph.nx.nodes:
        op = _resolve(node, opsets)
        name = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        if op is None:
            problems[f"{name} (no kernel for opset {opsets.get(canonical_domain(node.domain), '?')})"] += 1
        elif op.attrs is not None:
            for a in node.attrs:
                if a not in op.attrs:
                    problems[f"{name} attribute '{a}' (not supported)"] += 1
        for sg in node.subgraphs:
            for p in missing_kernels(sg, opsets):
                problems[p] += 1
    return [f"{p} x{n}" if n > 1 else p for p, n in problems.items()]


def bind_kernel(op: OpDef, node, graph: Graph):
    """The function and keyword attributes to call for ``node`` (``op.single_output`` when only the
    first output is read; the output count under ``op.num_outputs_param``)."""
    fn = op.kernel
    attrs = {kernel_attr_name(k): v for k, v in node.attrs.items()}
    param = op.num_outputs_param
    if param and param not in attrs:
        attrs[param] = len(node.outputs)
    single = op.single_output
    if single is not None and all((not o) or graph.num_uses(o) == 0 for o in node.outputs[1:]):
        fn = single
    return fn, attrs


class Plan:
    """A compiled graph. ``run(feeds)`` returns the graph outputs in order."""

    def __init__(self, graph: Graph, opsets: dict, *, fold_constants: bool = True,
                 blas_threads: int | None = 1, fuse: bool = True, _nested: bool = False):
        if not _nested:  # subgraphs are checked with their parent
            validate_graph(graph)
        problems = missing_kernels(graph, opsets)
        if problems:
            raise UnsupportedError(f"the NumPy backend cannot run {len(problems)} op kind(s): "
                                   + "; ".join(problems))
        self.graph = graph
        self.opsets = opsets
        self.input_names = list(graph.inputs)
        self.output_names = list(graph.outputs)
        self._sub_plans: dict[int, Plan] = {}
        self.blas_threads = None if _nested else blas_threads
        slots: dict[str, int] = {}

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(slots)
            return slots[name]

        consts: dict[str, np.ndarray] = {}
        for name in graph.initializers:
            if name not in graph.inputs:
                consts[name] = graph.values[name].const
        for name in graph.inputs:
            slot(name)
        # outer-scope values (subgraphs) come from the scope given to run()
        self.outer = [n for n in graph.outer_references()]
        for n in self.outer:
            slot(n)

        steps: list[Step] = []
        for node in graph.toposort():
            op = _resolve(node, opsets)
            fn, attrs = bind_kernel(op, node, graph)
            const_inputs = all((not n) or n in consts for n in node.inputs)
            if (fold_constants and const_inputs and not node.subgraphs and not node.implicit_inputs
                    and op.deterministic and not op.needs_ctx):
                args = [consts.get(n) if n else None for n in node.inputs]
                with _node_errors(node, args, opsets):
                    res = self._call(fn, args, attrs)
                for name, val in zip(node.outputs, res):
                    if name:
                        consts[name] = val
                continue
            ins = tuple(slot(n) if n else -1 for n in node.inputs)
            outs = tuple(slot(n) if n else -1 for n in node.outputs)
            implicit = tuple((n, slot(n)) for n in node.implicit_inputs)
            steps.append(Step(fn, ins, outs, attrs, (), node, op.needs_ctx, implicit, op=op))

        const_of_slot = {slots[n]: a for n, a in consts.items() if n in slots}
        for st in steps:
            st.ins = _trim(st.ins)
            try:
                st.call = _bind_step(st, const_of_slot)
            except Exception as e:  # noqa: BLE001 - a kernel's prepare failing: see _node_error
                consts = [const_of_slot.get(i) if i >= 0 else None for i in st.ins]
                raise _node_error(st.node, e, consts, opsets) from (None if isinstance(e, TvmliteError) else e)

        # constants used at run time get slots filled at the start of each run
        self.const_slots = [(slots[n], a) for n, a in consts.items() if n in slots]
        for name in graph.outputs:
            if name in consts and name not in slots:
                self.const_slots.append((slot(name), consts[name]))
        self.n_slots = len(slots)
        self.slots = slots
        self.input_slots = [slots[n] for n in self.input_names]
        self.outer_slots = [slots[n] for n in self.outer]
        self.output_slots = [slots[n] for n in self.output_names]

        self._const_of_slot = const_of_slot
        self._fuse_pending = fuse
        self._set_frees(steps)

    def _set_frees(self, steps: list) -> None:
        """Liveness: free each slot after its last reader unless it is a graph output."""
        keep = set(self.output_slots)
        last_use: dict[int, int] = {}
        for i, st in enumerate(steps):
            for s in st.ins:
                if s >= 0:
                    last_use[s] = i
            for _, s in st.implicit:
                last_use[s] = i
            for s in st.outs:  # an output nobody reads dies where it is made
                if s >= 0 and s not in last_use:
                    last_use[s] = i
        for i, st in enumerate(steps):
            for s in st.outs:
                if s >= 0 and last_use.get(s, -1) < i:
                    last_use[s] = i
        frees: dict[int, list] = collections.defaultdict(list)
        for s, i in last_use.items():
            if s not in keep:
                frees[i].append(s)
        for i, st in enumerate(steps):
            st.free = tuple(frees.get(i, ()))
        self.steps = steps

    @staticmethod
    def _call(fn, args, attrs, ctx=None):
        while args and args[-1] is None:
            args = args[:-1]
        res = fn(ctx, *args, **attrs) if ctx is not None else fn(*args, **attrs)
        if isinstance(res, tuple):
            return [r if isinstance(r, (list, np.ndarray)) or r is None else np.asarray(r) for r in res]
        return [res if isinstance(res, (list, np.ndarray)) else np.asarray(res)]

    def run_subgraph(self, graph: Graph, feeds: dict, scope: dict) -> list:
        plan = self._sub_plans.get(id(graph))
        if plan is None:
            plan = Plan(graph, self.opsets, _nested=True)
            self._sub_plans[id(graph)] = plan
        return plan.run(feeds, scope)

    def _fuse_steps(self, shapes: dict) -> None:
        """Replace runs of pointwise steps by fused steps (see :func:`fuse_steps`), using the
        (shape, dtype) each slot had in the first run."""
        self._set_frees(fuse_steps(self.steps, shapes, self._const_of_slot, set(self.output_slots)))

    def _run_steps(self, env: list, scope: dict | None, shapes: dict | None = None) -> None:
        ndarray = np.ndarray
        for st in self.steps:
            args = [env[i] if i >= 0 else None for i in st.ins]
            try:
                if st.needs_ctx:
                    inner = dict(scope or {})
                    inner.update((n, env[s]) for n, s in st.implicit)
                    ctx = KernelContext(self.opsets, self.run_subgraph, inner)
                    res = st.fn(ctx, *args, **st.attrs)
                else:
                    res = st.call(*args)
            except Exception as e:  # a kernel failing on these inputs: say which node
                raise _node_error(st.node, e, args, self.opsets) from (None if isinstance(e, TvmliteError) else e)
            outs = st.outs
            if type(res) is ndarray:
                env[outs[0]] = res
            elif isinstance(res, tuple):
                for s, r in zip(outs, res):
                    if s >= 0:
                        env[s] = r if isinstance(r, (list, ndarray)) or r is None else np.asarray(r)
            else:
                env[outs[0]] = res if isinstance(res, (list, ndarray)) else np.asarray(res)
            if shapes is not None:
                for s in outs:
                    if s >= 0 and type(env[s]) is ndarray:
                        shapes[s] = (env[s].shape, env[s].dtype)
            for s in st.free:
                env[s] = None

    def run(self, feeds: dict, scope: dict | None = None) -> list:
        env: list = [None] * self.n_slots
        for s, a in self.const_slots:
            env[s] = a
        for name, s in zip(self.input_names, self.input_slots):
            if name in feeds:
                env[s] = feeds[name]
            elif name in self.graph.initializers:
                env[s] = self.graph.values[name].const  # an input with a default initializer
            else:
                raise TvmliteError(f"missing input {name!r}")
        if self.outer:
            scope = scope or {}
            for name, s in zip(self.outer, self.outer_slots):
                if env[s] is None:
                    env[s] = scope[name]
        # one errstate for the whole run (kernels may overflow, divide by zero ... as ONNX allows)
        # instead of one per fused step
        with blas_limit(self.blas_threads), np.errstate(all="ignore"):
            if self._fuse_pending:  # the first run: learn the shapes, then fuse
                shapes: dict = {s: (v.shape, v.dtype) for s, v in enumerate(env)
                                if type(v) is np.ndarray}
                self._run_steps(env, scope, shapes)
                self._fuse_pending = False
                self._fuse_steps(shapes)
            else:
                self._run_steps(env, scope)
        # outputs never alias constants or each other's buffers: views are copied
        return [np.array(r) if isinstance(r, np.ndarray) and (r.base is not None or not r.flags.writeable)
                else r for r in (env[s] for s in self.output_slots)]


def _node_error(node, e: Exception, inputs=None, opsets=None) -> TvmliteError:
    """``e`` raised by ``node``'s kernel as a one-line TvmliteError that names the node (the
    kernel's own TvmliteError keeps its class; anything else is the kernel failing on these
    inputs: the rule of the op they break where ops.diagnose finds one, else NumPy's words)."""
    if isinstance(e, TvmliteError):
        return type(e)(f"node {node.label!r} ({node.op_type}): {e}")
    if isinstance(e, MemoryError):
        return TvmliteError(f"node {node.label!r} ({node.op_type}): out of memory")
    if inputs is not None and opsets is not None:
        why = explain(node.op_type, *_opset(node, opsets), node.attrs, inputs)
        if why:
            return ShapeError(f"node {node.label!r} ({node.op_type}): {why}")
    msg = message_line(e)
    return TvmliteError(f"node {node.label!r} ({node.op_type}) failed: {type(e).__name__}: {msg}")


@contextlib.contextmanager
def _node_errors(node, inputs=None, opsets=None):
    """Compile-time work for ``node`` (constant folding, a kernel's prepare) fails like run time."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - see _node_error
        raise _node_error(node, e, inputs, opsets) from (None if isinstance(e, TvmliteError) else e)


def _trim(ins: tuple) -> tuple:
    """Input slots without trailing absent inputs (kernels take them as defaults)."""
    n = len(ins)
    while n and ins[n - 1] < 0:
        n -= 1
    return tuple(ins[:n])


def _bind_step(st: Step, const_of_slot: dict):
    """What the run loop calls with the step's positional inputs: ``op.prepare``'s callable when the
    op has one and some inputs are constants, else the kernel with its attributes bound."""
    if st.needs_ctx:
        return None
    prep = st.op.prepare if st.op is not None else None
    if prep is not None:
        consts = [const_of_slot.get(i) if i >= 0 else None for i in st.ins]
        if any(c is not None for c in consts) and any(
                i >= 0 and const_of_slot.get(i) is None for i in st.ins):
            call = prep(consts, dict(st.attrs))
            if call is not None:
                return call
    return functools.partial(st.fn, **st.attrs) if st.attrs else st.fn


def compile_model(model: Model, *, fold_bn: bool = True, **kw) -> Plan:
    """A Plan for ``model``. ``fold_bn``: BatchNormalization after a Conv/Gemm with constant weights
    is folded into them in a copy first, as onnxruntime does at load (two passes over the tensor
    fewer per conv; results change at the rounding level only). ``model`` is left as it is. A model
    whose declared types break an op's schema is refused (ShapeError, ops/typecheck.py), as
    onnxruntime refuses it."""
    check_declared_types(model.graph, model.opsets)
    if fold_bn and _foldable_bn(model.graph):
        model = model.copy()
        fold_batchnorms(model)
    return Plan(model.graph, model.opsets, **kw)


def _foldable_bn(graph: Graph) -> bool:
    for node in graph.nx.nodes:
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            p = graph.producer(node.inputs[0])
            if p is not None and p.op_type in ("Conv", "ConvTranspose", "Gemm") \
                    and graph.const_value(p.inputs[1]) is not None:
                return True
    return False


# --------------------------------------------------------------------------------------------------
