"""Property tests: on random small graphs every clean-up pass (and the NumPy backend) keeps the
outputs of onnxruntime on the original graph, within float rounding."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.backends.numpy import compile_model
from tvmlite.export import export_model

from helpers import make_model, ort_run, tensor

LAYERS = ["conv", "conv_nobias", "bn", "relu", "identity", "dropout", "add_skip", "const_mul", "convT"]


def build(layers, seed, channels=4, size=5):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cur, c = "x", channels
    for i, kind in enumerate(layers):
        out = f"t{i}"
        if kind in ("conv", "conv_nobias"):
            k = int(rng.choice([1, 3]))
            group = int(rng.choice([1, c])) if c > 1 else 1
            w = rng.standard_normal((c, c // group, k, k)).astype(np.float32) * 0.5
            ins = [cur, f"w{i}"]
            inits.append((f"w{i}", w))
            if kind == "conv":
                inits.append((f"b{i}", rng.standard_normal(c).astype(np.float32)))
                ins.append(f"b{i}")
            nodes.append(helper.make_node("Conv", ins, [out], pads=[k // 2] * 4, group=group))
        elif kind == "convT":
            w = rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.5
            inits += [(f"w{i}", w), (f"b{i}", rng.standard_normal(c).astype(np.float32))]
            nodes.append(helper.make_node("ConvTranspose", [cur, f"w{i}", f"b{i}"], [out]))
        elif kind == "bn":
            for p, arr in (("s", rng.uniform(0.5, 2, c)), ("t", rng.standard_normal(c)),
                           ("m", rng.standard_normal(c)), ("v", rng.uniform(0.2, 2, c))):
                inits.append((f"bn{p}{i}", arr.astype(np.float32)))
            nodes.append(helper.make_node("BatchNormalization", [cur] + [f"bn{p}{i}" for p in "stmv"], [out]))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif kind == "identity":
            nodes.append(helper.make_node("Identity", [cur], [out]))
        elif kind == "dropout":
            nodes.append(helper.make_node("Dropout", [cur], [out]))  # opset 17: ratio is an input
        elif kind == "add_skip":
            nodes.append(helper.make_node("Add", [cur, "x"], [out]))
        elif kind == "const_mul":
            a = numpy_helper.from_array(np.float32(rng.uniform(0.5, 1.5)), f"ca{i}")
            b = numpy_helper.from_array(np.float32(rng.uniform(0.5, 1.5)), f"cb{i}")
            nodes += [helper.make_node("Constant", [], [f"ca{i}"], value=a),
                      helper.make_node("Constant", [], [f"cb{i}"], value=b),
                      helper.make_node("Mul", [f"ca{i}", f"cb{i}"], [f"cm{i}"]),
                      helper.make_node("Mul", [cur, f"cm{i}"], [out])]
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return make_model(nodes, [tensor("x", ["N", c, size, size])], [tensor("y", ["N", c, size, size])], inits)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(layers=st.lists(st.sampled_from(LAYERS), min_size=1, max_size=7), seed=st.integers(0, 10**6),
       spec=st.sampled_from(["fold-constants,remove-identity,fold-bn,dce,infer-shapes",
                             "fold-bn", "remove-identity", "dce", "fold-constants", "remove-identity,dce"]))
def test_passes_preserve_outputs(layers, seed, spec):
    proto = build(layers, seed)
    x = np.random.default_rng(seed + 1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    want = ort_run(proto, {"x": x})[0]
    m = tvmlite.load(proto)
    Pipeline(spec).run(m)
    out = export_model(m)
    got = ort_run(out, {"x": x})[0]
    scale = max(float(np.abs(want).max()), 1e-6)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * scale, (layers, spec)
    assert [o.name for o in out.graph.output] == ["y"]
    if spec in ("remove-identity", "dce", "remove-identity,dce"):
        assert np.array_equal(got, want)  # no arithmetic changed
    np_out = compile_model(m).run({"x": x})[0]
    assert np.abs(np_out - want).max() <= 1e-5 * scale
