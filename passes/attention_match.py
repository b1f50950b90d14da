"""Recognising BERT-style self-attention in a graph, for ``fuse-transformer``: what onnxruntime's
com.microsoft Attention computes, written out as exporters write it.

    X -> MatMul(Wq) [-> Add(bq)] -> Reshape [.., .., h, d] -> Transpose(0,2,1,3)          (Q, V alike)
    X -> MatMul(Wk) [-> Add(bk)] -> Reshape [.., .., h, d] -> Transpose(0,2,3,1)
                                    (or Transpose(0,2,1,3) -> Transpose(0,1,3,2))         (K^T)
    MatMul(Q, K^T) [-> Div(c) | Mul(c)] [-> Add(mask)] -> Softmax(last axis) -> MatMul(., V)
        -> Transpose(0,2,1,3) -> Reshape [.., .., h*d]

Heads and head size come from the Reshape (its constant shape, or the inferred shape of its output),
the scale from the Div/Mul constant, the mask form from the mask's own subgraph:
``(1 - Cast/Unsqueeze(mask2d)) * c`` with a rank-2 [batch, sequence] source becomes Attention's raw
2-D ``mask_index`` (int32) with ``mask_filter_value = c`` (onnxruntime adds c where the mask is 0,
as the graph does for a 0/1 mask). Anything else is refused with the reason, and the graph is left
alone: a mask of another form, Q/K/V from different inputs or of different widths, an intermediate
read elsewhere, a softmax over another axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.ir.graph import Graph, Node
from tvmlite.passes.cleanup import is_onnx


@dataclass
class AttentionMatch:
    x: str  # the shared input of the Q/K/V projections
    weights: list  # Wq, Wk, Wv as [D, H] arrays
    biases: list  # bq, bk, bv ([H] arrays, zeros where the graph has none)
    heads: int
    scale: float
    mask_source: str | None  # the rank-2 raw mask the additive mask is computed from
    mask_filter: float
    out: str  # the merged [B, S, H] context the Attention node produces
    nodes: list  # every node of the pattern (the mask subgraph excluded: it may be shared)


class Refused(Exception):
    """The subgraph around a Softmax is not an attention block this pass can fuse (the message says why)."""


def _producer(g: Graph, name: str, *ops: str) -> Node | None:
    p = g.producer(name) if name else None
    return p if p is not None and is_onnx(p, *ops) else None


def scalar(g: Graph, name: str) -> float | None:
    """The value of a constant one-element float tensor (None otherwise)."""
    c = g.const_value(name)
    return float(c.reshape(())) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def _only_reader(g: Graph, name: str, what: str) -> None:
    if name in g.outputs or g.num_uses(name) != 1:
        raise Refused(f"{what} {name!r} is read elsewhere too")


def _perm(node: Node) -> list:
    return [int(p) for p in node.attrs.get("perm", [])]


def _split_heads(g: Graph, name: str, what: str) -> tuple[str, int, int]:
    """Reshape [B, S, H] -> [B, S, h, d] feeding a Transpose: (its input, h, d)."""
    r = _producer(g, name, "Reshape")
    if r is None:
        raise Refused(f"{what}: no Reshape into heads before the head Transpose")
    _only_reader(g, name, what)
    shape = g.const_value(r.inputs[1])
    dims = [int(d) for d in shape.reshape(-1)] if shape is not None else list(g.value(name).shape or ())
    if len(dims) != 4 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims[2:]):
        raise Refused(f"{what}: Reshape {r.label!r} does not split into [.., .., heads, head_size] "
                      "with known heads and head size")
    return r.inputs[0], int(dims[2]), int(dims[3])


def _projection(g: Graph, name: str, what: str) -> tuple[str, np.ndarray, np.ndarray, list]:
    """[Add(bias) <-] MatMul(X, W) with constant W [D, H] (and bias [H]): (X, W, bias, nodes)."""
    nodes = []
    bias = None
    add = _producer(g, name, "Add")
    if add is not None:
        for i in (0, 1):
            b = g.const_value(add.inputs[1 - i])
            if b is not None and b.ndim == 1 and _producer(g, add.inputs[i], "MatMul") is not None:
                _only_reader(g, name, what)
                nodes.append(add)
                bias, name = b, add.inputs[i]
                break
        else:
            raise Refused(f"{what}: {add.label!r} is not MatMul plus a constant 1-D bias")
    mm = _producer(g, name, "MatMul")
    w = g.const_value(mm.inputs[1]) if mm is not None else None
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        raise Refused(f"{what}: not a MatMul by a constant 2-D float32 weight")
    _only_reader(g, name, what)
    nodes.append(mm)
    if bias is None:
        bias = np.zeros(w.shape[1], np.float32)
    elif bias.shape[0] != w.shape[1]:
        raise Refused(f"{what}: bias of {bias.shape[0]} values for a weight of {w.shape[1]} columns")
    return mm.inputs[0], w, bias.astype(np.float32), nodes


def _head_input(g: Graph, name: str, perms: tuple, what: str) -> tuple[str, list]:
    """The value before the head Transpose(s) of ``perms`` (the last perm nearest to ``name``)."""
    nodes = []
    for perm in perms:
        t = _producer(g, name, "Transpose")
        if t is None or _perm(t) != list(perm):
            raise Refused(f"{what}: expected Transpose{tuple(perm)}")
        _only_reader(g, name, what)
        nodes.append(t)
        name = t.inputs[0]
    return name, nodes


def _mask(g: Graph, name: str) -> tuple[str, float]:
    """(rank-2 raw mask source, filter value) of an additive mask ``(1 - m) * c``, or Refused."""
    mul = _producer(g, name, "Mul")
    if mul is None:
        raise Refused(f"mask {name!r}: not (1 - mask) * c")
    for i in (0, 1):
        c = scalar(g, mul.inputs[1 - i])
        sub = _producer(g, mul.inputs[i], "Sub")
        if c is not None and sub is not None and scalar(g, sub.inputs[0]) == 1.0:
            break
    else:
        raise Refused(f"mask {name!r}: not (1 - mask) * c with constant c")
    shape = g.value(name).shape
    if shape is None or len(shape) != 4 or shape[1] != 1 or shape[2] != 1:
        raise Refused(f"mask {name!r}: shape {shape} is not [batch, 1, 1, sequence]")
    src = sub.inputs[1]
    while True:
        s = g.value(src).shape
        if s is not None and len(s) == 2:
            return src, c
        p = _producer(g, src, "Unsqueeze", "Cast")
        if p is None:
            raise Refused(f"mask {name!r}: its source is not a [batch, sequence] tensor through Cast/Unsqueeze")
        src = p.inputs[0]


def _is_scores(g: Graph, name: str) -> bool:
    """MatMul, or a Div/Mul of a MatMul: the scores side of the mask Add."""
    p = _producer(g, name, "Div", "Mul")
    return _producer(g, p.inputs[0] if p is not None else name, "MatMul") is not None


def match_attention(g: Graph, softmax: Node) -> AttentionMatch:
    """The attention block around ``softmax`` (or :class:`Refused` with the reason)."""
    rank = len(g.value(softmax.outputs[0]).shape or ())
    axis = int(softmax.attrs.get("axis", -1))
    if rank != 4 or axis not in (-1, 3):
        raise Refused(f"softmax over axis {axis} of a rank-{rank or '?'} tensor, not the last of [B, h, S, T]")
    probs = softmax.outputs[0]
    readers = g.consumers(probs)
    if len(readers) != 1 or not is_onnx(readers[0], "MatMul") or readers[0].inputs[0] != probs or probs in g.outputs:
        raise Refused("the probabilities are not read by one MatMul(probs, V) alone")
    pv = readers[0]
    nodes = [softmax, pv]
    # scores side: [Add(mask) <-] [Div/Mul(c) <-] MatMul(Q, K^T)
    name, mask_source, mask_filter, scale = softmax.inputs[0], None, None, 1.0
    add = _producer(g, name, "Add")
    if add is not None:
        _only_reader(g, name, "masked scores")
        nodes.append(add)
        side = next((i for i in (0, 1) if _is_scores(g, add.inputs[i])), None)
        if side is None:
            raise Refused(f"{add.label!r}: neither operand comes from the scaled scores")
        mask_source, mask_filter = _mask(g, add.inputs[1 - side])
        name = add.inputs[side]
    sc = _producer(g, name, "Div", "Mul")
    if sc is not None:
        c = scalar(g, sc.inputs[1])
        if c is None or c == 0.0 or _producer(g, sc.inputs[0], "MatMul") is None:
            raise Refused(f"{sc.label!r}: not the scores divided or multiplied by a constant scalar")
        _only_reader(g, name, "scaled scores")
        nodes.append(sc)
        scale = 1.0 / c if sc.op_type == "Div" else c
        name = sc.inputs[0]
    qk = _producer(g, name, "MatMul")
    if qk is None:
        raise Refused("the softmax input is not MatMul(Q, K^T), scaled and masked")
    _only_reader(g, name, "scores")
    nodes.append(qk)
    # heads: Q and V through Transpose(0,2,1,3), K through (0,2,3,1) or (0,2,1,3) then (0,1,3,2)
    q_in, q_nodes = _head_input(g, qk.inputs[0], ([0, 2, 1, 3],), "Q")
    v_in, v_nodes = _head_input(g, pv.inputs[1], ([0, 2, 1, 3],), "V")
    try:
        k_in, k_nodes = _head_input(g, qk.inputs[1], ([0, 2, 3, 1],), "K")
    except Refused:
        k_in, k_nodes = _head_input(g, qk.inputs[1], ([0, 1, 3, 2], [0, 2, 1, 3]), "K")
    nodes += q_nodes + k_nodes + v_nodes
    xs, ws, bs, heads = [], [], [], set()
    for what, head in (("Q", q_in), ("K", k_in), ("V", v_in)):
        lin, h, d = _split_heads(g, head, what)
        nodes.append(g.producer(head))
        x, w, b, proj = _projection(g, lin, what)
        if h * d != w.shape[1]:
            raise Refused(f"{what}: {h} heads of {d} do not make the projection's {w.shape[1]} columns")
        xs.append(x), ws.append(w), bs.append(b), heads.add((h, d))
        nodes += proj
    if len(set(xs)) != 1:
        raise Refused("Q, K and V are projected from different inputs")
    if len(heads) != 1 or len({w.shape for w in ws}) != 1:
        raise Refused("Q, K and V differ in heads or width (qkv_hidden_sizes not written)")
    # context: MatMul -> Transpose(0,2,1,3) -> Reshape [.., .., H]
    ctx = pv.outputs[0]
    _only_reader(g, ctx, "context")
    t = g.consumers(ctx)[0]
    if not is_onnx(t, "Transpose") or _perm(t) != [0, 2, 1, 3]:
        raise Refused("the context is not transposed back by Transpose(0,2,1,3)")
    _only_reader(g, t.outputs[0], "context")
    r = g.consumers(t.outputs[0])[0]
    h, d = heads.pop()
    if not is_onnx(r, "Reshape"):
        raise Refused("the context is not merged back by a Reshape")
    shape = g.const_value(r.inputs[1])  # a computed shape (Concat of Shape parts): the inferred one
    dims = [int(v) for v in shape.reshape(-1)] if shape is not None else list(g.value(r.outputs[0]).shape or ())
    if len(dims) != 3 or dims[2] not in (h * d, -1):
        raise Refused("the context is not merged back by Reshape [.., .., heads * head_size]")
    nodes += [t, r]
    return AttentionMatch(xs[0], ws, bs, h, float(scale), mask_source, float(mask_filter or 0.0), r.outputs[0], nodes)
