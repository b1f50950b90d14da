"""The op registry: per (domain, op_type) and opset range, one :class:`OpDef` with everything
tvmlite knows about the op.

A kernel is a plain function of arrays and attributes::

    @kernel("Squeeze", since=13)
    def squeeze(data, axes=None):          # inputs are positional, missing optional ones are None
        ...
    @kernel("Conv", prepare=_conv_prepare, fresh_output=True)
    def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
             pads=None, strides=None):     # attributes are keyword-only, with ONNX's defaults
        ...

It returns one array, or a tuple for several outputs (the plan keeps as many as the node asks for).
An attribute the kernel does not name is reported as unsupported before anything runs, so a kernel
never silently ignores semantics it does not implement.

Several kernels may be registered for one op with different ``since`` versions (ONNX's own
versioning: Squeeze-1 takes axes as an attribute, Squeeze-13 as an input); the one with the highest
``since`` not above the model's opset for that domain is used.

What a backend needs beyond the kernel is given at registration and kept as typed fields of the
OpDef (see its docstring): subgraph context, shape rule, ONNX function body, determinism, and the
NumPy plan's hooks (``prepare``, ``pointwise``, ``fresh_output``, ``single_output``,
``num_outputs_param``). Registration checks them (a hook that is not callable, a
``num_outputs_param`` the kernel does not take, a tvmlite-domain op without a shape rule or body is
a :class:`RegistrationError`), so a reader never has to guess.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

ONNX_DOMAINS = ("", "ai.onnx")
TVMLITE_DOMAIN = "tvmlite"

#: ONNX ops whose outputs differ between runs (or with a seed): never computed at compile time,
#: folded or merged. Kernels of these ops are registered with ``deterministic=False``; the set also
#: covers those tvmlite has no kernel for, so passes can ask about any node.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli", "Dropout"})


class RegistrationError(TypeError):
    """A kernel registration that is incomplete or inconsistent (a bug in tvmlite or in an
    extension that registers its own op), raised when the module registering it is imported."""


def canonical_domain(domain: str) -> str:
    return "" if domain in ONNX_DOMAINS else domain


@dataclass
class OpDef:
    """Everything tvmlite knows about one op version. Filled by :func:`kernel` / :func:`tvmlite_op`.

    - ``kernel``: the NumPy kernel (see the module docstring).
    - ``needs_ctx``: the kernel runs subgraphs (If, Loop, Scan) and takes a :class:`KernelContext`
      as first argument.
    - ``attrs``: attribute names the kernel accepts (its keyword-only parameters); None means any.
    - ``shape``: the shape rule, ``shape(input_types, **attrs) -> [(np.dtype, shape tuple), ...]``
      where ``input_types`` is a list of (dtype, shape) pairs (dims may be str for symbolic dims or
      None for unknown). Required for tvmlite's own ops; ONNX ops use ONNX shape inference.
    - ``body``: the ONNX function body, ``body(fb, **attrs) -> None`` built with a
      ``tvmlite.export.functions.FunctionBuilder`` (required for tvmlite's own ops, so exported
      models run in onnxruntime).
    - ``deterministic``: False when outputs may differ between runs (never computed at compile
      time, folded or merged).
    - ``prepare(consts, attrs) -> callable | None``: called by the NumPy plan at compile time when
      some inputs are constants (``consts`` has one entry per input, None for those computed at run
      time); the callable it returns replaces the kernel for that node, with attributes bound (Conv's
      GEMM weight layout, BatchNormalization's scale and shift).
    - ``pointwise(consts, attrs, dtype, ndim) -> list | None``: the kernel, for float inputs of
      ``dtype`` whose first input has rank ``ndim``, as a list of ``(func, operands)`` calls made as
      ``func(*operands, out=buf)``: an ``int`` operand is the step's input of that index (first call
      only; every input computed at run time must appear there), ``None`` the previous call's
      result, an array (of ``dtype``) or Python float a constant. It must compute exactly what the
      kernel does, in the same order (bit-identical results); None when it cannot for these inputs.
      The plan fuses chains of such steps.
    - ``fresh_output``: the kernel's result (and that of the callable its ``prepare`` returns, and
      of its ``single_output``) is always a new array, or a view of one, that nothing else holds, so
      the plan may overwrite it (and fuse the steps after it in place).
    - ``single_output``: a kernel used instead when only the first output is read (MaxPool skips
      computing Indices); it takes the same inputs and attributes.
    - ``num_outputs_param``: the node's output count is passed under this keyword when the node does
      not set it (Split before opset 18 splits into as many parts as it has outputs); it is no ONNX
      attribute.
    """

    domain: str
    op_type: str
    since: int
    kernel: Callable[..., Any]
    needs_ctx: bool = False
    attrs: frozenset | None = None
    shape: Callable | None = None
    body: Callable | None = None
    deterministic: bool = True
    prepare: Callable | None = None
    pointwise: Callable | None = None
    fresh_output: bool = False
    single_output: Callable | None = None
    num_outputs_param: str | None = None


@dataclass
class KernelContext:
    """What a subgraph-running kernel may use: the opsets in force and a way to run a subgraph."""

    opsets: dict
    run_subgraph: Callable[..., list]  # run_subgraph(graph, feeds: dict[str, array], scope: dict)
    scope: dict  # names visible from outer graphs -> arrays


_REGISTRY: dict[tuple[str, str], list[OpDef]] = {}
_generation = 0


def op_extra(op_type: str, domain: str, key: str) -> Callable | None:
    """The newest registered ``shape`` rule or ``body`` of ``domain::op_type`` (None when there is
    none). Kept for callers written before OpDef had typed fields: read ``lookup(...).shape`` /
    ``.body`` instead."""
    if key not in ("shape", "body"):
        raise KeyError(f"no per-op extra {key!r}: OpDef has typed fields for shape and body only")
    op = lookup(op_type, domain)
    if op is None:
        return None
    return op.shape if key == "shape" else op.body


def tvmlite_op(op_type: str, *, shape: Callable, body: Callable, since: int = 1):
    """Register one of tvmlite's own ops (domain ``tvmlite``): its NumPy kernel (the decorated
    function), its shape rule and its ONNX function body (see :class:`OpDef` for their signatures).
    Export writes one model-local function per distinct attribute set (ONNX function overloads), so
    onnxruntime runs any lowered model."""
    return kernel(op_type, domain=TVMLITE_DOMAIN, since=since, shape=shape, body=body)


def _accepted_attrs(fn: Callable, needs_ctx: bool) -> frozenset | None:
    sig = inspect.signature(fn)
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            names.append(p.name.rstrip("_"))  # `from_` stands for the attribute `from`
    return frozenset(names)


def kernel(op_type: str, domain: str = "", since: int = 1, needs_ctx: bool = False, *,
           shape: Callable | None = None, body: Callable | None = None,
           deterministic: bool | None = None, prepare: Callable | None = None,
           pointwise: Callable | None = None, fresh_output: bool = False,
           single_output: Callable | None = None, num_outputs_param: str | None = None):
    """Register ``fn`` as the NumPy kernel of ``domain::op_type`` from opset ``since`` on, with the
    fields of :class:`OpDef` (``deterministic`` defaults to ``op_type not in NONDETERMINISTIC`` for
    ONNX ops, True otherwise). Raises :class:`RegistrationError` for an incomplete or inconsistent
    registration."""

    def wrap(fn):
        d = canonical_domain(domain)
        where = f"{d + '::' if d else ''}{op_type}-{since}"
        if not callable(fn):
            raise RegistrationError(f"{where}: the kernel is not callable")
        for name, hook in (("shape", shape), ("body", body), ("prepare", prepare),
                           ("pointwise", pointwise), ("single_output", single_output)):
            if hook is not None and not callable(hook):
                raise RegistrationError(f"{where}: {name} must be callable, got {type(hook).__name__}")
        if d == TVMLITE_DOMAIN and (shape is None or body is None):
            missing = " and ".join(n for n, h in (("a shape rule", shape), ("an ONNX function body", body))
                                   if h is None)
            raise RegistrationError(f"{where}: a tvmlite-domain op needs {missing} (shape inference "
                                    "and export cannot do without); register it with tvmlite_op")
        attrs = _accepted_attrs(fn, needs_ctx)
        if num_outputs_param is not None:
            params = inspect.signature(fn).parameters
            p = params.get(num_outputs_param)
            if p is None or p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise RegistrationError(f"{where}: num_outputs_param {num_outputs_param!r} is not a "
                                        "keyword-only parameter of the kernel")
            if attrs is not None:  # a backend keyword, not an attribute a node may carry
                attrs = attrs - {num_outputs_param.rstrip("_")}
        det = (d != "" or op_type not in NONDETERMINISTIC) if deterministic is None else deterministic
        entry = OpDef(d, op_type, since, fn, needs_ctx, attrs, shape=shape, body=body,
                      deterministic=bool(det), prepare=prepare, pointwise=pointwise,
                      fresh_output=bool(fresh_output), single_output=single_output,
                      num_outputs_param=num_outputs_param)
        global _generation
        versions = _REGISTRY.setdefault((d, op_type), [])
        versions[:] = [v for v in versions if v.since != since] + [entry]
        versions.sort(key=lambda v: v.since)
        _generation += 1
        return fn

    return wrap


def is_deterministic(op_type: str, domain: str = "", opset: int | None = None) -> bool:
    """Whether a node of ``domain::op_type`` gives the same outputs on every run: its OpDef's field
    where tvmlite has a kernel, else ``op_type not in NONDETERMINISTIC``."""
    op = lookup(op_type, domain, opset)
    if op is not None:
        return op.deterministic
    return canonical_domain(domain) != "" or op_type not in NONDETERMINISTIC


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


def rule_outputs(op_type: str, domain: str, ins: list, attrs: dict) -> list[tuple] | None:
    """The outputs' (dtype, shape) by the op's registered shape rule from its inputs' (dtype, shape)
    (None for an absent optional input); None where the op has no rule or the rule cannot decide.
    What onnx cannot infer for ops outside its domain: fold-constants sizes values by it,
    export/shapes types the graph by it."""
    op = lookup(op_type, domain)
    if op is None or op.shape is None:
        return None
    try:
        return list(op.shape(ins, **attrs))
    except Exception:  # noqa: BLE001 - a rule that cannot decide leaves the type unknown
        return None


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
