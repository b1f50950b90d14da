"""The clean-up passes keep outputs (bit-exact, or within float rounding for fold-bn) and do what they say."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvmlite
from tvmlite.passes import Pass, PassResult, Pipeline, available_passes, parse_spec, register_pass
from tvmlite.errors import OptionError
from tvmlite.export import export_model

from conftest import corpus_model
from helpers import conv_bn_relu_model, make_model, ort_run, tensor


def ops(m):
    return [n.op_type for n in m.graph.toposort()]


def test_default_pipeline_on_small_model():
    proto = conv_bn_relu_model()
    m = tvmlite.load(proto)
    results = Pipeline("fold-constants,remove-identity,fold-bn,dce").run(m)
    assert ops(m) == ["Conv", "Relu", "Flatten", "MatMul", "Div"]
    by = {r.pass_name: r for r in results}
    assert by["fold-constants"].stats["folded"] == 1  # Mul(2, 3)
    assert by["remove-identity"].stats["removed"] == 2  # Identity, Dropout
    assert by["fold-bn"].stats["folded"] == 1
    assert by["dce"].stats["nodes_removed"] >= 1  # the dead Neg
    assert results[-1].after["nodes"] == 5
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    a, b = ort_run(proto, {"x": x})[0], ort_run(export_model(m), {"x": x})[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("producer", ["Conv", "ConvTranspose", "Gemm", "Gemm_transB"])
def test_fold_bn_numerics(producer):
    rng = np.random.default_rng(1)
    c = 6
    if producer == "Conv":
        w = rng.standard_normal((c, 4, 3, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["p"], pads=[1, 1, 1, 1], group=2)
        w = w[:, :2]
        xshape, pshape = [2, 4, 5, 5], [2, c, 5, 5]
    elif producer == "ConvTranspose":
        w = rng.standard_normal((4, c // 2, 3, 3)).astype(np.float32)
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["p"], group=2, strides=[2, 2])
        xshape, pshape = [2, 4, 5, 5], [2, c, 11, 11]
    else:
        trans = producer.endswith("transB")
        w = rng.standard_normal((c, 4) if trans else (4, c)).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["p"], transB=int(trans), alpha=0.5, beta=2.0)
        xshape, pshape = [3, 4], [3, c]
    b = rng.standard_normal(c).astype(np.float32)
    params = [("s", rng.uniform(0.5, 2, c)), ("t", rng.standard_normal(c)), ("mu", rng.standard_normal(c)),
              ("var", rng.uniform(0.1, 2, c))]
    nodes = [node, helper.make_node("BatchNormalization", ["p", "s", "t", "mu", "var"], ["y"], epsilon=1e-4)]
    proto = make_model(nodes, [tensor("x", xshape)], [tensor("y", pshape)],
                       [("w", w), ("b", b)] + [(n, a.astype(np.float32)) for n, a in params])
    m = tvmlite.load(proto)
    r = Pipeline("fold-bn,dce").run(m)[0]
    assert r.stats["folded"] == 1, r.skipped
    assert "BatchNormalization" not in ops(m)
    assert m.graph.outputs == ["y"]
    x = rng.standard_normal(xshape).astype(np.float32)
    want, got = ort_run(proto, {"x": x})[0], ort_run(export_model(m), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("producer,wshape,group", [("Conv", (6,), 1), ("ConvTranspose", (), 1),
                                                    ("ConvTranspose", (4, 2, 3, 3), 3), ("Gemm", (4, 6, 1), 1)])
def test_fold_bn_refuses_malformed_weights(producer, wshape, group):
    """Weights of the wrong rank (a scalar where a kernel belongs) or a group that does not divide the
    input channels: the fold leaves the node with a reason (it raised IndexError/ValueError)."""
    c = 6
    attrs = {"group": group} if producer != "Gemm" else {}
    nodes = [helper.make_node(producer, ["x", "w"], ["p"], **attrs),
             helper.make_node("BatchNormalization", ["p", "s", "t", "mu", "var"], ["y"])]
    proto = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [])],
                       [("w", np.ones(wshape, np.float32))]
                       + [(n, np.ones(c, np.float32)) for n in ("s", "t", "mu", "var")])
    m = tvmlite.load(proto)
    r = Pipeline("fold-bn").run(m)[0]
    assert not r.changed and r.skipped, r.skipped
    assert "BatchNormalization" in ops(m)


def test_fold_bn_skips_shared_conv_output():
    proto = conv_bn_relu_model()
    # a second reader of the conv output blocks the fold
    proto.graph.node.append(helper.make_node("Relu", ["c"], ["c_relu"]))
    proto.graph.output.append(helper.make_tensor_value_info("c_relu", TensorProto.FLOAT, ["N", 8, 4, 4]))
    m = tvmlite.load(proto)
    r = Pipeline("fold-bn").run(m)[0]
    assert not r.changed and "other readers" in r.skipped[0][1]


def test_remove_identity_on_graph_output_keeps_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    m = tvmlite.load(make_model(nodes, [tensor("x", [2])], [tensor("y", [2])]))
    Pipeline("remove-identity,dce").run(m)
    assert ops(m) == ["Relu"] and m.graph.outputs == ["y"] and m.graph.producer("y").op_type == "Relu"
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_fold_constants_refuses_to_bloat():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("Add", ["x", "big"], ["y"])]
    m = tvmlite.load(make_model(nodes, [tensor("x", [1024, 1024])], [tensor("y", [1024, 1024])],
                                [("shape", np.array([1024, 1024], np.int64))]))
    r = Pipeline("fold-constants").run(m)[0]
    assert not r.changed and "would store" in r.skipped[0][1]


def test_corpus_cls_cleanups_are_exact_enough():
    path = corpus_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    m = tvmlite.load(path)
    results = Pipeline("fold-constants,remove-identity,fold-bn,dce,infer-shapes").run(m, input_shapes={"x": (1, 3, 48, 192)})
    assert results[2].stats["folded"] == 35  # every BatchNormalization follows a Conv
    assert results[-1].after["macs"] == results[0].before["macs"] > 0
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    want, got = ort_run(str(path), {"x": x})[0], ort_run(export_model(m), {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_spec_parsing_and_user_pass():
    @register_pass
    class RemoveNoopCasts(Pass):
        name = "test-remove-noop-casts"

        def run(self, model):
            result = PassResult(self.name)
            g = model.graph
            for node in g.toposort():
                if node.op_type == "Cast" and g.value(node.inputs[0]).elem_type == node.attrs["to"]:
                    g.remove_node(node, remove_outputs=False)
                    g.replace_all_uses(node.outputs[0], node.inputs[0])
                    result.rewrote(node)
            return result

    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT), helper.make_node("Relu", ["c"], ["y"])]
    m = tvmlite.load(make_model(nodes, [tensor("x", [2])], [tensor("y", [2])]))
    (r,) = Pipeline("test-remove-noop-casts").run(m)
    assert r.rewritten == ["Cast->c"] and ops(m) == ["Relu"]
    assert [p.name for p in parse_spec(" fold-bn , dce ")] == ["fold-bn", "dce"]
    (p,) = parse_spec("fold-constants(max_growth=2.5)")
    assert p.options.max_growth == 2.5
    assert "fold-bn" in available_passes()
    with pytest.raises(OptionError):
        parse_spec("")
