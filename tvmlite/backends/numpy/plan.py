"""The NumPy backend: compile a Graph once into a flat plan, run it many times.

A plan is a list of steps (kernel, input slots, output slots, attributes, slots to free). Constants
(initializers, Constant nodes and whatever depends only on them) are computed at compile time. Each
intermediate's slot is cleared right after its last reader, so peak memory follows the live set, not
the whole graph.

Compile-time work per step (so the run loop does as little as possible):

* **prepare**: a kernel may carry ``fn.prepare(consts, attrs) -> callable | None``. When a step has
  constant inputs and the kernel has a ``prepare``, the plan calls it once with ``consts`` (one
  entry per node input: the constant array, or None for an input computed at run time or absent)
  and the keyword attributes. The callable it returns is then called at run time *instead of* the
  kernel with the same positional inputs (constants included, attributes already bound) and must
  return what the kernel would; None keeps the plain kernel. Kernels use it to do weight-only work
  once (Conv's GEMM weight layout, BatchNormalization's scale and shift, Gemm's transposed B).
* **pointwise fusion** (``fuse=True``, the default): the first run records each value's shape and
  dtype, then runs of consecutive pointwise steps become one step (:class:`_Fused`), either after a
  head step whose kernel returns a fresh array (``fresh_output``: Conv, ConvTranspose, MatMul, Gemm,
  Sigmoid) or on their own (one new output array). A run qualifies when every value in it has the
  run's output shape and dtype, outside operands broadcast into it, and every value but the last is
  read only inside the run. Each step is executed as its kernel's ``pointwise`` description (NumPy
  calls with ``out=``, same float values, same order), in place in the output array and a few
  scratch arrays, so results are bit-identical to the unfused steps; shapes or dtypes that do not
  fit at run time fall back to the steps one by one. It saves an allocation and a pass per step on
  large tensors (det: Conv -> BN/affine -> HardSwish chains) and a dispatch per step on small ones.
  (Applied per block of the GEMM output inside the conv instead, it was slower: strided blocks.)
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

from tvmlite.errors import TvmliteError, UnsupportedError
from tvmlite.ops.batchnorm_fold import fold_batchnorms
from tvmlite.ir.graph import Graph, Model
from tvmlite.backends.numpy.validate import validate_graph
from tvmlite.ops.registry import (KernelContext, OpDef, canonical_domain, generation, kernel_attr_name,
                                  lookup)

#: ops whose outputs differ between runs: never computed at compile time
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "Dropout"}


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
    call: object = None  # fn with attributes bound (or fn.prepare's result), inputs positional


_BLAS = None  # threadpoolctl controller, created on first use (False: not available)


def _blas_limit(n):
    """A context that caps the BLAS threads at ``n`` (a no-op when n is None or without
    threadpoolctl)."""
    global _BLAS
    if n is None:
        return contextlib.nullcontext()
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except Exception:  # not installed, or no BLAS found: leave threads alone
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=n, user_api="blas")


def _resolve(node, opsets) -> OpDef | None:
    domain = canonical_domain(node.domain)
    version = opsets.get(domain, opsets.get("ai.onnx") if domain == "" else None)
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
    """The function and keyword attributes to call for ``node`` (see the registry's conventions)."""
    fn = op.kernel
    attrs = {kernel_attr_name(k): v for k, v in node.attrs.items()}
    param = getattr(fn, "num_outputs_param", None)
    if param and param not in attrs:
        attrs[param] = len(node.outputs)
    single = getattr(fn, "single_output", None)
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
                    and node.op_type not in NONDETERMINISTIC and not op.needs_ctx):
                with _node_errors(node):
                    res = self._call(fn, [consts.get(n) if n else None for n in node.inputs], attrs)
                for name, val in zip(node.outputs, res):
                    if name:
                        consts[name] = val
                continue
            ins = tuple(slot(n) if n else -1 for n in node.inputs)
            outs = tuple(slot(n) if n else -1 for n in node.outputs)
            implicit = tuple((n, slot(n)) for n in node.implicit_inputs)
            steps.append(Step(fn, ins, outs, attrs, (), node, op.needs_ctx, implicit))

        const_of_slot = {slots[n]: a for n, a in consts.items() if n in slots}
        for st in steps:
            st.ins = _trim(st.ins)
            try:
                st.call = _bind_step(st, const_of_slot)
            except Exception as e:  # noqa: BLE001 - a kernel's prepare failing: see _node_error
                raise _node_error(st.node, e) from (None if isinstance(e, TvmliteError) else e)

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
        """Replace runs of pointwise steps (after a Conv or on their own) by :class:`_Fused` steps,
        grouped by the (shape, dtype) each slot had in a run (``shapes``). A group's values all
        have its output's shape, and all but the last are read only inside the group."""
        steps = self.steps
        cos = self._const_of_slot
        keep = set(self.output_slots)
        readers: dict = collections.Counter()
        for st in steps:
            for s in st.ins:
                readers[s] += 1
            for _, s in st.implicit:
                readers[s] += 1

        def pw_ok(t, S):
            if t.needs_ctx or t.implicit or len(t.outs) != 1 or t.outs[0] < 0:
                return False
            desc = getattr(t.fn, "pointwise", None)
            if desc is None or S is None or shapes.get(t.outs[0]) != S:
                return False
            consts = [cos.get(s) if s >= 0 else None for s in t.ins]
            try:
                ops = desc(consts, dict(t.attrs), S[1], len(S[0]))
            except Exception:
                return False
            # the first call must read every input computed at run time
            return bool(ops) and all(s < 0 or s in cos or k in ops[0][1]
                                     for k, s in enumerate(t.ins))

        out = []
        i = 0
        while i < len(steps):
            st = steps[i]
            S = shapes.get(st.outs[0]) if st.outs and st.outs[0] >= 0 else None
            head = st if (_fresh_output(st) and len(st.outs) == 1 and not st.needs_ctx
                          and S is not None) else None
            members = [] if head is not None else ([st] if pw_ok(st, S) else None)
            if members is None:
                out.append(st)
                i += 1
                continue
            latest = st.outs[0]
            values = {latest}
            j = i + 1
            while j < len(steps):
                t = steps[j]
                if latest not in t.ins or not pw_ok(t, S):
                    break
                if not all(s < 0 or s in values or s in cos or (
                        shapes.get(s) is not None and shapes[s][1] == S[1]
                        and _bcast_within(shapes[s][0], S[0])) for s in t.ins):
                    break
                members.append(t)
                latest = t.outs[0]
                values.add(latest)
                j += 1
            # longest prefix whose inner values are read only inside it
            group = None
            lo = 1 if head is not None else 2
            for n in range(len(members), lo - 1, -1):
                part = ([head] if head is not None else []) + members[:n]
                inner = [t.outs[0] for t in part[:-1]]
                inside = collections.Counter(s for t in part for s in t.ins)
                if all(v not in keep and readers[v] == inside[v] for v in inner):
                    group = members[:n]
                    break
            if group is None:
                out.append(st)
                i += 1
                continue
            f = _Fused(head, group, cos)
            ins = (tuple(head.ins) if head is not None else ()) + tuple(f.ext)
            out.append(Step(st.fn, ins, (group[-1].outs[0],), {}, (), st.node, False, (), f))
            i += len(group) + (1 if head is not None else 0)
        self.steps = out
        self._set_frees(out)

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
                raise _node_error(st.node, e) from (None if isinstance(e, TvmliteError) else e)
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
        with _blas_limit(self.blas_threads), np.errstate(all="ignore"):
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


def _node_error(node, e: Exception) -> TvmliteError:
    """``e`` raised by ``node``'s kernel as a one-line TvmliteError that names the node (the
    kernel's own TvmliteError keeps its class; anything else is the kernel failing on these
    inputs, e.g. shapes NumPy cannot broadcast)."""
    if isinstance(e, TvmliteError):
        return type(e)(f"node {node.label!r} ({node.op_type}): {e}")
    if isinstance(e, MemoryError):
        return TvmliteError(f"node {node.label!r} ({node.op_type}): out of memory")
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TvmliteError(f"node {node.label!r} ({node.op_type}) failed: {type(e).__name__}: {msg}")


@contextlib.contextmanager
def _node_errors(node):
    """Compile-time work for ``node`` (constant folding, a kernel's prepare) fails like run time."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - see _node_error
        raise _node_error(node, e) from (None if isinstance(e, TvmliteError) else e)


def _trim(ins: tuple) -> tuple:
    """Input slots without trailing absent inputs (kernels take them as defaults)."""
    n = len(ins)
    while n and ins[n - 1] < 0:
        n -= 1
    return tuple(ins[:n])


def _bind_step(st: Step, const_of_slot: dict):
    """What the run loop calls with the step's positional inputs: ``fn.prepare``'s callable when the
    kernel has one and some inputs are constants, else the kernel with its attributes bound."""
    if st.needs_ctx:
        return None
    prep = getattr(st.fn, "prepare", None)
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
    fewer per conv; results change at the rounding level only). ``model`` is left as it is."""
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
# pointwise fusion
# --------------------------------------------------------------------------------------------------

def _bcast_within(shape, yshape) -> bool:
    """``shape`` broadcasts to ``yshape`` without growing it."""
    if len(shape) > len(yshape):
        return False
    return all(s == 1 or s == y for s, y in zip(shape[::-1], yshape[::-1]))


def _fresh_output(st) -> bool:
    """The step's kernel returns a new array nobody else holds (``fresh_output``)."""
    return bool(getattr(st.call, "fresh_output", False)
                or (not hasattr(st.fn, "prepare") and getattr(st.fn, "fresh_output", False)))


class _Fused:
    """Consecutive pointwise steps, after an optional head step whose output is a fresh array,
    run as one step, in place.

    Every group value has the group's output shape; operands from outside (constants, tensors
    computed earlier) broadcast into it. Each pointwise step runs as its kernel's ``pointwise``
    description: NumPy calls with ``out=`` on the same float values in the same order as the
    kernel, so the results are bit-identical to the unfused steps, but there is no new array per
    step: values live in the output array (the head's output, else one new array) and a few
    scratch arrays, assigned once here (an input that dies at a step lends its buffer to the
    step's output).
    """

    def __init__(self, head, psteps, const_of_slot):
        self.head = head
        self.psteps = psteps
        self.nh = len(head.ins) if head is not None else 0
        vals = {}  # slot -> value index
        if head is not None:
            vals[head.outs[0]] = 0
        first = len(vals)
        for j, st in enumerate(psteps):
            vals[st.outs[0]] = first + j
        ext: list = []
        srcs = []  # per step, per input: ('v', value) | ('e', ext index) | ('c', array) | None
        last_read = {v: -1 for v in vals.values()}
        for j, st in enumerate(psteps):
            row = []
            for s in st.ins:
                if s < 0:
                    row.append(None)
                elif s in vals and vals[s] < first + j:
                    row.append(("v", vals[s]))
                    last_read[vals[s]] = j
                elif s in const_of_slot:
                    row.append(("c", const_of_slot[s]))
                else:
                    if s not in ext:
                        ext.append(s)
                    row.append(("e", ext.index(s)))
            srcs.append(row)
        self.ext = ext
        self.srcs = srcs
        self.consts = [[const_of_slot.get(s) if s >= 0 else None for s in st.ins] for st in psteps]
        # buffers: 0 = the output array, 1.. = scratch arrays
        holder = {0: 0 if head is not None else None}  # buffer -> value it holds
        out_buf = []
        for j in range(len(psteps)):
            if j == len(psteps) - 1:
                b = 0
            else:
                dying = [b for b, v in holder.items() if v is not None and last_read[v] == j]
                free = [b for b in sorted(holder) if holder[b] is None or last_read[holder[b]] < j]
                cand = dying or free
                b = cand[0] if cand else len(holder)
            holder[b] = first + j
            out_buf.append(b)
        self.out_buf = out_buf
        self.val_buf = {0: 0} if head is not None else {}
        for j, b in enumerate(out_buf):
            self.val_buf[first + j] = b
        self.ntemps = len(holder) - 1
        self._progs: dict = {}
        self._binds: dict = {}

    def program(self, dt, ndim):
        """[(func, operand specs, out buffer)] for values of dtype ``dt`` and rank ``ndim``; None
        when a kernel has no pointwise form for them. Operand specs: ('b', buffer), ('e', ext
        index), ('k', constant array or Python float)."""
        key = (dt, ndim)
        if key in self._progs:
            return self._progs[key]
        prog = []
        ok = dt.kind == "f" and dt.itemsize >= 4
        for j, st in enumerate(self.psteps if ok else ()):
            desc = st.fn.pointwise(self.consts[j], dict(st.attrs), dt, ndim)
            if not desc:
                ok = False
                break
            ob = self.out_buf[j]
            used = set()
            for m, (func, operands) in enumerate(desc):
                specs = []
                for o in operands:
                    if o is None:  # the previous call's result
                        ok = ok and m > 0
                        specs.append(("b", ob))
                    elif isinstance(o, int) and not isinstance(o, bool):  # the step's input o
                        src = self.srcs[j][o] if m == 0 and o < len(self.srcs[j]) else None
                        if src is None:
                            ok = False
                            break
                        used.add(o)
                        if src[0] == "v":
                            specs.append(("b", self.val_buf[src[1]]))
                        elif src[0] == "e":
                            specs.append(("e", src[1]))
                        elif isinstance(src[1], np.ndarray) and src[1].dtype == dt:
                            specs.append(("k", src[1]))
                        else:
                            ok = False
                    elif isinstance(o, np.ndarray) and o.dtype == dt or isinstance(o, float):
                        specs.append(("k", o))
                    else:
                        ok = False
                    if not ok:
                        break
                if not ok:
                    break
                prog.append((func, tuple(specs), ob))
            # every input computed at run time must be read
            if ok and any(src is not None and src[0] != "c" and i not in used
                          for i, src in enumerate(self.srcs[j])):
                ok = False
            if not ok:
                break
        prog = prog if ok else None
        self._progs[key] = prog
        return prog

    def bind(self, yshape, dt, ext):
        """The program for output shape ``yshape`` / dtype ``dt`` on these outside tensors, or None
        when the group cannot run fused on them."""
        try:
            key = (yshape, dt) + tuple([(e.shape, e.dtype) for e in ext])
        except AttributeError:  # an outside value that is not an array
            return None
        prog = self._binds.get(key, False)
        if prog is False:
            prog = self._binds[key] = self._make_prog(tuple(yshape), np.dtype(dt), ext)
        return prog

    def _make_prog(self, yshape, dt, ext):
        prog = self.program(dt, len(yshape))
        if prog is None or not all(type(e) is np.ndarray and e.dtype == dt and
                                   _bcast_within(e.shape, yshape) for e in ext):
            return None
        if not all(_bcast_within(np.shape(s[1]), yshape) for _, specs, _ in prog for s in specs
                   if s[0] == "k"):
            return None
        return prog

    def unfused(self, y, ext):
        """The group's steps one by one (``y``: the head's output, if any)."""
        vals = [] if y is None else [y]
        for j, st in enumerate(self.psteps):
            args = [None if s is None else vals[s[1]] if s[0] == "v" else ext[s[1]]
                    if s[0] == "e" else s[1] for s in self.srcs[j]]
            while args and args[-1] is None:
                args.pop()
            vals.append(st.call(*args))
        return vals[-1]

    def _apply(self, prog, y, ext):
        bufs = [y] + [np.empty(y.shape, y.dtype) for _ in range(self.ntemps)]
        for func, specs, ob in prog:
            func(*[bufs[s[1]] if s[0] == "b" else ext[s[1]] if s[0] == "e" else s[1]
                   for s in specs], out=bufs[ob])
        return y

    def __call__(self, *args):
        # (run inside Plan.run's errstate)
        ext = args[self.nh:]
        if self.head is not None:
            y = self.head.call(*args[:self.nh])
            prog = self.bind(y.shape, y.dtype, ext) if type(y) is np.ndarray else None
            return self.unfused(y, ext) if prog is None else self._apply(prog, y, ext)
        try:
            yshape = np.broadcast_shapes(*[e.shape for e in ext])
            prog = self.bind(yshape, ext[0].dtype, ext)
        except (AttributeError, ValueError):
            prog = None
        if prog is None:
            return self.unfused(None, ext)
        return self._apply(prog, np.empty(yshape, ext[0].dtype), ext)
