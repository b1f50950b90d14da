"""tvmlite's own ops -> model-local ONNX functions, so onnxruntime can run any lowered model.

Each node of domain ``tvmlite`` is exported as a call of a FunctionProto (domain ``tvmlite``, name =
op type) whose body uses standard ONNX ops only. Bodies may depend on the node's attributes and
input types (e.g. an Im2Col with a 3x3 kernel), so each distinct (op, attributes, input types) gets
its own function, told apart by ONNX's function ``overload`` field; the node keeps its attributes,
so a re-import sees the same tvmlite op.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tvmlite.errors import UnsupportedError
from tvmlite.ops.registry import TVMLITE_DOMAIN, lookup

TVMLITE_OPSET = 1


class FunctionBuilder:
    """Collects the body nodes of one function; names are made unique inside the body."""

    def __init__(self, inputs: list[str], outputs: list[str], opset: int, input_types: list):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.opset = opset
        self.input_types = list(input_types)
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def _fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def node(self, op_type: str, inputs: list[str], attrs: dict | None = None, *, output: str | None = None,
             n_outputs: int = 1, domain: str = ""):
        outs = [output] if output else [self._fresh(op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain, **(attrs or {})))
        return outs[0] if n_outputs == 1 else outs

    def const(self, value, dtype=None) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self._fresh("c")
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name)))
        return name


def _key(node, input_types) -> str:
    items = []
    for k in sorted(node.attrs):
        v = node.attrs[k]
        if isinstance(v, np.ndarray):
            v = (v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
        items.append((k, repr(v)))
    types = [None if t is None else (str(t[0]), tuple(t[1]) if t[1] is not None else None) for t in input_types]
    return hashlib.sha1(repr((node.op_type, items, types)).encode()).hexdigest()[:12]


def _input_types(graph, node) -> list:
    out = []
    for name in node.inputs:
        if not name or not graph.has_value(name):
            out.append(None)
            continue
        v = graph.value(name)
        out.append(None if v.dtype is None else (v.dtype, v.shape))
    return out


def untyped_tvmlite_inputs(model) -> list[str]:
    """Inputs of tvmlite nodes (top-level graph) whose type is unknown."""
    g = model.graph
    out = []
    for node in g.nx.nodes:
        if node.domain == TVMLITE_DOMAIN:
            out += [n for n in node.inputs if n and n in g.values and g.values[n].dtype is None]
    return out


def tvmlite_functions(model) -> tuple[list[onnx.FunctionProto], dict]:
    """Function protos for every tvmlite node (subgraphs included) and node -> overload name."""
    opset = model.opset
    funcs: dict[str, onnx.FunctionProto] = {}
    overloads: dict = {}

    def visit(graph):
        for node in graph.nx.nodes:
            for sg in node.subgraphs:
                visit(sg)
            if node.domain != TVMLITE_DOMAIN:
                continue
            op = lookup(node.op_type, TVMLITE_DOMAIN)
            body = op.body if op is not None else None
            if body is None:
                raise UnsupportedError(f"tvmlite op {node.op_type} has no ONNX function body: cannot export")
            types = _input_types(graph, node)
            key = _key(node, types)
            overloads[node] = key
            if key in funcs:
                continue
            ins = [f"in{i}" for i in range(len(node.inputs))]
            outs = [f"out{i}" for i in range(len(node.outputs))]
            fb = FunctionBuilder(ins, outs, opset, types)
            body(fb, **node.attrs)
            f = helper.make_function(TVMLITE_DOMAIN, node.op_type, ins, outs, fb.nodes,
                                     [helper.make_opsetid("", opset)], attributes=sorted(node.attrs))
            f.overload = key
            funcs[key] = f

    visit(model.graph)
    return list(funcs.values()), overloads
