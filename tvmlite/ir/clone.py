"""A native copy of a Graph: new Values, Nodes and subgraphs, the same arrays.

Model.copy used to export to ONNX and import back: every copy serialized each initializer, so the
optimizer (a copy per pass and per undo trial) needed 12 GB of RAM for a 2.07 GiB model. Here the
structure is rebuilt object by object and the big parts are shared copy-on-write:

- initializer arrays (and tensor attributes) are the same ndarray in both copies, made read-only, so
  an in-place write fails loudly instead of changing the other copy; a pass that changes a weight
  assigns a new array through ``Value.const``;
- an initializer not decoded yet keeps sharing its TensorProto, which nothing writes to (export
  copies it into the file's proto).

Everything a pass may change in place is copied: names, lists, attribute dicts, subgraphs (If, Loop,
Scan bodies, recursively), TypeProtos and the networkx links. The copy keeps each node's ``order``, so
both copies sort their nodes the same way.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Any

import numpy as np
from google.protobuf.message import Message

from tvmlite.ir.graph import Graph, Node
from tvmlite.ir.value import Value


def share(array: np.ndarray) -> np.ndarray:
    """``array``, made read-only: from now on two models may hold it."""
    if array.flags.writeable:
        array.flags.writeable = False
    return array


def copy_proto(msg: Message) -> Message:
    c = type(msg)()
    c.CopyFrom(msg)
    return c


def clone_graph(g: Graph, parent: Graph | None = None) -> Graph:
    """A copy of ``g`` (and its subgraphs) whose mutation does not touch ``g``; ``parent`` is the graph
    the copy's outer-scope names resolve in."""
    with paused_gc():
        return _clone_graph(g, parent)


@contextlib.contextmanager
def paused_gc():
    """No cyclic garbage collection while a copy allocates its objects: they are all alive, and the
    collections the allocations trigger made a 100k-node copy ~1.7x slower (measured 10.4 vs 6.2 s
    on a loaded machine)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _clone_graph(g: Graph, parent: Graph | None) -> Graph:
    c = Graph(g.name, parent)
    c.doc_string = g.doc_string
    c.metadata = list(g.metadata)
    values = {name: _clone_value(v) for name, v in g.values.items()}
    c.values = values
    c.inputs, c.outputs = list(g.inputs), list(g.outputs)
    c.initializers, c.value_info_order = list(g.initializers), list(g.value_info_order)
    if hasattr(g, "_output_protos"):  # outer-scope outputs of a subgraph, as read
        c._output_protos = {k: copy_proto(vi) for k, vi in g._output_protos.items()}
    nodes = {node: _clone_node(node, c) for node in g.nx.nodes}  # networkx's insertion order kept
    for name, v in g.values.items():
        if v.producer is not None:
            values[name].producer = nodes.get(v.producer)
    c.nx.add_nodes_from(nodes.values())
    c.nx.add_edges_from((nodes[a], nodes[b]) for a, b in g.nx.edges)
    c._consumers = {name: {nodes[n]: k for n, k in uses.items()} for name, uses in g._consumers.items()}
    if g._topo is not None and g._topo[0] == g._version:  # the order is known: no need to sort again
        c._topo = (c._version, [nodes[n] for n in g._topo[1]])
    return c


def _clone_value(v: Value) -> Value:
    c = Value(v.name, None if v.type is None else copy_proto(v.type), doc_string=v.doc_string,
              metadata=v.metadata)
    c._const = share(v._const) if isinstance(v._const, np.ndarray) else v._const
    c._proto = v._proto
    c.sparse = v.sparse
    c._annotations = dict(v._annotations)
    return c


def _clone_node(node: Node, graph: Graph) -> Node:
    # every field as it is (names, order, strings, tuples: immutable), then new containers for the
    # mutable ones; not Node.__init__, which a 100k-node copy spent a third of its time in
    state = dict(node.__dict__)
    attrs = {k: _clone_attr(a, graph) for k, a in node.attrs.items()} if node.attrs else {}
    state["attrs"] = attrs
    # export reuses an AttributeProto while the attribute is the value it was read as (same object, or
    # equal): point the record at the copy's value where it pointed at the original's
    state["attr_protos"] = {k: (attrs[k] if k in attrs and imported is node.attrs[k] else imported, proto)
                            for k, (imported, proto) in node.attr_protos.items()} if node.attr_protos else {}
    state["metadata"] = list(node.metadata)
    state["graph"] = graph
    c = Node.__new__(Node)
    c.__dict__ = state
    return c


def _clone_attr(a: Any, graph: Graph) -> Any:
    if isinstance(a, Graph):
        return _clone_graph(a, graph)
    if isinstance(a, np.ndarray):
        return share(a)
    if isinstance(a, list):
        return [_clone_attr(x, graph) for x in a]
    if isinstance(a, tuple):
        return tuple(_clone_attr(x, graph) for x in a)
    if isinstance(a, Message):  # TypeProto attributes; GraphProtos when read without a loader
        return copy_proto(a)
    return a  # int, float, str, bytes, None: immutable
