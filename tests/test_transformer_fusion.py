"""fuse-transformer (passes/transformer_fusion.py, passes/attention_match.py) and
quantize-dynamic(attention=true) (quant/dynamic_attention.py): a BERT built from random weights by
tvmlite.zoo_encoder and hand-written attention blocks in other spellings; results against the float
model in onnxruntime, NumPy against onnxruntime, refusals with reasons."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
from tvmlite.backends.numpy import run_model
from tvmlite.errors import OptionError
from tvmlite.passes import Pipeline, parse_spec
from tvmlite.zoo_encoder import build_bert_encoder

from helpers import ort_exact, ort_run, refused_passes


def _bert(heads=4, hidden=32, layers=2, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    w = {"embeddings.word_embeddings.weight": rng.standard_normal((vocab, hidden)),
         "embeddings.position_embeddings.weight": rng.standard_normal((16, hidden)) * 0.1,
         "embeddings.token_type_embeddings.weight": rng.standard_normal((2, hidden)) * 0.1,
         "embeddings.LayerNorm.weight": np.ones(hidden), "embeddings.LayerNorm.bias": np.zeros(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, shape in [("attention.self.query", (hidden, hidden)), ("attention.self.key", (hidden, hidden)),
                            ("attention.self.value", (hidden, hidden)), ("attention.output.dense", (hidden, hidden)),
                            ("intermediate.dense", (4 * hidden, hidden)), ("output.dense", (hidden, 4 * hidden))]:
            w[p + name + ".weight"] = rng.standard_normal(shape) / np.sqrt(shape[1])
            w[p + name + ".bias"] = rng.standard_normal(shape[0]) * 0.1
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"] = 1 + rng.standard_normal(hidden) * 0.1
            w[p + ln + ".bias"] = rng.standard_normal(hidden) * 0.1
    config = {"hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers}
    return build_bert_encoder({k: v.astype(np.float32) for k, v in w.items()}, config)


def _feeds(batch=2, seq=9, vocab=40, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq - 3:] = 0  # padding: the mask must reach the fused op
    return {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64), "attention_mask": mask,
            "token_type_ids": np.zeros((batch, seq), np.int64)}


def _ops(m):
    return sorted(n.op_type for n in m.graph.nx.nodes)


@pytest.mark.parametrize("heads", [4, 2])
def test_fuse_transformer_on_bert_matches_float(heads):
    proto = _bert(heads=heads)
    feeds = _feeds()
    ref = ort_run(proto, feeds)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-transformer").run(m)[0]
    ops = _ops(m)
    assert ops.count("Attention") == 2 and ops.count("SkipLayerNormalization") == 4 and ops.count("BiasGelu") == 2
    assert "Softmax" not in ops and "Erf" not in ops
    att = [n for n in m.graph.nx.nodes if n.op_type == "Attention"]
    assert all(n.attrs["num_heads"] == heads and n.domain == "com.microsoft" for n in att)
    assert all(abs(n.attrs["scale"] - 1 / np.sqrt(32 // heads)) < 1e-6 for n in att)
    assert r.stats["fused"] == 8
    out = ort_run(tvmlite.export_model(m), feeds)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    got = run_model(m, feeds)
    np.testing.assert_allclose(got["last_hidden_state"], out[0], rtol=1e-4, atol=1e-4)


def _attention_block(k_two_step=False, scale_mul=False, mask="raw", seq_reshape_const=True):
    """One hand-written attention block ([1, 5, 8] input, 2 heads) in another exporter's spelling."""
    rng = np.random.default_rng(3)
    D, h, d = 8, 2, 4
    inits = [numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), n) for n in ("bq", "bk", "bv")]
    if seq_reshape_const:
        inits += [numpy_helper.from_array(np.array([1, 5, h, d], np.int64), "split"),
                  numpy_helper.from_array(np.array([1, 5, D], np.int64), "merge")]
    else:  # shapes computed from the input's, as exporters with dynamic axes write them
        inits += [numpy_helper.from_array(np.array([h, d], np.int64), "hd"),
                  numpy_helper.from_array(np.array([D], np.int64), "dd"),
                  numpy_helper.from_array(np.array([0], np.int64), "z1"),
                  numpy_helper.from_array(np.array([2], np.int64), "t1")]
    inits += [
              numpy_helper.from_array(np.array(0.5 if scale_mul else 2.0, np.float32), "c"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(-1e4, np.float32), "neg"),
              numpy_helper.from_array(np.array([1, 2], np.int64), "ax12")]
    nodes = [] if seq_reshape_const else [
        helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Slice", ["sh", "z1", "t1"], ["bs"]),
        helper.make_node("Concat", ["bs", "hd"], ["split"], axis=0),
        helper.make_node("Concat", ["bs", "dd"], ["merge"], axis=0)]
    for k in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{k}"], [f"{k}m"]),
                  helper.make_node("Add", [f"b{k}", f"{k}m"], [f"{k}l"]),  # bias first: commuted
                  helper.make_node("Reshape", [f"{k}l", "split"], [f"{k}r"])]
    nodes += [helper.make_node("Transpose", ["qr"], ["qh"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["vr"], ["vh"], perm=[0, 2, 1, 3])]
    if k_two_step:
        nodes += [helper.make_node("Transpose", ["kr"], ["kh"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2])]
    else:
        nodes += [helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1])]
    nodes += [helper.make_node("MatMul", ["qh", "kt"], ["s"]),
              helper.make_node("Mul" if scale_mul else "Div", ["s", "c"], ["ss"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, D] if seq_reshape_const else ["B", "S", D])]
    if mask == "raw":
        inputs.append(helper.make_tensor_value_info("m", TensorProto.INT64, [1, 5]))
        nodes += [helper.make_node("Unsqueeze", ["m", "ax12"], ["mu"]),
                  helper.make_node("Cast", ["mu"], ["mf"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["one", "mf"], ["mi"]),
                  helper.make_node("Mul", ["neg", "mi"], ["madd"]),
                  helper.make_node("Add", ["madd", "ss"], ["sm"])]
        scores = "sm"
    elif mask == "additive":  # a float mask given as is: not a form Attention takes
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, 1, 5]))
        nodes += [helper.make_node("Add", ["ss", "m"], ["sm"])]
        scores = "sm"
    else:
        scores = "ss"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["c4"]),
              helper.make_node("Transpose", ["c4"], ["ct"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ct", "merge"], ["y"])]
    dims = [1, 5, D] if seq_reshape_const else ["B", "S", D]
    g = helper.make_graph(nodes, "att", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((1, 5, D)).astype(np.float32)}
    if mask == "raw":
        feeds["m"] = np.array([[1, 1, 1, 0, 0]], np.int64)
    elif mask == "additive":
        feeds["m"] = np.array([[[[0, 0, 0, -1e4, -1e4]]]], np.float32)
    return model, feeds


@pytest.mark.parametrize("k_two_step,scale_mul,mask,const_shapes", [
    (False, False, "raw", True), (True, True, "raw", True), (True, False, "none", True), (False, True, "none", True),
    (False, False, "raw", False)])
def test_attention_spellings_fuse_and_match(k_two_step, scale_mul, mask, const_shapes):
    model, feeds = _attention_block(k_two_step, scale_mul, mask, const_shapes)
    ref = ort_run(model, feeds)[0]
    m = tvmlite.load(model)
    r = Pipeline("fuse-transformer").run(m)[0]
    assert _ops(m).count("Attention") == 1 and "Softmax" not in _ops(m), r.skipped
    att = next(n for n in m.graph.nx.nodes if n.op_type == "Attention")
    assert att.attrs["num_heads"] == 2 and abs(att.attrs["scale"] - 0.5) < 1e-7
    assert bool(len(att.inputs) > 3 and att.inputs[3]) == (mask == "raw")
    np.testing.assert_allclose(ort_run(tvmlite.export_model(m), feeds)[0], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run_model(m, feeds)["y"], ref, rtol=1e-4, atol=1e-5)


def test_mask_of_another_form_is_refused_with_a_reason():
    model, feeds = _attention_block(mask="additive")
    m = tvmlite.load(model)
    before = _ops(m)
    r = Pipeline("fuse-transformer").run(m)[0]
    assert _ops(m) == before
    assert any("attention: mask" in why and "(1 - mask) * c" in why for _, why in r.skipped)


def test_projection_read_elsewhere_is_refused():
    model, _ = _attention_block()
    model.graph.output.append(helper.make_tensor_value_info("kl", TensorProto.FLOAT, [1, 5, 8]))
    m = tvmlite.load(model)
    r = Pipeline("fuse-transformer").run(m)[0]
    assert "Attention" not in _ops(m) and any("read elsewhere" in why for _, why in r.skipped)


def test_quantize_dynamic_attention_writes_qattention():
    proto = _bert()
    feeds = _feeds()
    ref = ort_run(proto, feeds)
    m = tvmlite.load(proto)
    r = Pipeline("quantize-dynamic(attention=true)").run(m)[0]
    ops = _ops(m)
    assert ops.count("QAttention") == 2 and "Attention" not in ops and "Softmax" not in ops
    assert ops.count("MatMulInteger") == 6  # attention output, ffn up and down per layer
    assert r.stats["fused"] == 2 and sum(d.get("form") == "QAttention" for d in r.decisions) == 2
    out = ort_exact(tvmlite.export_model(m), feeds)  # exact u8u8 where onnxruntime's u8s8 would saturate
    emb_cos = (out[1] * ref[1]).sum(1)
    assert emb_cos.min() > 0.99
    got = run_model(m, feeds)
    # int8 rounding of the same products: NumPy and onnxruntime agree to a small fraction of the range
    assert np.abs(got["last_hidden_state"] - out[0]).max() < 0.05 * np.abs(out[0]).max()
    plain = tvmlite.load(proto)
    Pipeline("quantize-dynamic").run(plain)
    assert "QAttention" not in _ops(plain) and _ops(plain).count("MatMulInteger") == 12


@pytest.mark.parametrize("spec", ["quantize-dynamic(attention=maybe)", "fuse-transformer(gelu=2)",
                                  "fuse-transformer(heads=4)"])
def test_bad_options_are_refused(spec):
    with pytest.raises(OptionError):
        parse_spec(spec)


def test_cli_bad_option_exits_2_and_writes_nothing(tmp_path):
    assert "attention" in refused_passes(tmp_path, _attention_block()[0], "fuse-transformer(attention=perhaps)")


def _gelu_model(form):
    """y = GELU(x + b) in one of three spellings (or tanh Gelu, which must stay)."""
    rng = np.random.default_rng(5)
    c = lambda v, n: numpy_helper.from_array(np.array(v, np.float32), n)  # noqa: E731
    inits = [numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"), c(np.sqrt(2), "r2"),
             c(1 / np.sqrt(2), "ir2"), c(1.0, "one"), c(0.5, "half")]
    nodes = [helper.make_node("Add", ["x", "b"], ["xb"])]
    opset = 17
    if form == "half_first":  # (x * 0.5) * (1 + erf(x * 1/sqrt2)), HF's torch export
        nodes += [helper.make_node("Mul", ["xb", "ir2"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
                  helper.make_node("Add", ["one", "e"], ["e1"]), helper.make_node("Mul", ["xb", "half"], ["h"]),
                  helper.make_node("Mul", ["h", "e1"], ["y"])]
    else:
        opset = 20
        nodes += [helper.make_node("Gelu", ["xb"], ["y"], approximate="tanh" if form == "tanh" else "none")]
    g = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, {"x": (rng.standard_normal((3, 6)) * 2).astype(np.float32)}


@pytest.mark.parametrize("form", ["half_first", "op", "tanh"])
def test_gelu_spellings(form):
    model, feeds = _gelu_model(form)
    ref = ort_run(model, feeds)[0]
    m = tvmlite.load(model)
    r = Pipeline("fuse-transformer").run(m)[0]
    if form == "tanh":
        assert "BiasGelu" not in _ops(m) and any("tanh" in why for _, why in r.skipped)
        return
    assert _ops(m) == ["BiasGelu"]
    np.testing.assert_allclose(ort_run(tvmlite.export_model(m), feeds)[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_model(m, feeds)["y"], ref, rtol=1e-5, atol=1e-6)


def test_skip_layernorm_keeps_a_sum_read_elsewhere():
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), n) for n in ("g", "be", "bias")]
    nodes = [helper.make_node("Add", ["a", "bias"], ["ab"]), helper.make_node("Add", ["ab", "s"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "g", "be"], ["y"], axis=-1, epsilon=1e-5)]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 8]) for n in ("a", "s", "y", "sum")]
    model = helper.make_model(helper.make_graph(nodes, "sln", vi[:2], vi[2:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {k: rng.standard_normal((2, 3, 8)).astype(np.float32) for k in ("a", "s")}
    ref = ort_run(model, feeds)
    m = tvmlite.load(model)
    Pipeline("fuse-transformer").run(m)
    assert _ops(m) == ["SkipLayerNormalization"]
    node = next(iter(m.graph.nx.nodes))
    assert node.inputs[4] == "bias"  # the bias Add folded in
    for got, want in zip(ort_run(tvmlite.export_model(m), feeds), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = run_model(m, feeds)
    np.testing.assert_allclose(got["sum"], ref[1], rtol=1e-6, atol=1e-6)
