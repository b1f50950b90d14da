"""quantize-dynamic (weight-only int8 MatMul/Gemm) and fp16 (float16 weights) against onnxruntime."""
import os

import numpy as np
import onnx
import pytest

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.backends.numpy import compile_model

from conftest import MODELS
from helpers import ort_exact, ort_run


@pytest.mark.parametrize("form", ["integer", "dq"])
def test_quantize_dynamic_digits(form, tmp_path):
    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    m = tvmlite.load(path)
    r = Pipeline(f"fold-bn,quantize-dynamic(form={form})").run(m)
    assert r[1].stats.get("rewritten", len(r[1].rewritten)) == 2  # both Gemms
    out = tmp_path / "d.onnx"
    tvmlite.save(m, str(out))
    onnx.checker.check_model(str(out))
    data = np.load(MODELS / "digits_test.npz")
    x = data["input"][:200]
    ref = ort_run(str(path), {"input": x})[0]
    got = ort_run(str(out), {"input": x})[0]
    got_np = compile_model(m).run({"input": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02
    # onnxruntime may fuse DQ + MatMul into a dynamically quantized kernel: agree to ~1 activation step
    np.testing.assert_allclose(got_np, got, atol=1e-2 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_fp16_weights_halve_the_file(tmp_path):
    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    m = tvmlite.load(path)
    Pipeline("fp16").run(m)
    out = tmp_path / "h.onnx"
    tvmlite.save(m, str(out))
    assert os.path.getsize(out) < 0.55 * os.path.getsize(path)
    x = np.load(MODELS / "digits_test.npz")["input"][:100]
    ref = ort_run(str(path), {"input": x})[0]
    got = ort_run(str(out), {"input": x})[0]
    np.testing.assert_allclose(got, ref, atol=5e-3 * np.abs(ref).max())
    np.testing.assert_allclose(compile_model(m).run({"input": x})[0], got, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_fp16_activations_digits(tmp_path):
    path = MODELS / "digits_cnn.onnx"
    m = tvmlite.load(path)
    r = Pipeline("fp16(activations=true)").run(m)[0]
    ops = {d["op"] for d in r.decisions if d.get("precision") == "float16"}
    assert {"Conv", "Gemm", "Relu", "MaxPool"} <= ops
    out = tmp_path / "h.onnx"
    tvmlite.save(m, str(out))
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in list(proto.graph.input) + list(proto.graph.output))
    assert not proto.graph.value_info  # working types are not written out
    # float16 weights and activations: one Cast in, one Cast out, nothing float32 in between
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2
    data = np.load(MODELS / "digits_test.npz")
    x = data["input"][:200]
    ref = ort_run(str(path), {"input": x})[0]
    got = ort_run(str(out), {"input": x})[0]
    assert np.abs(got - ref).max() < 2e-3 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(compile_model(m).run({"input": x})[0], got, atol=2e-3 * np.abs(ref).max())


def test_fp16_activations_keep_ops_without_float16_kernel_in_float32():
    """Celu has no float16 kernel in onnxruntime's CPU provider: it stays float32 between Casts."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu1"),
             helper.make_node("Celu", ["a"], ["b"], name="celu"),
             helper.make_node("Relu", ["b"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    m = tvmlite.load(proto)
    r = Pipeline("fp16(activations=true)").run(m)[0]
    assert sorted(r.rewritten) == ["relu1", "relu2"]
    assert [label for label, _ in r.skipped] == ["celu"]
    out = tvmlite.export_model(m)
    celu = next(n for n in out.graph.node if n.op_type == "Celu")
    producers = {o: n for n in out.graph.node for o in n.output}
    assert producers[celu.input[0]].op_type == "Cast"
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=2e-3, atol=2e-3)


def _mlp(hidden=64, layers=3):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * 0.1).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", hidden])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", hidden])], inits)
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p.ir_version = 8
    return p


def test_min_matmul_share_picks_matmul_heavy_models():
    """The default preset's gate: an MLP (all MACs in MatMuls with constant weights) is rewritten, the
    digits CNN (its two Gemms hold ~1% of the MACs) is left alone with the reason."""
    from tvmlite.passes import parse_spec
    from tvmlite.passes.quantize_dynamic import matmul_share

    mlp = tvmlite.load(_mlp())
    assert matmul_share(mlp) == 1.0
    r = parse_spec("quantize-dynamic(min_matmul_share=0.5)")[0].run(mlp)
    assert r.changed and len(r.rewritten) == 3 and r.stats["matmul_share"] == 1.0
    cnn = tvmlite.load(MODELS / "digits_cnn.onnx")
    share = matmul_share(cnn)
    assert 0 < share < 0.05
    r = parse_spec("quantize-dynamic(min_matmul_share=0.5)")[0].run(cnn)
    assert not r.changed and not r.rewritten
    assert r.skipped == [("(model)", f"MatMul/Gemm with constant weights hold {share:.0%} of the MACs, "
                                     "under min_matmul_share=0.5: left to static int8")]
    # without the gate the Gemms are rewritten, as before
    assert parse_spec("quantize-dynamic")[0].run(tvmlite.load(MODELS / "digits_cnn.onnx")).changed


@pytest.mark.parametrize("bad", ["-0.1", "1.5", "nan"])
def test_min_matmul_share_is_a_share(bad):
    from tvmlite.errors import OptionError
    from tvmlite.passes import parse_spec

    with pytest.raises(OptionError, match="min_matmul_share"):
        parse_spec(f"quantize-dynamic(min_matmul_share={bad})")


def test_readers_of_one_activation_share_its_dynamic_quantization(tmp_path):
    """Q/K/V-style projections of one input: one DynamicQuantizeLinear feeds all three MatMulIntegers
    (as onnxruntime's quantize_dynamic writes it), and the result still matches the float model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    ws = [numpy_helper.from_array((rng.standard_normal((32, 32)) * 0.1).astype(np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"], name=f"proj{i}") for i in range(3)]
    nodes += [helper.make_node("Add", ["p0", "p1"], ["s"], name="add0"),
              helper.make_node("Add", ["s", "p2"], ["y"], name="add1")]
    g = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], ws)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    m = tvmlite.load(proto)
    r = Pipeline("quantize-dynamic").run(m)[0]
    assert len(r.rewritten) == 3
    ops = [n.op_type for n in m.graph.nx.nodes]
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulInteger") == 3
    out = tmp_path / "q.onnx"
    tvmlite.save(m, str(out))
    x = rng.standard_normal((4, 32)).astype(np.float32)
    ref = ort_run(proto, {"x": x})[0]
    got = ort_exact(str(out), {"x": x})[0]  # u8u8 where onnxruntime's u8s8 MatMulInteger would saturate
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02
    np.testing.assert_allclose(compile_model(m).run({"x": x})[0], got, atol=1e-4 * np.abs(ref).max())
