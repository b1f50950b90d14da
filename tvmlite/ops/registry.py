"""The op registry: per (domain, op_type) and opset range, a NumPy kernel and optional extras.

A kernel is a plain function of arrays and attributes::

    @kernel("Squeeze", since=13)
    def squeeze(data, axes=None):          # inputs are positional, missing optional ones are None
        ...
    @kernel("Conv")
    def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
             pads=None, strides=None):     # attributes are keyword-only, with ONNX's defaults
        ...

It returns one array, or a tuple for several outputs (the plan keeps as many as the node asks for).
An attribute the kernel does not name is reported as unsupported before anything runs, so a kernel
never silently ignores semantics it does not implement.

Several kernels may be registered for one op with different ``since`` versions (ONNX's own
versioning: Squeeze-1 takes axes as an attribute, Squeeze-13 as an input); the one with the highest
``since`` not above the model's opset for that domain is used.

Kernels that run subgraphs (If, Loop, Scan) are registered with ``needs_ctx=True`` and receive a
:class:`KernelContext` as first argument.

Two conventions let a kernel depend on how many outputs the node asks for:
- ``fn.single_output = other_fn``: used instead of ``fn`` when only the first output is read
  (MaxPool skips computing Indices);
- ``fn.num_outputs_param = "num_outputs"``: the node's output count is passed under that keyword when
  the node does not set it (Split before opset 18 splits into as many parts as it has outputs).

And one lets a kernel do its weight-only work once: ``fn.prepare(consts, attrs) -> callable | None``
is called at compile time when some inputs are constants (``consts`` has one entry per input, None
for those computed at run time); the callable it returns replaces the kernel for that node (see
tvmlite/backends/numpy/plan.py).

Two more let the NumPy plan fuse chains of element-wise steps (see plan.py):

- ``fn.pointwise(consts, attrs, dtype, ndim) -> list | None``: the kernel, for float inputs of
  ``dtype`` whose first input has rank ``ndim``, as a list of ``(func, operands)`` calls made as
  ``func(*operands, out=buf)``: an ``int`` operand is the step's input of that index (first call
  only; every input computed at run time must appear there), ``None`` the previous call's result, an
  array (of ``dtype``) or Python float a constant. It must compute exactly what the kernel does, in
  the same order (bit-identical results); None when it cannot for these inputs.
- ``fn.fresh_output = True``: the kernel's result is always a new array (or a view of one) that
  nothing else holds, so the plan may overwrite it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

ONNX_DOMAINS = ("", "ai.onnx")
TVMLITE_DOMAIN = "tvmlite"


def canonical_domain(domain: str) -> str:
    return "" if domain in ONNX_DOMAINS else domain


@dataclass
class OpDef:
    domain: str
    op_type: str
    since: int
    kernel: Callable[..., Any]
    needs_ctx: bool = False
    #: attribute names the kernel accepts (keyword-only parameters); None means any (**kwargs)
    attrs: frozenset | None = None
    #: filled in by other parts of tvmlite for the ops they know (shape rule, TVM emitter, ONNX body)
    extras: dict = field(default_factory=dict)


@dataclass
class KernelContext:
    """What a subgraph-running kernel may use: the opsets in force and a way to run a subgraph."""

    opsets: dict
    run_subgraph: Callable[..., list]  # run_subgraph(graph, feeds: dict[str, array], scope: dict)
    scope: dict  # names visible from outer graphs -> arrays


_REGISTRY: dict[tuple[str, str], list[OpDef]] = {}
_generation = 0
#: per (domain, op_type): "shape" rule, "body" (ONNX function body), "tvm" emitter, ...
_EXTRAS: dict[tuple[str, str], dict[str, Callable]] = {}


def op_extra(op_type: str, domain: str, key: str) -> Callable | None:
    _load_builtin_kernels()
    return _EXTRAS.get((canonical_domain(domain), op_type), {}).get(key)


def register_extra(op_type: str, key: str, domain: str = TVMLITE_DOMAIN):
    """Attach a per-op extra (e.g. ``key="shape"`` or ``key="body"``) to ``domain::op_type``."""

    def wrap(fn):
        _EXTRAS.setdefault((canonical_domain(domain), op_type), {})[key] = fn
        return fn

    return wrap


def tvmlite_op(op_type: str, *, shape: Callable, body: Callable, since: int = 1):
    """Register one of tvmlite's own ops (domain ``tvmlite``): its NumPy kernel (the decorated
    function), its shape rule and its ONNX function body.

    - ``shape(input_types, **attrs) -> [(np.dtype, shape tuple), ...]`` where ``input_types`` is a
      list of (dtype, shape) pairs (shape dims may be str for symbolic dims or None for unknown).
    - ``body(fb, **attrs) -> None`` builds the body with a :class:`tvmlite.export.functions.FunctionBuilder`
      ``fb``: ``fb.inputs``/``fb.outputs`` are the formal names, ``fb.opset`` the model's ONNX
      opset, ``fb.input_types`` the (dtype, shape) of each input where known (or None),
      ``fb.node(op, inputs, attrs) -> output name``, ``fb.const(array) -> name``. Export writes
      one model-local function per distinct attribute set (ONNX function overloads), so onnxruntime
      runs any lowered model.
    """

    def wrap(fn):
        kernel(op_type, domain=TVMLITE_DOMAIN, since=since)(fn)
        register_extra(op_type, "shape")(shape)
        register_extra(op_type, "body")(body)
        return fn

    return wrap


def _accepted_attrs(fn: Callable, needs_ctx: bool) -> frozenset | None:
    sig = inspect.signature(fn)
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            names.append(p.name.rstrip("_"))  # `from_` stands for the attribute `from`
    return frozenset(names)


def kernel(op_type: str, domain: str = "", since: int = 1, needs_ctx: bool = False):
    """Register ``fn`` as the NumPy kernel of ``domain::op_type`` from opset ``since`` on."""

    def wrap(fn):
        d = canonical_domain(domain)
        entry = OpDef(d, op_type, since, fn, needs_ctx, _accepted_attrs(fn, needs_ctx))
        global _generation
        versions = _REGISTRY.setdefault((d, op_type), [])
        versions[:] = [v for v in versions if v.since != since] + [entry]
        versions.sort(key=lambda v: v.since)
        _generation += 1
        return fn

    return wrap


def generation() -> int:
    """Changes whenever a kernel is registered: a key for caches of lookup's answers."""
    _load_builtin_kernels()
    return _generation


def lookup(op_type: str, domain: str = "", opset: int | None = None) -> OpDef | None:
    """The OpDef in force for ``opset`` (the newest one when opset is None), or None."""
    _load_builtin_kernels()
    versions = _REGISTRY.get((canonical_domain(domain), op_type))
    if not versions:
        return None
    if opset is None:
        return versions[-1]
    chosen = None
    for v in versions:
        if v.since <= opset:
            chosen = v
    return chosen


def supported_ops(domain: str | None = None) -> list[tuple[str, str]]:
    _load_builtin_kernels()
    keys = sorted(_REGISTRY)
    if domain is not None:
        keys = [k for k in keys if k[0] == canonical_domain(domain)]
    return keys


def kernel_attr_name(attr: str) -> str:
    """Keyword under which attribute ``attr`` reaches a kernel (Python keywords get a `_`)."""
    import keyword

    return attr + "_" if keyword.iskeyword(attr) else attr


_loaded = False


def _load_builtin_kernels() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    import tvmlite.ops as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("registry", "testing"):
            importlib.import_module(f"tvmlite.ops.{mod.name}")
