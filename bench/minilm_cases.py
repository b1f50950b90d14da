"""Inputs the MiniLM benches share: the encoder's feeds at sequence 128 (batch 1), and the fused
attention scores case (12 heads x 128 x 32 @ 32 x 128, a scale, a key mask, Softmax) with its
float64 reference."""
import numpy as np


def encoder_feeds(model) -> dict:
    """Random token ids (seeded), all-ones attention mask, zero token types, by the model's inputs."""
    ids = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
    named = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: named[i.name] for i in model.graph.input}


def scores_case(op: str, c: float):
    """(feeds {q, k, mask}, the kernel's Epilogue: ``op`` ("Mul" or "Div") by ``c`` then + mask,
    Softmax(q @ k op c + mask) in float64)."""
    from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 12, 128, 32)).astype(np.float32)
    k = rng.standard_normal((1, 12, 32, 128)).astype(np.float32)
    mask = np.where(rng.random((1, 1, 1, 128)) < 0.1, -1e4, 0.0).astype(np.float32)
    s = q.astype(np.float64) @ k
    s = (s * np.float32(c) if op == "Mul" else s / np.float32(c)) + mask
    e = np.exp(s - s.max(-1, keepdims=True))
    epi = Epilogue([EwOp(op, [("const", np.array(c, np.float32))]), EwOp("Add", [("value", "mask", mask.shape)])])
    return {"q": q, "k": k, "mask": mask}, epi, e / e.sum(-1, keepdims=True)
