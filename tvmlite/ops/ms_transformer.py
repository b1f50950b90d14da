"""Reference kernels for onnxruntime's fused transformer ops (com.microsoft domain): Attention,
QAttention, SkipLayerNormalization, BiasGelu and Gelu, as the ``fuse-transformer`` pass and
``quantize-dynamic(attention=true)`` write them.

They follow onnxruntime's contrib-operator specs and its CPU kernels (checked against onnxruntime in
tests/test_ms_transformer_ops.py):

- ``Attention(input, weights, bias?, mask_index?, ...)``: one packed projection
  ``input [B, S, D] @ weights [D, 3H] + bias [3H]``, split into Q, K, V of H columns each (or of
  ``qkv_hidden_sizes``), ``num_heads`` heads each, ``softmax(Q K^T * scale + mask) V`` with
  ``scale`` 1/sqrt(head size) unless given. Masks: a raw 0/1 mask [B, T] or [B, S, T] (a position
  whose mask is 0 gets ``mask_filter_value``, default -10000, added to its score, as onnxruntime's
  CPU kernel does: ``mask > 0 ? 0 : mask_filter_value``) or [B] end positions (keys at or past the
  end masked). Past/present state, attention_bias, rotary embeddings, unidirectional masks and
  start/end index pairs are refused with a one-line error rather than half supported.
- ``QAttention``: the same with the projection in integers: ``(input - input_zp) @ (weight -
  weight_zp)`` accumulated exactly (int32 semantics), times ``input_scale * weight_scale`` (scalar or
  per column) plus bias; onnxruntime computes the same products, so the NumPy result differs from it
  by float rounding only.
- ``SkipLayerNormalization(input, skip, gamma, beta?, bias?)``: LayerNorm over the last axis of
  ``input + skip (+ bias)``; optional outputs mean, inv_std_var and the sum itself.
- ``BiasGelu(A, B)`` = Gelu(A + B) and ``Gelu(X)``, both the exact erf form.
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ir.builder import MS_DOMAIN
from tvmlite.ops.activations import gelu
from tvmlite.ops.registry import kernel

DEFAULT_MASK_FILTER = -10000.0


def _softmax_last(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def _split_sizes(total: int, qkv_hidden_sizes, op: str) -> tuple[int, int, int]:
    if qkv_hidden_sizes is None or len(qkv_hidden_sizes) == 0:
        if total % 3:
            raise UnsupportedError(f"{op}: the packed projection's width {total} is not a multiple of 3")
        return (total // 3,) * 3
    sizes = tuple(int(s) for s in qkv_hidden_sizes)
    if len(sizes) != 3 or sum(sizes) != total or sizes[0] != sizes[1]:
        raise UnsupportedError(f"{op}: qkv_hidden_sizes={list(sizes)} does not split a width of {total} "
                               "into Q and K of one size and V")
    return sizes


def _additive_mask(mask, batch: int, seq: int, total: int, filter_value: float, op: str):
    """The mask as an additive float array broadcastable to [B, heads, S, T] (None without one)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 1 and m.shape[0] == batch:
        end = m.astype(np.int64)
        keep = np.arange(total)[None, :] < end[:, None]  # [B, T]
        return np.where(keep, 0.0, filter_value).astype(np.float32)[:, None, None, :]
    if m.ndim == 2 and m.shape == (batch, total):
        return np.where(m > 0, 0.0, filter_value).astype(np.float32)[:, None, None, :]
    if m.ndim == 3 and m.shape == (batch, seq, total):
        return np.where(m > 0, 0.0, filter_value).astype(np.float32)[:, None, :, :]
    raise UnsupportedError(f"{op}: mask_index of shape {list(m.shape)} is not [B], [B, T] or [B, S, T] "
                           f"for B={batch}, S={seq}, T={total} (start/end pairs and 4-D masks not supported)")


def _refuse(op: str, **given) -> None:
    for what, value in given.items():
        if value is not None and (not isinstance(value, (int, float)) or value):
            raise UnsupportedError(f"{op}: {what} is not supported by the NumPy kernel")


def attend(qkv: np.ndarray, num_heads: int, scale, mask, mask_filter_value, qkv_hidden_sizes, op: str):
    """softmax(Q K^T * scale + mask) V over heads, from the packed projection ``qkv`` [B, S, 3H]."""
    if qkv.ndim != 3:
        raise UnsupportedError(f"{op}: input must be 3-D [batch, sequence, hidden], got rank {qkv.ndim}")
    B, S, total = qkv.shape
    hq, hk, hv = _split_sizes(total, qkv_hidden_sizes, op)
    h = int(num_heads)
    if h < 1 or hq % h or hv % h:
        raise UnsupportedError(f"{op}: num_heads={h} does not divide the Q/K ({hq}) and V ({hv}) widths")
    d, dv = hq // h, hv // h
    q = qkv[..., :hq].reshape(B, S, h, d).transpose(0, 2, 1, 3)
    k = qkv[..., hq:hq + hk].reshape(B, S, h, d).transpose(0, 2, 3, 1)
    v = qkv[..., hq + hk:].reshape(B, S, h, dv).transpose(0, 2, 1, 3)
    alpha = float(scale) if scale else 1.0 / math.sqrt(d)
    scores = np.matmul(q, k) * np.float32(alpha)
    filt = DEFAULT_MASK_FILTER if mask_filter_value is None else float(mask_filter_value)
    add = _additive_mask(mask, B, S, S, filt, op)
    if add is not None:
        scores = scores + add
    probs = _softmax_last(scores.astype(np.float32, copy=False))
    ctx = np.matmul(probs, v)  # [B, h, S, dv]
    return ctx.transpose(0, 2, 1, 3).reshape(B, S, hv).astype(qkv.dtype, copy=False)


@kernel("Attention", domain=MS_DOMAIN)
def attention(x, weights, bias=None, mask_index=None, past=None, attention_bias=None, past_sequence_length=None,
              *, num_heads, scale=None, mask_filter_value=None, qkv_hidden_sizes=None, unidirectional=0,
              do_rotary=0, rotary_embedding_dim=None, past_present_share_buffer=0):
    _refuse("Attention", past=past, attention_bias=attention_bias, past_sequence_length=past_sequence_length,
            unidirectional=unidirectional, do_rotary=do_rotary, past_present_share_buffer=past_present_share_buffer)
    x = np.asarray(x)
    qkv = np.matmul(x, np.asarray(weights).astype(x.dtype, copy=False))
    if bias is not None:
        qkv = qkv + np.asarray(bias).astype(x.dtype, copy=False)
    return attend(qkv, num_heads, scale, mask_index, mask_filter_value, qkv_hidden_sizes, "Attention")


def int_matmul(a, a_zero, b, b_zero) -> np.ndarray:
    """(a - a_zero) @ (b - b_zero) exactly, as float64 (int32 accumulation semantics; float64 holds
    every sum of int8 products below 2**53)."""
    a = np.asarray(a).astype(np.float64) - (0.0 if a_zero is None else np.asarray(a_zero).astype(np.float64))
    b = np.asarray(b).astype(np.float64) - (0.0 if b_zero is None else np.asarray(b_zero).astype(np.float64))
    return np.matmul(a, b)


@kernel("QAttention", domain=MS_DOMAIN)
def qattention(x, weight, bias, input_scale, weight_scale, mask_index=None, input_zero_point=None,
               weight_zero_point=None, past=None, *, num_heads, scale=None, mask_filter_value=None,
               unidirectional=0, do_rotary=0, past_present_share_buffer=0):
    _refuse("QAttention", past=past, unidirectional=unidirectional, do_rotary=do_rotary,
            past_present_share_buffer=past_present_share_buffer)
    x, w = np.asarray(x), np.asarray(weight)
    if x.dtype not in (np.uint8, np.int8) or w.dtype not in (np.uint8, np.int8) or w.ndim != 2:
        raise UnsupportedError(f"QAttention: input {x.dtype} and weight {w.dtype}{list(w.shape)} are not "
                               "8-bit integers with a 2-D weight")
    ws = np.asarray(weight_scale).astype(np.float32).reshape(-1)
    wz = None if weight_zero_point is None else np.asarray(weight_zero_point).reshape(-1)
    if ws.size not in (1, w.shape[1]) or (wz is not None and wz.size not in (1, w.shape[1])):
        raise UnsupportedError(f"QAttention: weight_scale/zero point of {ws.size} values are neither per tensor "
                               f"nor per column ({w.shape[1]})")
    acc = int_matmul(x, input_zero_point, w, wz)
    bias = np.asarray(bias).astype(np.float32)
    qkv = (acc.astype(np.float32) * (np.float32(np.asarray(input_scale).reshape(())) * ws)) + bias
    return attend(qkv.astype(np.float32), num_heads, scale, mask_index, mask_filter_value, None, "QAttention")


@kernel("SkipLayerNormalization", domain=MS_DOMAIN)
def skip_layer_normalization(x, skip, gamma, beta=None, bias=None, *, epsilon=1e-12):
    x = np.asarray(x)
    dt = x.dtype
    s = x + np.asarray(skip).astype(dt, copy=False)
    if bias is not None:
        s = s + np.asarray(bias).astype(dt, copy=False)
    sa = s.astype(np.float32, copy=False)
    mean = sa.mean(axis=-1, keepdims=True)
    d = sa - mean
    inv = np.float32(1) / np.sqrt(np.mean(np.square(d), axis=-1, keepdims=True) + np.float32(epsilon))
    y = (d * inv).astype(dt, copy=False) * np.asarray(gamma).astype(dt, copy=False)
    if beta is not None:
        y = y + np.asarray(beta).astype(dt, copy=False)
    return y.astype(dt, copy=False), mean, inv, s


@kernel("BiasGelu", domain=MS_DOMAIN)
def bias_gelu(a, b):
    a = np.asarray(a)
    return gelu(a + np.asarray(b).astype(a.dtype, copy=False))


@kernel("Gelu", domain=MS_DOMAIN)
def ms_gelu(x):
    return gelu(np.asarray(x))
