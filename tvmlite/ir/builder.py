"""Making nodes: an insertion point and a name authority, so a pass says what it adds, not how.

    b = Builder(model, before=conv)                  # new nodes sort just before `conv`
    w = b.const(weights, "conv1_W")                  # an initializer with a fresh name
    y = b.op.Conv(x, w, strides=[2, 2], name_hint="conv1")
    q, s, z = b.ms.DynamicQuantizeLinear(x, outputs=3)          # domain com.microsoft, 3 outputs
    t = b.op("Im2Col", x, domain="tvmlite", kernel_shape=[3, 3])  # any domain by name
    b.replace(conv, {conv.outputs[0]: y})            # readers of the old output now read y's node

Every op call returns the new Value (a tuple of Values for several outputs) and accepts Values or
names as inputs (None or "" for an optional input left out). ``name_hint`` names the node; its
outputs are named after the node (``hint``, or ``hint_0``, ``hint_1``... with several).

Names are reserved by a NameAuthority that knows every value and node name of the whole model,
subgraphs (If/Loop/Scan bodies) included, so a name made here never shadows or repeats one used in a
body. ``Graph.fresh_name`` looks only at the graph's own scope and its parents, and node names not at
all, which is why passes used to loop ``while name in taken``. The authority is built on its first
use and shared by the builders derived with ``at()``: make one Builder per pass run and move its
insertion point, not one per node (building it walks the model once).

Insertion order: nodes made before ``node`` get an order just below node's (after it: just above)
and sort, among themselves, in the order they were made; the toposort keeps that wherever the data
flow allows. Without an anchor, nodes go to the end.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from tvmlite.errors import TvmliteError
from tvmlite.ir.graph import Graph, Model, Node, Value

#: the short namespaces: b.ms.X is op X of com.microsoft, b.tvmlite.X of tvmlite's own domain
MS_DOMAIN = "com.microsoft"
TVMLITE_DOMAIN = "tvmlite"


def _root(g: Graph) -> Graph:
    while g.parent is not None:
        g = g.parent
    return g


def _all_graphs(g: Graph) -> Iterable[Graph]:
    stack = [g]
    while stack:
        cur = stack.pop()
        yield cur
        for node in cur.nx.nodes:
            stack.extend(node.subgraphs)


class NameAuthority:
    """Hands out value and node names that appear nowhere in the model.

    Values and nodes are separate namespaces (as in ONNX). Each base name keeps a counter, so asking
    for ``conv_W`` a thousand times costs a thousand steps, not a quadratic scan."""

    def __init__(self, graph: Graph):
        self._graph = graph
        self._values: set[str] | None = None
        self._nodes: set[str] = set()
        self._next: dict[tuple[str, str], int] = {}

    def _scan(self) -> None:
        values, nodes = set(), set()
        for g in _all_graphs(_root(self._graph)):
            values.update(g.values)
            values.update(g.inputs)
            values.update(g.outputs)
            for node in g.nx.nodes:
                if node.name:
                    nodes.add(node.name)
                values.update(n for n in node.outputs if n)
        self._values, self._nodes = values, nodes

    def _taken(self, kind: str, name: str, graph: Graph) -> bool:
        if kind == "node":
            return name in self._nodes
        # values added since the scan (by code that bypasses the builder) are still seen in scope
        return name in self._values or graph.has_value(name)

    def _reserve(self, kind: str, base: str, graph: Graph) -> str:
        if self._values is None:
            self._scan()
        base = base or ("n" if kind == "node" else "v")
        name = base
        if self._taken(kind, name, graph):
            i = self._next.get((kind, base), 1)
            name = f"{base}_{i}"
            while self._taken(kind, name, graph):  # a counter: each candidate is tried once
                i += 1
                name = f"{base}_{i}"
            self._next[(kind, base)] = i + 1
        (self._nodes if kind == "node" else self._values).add(name)
        return name

    def value(self, base: str, graph: Graph | None = None) -> str:
        """A fresh value name starting with ``base``, reserved."""
        return self._reserve("value", base, graph or self._graph)

    def node(self, base: str, graph: Graph | None = None) -> str:
        """A fresh node name starting with ``base``, reserved."""
        return self._reserve("node", base, graph or self._graph)

    def claim(self, name: str, *, node: bool = False) -> None:
        """Record a name made elsewhere (e.g. an existing name reused on purpose)."""
        if self._values is None:
            self._scan()
        (self._nodes if node else self._values).add(name)


class _Ops:
    """``b.op.Conv(...)`` / ``b.op("Conv", ...)`` for one domain."""

    def __init__(self, builder: "Builder", domain: str):
        self._b, self._domain = builder, domain

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return lambda *inputs, **kw: self._b.make(op_type, *inputs, domain=kw.pop("domain", self._domain), **kw)

    def __call__(self, op_type: str, *inputs, **kw):
        return self._b.make(op_type, *inputs, domain=kw.pop("domain", self._domain), **kw)


class Builder:
    """An insertion point (before or after a node, or the end of a graph) and a name authority."""

    def __init__(self, target: Graph | Model, *, before: Node | None = None, after: Node | None = None,
                 names: NameAuthority | None = None):
        if before is not None and after is not None:
            raise TvmliteError("a Builder inserts before a node or after one, not both")
        self.model = target if isinstance(target, Model) else None
        anchor = before or after
        if anchor is not None and anchor.graph is None:
            raise TvmliteError(f"cannot insert next to {anchor.label!r}: it is not in a graph")
        self.graph: Graph = anchor.graph if anchor is not None else (
            target.graph if isinstance(target, Model) else target)
        # one order for all, ties broken by creation (networkx insertion index) in the toposort;
        # "after" stays below the next node's "before" (order + 1 - 0.5) so it comes right after
        self._order = None if anchor is None else anchor.order + (-0.5 if before is not None else 0.25)
        self.names = names or NameAuthority(self.graph)
        #: nodes made by this builder (and its derived ones), in creation order
        self.created: list[Node] = []
        self._heirs: list[tuple[Node, Node]] = []  # (new node, the removed node whose name it takes)
        self._made: dict[int, Node] = {}  # id -> node for the nodes made here (holding them keeps ids unique)
        self.op = _Ops(self, "")
        self.ms = _Ops(self, MS_DOMAIN)
        self.tvmlite = _Ops(self, TVMLITE_DOMAIN)

    def at(self, *, before: Node | None = None, after: Node | None = None) -> "Builder":
        """The same model and name authority, another insertion point; ``created`` is shared."""
        b = Builder(self.model or self.graph, before=before, after=after, names=self.names)
        b.created, b._heirs, b._made = self.created, self._heirs, self._made
        return b

    # ---------------------------------------------------------------------------------- values
    def const(self, array: Any, name_hint: str = "const") -> Value:
        """A new initializer of the insertion graph holding ``array`` (made contiguous)."""
        name = self.names.value(name_hint, self.graph)
        a = np.asarray(array)
        # np.ascontiguousarray would turn a 0-d array into shape (1,)
        return self.graph.add_initializer(name, a if a.flags.c_contiguous else a.copy(order="C"))

    def value_name(self, name_hint: str) -> str:
        """A reserved fresh value name, for code that must name a value before making it."""
        return self.names.value(name_hint, self.graph)

    # ----------------------------------------------------------------------------------- nodes
    def make(self, op_type: str, *inputs, domain: str = "", name_hint: str | None = None,
             outputs: int | list[str] = 1, attrs: dict | None = None, **attributes):
        """Add one node; returns its output Value, or a tuple of them when it has several.

        ``outputs`` is a count, or a list of name hints (one per output). ``attrs`` carries attributes
        whose names are not Python identifiers or collide with these keywords."""
        hint = name_hint or (outputs[0] if not isinstance(outputs, int) and outputs else op_type.lower())
        node_name = self.names.node(hint, self.graph)
        if isinstance(outputs, int):
            hints = [hint] if outputs == 1 else [f"{hint}_{i}" for i in range(outputs)]
        else:
            hints = list(outputs)
        outs = [self.names.value(h, self.graph) for h in hints]
        all_attrs = dict(attrs or {})
        all_attrs.update(attributes)
        ins = [_name(v) for v in inputs]
        node = self.graph.add_node(op_type, ins, outs, all_attrs, domain=domain, name=node_name,
                                   order=self._order)
        if domain and self.model is not None:
            self.model.opsets.setdefault(domain, 1)
        self.created.append(node)
        self._made[id(node)] = node
        vals = tuple(self.graph.values[o] for o in outs)
        return vals[0] if len(vals) == 1 else vals

    def make_node(self, op_type: str, inputs: Iterable, outputs: Iterable[str], attrs: dict | None = None, *,
                  domain: str = "", name_hint: str | None = None) -> Node:
        """Add a node whose output names are given (already reserved, or existing values left
        without a producer); for re-producing a value under its own name."""
        node_name = self.names.node(name_hint or op_type.lower(), self.graph)
        for o in outputs:
            if o:
                self.names.claim(o)
        node = self.graph.add_node(op_type, [_name(v) for v in inputs], list(outputs), dict(attrs or {}),
                                   domain=domain, name=node_name, order=self._order)
        if domain and self.model is not None:
            self.model.opsets.setdefault(domain, 1)
        self.created.append(node)
        self._made[id(node)] = node
        return node

    # ----------------------------------------------------------------------------- replacement
    def replace(self, node: Node, outputs: dict[str, Value | str], *, heir: Value | Node | None = None) -> None:
        """Swap ``node`` for what this builder made: ``outputs`` maps each output name of ``node``
        that is read to the value that takes its place. ``heir`` (a new node, or the value it makes)
        takes over ``node``'s name: reports, exclude lists and replays name layers by node.

        A value made by this builder takes over the old name (graph outputs and value_info stay put;
        the old value keeps its declared type). Any other value (a pass-through such as the node's
        own input) replaces the old one in every reader, as ``Graph.replace_all_uses`` does."""
        g = node.graph
        if g is None:
            raise TvmliteError(f"cannot replace {node.label!r}: it is not in a graph")
        unknown = [o for o in outputs if o not in node.outputs]
        if unknown:
            raise TvmliteError(f"replacement of {node.label!r} names {unknown[0]!r}, which it does not produce")
        take, passthrough = {}, {}
        for old, new in outputs.items():
            new = _name(new)
            p = g.producer(new)
            if p is not None and self._made.get(id(p)) is p and new not in g.outputs and g.num_uses(new) == sum(
                    c.inputs.count(new) for c in g.consumers(new)):
                take[old] = new
            else:
                passthrough[old] = new
        for old in node.outputs:
            if old and old not in outputs and g.num_uses(old):
                raise TvmliteError(f"replacement of {node.label!r} leaves its output {old!r} without a producer")
        if heir is not None:
            self.inherit_name(heir, node)
        for old, new in passthrough.items():
            g.replace_all_uses(old, new)
        if not take:
            g.remove_node(node)
        else:
            g.remove_node(node, remove_outputs=False)
            for old, new in take.items():
                self._take_over(g, old, new)
        self.settle_names()

    def inherit_name(self, new: Value | Node, old: Node) -> None:
        """``new`` takes ``old``'s name once ``old`` has left the graph (see ``settle_names``):
        reports, exclude lists and replays name layers by node, and two nodes may not share a name."""
        node = new if isinstance(new, Node) else new.producer
        if node is None:
            raise TvmliteError(f"{_name(new)!r} has no producer to take the name {old.name!r}")
        self._heirs.append((node, old))

    def settle_names(self) -> None:
        """Pass on the names of removed nodes to their heirs (the rest wait for their node to go)."""
        waiting = []
        for node, old in self._heirs:
            if old.graph is None and node.graph is not None:
                node.name = old.name
            else:
                waiting.append((node, old))
        self._heirs[:] = waiting

    def _take_over(self, g: Graph, old: str, new: str) -> Node:
        """The producer of ``new`` produces ``old`` (whose producer was removed) instead."""
        p = g.producer(new)
        g.produce_instead(p, new, old)
        return p


def _name(v: Value | str | None) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else v.name
