"""An activation behind a Concat moved onto the Concat's inputs, so the Concat needs no copy.

ShuffleNet's stride-2 units end in Concat(conv branch, AveragePool shortcut) -> Relu. A Concat
with an epilogue keeps its copy kernel (concat_views.py: as views the Relu would take a pass of
its own, 1.03x slower there). An elementwise activation commutes with a Concat exactly (it maps
every element on its own), so Relu(Concat(a, b)) becomes Concat(Relu(a), Relu(b)): each input's
producer (the conv, the pool) takes the Relu into its epilogue, writes straight into its slice of
the Concat's output (concat_views.place), and the Concat's kernel goes. Taken only where that is
what happens: the Concat is read by the activation alone, and each input is made by an op that
takes an epilogue (`EPILOGUE_ANCHORS`) and is read by the Concat alone; anything else (a graph
input, a constant, a shared value, a host op) would make a kernel of its own for the activation,
so the graph is left as it is. ShuffleNet: 59 -> 56 kernels; the three Concat copies took 0.10 ms
of its 11.2 ms of kernels at one thread (bench/tvm_profile.py, best runs), below what a whole-model
A/B resolves on the loaded host (one thread, CPU time, with this session's other two changes:
0.93-1.00x of before, median 0.98x, load 13-18).
"""
from __future__ import annotations

from tvmlite.ir.graph import Model

ONNX = ("", "ai.onnx")
#: elementwise activations of one input and attributes only: f(Concat(a, b)) == Concat(f(a), f(b))
ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus"}
#: ops whose kernels apply an epilogue to their output (fusion.absorb runs after them)
EPILOGUE_ANCHORS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "MaxPool", "Add", "Mul", "Sub"}


def sink_activations(m: Model) -> int:
    """Rewrite every Concat -> activation of ``m``'s main graph that fits (see the module doc);
    the number rewritten."""
    g = m.graph
    done = 0
    for act in list(g.toposort()):
        cat = _sinkable_concat(g, act)
        if cat is None:
            continue
        ins = []
        for i, x in enumerate(cat.inputs):
            y = g.fresh_name(f"{x}_{act.op_type.lower()}")
            g.add_node(act.op_type, [x], [y], dict(act.attrs), name=g.fresh_node_name(f"{act.label}_{i}"),
                       order=cat.order)
            g.value(y).type = g.value(x).type
            ins.append(y)
        out, attrs, order, name = act.outputs[0], dict(cat.attrs), act.order, cat.name
        g.remove_node(act, remove_outputs=False)
        g.remove_node(cat)
        g.add_node("Concat", ins, [out], attrs, name=name, order=order)
        done += 1
    return done


def _sinkable_concat(g, act):
    """The Concat ``act`` reads, when ``act`` can move onto its inputs; else None."""
    if act.domain not in ONNX or act.op_type not in ACTIVATIONS or len(act.inputs) != 1 or len(act.outputs) != 1:
        return None
    cat = g.producer(act.inputs[0])
    if cat is None or cat.domain not in ONNX or cat.op_type != "Concat" or len(cat.outputs) != 1:
        return None
    if g.num_uses(cat.outputs[0]) != 1 or cat.outputs[0] in g.outputs:
        return None
    if len(set(cat.inputs)) != len(cat.inputs):
        return None
    for x in cat.inputs:
        p = g.producer(x) if x else None
        if p is None or p.domain not in ONNX or p.op_type not in EPILOGUE_ANCHORS:
            return None
        if g.num_uses(x) != 1 or x in g.outputs or len(p.outputs) != 1:
            return None
    return cat
