"""Transformer ops: LayerNormalization (opset 17), scale and bias constant; and the LayerNorm an
exporter spells out (ReduceMean -> Sub -> Pow/Mul -> ReduceMean -> Add eps -> Sqrt -> Div ->
Mul gamma -> Add beta), recognised from its first ReduceMean and run by the same kernel."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import ONNX, emitter
from tvmlite.errors import UnsupportedError
from tvmlite.ops.reduce import keeps_dims



@emitter("LayerNormalization")
def emit_layer_norm(low, node) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    a = node.attrs
    if int(a.get("stash_type", 1)) != 1:
        raise UnsupportedError("stash_type other than float32")
    if any(o for o in node.outputs[1:]):
        raise UnsupportedError("Mean/InvStdDev outputs")
    axis = int(a.get("axis", -1))
    if not -len(xs) <= axis < len(xs):
        raise UnsupportedError(f"axis {axis} out of range for rank {len(xs)}")
    trail = tuple(int(d) for d in xs[axis % len(xs):])
    try:
        scale = np.broadcast_to(low.const_input(node, 1, "scale", required=True), trail).astype(np.float32)
        bias = low.const_input(node, 2, "bias")
        bias = None if bias is None else np.broadcast_to(bias, trail).astype(np.float32)
    except ValueError as e:
        raise UnsupportedError(f"scale/bias do not broadcast to {trail}") from e
    epi, final, labels = low.epilogue(node)
    _layer_norm_kernel(low, node, x, xs, axis, float(a.get("epsilon", 1e-5)), scale, bias, epi, final, labels)


def _layer_norm_kernel(low, node, x, xs, axis, epsilon, scale, bias, epi, final, labels) -> None:
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.transformer import layer_norm

        return layer_norm(name, x, xs, axis=axis, epsilon=epsilon, scale=scale, bias=bias, out_value=final,
                          epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)


def emit_decomposed_layer_norm(low, node) -> bool:
    """Emit the spelled-out LayerNorm that starts at ReduceMean ``node`` as one LayerNorm kernel
    (its nodes absorbed); False when ``node`` does not start one."""
    m = match_layer_norm(low, node)
    if m is None:
        return False
    x, axis, eps, scale, bias, nodes, out = m
    low.absorbed.update(nodes)
    low.taken.extend(nodes)
    epi, final, labels = low.epilogue(nodes[-1])  # what follows the pattern's output
    labels = [n.label for n in nodes] + labels
    _layer_norm_kernel(low, node, x, low.shape(x), axis, eps, scale, bias, epi, final, labels)
    return True


def match_layer_norm(low, rm):
    """(x, axis, epsilon, scale, bias, nodes after ``rm``, output) of the LayerNorm spelled out
    from ReduceMean ``rm`` over trailing axes, or None. Every value inside is read only by the
    pattern; gamma and beta (optional) are constants that broadcast to the normalized dims."""
    g = low.g
    x = rm.inputs[0]
    xs = low.shapes.get(x)
    axes = _trailing_axes(low, rm, xs)
    if axes is None:
        return None
    axis, trail = axes
    nodes = []

    def only(value, op, *, reads=None):
        """The single consumer of ``value`` if it is ``op`` (and reads ``reads``), else None."""
        if value in g.outputs:
            return None
        cons = g.consumers(value)
        if len(cons) != 1 or cons[0].op_type != op or cons[0].domain not in ONNX or cons[0] in low.absorbed:
            return None
        if reads is not None and set(n for n in cons[0].inputs if n) != set(reads):
            return None
        return cons[0]

    sub = only(rm.outputs[0], "Sub")
    if sub is None or list(sub.inputs) != [x, rm.outputs[0]]:
        return None
    d = sub.outputs[0]
    cons = g.consumers(d)
    if d in g.outputs or len(cons) != 2:
        return None
    sq = next((c for c in cons if (c.op_type == "Mul" and list(c.inputs) == [d, d]) or (
        c.op_type == "Pow" and c.inputs[0] == d and scalar_const(low, c.inputs[1]) == 2.0)), None)
    div = next((c for c in cons if c.op_type == "Div" and c.inputs[0] == d), None)
    if sq is None or div is None or sq is div:
        return None
    rm2 = only(sq.outputs[0], "ReduceMean")
    if rm2 is None or _trailing_axes(low, rm2, xs) != axes:
        return None
    add = only(rm2.outputs[0], "Add")
    eps = None if add is None else next((scalar_const(low, n) for n in add.inputs if n != rm2.outputs[0]), None)
    sqrt = None if add is None or eps is None else only(add.outputs[0], "Sqrt")
    if sqrt is None or only(sqrt.outputs[0], "Div") is not div or div.inputs[1] != sqrt.outputs[0]:
        return None
    nodes = [sub, sq, rm2, add, sqrt, div]
    out = div.outputs[0]
    scale, bias = np.ones(trail, np.float32), None
    mul = only(out, "Mul")
    gamma = _side_const(low, mul, out, trail)
    if gamma is not None:
        scale, out = gamma, mul.outputs[0]
        nodes.append(mul)
        plus = only(out, "Add")
        beta = _side_const(low, plus, out, trail)
        if beta is not None:
            bias, out = beta, plus.outputs[0]
            nodes.append(plus)
    if low.shapes.get(out) != xs or any(n in low.absorbed for n in nodes):
        return None
    return x, axis, float(eps), scale, bias, nodes, out


def _trailing_axes(low, node, xs):
    """(axis, normalized dims) when ReduceMean ``node`` keeps dims and reduces the trailing ones."""
    if node.op_type != "ReduceMean" or xs is None or not keeps_dims(node.attrs.get("keepdims", 1)):
        return None
    if len(node.inputs) > 1 and node.inputs[1]:
        c = low.const(node.inputs[1])
        axes = None if c is None else [int(v) for v in c.reshape(-1)]
    else:
        axes = node.attrs.get("axes")
    if not axes:
        return None
    rank = len(xs)
    ax = sorted(a % rank for a in axes)
    if ax != list(range(rank - len(ax), rank)):
        return None
    return ax[0], tuple(int(d) for d in xs[ax[0]:])


def scalar_const(low, name):
    """The float value of a one-element float constant ``name``, else None."""
    c = low.const(name) if name else None
    return None if c is None or c.size != 1 or c.dtype.kind != "f" else float(c.reshape(-1)[0])


def _side_const(low, node, value, trail):
    """The constant other operand of ``node`` (reading ``value``) broadcast to ``trail``, or None."""
    if node is None:
        return None
    other = [n for n in node.inputs if n and n != value]
    c = low.const(other[0]) if len(other) == 1 else None
    if c is None or c.dtype.kind != "f" or c.ndim > len(trail):
        return None
    try:
        return np.broadcast_to(c, trail).astype(np.float32)
    except ValueError:
        return None
