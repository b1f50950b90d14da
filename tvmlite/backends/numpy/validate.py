"""What onnxruntime's graph resolution refuses, refused by the NumPy backend too, before it runs.

Without these checks the plan ran models onnxruntime will not load and made up an answer: a 3x3
Conv over a 2x2 image gave a [1, 8, 0, 0] tensor, an If whose else branch had no output returned
the then branch's, a Loop body without its iteration/condition inputs returned an object array,
a graph without outputs ran and returned nothing. Each check names the node (and the subgraph) and
says what does not fit. Shapes are checked where they are known before running (declared or
inferred types, constants); the kernels check again at run time for the rest.
"""
from __future__ import annotations

from tvmlite.errors import ShapeError, TvmliteError
from tvmlite.ir.graph import Graph, type_elem
from tvmlite.ops.geometry import EmptyWindowError, WindowGeometry

_ONNX = ("", "ai.onnx")
_POOLS = ("MaxPool", "AveragePool", "LpPool")


def validate_graph(graph: Graph) -> None:
    """Raise a TvmliteError for the first thing onnxruntime would refuse in ``graph`` or its
    subgraphs (walked with a stack, not recursion: graphs may be deep)."""
    if not graph.outputs:
        raise TvmliteError(f"graph {graph.name!r} has no outputs (onnxruntime needs at least one)")
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.nx.nodes:
            if node.domain in _ONNX:
                check = _CHECKS.get(node.op_type)
                if check is not None:
                    check(g, node)
            stack.extend(node.subgraphs)


def _where(g: Graph, node) -> str:
    return f"node {node.label!r} ({node.op_type})" + ("" if g.parent is None else f" in subgraph {g.name!r}")


def _elem(g: Graph, name: str) -> int | None:
    try:
        v = g.value(name)
    except KeyError:
        return None
    return v.elem_type if v.is_initializer else type_elem(v.type)


def _check_if(g: Graph, node) -> None:
    then_b, else_b = node.attrs.get("then_branch"), node.attrs.get("else_branch")
    if not isinstance(then_b, Graph) or not isinstance(else_b, Graph):
        raise TvmliteError(f"{_where(g, node)}: needs graph attributes then_branch and else_branch")
    n = len(node.outputs)
    for label, b in (("then_branch", then_b), ("else_branch", else_b)):
        if len(b.outputs) != n:
            raise TvmliteError(f"{_where(g, node)}: {label} has {len(b.outputs)} outputs, the node "
                               f"has {n}")
    for i, (t, e) in enumerate(zip(then_b.outputs, else_b.outputs)):
        te, ee = _elem(then_b, t), _elem(else_b, e)
        if te is not None and ee is not None and te != ee:
            raise TvmliteError(f"{_where(g, node)}: output {i} is of type {te} in then_branch but "
                               f"{ee} in else_branch")


def _check_loop(g: Graph, node) -> None:
    body = node.attrs.get("body")
    if not isinstance(body, Graph):
        raise TvmliteError(f"{_where(g, node)}: needs a graph attribute body")
    n_carried = max(len(node.inputs) - 2, 0)
    if len(node.inputs) < 2:
        raise TvmliteError(f"{_where(g, node)}: needs inputs M and cond (each may be empty), "
                           f"has {len(node.inputs)}")
    if len(body.inputs) != 2 + n_carried:
        raise TvmliteError(f"{_where(g, node)}: body has {len(body.inputs)} inputs, needs "
                           f"{2 + n_carried} (iteration number, condition, {n_carried} carried)")
    n_scan = len(node.outputs) - n_carried
    if n_scan < 0:
        raise TvmliteError(f"{_where(g, node)}: {len(node.outputs)} outputs for {n_carried} loop-"
                           "carried values")
    if len(body.outputs) != 1 + n_carried + n_scan:
        raise TvmliteError(f"{_where(g, node)}: body has {len(body.outputs)} outputs, needs "
                           f"{1 + n_carried + n_scan} (condition, {n_carried} carried, {n_scan} scan)")
    for label, name, want in (("iteration number", body.inputs[0], 7), ("condition", body.inputs[1], 9),
                              ("condition output", body.outputs[0], 9)):
        have = _elem(body, name)
        if have is not None and have != want:
            raise TvmliteError(f"{_where(g, node)}: body {label} {name!r} has type {have}, needs "
                               f"{'int64' if want == 7 else 'bool'}")


def _check_scan(g: Graph, node) -> None:
    body = node.attrs.get("body")
    m = node.attrs.get("num_scan_inputs")
    if not isinstance(body, Graph) or not isinstance(m, int):
        raise TvmliteError(f"{_where(g, node)}: needs a graph attribute body and num_scan_inputs")
    if not 1 <= m <= len(node.inputs):
        raise TvmliteError(f"{_where(g, node)}: num_scan_inputs={m} with {len(node.inputs)} inputs")
    if len(body.inputs) != len(node.inputs):
        raise TvmliteError(f"{_where(g, node)}: body has {len(body.inputs)} inputs, the node "
                           f"{len(node.inputs)}")
    if len(body.outputs) != len(node.outputs):
        raise TvmliteError(f"{_where(g, node)}: body has {len(body.outputs)} outputs, the node "
                           f"{len(node.outputs)}")
    n_state = len(node.inputs) - m
    for key, count in (("scan_input_axes", m), ("scan_input_directions", m),
                       ("scan_output_axes", len(node.outputs) - n_state),
                       ("scan_output_directions", len(node.outputs) - n_state)):
        v = node.attrs.get(key)
        if v is not None and len(v) != count:
            raise TvmliteError(f"{_where(g, node)}: {key} has {len(v)} entries, needs {count}")


def _static_shape(g: Graph, name: str):
    try:
        s = g.value(name).shape
    except KeyError:
        return None
    if s is None or not all(isinstance(d, int) and d > 0 for d in s):
        return None
    return s


def _check_window(g: Graph, node) -> None:
    """Conv/pool output dims must be >= 1 where the input shape is known now."""
    xs = _static_shape(g, node.inputs[0]) if node.inputs else None
    if xs is None or len(xs) < 3:
        return
    try:
        if node.op_type == "Conv":
            ws = _static_shape(g, node.inputs[1]) if len(node.inputs) > 1 else None
            if ws is None or len(ws) != len(xs):
                return
            WindowGeometry.conv(node.attrs, xs, ws)
        else:
            k = node.attrs.get("kernel_shape")
            if not k or len(k) != len(xs) - 2:
                return  # the kernel says what is wrong
            WindowGeometry.pool(node.attrs, xs)
    except EmptyWindowError as e:
        raise ShapeError(f"{_where(g, node)}: {e}") from None
    except TvmliteError as e:  # kernel_shape against the weights, pads, auto_pad
        raise type(e)(f"{_where(g, node)}: {e}") from None
    except Exception:  # noqa: BLE001 - malformed attributes: the kernel says what is wrong
        return


_CHECKS = {"If": _check_if, "Loop": _check_loop, "Scan": _check_scan, "Conv": _check_window,
           **{op: _check_window for op in _POOLS}}
