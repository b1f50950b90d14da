"""Pattern -> check -> rewrite: a rewrite rule in a few lines.

A pattern is a small tree of ops ending at one node (the root), written the way the data flows::

    pattern = Op("Add", Op("MatMul", "a", Const("b"), name="mm"), "c", commute=True, name="add")

- ``Op(op_types, *inputs)``: a node of that op (a str or a tuple of them; ONNX domain unless
  ``domain=``). Its inputs must match positionally, as many as the node has (trailing optional
  inputs left out do not count); a final ``...`` accepts any further inputs. ``commute=True`` also
  tries the two inputs of a binary op the other way round.
- ``"x"``: any value, captured as ``m["x"]``; the same name twice must be the same value.
- ``Const("b")``: a constant value (initializer or Constant), captured; its array is ``m.const("b")``.
- ``None``: anything, not captured.

Every inner Op's output must be read by the pattern alone (a fused intermediate would otherwise be
computed twice); a match that breaks this is refused with "the output of X has other readers".
``shared=True`` lifts this for an inner node the rewrite only reads around (it stays for the others).

The check gets the graph and the match and returns None to accept or the reason it refuses; that
reason becomes the pass's skip reason for the root node (False: not a match after all, no reason). The rewrite gets a Builder placed before
the root and the match, makes the new nodes and returns ``{root output: new value}`` (a value it made
takes over the old name; any other value replaces it in every reader). Pattern nodes left unread
afterwards are removed. A rule is applied with ``apply_rules(model, rules, result)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.passes.base import PassResult
from tvmlite.passes.cleanup import remove_dead_producers

_ONNX = ("", "ai.onnx")


@dataclass(frozen=True)
class Const:
    """A pattern leaf matching a constant value."""
    name: str


class Op:
    """A pattern node (see the module docstring)."""

    def __init__(self, op_types: str | tuple, *inputs: Any, name: str | None = None, domain: str | None = None,
                 commute: bool = False, shared: bool = False):
        self.op_types = (op_types,) if isinstance(op_types, str) else tuple(op_types)
        self.inputs = list(inputs)
        self.rest = bool(inputs) and inputs[-1] is Ellipsis
        if self.rest:
            self.inputs.pop()
        self.name = name or self.op_types[0].lower()
        self.domain = domain
        self.commute = commute
        self.shared = shared  # an inner node that may have other readers (the rewrite keeps it)
        if commute and len(self.inputs) != 2:
            raise ValueError(f"pattern {self.name!r}: commute needs exactly two inputs")

    def accepts(self, node: Node) -> bool:
        domains = _ONNX if self.domain in (None, "", "ai.onnx") else (self.domain,)
        return node.domain in domains and node.op_type in self.op_types


@dataclass
class Match:
    """What a pattern matched: ``nodes[pattern name]``, captured values by name, their constants."""
    root: Node
    nodes: dict[str, Node] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def const(self, key: str) -> np.ndarray:
        return self.consts[key]

    def node(self, key: str) -> Node:
        return self.nodes[key]


def _used_inputs(node: Node) -> list[str]:
    ins = list(node.inputs)
    while ins and not ins[-1]:
        ins.pop()
    return ins


def _bind(g: Graph, pat: Any, name: str, m: Match) -> Match | None:
    if pat is None:
        return m
    if isinstance(pat, str):
        if pat in m.values:
            return m if m.values[pat] == name else None
        m = _fork(m)
        m.values[pat] = name
        return m
    if isinstance(pat, Const):
        c = g.const_value(name)
        if c is None or (pat.name in m.values and m.values[pat.name] != name):
            return None
        m = _fork(m)
        m.values[pat.name], m.consts[pat.name] = name, c
        return m
    p = g.producer(name)
    return None if p is None else _match_node(g, pat, p, m)


def _match_node(g: Graph, pat: Op, node: Node, m: Match) -> Match | None:
    if not pat.accepts(node):
        return None
    ins = _used_inputs(node)
    if len(ins) < len(pat.inputs) or (len(ins) > len(pat.inputs) and not pat.rest):
        return None
    orders = [pat.inputs, pat.inputs[::-1]] if pat.commute else [pat.inputs]
    for order in orders:
        cur = _fork(m)
        cur.nodes[pat.name] = node
        for sub, value in zip(order, ins):
            cur = _bind(g, sub, value, cur)
            if cur is None:
                break
        if cur is not None:
            return cur
    return None


def _fork(m: Match) -> Match:
    return Match(m.root, dict(m.nodes), dict(m.values), dict(m.consts))


def match(g: Graph, pattern: Op, node: Node) -> Match | None:
    """The match of ``pattern`` rooted at ``node``, or None."""
    return _match_node(g, pattern, node, Match(node))


def _ops(pattern: Op) -> dict[str, Op]:
    out = {pattern.name: pattern}
    for sub in pattern.inputs:
        if isinstance(sub, Op):
            out.update(_ops(sub))
    return out


def shared_intermediate(g: Graph, pattern: Op, m: Match) -> str | None:
    """Why the match cannot be rewritten because an inner node's output has readers outside it."""
    ops = _ops(pattern)
    for key, node in m.nodes.items():
        if key == pattern.name or ops[key].shared:
            continue
        readers_inside = sum(n.inputs.count(o) for n in m.nodes.values() for o in node.outputs if o)
        for o in node.outputs:
            if o and (o in g.outputs or g.num_uses(o) > readers_inside):
                return f"the output of {node.label!r} has other readers"
    return None


Check = Callable[[Graph, Match], "str | bool | None"]
Rewrite = Callable[[Builder, Match], "dict | None"]


@dataclass
class Rule:
    """A named pattern with its check and rewrite."""
    name: str
    pattern: Op
    rewrite: Rewrite
    check: Check | None = None

    def try_node(self, b: Builder, node: Node) -> str | bool:
        """True when rewritten, False when the pattern does not match, else the refusal reason."""
        g = node.graph
        m = match(g, self.pattern, node)
        if m is None:
            return False
        why = shared_intermediate(g, self.pattern, m) or (self.check(g, m) if self.check else None)
        if why is False:
            return False
        if why:
            return why
        inner = [n for k, n in m.nodes.items() if k != self.pattern.name]
        # what the inner nodes read (a rewrite may swap their weights) and the root's initializers;
        # the root's other producers (Constant nodes) are left to dce, as the passes always did
        before = [i for n in inner for i in n.inputs if i] + [
            i for i in node.inputs if i and g.values.get(i) is not None and g.values[i].is_initializer]
        here = b.at(before=node)
        outputs = self.rewrite(here, m)
        if outputs is not None and node.graph is not None:
            here.replace(node, outputs)
        # inner nodes, and constants nothing reads any more, go with the rewrite
        remove_dead_producers(g, [o for n in inner if n.graph is not None for o in n.outputs if o] + before)
        here.settle_names()
        return True


def apply_rules(model: Model, rules: list[Rule], result: PassResult, *, graph: Graph | None = None) -> int:
    """Try each rule at each node (in topological order, the first rule that matches wins); record
    rewrites and refusals in ``result``. Returns the number of rewrites."""
    g = graph or model.graph
    b = Builder(model if graph is None else g)
    done = 0
    for node in g.toposort():
        if node.graph is None:
            continue
        refusal = None
        for rule in rules:
            label = node.label
            out = rule.try_node(b, node)
            if out is True:
                result.rewrote(label)
                done += 1
                refusal = None
                break
            if out and refusal is None:
                refusal = out
        if refusal:
            result.skip(node, refusal)
    return done
