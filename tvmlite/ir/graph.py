"""tvmlite's graph IR: Nodes and the Graph that holds them (Values in tvmlite.ir.value, the Model in
tvmlite.ir.model, its native copy in tvmlite.ir.clone).

One Graph holds its Values by name and its Nodes in a networkx.DiGraph (edge producer -> consumer), so
topological order, reachability and dead-code search come from networkx. Passes change a graph only
through the small mutation API below and in tvmlite.ir.edits (add_node, remove_node, set_input,
replace_all_uses, rename_value, replace_node_with), which keeps producers, consumers and edges
consistent.

What a pass does not touch is written back exactly as it was read: a Value keeps the TensorProto of
its initializer until a pass assigns a new array, and a Node keeps the AttributeProtos of the
attributes that were not changed. Types are ONNX TypeProtos, so sequence/optional types, symbolic dims
and denotations survive a round trip.

The IR is the bottom layer: it imports only tvmlite.errors, onnx, numpy and networkx.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np
import onnx
from onnx import helper

from tvmlite.errors import TvmliteError
from tvmlite.ir.attrs import constant_value
from tvmlite.ir.edits import GraphEdits
from tvmlite.ir.types import tensor_type, type_elem, type_shape  # noqa: F401 - re-exported
from tvmlite.ir.value import Value

_counter = itertools.count()


# ---------------------------------------------------------------------------------------------- node
class Node:
    """One op application. ``inputs``/``outputs`` are value names ('' = optional input left out)."""

    def __init__(self, op_type: str, inputs: Iterable[str], outputs: Iterable[str], attrs: dict | None = None,
                 *, domain: str = "", name: str = "", doc_string: str = "", metadata=None, overload: str = ""):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.doc_string = doc_string
        self.metadata = list(metadata or [])
        self.overload = overload
        self.graph: Graph | None = None
        self.order: float = float(next(_counter))
        #: attribute name -> (python value as imported, AttributeProto): reused by export when unchanged
        self.attr_protos: dict[str, tuple[Any, onnx.AttributeProto]] = {}
        #: outer-scope names read inside this node's subgraphs (If/Loop/Scan bodies)
        self.implicit_inputs: tuple[str, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def subgraphs(self) -> list[Graph]:
        out = []
        for v in self.attrs.values():
            if isinstance(v, Graph):
                out.append(v)
            elif isinstance(v, list) and v and isinstance(v[0], Graph):
                out.extend(v)
        return out

    def refresh_implicit_inputs(self) -> None:
        names: list[str] = []
        for g in self.subgraphs:
            for n in g.outer_references():
                if n not in names:
                    names.append(n)
        self.implicit_inputs = tuple(names)

    @property
    def label(self) -> str:
        """How the node is named in messages: its name, else op and first output."""
        return self.name or f"{self.op_type}->{self.outputs[0] if self.outputs else '?'}"

    def __repr__(self) -> str:
        return f"Node({self.op_type}, {self.label!r}, in={list(self.inputs)}, out={list(self.outputs)})"

    # Nodes are compared by identity: two applications of the same op are different nodes.
    __hash__ = object.__hash__


# --------------------------------------------------------------------------------------------- graph
class Graph(GraphEdits):
    """A (sub)graph: inputs, outputs, initializers, nodes. Subgraphs know their parent graph."""

    def __init__(self, name: str = "main", parent: Graph | None = None):
        self.name = name
        self.doc_string = ""
        self.metadata: list[tuple[str, str]] = []
        self.parent = parent
        self.values: dict[str, Value] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.initializers: list[str] = []  # in file order (some may also be graph inputs, IR < 4)
        self.value_info_order: list[str] = []  # value_info entries as read, written back first
        self.nx = nx.DiGraph()
        self._consumers: dict[str, dict[Node, int]] = {}
        self._version = 0  # bumped by every change of nodes or edges: toposort's cache key
        self._topo: tuple[int, list] | None = None

    # ----------------------------------------------------------------------------------- lookups
    @property
    def nodes(self) -> list[Node]:
        return self.toposort()

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.toposort())

    def toposort(self) -> list[Node]:
        """Nodes in a topological order that keeps the file's order wherever it is valid.

        Kahn's algorithm with a heap on ``Node.order`` over networkx's adjacency dicts, ties broken by
        insertion as networkx does (its lexicographical sort made a 100,000-node chain take 1.5 s per
        call), cached until the graph changes: inspect, shape inference and the plan each ask for it."""
        if self._topo is not None and self._topo[0] == self._version:
            return list(self._topo[1])
        succ, pred = self.nx._succ, self.nx._pred
        indegree = {n: len(p) for n, p in pred.items()}
        index = {n: i for i, n in enumerate(indegree)}
        heap = [(n.order, index[n], n) for n, d in indegree.items() if d == 0]
        heapq.heapify(heap)
        out = []
        while heap:
            node = heapq.heappop(heap)[2]
            out.append(node)
            for c in succ[node]:
                indegree[c] -= 1
                if not indegree[c]:
                    heapq.heappush(heap, (c.order, index[c], c))
        if len(out) != len(indegree):
            cycle = nx.find_cycle(self.nx.subgraph([n for n, d in indegree.items() if d]))
            raise TvmliteError(f"graph {self.name!r} has a cycle through node {cycle[0][0].label!r}")
        self._topo = (self._version, out)
        return list(out)

    def value(self, name: str) -> Value:
        g: Graph | None = self
        while g is not None:
            v = g.values.get(name)
            if v is not None:
                return v
            g = g.parent
        raise KeyError(name)

    def has_value(self, name: str) -> bool:
        try:
            self.value(name)
            return True
        except KeyError:
            return False

    def producer(self, name: str) -> Node | None:
        v = self.values.get(name)
        return v.producer if v is not None else None

    def consumers(self, name: str) -> list[Node]:
        return list(self._consumers.get(name, ()))

    def num_uses(self, name: str) -> int:
        n = sum(self._consumers.get(name, {}).values())
        return n + self.outputs.count(name)

    def const_value(self, name: str) -> np.ndarray | None:
        """The array of a constant value: an initializer that is not a graph input, or a Constant's output."""
        if not name:
            return None
        try:
            v = self.value(name)
        except KeyError:
            return None
        if v.is_initializer:
            owner = self._owner(name)
            return None if name in owner.inputs else v.const  # an input may override its initializer
        p = v.producer
        if p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx"):
            return constant_value(p.attrs)
        return None

    def _owner(self, name: str) -> Graph:
        g: Graph | None = self
        while g is not None and name not in g.values:
            g = g.parent
        return g or self

    def outer_references(self) -> list[str]:
        """Names read in this graph (or deeper) that are defined in none of its scopes."""
        local = set(self.values)
        seen: list[str] = []
        for node in self.nx.nodes:
            for n in itertools.chain(node.inputs, node.implicit_inputs):
                if n and n not in local and n not in seen:
                    seen.append(n)
        for n in self.outputs:
            if n not in local and n not in seen:
                seen.append(n)
        return seen

    def fresh_name(self, base: str) -> str:
        """A value/node name not used anywhere in this graph's scopes."""
        base = base or "v"
        if not self._name_taken(base):
            return base
        for i in itertools.count(1):
            cand = f"{base}_{i}"
            if not self._name_taken(cand):
                return cand
        raise AssertionError

    def fresh_node_name(self, base: str) -> str:
        """A name for a new node that no node of this graph and no value in its scopes has
        (fresh_name sees values only; onnxruntime refuses two nodes of one name)."""
        nodes = {n.name for n in self.nx.nodes}
        name = self.fresh_name(base)
        while name in nodes:
            name = self.fresh_name(f"{name}_")
        return name

    def _name_taken(self, name: str) -> bool:
        g: Graph | None = self
        while g is not None:
            if name in g.values:
                return True
            g = g.parent
        return False

    # ------------------------------------------------------------------------------ construction
    def add_value(self, name: str, type: onnx.TypeProto | None = None) -> Value:
        if name in self.values:
            raise TvmliteError(f"value {name!r} is defined twice in graph {self.name!r}")
        v = Value(name, type)
        self.values[name] = v
        return v

    def add_input(self, name: str, type: onnx.TypeProto | None = None) -> Value:
        v = self.values.get(name) or self.add_value(name, type)
        if type is not None:
            v.type = type
        self.inputs.append(name)
        return v

    def add_initializer(self, name: str, array: np.ndarray | None = None, *,
                        proto: onnx.TensorProto | None = None) -> Value:
        v = self.values.get(name)
        if v is None:
            v = self.add_value(name)
        elif v.producer is not None:
            raise TvmliteError(f"initializer {name!r} is also produced by node {v.producer.label!r}")
        if proto is not None:
            v._proto, v._const = proto, None
            v.type = helper.make_tensor_type_proto(proto.data_type, list(proto.dims))
        else:
            v.const = np.asarray(array)
        if name not in self.initializers:
            self.initializers.append(name)
        return v

    def add_constant(self, array: np.ndarray, base: str = "const") -> str:
        """Add ``array`` as a new initializer with a fresh name; returns the name."""
        name = self.fresh_name(base)
        self.add_initializer(name, np.asarray(array))
        return name

    def add_node(self, op_type: str, inputs: Iterable[str], outputs: Iterable[str] | int = 1,
                 attrs: dict | None = None, *, domain: str = "", name: str = "",
                 order: float | None = None, **node_kw) -> Node:
        """Add a node. ``outputs`` are names, or a count of fresh names derived from the node name."""
        if isinstance(outputs, int):
            base = name or op_type.lower()
            outputs = [self.fresh_name(f"{base}_out{i}" if outputs > 1 else f"{base}_out")
                       for i in range(outputs)]
            # fresh_name checks values only, so reserve each before making the next
        node = Node(op_type, inputs, outputs, attrs, domain=domain, name=name, **node_kw)
        if order is not None:
            node.order = order
        self._attach(node)
        return node

    def _attach(self, node: Node) -> None:
        for out in node.outputs:
            if not out:
                continue
            v = self.values.get(out)
            if v is None:
                v = self.add_value(out)
            elif v.producer is not None and v.producer is not node:
                raise TvmliteError(f"value {out!r} would be produced by both {v.producer.label!r} "
                                   f"and {node.label!r}")
            elif v.is_initializer:
                raise TvmliteError(f"node {node.label!r} writes to initializer {out!r}")
            v.producer = node
        node.graph = self
        self._version += 1
        if node.subgraphs:
            node.refresh_implicit_inputs()
        self.nx.add_node(node)
        self._link_inputs(node)
        for out in node.outputs:
            for c in self._consumers.get(out, ()):
                self.nx.add_edge(node, c)

    def _link_inputs(self, node: Node) -> None:
        self._version += 1
        for name in itertools.chain(node.inputs, node.implicit_inputs):
            if not name:
                continue
            uses = self._consumers.setdefault(name, {})
            uses[node] = uses.get(node, 0) + 1
            v = self.values.get(name)
            if v is not None and v.producer is not None:
                self.nx.add_edge(v.producer, node)

    def _unlink_inputs(self, node: Node) -> None:
        self._version += 1
        for name in itertools.chain(node.inputs, node.implicit_inputs):
            if not name:
                continue
            uses = self._consumers.get(name)
            if uses and node in uses:
                uses[node] -= 1
                if uses[node] <= 0:
                    del uses[node]
                if not uses:
                    del self._consumers[name]
        for pred in list(self.nx.predecessors(node)):
            self.nx.remove_edge(pred, node)

    # ---------------------------------------------------------------------------------- mutation
    def set_inputs(self, node: Node, inputs: Iterable[str]) -> None:
        """Point ``node`` at other input values."""
        self._unlink_inputs(node)
        node._inputs = tuple(inputs)
        self._link_inputs(node)

    def set_input(self, node: Node, index: int, name: str) -> None:
        ins = list(node.inputs)
        while len(ins) <= index:
            ins.append("")
        ins[index] = name
        self.set_inputs(node, ins)

    def subgraph_changed(self, node: Node) -> None:
        """Call after editing a subgraph of ``node``: its outer references may have changed."""
        self._unlink_inputs(node)
        node.refresh_implicit_inputs()
        self._link_inputs(node)

    def remove_node(self, node: Node, *, remove_outputs: bool = True) -> None:
        """Remove ``node``; its outputs must be unused (or be re-produced by the caller)."""
        if remove_outputs:
            for out in node.outputs:
                if out and self.num_uses(out):
                    users = [c.label for c in self.consumers(out)] or ["graph output"]
                    raise TvmliteError(f"cannot remove {node.label!r}: its output {out!r} is still used "
                                       f"by {users[0]}")
        self._unlink_inputs(node)
        self.nx.remove_node(node)
        self._version += 1
        for out in node.outputs:
            v = self.values.get(out)
            if v is None:
                continue
            v.producer = None
            if remove_outputs:
                del self.values[out]
        node.graph = None

    def check(self) -> None:
        """Raise TvmliteError if an input is undefined or the graph has a cycle."""
        self.toposort()
        for node in self.nx.nodes:
            for name in itertools.chain(node.inputs, node.implicit_inputs):
                if name and not self.has_value(name):
                    raise TvmliteError(f"node {node.label!r} reads undefined value {name!r}")
        for name in self.outputs:
            if not self.has_value(name):
                raise TvmliteError(f"graph output {name!r} is not defined")


# Model is defined on top of Graph; importing it here keeps `from tvmlite.ir.graph import Model`
# working. It comes last because tvmlite.ir.model (through tvmlite.ir.clone) imports this module, and
# tvmlite/ir/__init__.py imports this module first so that order always holds.
from tvmlite.ir.model import Model  # noqa: E402,F401
