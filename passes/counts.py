"""Parameters and multiply-accumulates of a model: the before/after figures of every PassResult and
the per-layer MACs lowrank weighs layers by. Passes need them, so they live at the passes' level;
tvmlite.analysis (the driver's reports) re-exports them."""
from __future__ import annotations

import math

import numpy as np

from tvmlite.export.shapes import static_shapes
from tvmlite.ir.graph import Model, Node


def param_count(model: Model) -> int:
    """Elements of constant float tensors (initializers and Constant outputs) with more than one value,
    in the graph and in every If/Loop/Scan body (a recurrent model keeps its weights there)."""
    return _graph_params(model.graph)


def _graph_params(g) -> int:
    total = 0
    for name in g.initializers:
        v = g.values[name]
        if name not in g.inputs and v.dtype is not None and v.dtype.kind in "fiu" and v.shape is not None:
            n = math.prod(v.shape)
            total += n if n > 1 else 0
    for node in g.nx.nodes:
        if node.op_type == "Constant":
            val = node.attrs.get("value")
            if isinstance(val, np.ndarray) and val.size > 1 and val.dtype.kind in "fiu":
                total += val.size
        total += sum(_graph_params(sub) for sub in node.subgraphs)
    return total


def node_macs(model: Model, node: Node, shapes: dict | None = None) -> int:
    """Multiply-accumulates of one node from the known shapes (symbolic dims counted as 1)."""
    if shapes is None:
        shapes = static_shapes(model)

    def shape(name):
        return shapes.get(name) if name else None

    op = node.op_type
    try:
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shape(node.inputs[3] if op == "QLinearConv" else node.inputs[1])
            y = shape(node.outputs[0])
            if w is None or y is None:
                return 0
            return int(math.prod(y) * math.prod(w[1:]))
        if op == "ConvTranspose":
            x, w = shape(node.inputs[0]), shape(node.inputs[1])
            if x is None or w is None:
                return 0
            return int(math.prod(x) * math.prod(w[1:]))
        if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            ia, ib = (0, 3) if op == "QLinearMatMul" else (0, 1)
            a, y = shape(node.inputs[ia]), shape(node.outputs[0])
            if a is None or y is None or not a:
                return 0
            k = a[0] if (op == "Gemm" and node.attrs.get("transA", 0)) else a[-1]
            return int(math.prod(y) * k)
    except (IndexError, TypeError):
        return 0
    return 0


def summarize(model: Model, input_shapes: dict | None = None) -> dict:
    """Nodes, parameters and MACs (``input_shapes`` fixes symbolic input dims for the MACs)."""
    g = model.graph
    shapes = static_shapes(model, input_shapes)
    macs = sum(node_macs(model, n, shapes) for n in g.nx.nodes)
    return {"nodes": len(g), "params": param_count(model), "macs": macs}
