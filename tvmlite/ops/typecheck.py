"""Element types the graph declares against the types its nodes take, checked before a build.

onnxruntime refuses, when it loads a model, a node whose input types break its op's schema (an input
declared int64 feeding a Softmax; a double and a float bound to Mul's one type parameter T), and so
does onnx.checker's full check. The NumPy kernels would compute something from such a model (NumPy
promotes double * float to double) while the TVM backend builds its kernels and buffers for the
types the graph declares, so the same file ran on one backend and was refused at run time by the
other ("host call made 'y0' as float64, the TVM kernels read it as float32"). Both backends now
refuse it when they compile, with one line naming the graph input whose declared type starts the
conflict and the node that needs another type.

The walk is conservative: a value's type is known only where the model states it (graph and body
inputs, initializers, Cast's ``to``) or a schema derives it (an output of type parameter T bound
by the inputs, a fixed output type, If/Loop/Scan outputs from their bodies); a node whose input
type is unknown, an op outside the ONNX domain and a schema onnx does not have are not checked.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx
import onnx.defs
from onnx import TensorProto

from tvmlite.errors import ShapeError
from tvmlite.ir.graph import Graph, Node
from tvmlite.ops.registry import canonical_domain

#: value name -> (ONNX elem type, the graph input whose declared type it carries, or None)
Types = dict


def check_declared_types(graph: Graph, opsets: dict) -> None:
    """ShapeError with one line when a node's input types break its op's schema (see the module
    docstring); nothing when every known type fits."""
    _walk(graph, opsets, {}, "")


#: the tensor element types onnx names (UNDEFINED left out)
_ELEM_NAMES = {v: k.lower() for k, v in TensorProto.DataType.items() if v != TensorProto.UNDEFINED}


def _type_str(elem: int) -> str:
    return _ELEM_NAMES.get(elem, str(elem))


def _known(graph: Graph, env: Types, name: str):
    if not name:
        return None
    if name in env:
        return env[name]
    if graph.has_value(name):
        v = graph.value(name)
        if v.is_initializer and v.elem_type:
            return v.elem_type, None
    return None


def _walk(graph: Graph, opsets: dict, outer: Types, where: str) -> list:
    """Check ``graph``'s nodes in order; returns the types of its outputs (None where unknown)."""
    env = dict(outer)
    for name in graph.inputs:
        if name not in graph.initializers:
            e = graph.value(name).elem_type
            env[name] = (e, name) if e else None
    for node in graph.toposort():
        outs = _check_node(graph, node, opsets, env, where)
        for name, t in zip(node.outputs, outs):
            if name:
                env[name] = t
    return [_known(graph, env, o) for o in graph.outputs]


@dataclass(frozen=True)
class _Sig:
    """What the check reads of an op's schema (read once per op and opset: onnx builds new Python
    objects on every access, 0.2 ms a node)."""
    inputs: tuple  # (formal name, type str, homogeneous) per formal input
    variadic: bool
    outputs: tuple  # type str per formal output
    allowed: dict  # type parameter -> allowed type strs


def _schema(node: Node, opsets: dict) -> _Sig | None:
    domain = canonical_domain(node.domain)
    if domain != "":
        return None
    version = opsets.get("", opsets.get("ai.onnx"))
    try:
        return _sig(node.op_type, int(version)) if version is not None else None
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=1024)
def _sig(op_type: str, version: int) -> _Sig | None:
    try:
        schema = onnx.defs.get_schema(op_type, version, "")
    except onnx.defs.SchemaError:
        return None
    formals = list(schema.inputs)
    variadic = bool(formals) and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
    ins = tuple((f.name, f.type_str, not variadic or f is not formals[-1] or f.is_homogeneous) for f in formals)
    return _Sig(ins, variadic, tuple(f.type_str for f in schema.outputs),
                {c.type_param_str: tuple(c.allowed_type_strs) for c in schema.type_constraints})


def _check_node(graph: Graph, node: Node, opsets: dict, env: Types, where: str) -> list:
    here = f"{where}node {node.label!r} ({node.op_type})"
    bodies = _body_outputs(graph, node, opsets, env, here)
    sig = _schema(node, opsets)
    if sig is None:
        return bodies or [None] * len(node.outputs)
    bound: dict[str, tuple] = {}  # type parameter -> (elem, origin, input index, value name)
    for i, name in enumerate(node.inputs):
        t = _known(graph, env, name)
        if t is None or not sig.inputs or i >= len(sig.inputs) and not sig.variadic:
            continue
        formal, type_str, homogeneous = sig.inputs[min(i, len(sig.inputs) - 1)]
        types = sig.allowed.get(type_str, (type_str,))
        if not all(s.startswith("tensor(") for s in types):
            continue  # sequences, optionals, maps: not followed
        elem, origin = t
        if elem not in _ELEM_NAMES:
            continue  # a number onnx has no type for: import refuses it where it is declared
        if f"tensor({_type_str(elem)})" not in types:
            short = ", ".join(s[7:-1] for s in types)
            raise ShapeError(f"{_whose(name, elem, origin)}, but {here} takes {short} at input {i} ({formal})")
        if type_str in sig.allowed and homogeneous:
            first = bound.setdefault(type_str, (elem, origin, i, name))
            if first[0] != elem:
                a, b = (first, (elem, origin, i, name)) if first[1] or not origin else ((elem, origin, i, name), first)
                raise ShapeError(f"{_whose(a[3], a[0], a[1])}, but {here} takes one type for inputs {first[2]} "
                                 f"and {i} ({type_str}) and input {b[2]} {b[3]!r} is {_type_str(b[0])}")
    if bodies:
        return bodies
    return [_output_type(node, sig, bound, j) for j in range(len(node.outputs))]


def _whose(name: str, elem: int, origin) -> str:
    if origin == name:
        return f"input {name!r} is declared {_type_str(elem)}"
    if origin:
        return f"{name!r} is {_type_str(elem)} (from input {origin!r}, declared {_type_str(elem)})"
    return f"{name!r} is {_type_str(elem)}"


def _output_type(node: Node, sig: _Sig, bound: dict, j: int):
    if node.op_type == "Cast":  # a 'to' that names no type is the Cast kernel's to refuse
        to = node.attrs.get("to")
        return (to, None) if isinstance(to, int) and to in _ELEM_NAMES else None
    if not sig.outputs:
        return None
    type_str = sig.outputs[min(j, len(sig.outputs) - 1)]
    if type_str in bound:
        elem, origin = bound[type_str][:2]
        return elem, origin
    types = sig.allowed.get(type_str, (type_str,))
    if len(types) == 1 and types[0].startswith("tensor("):
        elem = getattr(TensorProto, types[0][7:-1].upper(), None)
        return (int(elem), None) if elem is not None else None
    return None


def _body_outputs(graph: Graph, node: Node, opsets: dict, env: Types, here: str) -> list | None:
    """Walk If/Loop/Scan bodies (outer values visible); the node's output types from them."""
    if not node.subgraphs:
        return None
    results = {}
    for key, sub in node.attrs.items():
        if isinstance(sub, Graph):
            results[key] = _walk(sub, opsets, env, f"{here}, {key}: ")
    if node.op_type == "If" and "then_branch" in results:
        return list(results["then_branch"])
    if node.op_type == "Loop" and "body" in results:
        return list(results["body"][1:])
    if node.op_type == "Scan" and "body" in results:
        return list(results["body"])
    return None
