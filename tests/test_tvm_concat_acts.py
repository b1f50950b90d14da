"""An activation behind a Concat moved onto its inputs (backends/tvm/concat_acts.py): ShuffleNet's
stride-2 unit (grouped conv branch + AveragePool shortcut -> Concat -> Relu) builds with no Concat
kernel and matches onnxruntime; graphs where the move would add kernels or change what another
reader sees are left alone."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.backends.tvm.concat_acts import sink_activations  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(0)


def unit(act="Relu", extra_reader=None, shortcut="AveragePool", **act_attrs):
    """x [1, 24, 16, 16] -> (grouped 1x1 conv -> depthwise 3x3 s2) and (3x3/2 pool) -> Concat -> act -> y.
    ``extra_reader``: "concat" (the Concat's output) or "pool" (the shortcut) is also a graph output;
    ``shortcut`` "input": the Concat reads a graph input p instead of the pool."""
    w1 = (RNG.standard_normal((32, 6, 1, 1)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((32, 1, 3, 3)) * 0.3).astype(np.float32)
    b2 = RNG.standard_normal(32).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], group=4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=32, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2])]
    inputs = [tensor("x", (1, 24, 16, 16))]
    if shortcut == "input":
        inputs.append(tensor("p", (1, 24, 8, 8)))
    else:
        nodes.append(helper.make_node(shortcut, ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]))
    nodes += [helper.make_node("Concat", ["c2", "p"], ["cat"], axis=1),
              helper.make_node(act, ["cat"], ["y"], **act_attrs)]
    outs = [tensor("y", (1, 56, 8, 8))]
    if extra_reader == "concat":
        outs.append(tensor("cat", (1, 56, 8, 8)))
    if extra_reader == "pool":
        outs.append(tensor("p", (1, 24, 8, 8)))
    return make_model(nodes, inputs, outs, [("w1", w1), ("w2", w2), ("b2", b2)])


def feeds_of(model):
    return {i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def build(model):
    feeds = feeds_of(model)
    cm = compile_model(load(model), {k: v.shape for k, v in feeds.items()})
    assert not cm.host_ops, cm.host_ops
    for got, ref in zip(cm.run(feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    return [c["func"] for c in cm.plan["calls"] if "func" in c]


@pytest.mark.parametrize("shortcut,act,attrs", [("AveragePool", "Relu", {}), ("MaxPool", "LeakyRelu", {"alpha": 0.2}),
                                                ("AveragePool", "HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_activation_behind_a_concat_moves_onto_its_inputs(shortcut, act, attrs):
    m = unit(act, shortcut=shortcut, **attrs)
    model = load(m)
    assert sink_activations(model) == 1
    cat = next(n for n in model.graph.nodes if n.op_type == "Concat")
    assert cat.outputs[0] == "y" and [model.graph.producer(i).op_type for i in cat.inputs] == [act, act]
    assert not any(n.op_type == act and n.inputs[0] == cat.outputs[0] for n in model.graph.nodes)
    funcs = build(m)
    assert not any("concat" in f for f in funcs), funcs  # each branch writes its slice, activated


@pytest.mark.parametrize("case", [dict(extra_reader="concat"), dict(extra_reader="pool"), dict(shortcut="input"),
                                  dict(act="Exp")])
def test_activation_stays_where_moving_it_would_cost_or_change_a_value(case):
    """Not moved: the Concat's output read by another (a graph output), an input read elsewhere,
    an input with no kernel to take the activation (a graph input), an op outside the activations."""
    m = unit(**case)
    assert sink_activations(load(m)) == 0
    build(m)
