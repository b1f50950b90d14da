"""Pass, PassResult, Pipeline, the pass registry and the CLI's pass-spec strings.

A pass is a class with a ``name``, typed ``Options`` (a dataclass) and ``run(model) -> PassResult``::

    @register_pass
    class RemoveNoopCasts(Pass):
        name = "remove-noop-casts"

        def run(self, model):
            result = PassResult(self.name)
            g = model.graph
            for node in g.toposort():
                if node.op_type == "Cast" and g.value(node.inputs[0]).elem_type == node.attrs["to"]:
                    g.replace_all_uses(node.outputs[0], node.inputs[0])
                    g.remove_node(node)
                    result.rewrote(node)
            return result

Spec strings name passes with optional options: ``"fold-constants,fold-bn,dce"`` or
``"lowrank(method=tucker,ratio=0.3),dce"``.
"""
from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tvmlite.errors import OptionError
from tvmlite.limits import blas_limit, small_pages
from tvmlite.ir.graph import Model, Node
from tvmlite.passes.counts import summarize


@dataclass
class PassResult:
    """What a pass did: counts, skipped nodes with reasons, and per-layer decisions."""

    pass_name: str
    changed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)
    decisions: list[dict] = field(default_factory=list)  # per-layer choices and why
    seconds: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)  # nodes/params/MACs, filled by Pipeline
    after: dict[str, Any] = field(default_factory=dict)
    #: what a layer-wise pass needs to redo this run without measuring or calibrating again (its
    #: own format; read back by its ``replay``/``layer_costs``): the pass object itself keeps nothing
    replay: Any = field(default=None, repr=False, compare=False)

    def rewrote(self, node: Node | str, **decision) -> None:
        self.changed = True
        self.rewritten.append(node if isinstance(node, str) else node.label)
        if decision:
            self.decisions.append({"node": self.rewritten[-1], **decision})

    def skip(self, node: Node | str, reason: str) -> None:
        self.skipped.append((node if isinstance(node, str) else node.label, reason))

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
        if n:
            self.changed = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(dataclasses.replace(self, replay=None))  # the token may hold big arrays
        d.pop("replay")
        return d


class Pass:
    """Base class. Subclasses set ``name``, optionally an ``Options`` dataclass, and ``run``.

    A pass is configured once, at construction: bad options raise OptionError there (``validate``),
    naming the pass and the option. ``run`` keeps nothing on the pass between runs: what a later
    step needs of a run (a layer-wise pass's replay token) travels in its PassResult. What the
    optimizer may ask beyond ``run`` (per-layer undo and costs, calibration data, clean-up) is a
    capability a pass declares (tvmlite.passes.capabilities), not part of this class."""

    name: ClassVar[str] = ""
    #: the pass needs static channel/spatial dims: `optimize --shape` then writes the given input
    #: shapes into the model before the passes run (otherwise --shape only feeds checks and reports,
    #: since declaring static shapes changes how onnxruntime optimizes the graph)
    needs_static_shapes: ClassVar[bool] = False

    @dataclass
    class Options:
        pass

    def __init__(self, **options):
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        hints = typing.get_type_hints(self.Options)
        values = {}
        for key, raw in options.items():
            k = key.replace("-", "_")
            if k not in fields:
                valid = ", ".join(fields) or "none"
                raise OptionError(f"pass {self.name!r} has no option {key!r} (options: {valid})")
            values[k] = _convert(raw, hints.get(k, str), self.name, key)
        self.options = self.Options(**values)
        self.validate()

    def validate(self) -> None:
        """Raise OptionError for option values the pass cannot run with (called at construction)."""

    def run(self, model: Model) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: Model) -> PassResult:
        t0 = time.perf_counter()
        # NumPy's linear algebra on one BLAS thread, its arrays on small pages: see limits
        with blas_limit(1), small_pages():
            result = self.run(model)
        result.seconds = time.perf_counter() - t0
        return result

    def option_values(self) -> dict[str, Any]:
        """The options as a shallow dict (calibration data and progress objects are not copied)."""
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}

    def __repr__(self) -> str:
        opts = dataclasses.asdict(self.options)
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else self.name


def _convert(raw: Any, typ: Any, pass_name: str, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        typ = args[0] if args else str
        origin = typing.get_origin(typ)
    try:
        if typ is bool:
            low = raw.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return low in ("1", "true", "yes", "on")
        if typ in (int, float, str):
            return typ(raw)
        if origin in (list, tuple):
            inner = typing.get_args(typ)[0] if typing.get_args(typ) else str
            return [inner(x) for x in raw.split("|") if x]
    except ValueError:
        raise OptionError(f"pass {pass_name!r}: option {key}={raw!r} is not a valid "
                          f"{getattr(typ, '__name__', typ)}") from None
    return raw


# ------------------------------------------------------------------------------------------ registry
PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    PASSES[cls.name] = cls
    return cls


def available_passes() -> dict[str, type[Pass]]:
    import tvmlite.passes  # noqa: F401  (importing the package registers the built-in passes)

    return dict(sorted(PASSES.items()))


#: a pipeline is a few dozen passes at most; a longer spec is a mistake (a 100k-character one ran
#: for hours), and options never nest deeper than a tuple in a tuple
MAX_SPEC_CHARS = 4096
MAX_SPEC_DEPTH = 4
MAX_SPEC_PASSES = 64


def _short(s: str, n: int = 60) -> str:
    return repr(s) if len(s) <= n else repr(s[:n]) + f"... ({len(s)} characters)"


def parse_spec(spec: str) -> list[Pass]:
    """``"a,b(x=1,y=2),c"`` -> [A(), B(x=1, y=2), C()]."""
    if len(spec) > MAX_SPEC_CHARS:
        raise OptionError(f"pass spec of {len(spec)} characters is longer than {MAX_SPEC_CHARS}: "
                          f"{_short(spec)}")
    registry = available_passes()
    out: list[Pass] = []
    items = _split_top(spec, ",")
    if len([i for i in items if i.strip()]) > MAX_SPEC_PASSES:
        raise OptionError(f"pass spec lists {len(items)} passes, more than {MAX_SPEC_PASSES}: {_short(spec)}")
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, opts = item, {}
        if "(" in item:
            if not item.endswith(")"):
                raise OptionError(f"pass spec {_short(item)}: missing ')'")
            name, _, body = item[:-1].partition("(")
            for kv in _split_top(body, ","):
                if not kv.strip():
                    continue
                k, eq, v = kv.partition("=")
                if not eq:
                    raise OptionError(f"pass spec {_short(item)}: option {_short(kv.strip())} is not key=value")
                opts[k.strip()] = v.strip()
        name = name.strip()
        if name not in registry:
            raise OptionError(f"unknown pass {_short(name)} (known: {', '.join(registry)})")
        out.append(registry[name](**opts))
    if not out:
        raise OptionError("empty pass spec")
    return out


def _split_top(s: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise OptionError(f"pass spec {_short(s)}: parentheses nested deeper than {MAX_SPEC_DEPTH}")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise OptionError(f"pass spec {_short(s)}: unbalanced ')'")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise OptionError(f"pass spec {_short(s)}: unbalanced '('")
    parts.append("".join(cur))
    return parts


# ------------------------------------------------------------------------------------------ pipeline
class Pipeline:
    """Runs passes in order on one model; each result carries nodes/params/MACs before and after."""

    def __init__(self, passes: list[Pass] | str):
        self.passes = parse_spec(passes) if isinstance(passes, str) else list(passes)

    def run(self, model: Model, *, input_shapes: dict | None = None) -> list[PassResult]:
        """Run every pass; ``input_shapes`` fixes symbolic input dims for the MAC counts."""
        results = []
        before = summarize(model, input_shapes)
        for p in self.passes:
            r = p(model)
            after = summarize(model, input_shapes) if r.changed else before
            r.before, r.after = before, after
            results.append(r)
            before = after
        return results

    def __repr__(self) -> str:
        return ",".join(repr(p) for p in self.passes)
