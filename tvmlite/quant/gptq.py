"""GPTQ (Frantar et al. 2022): block-wise weight quantization that compensates each weight's rounding
error on the weights not yet quantized, using calibration activations.

For Y = X @ W with W [K, N], the output error of a quantized W is ``tr(dW^T H dW)`` with
``H = X^T X`` (K x K). Quantizing W one input row k at a time and spreading row k's error
``(w_k - q_k) / [H^-1]_kk`` over the later rows through ``[H^-1]_k,k:`` (the Cholesky factor of H^-1,
so each step is one rank-1 update) minimises that error greedily; blocks (groups) get their scale and
zero point from the weights as updated when the block is reached. ``H`` is damped by 1% of its mean
diagonal (the paper's default) so that inputs that never vary do not make it singular; inputs that
are always zero have their weights dropped (any value is exact for them).

Activations are those of the float model (not re-captured after each layer is quantized).
"""
from __future__ import annotations

import numpy as np

from tvmlite.quant.blockwise import BlockQuant, _codes, quantize_blocks


def gptq_blocks(w: np.ndarray, h: np.ndarray, *, block: int, bits: int, symmetric: bool = True,
                method: str = "minmax", damp: float = 0.01) -> BlockQuant:
    """Quantize ``w`` [K, N] in blocks of ``block`` along K (axis 0), given ``h`` = X^T X [K, K]."""
    w = np.array(w, dtype=np.float64)  # a copy: rows are updated as the error is spread
    K, N = w.shape
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(K)] += damp * float(np.mean(np.diag(h)))
    hinv = _inverse_cholesky_upper(h)
    q = np.zeros((K, N), np.int16)
    kb = -(-K // block)
    scales = np.zeros((kb, N), np.float32)
    zps = None if symmetric else np.zeros((kb, N), np.int16)
    for b in range(kb):
        lo_k, hi_k = b * block, min(K, (b + 1) * block)
        # the block's scale from its weights as updated so far (method: min-max or MSE clipping)
        part = quantize_blocks(w[lo_k:hi_k].astype(np.float32), axis=0, block=block, bits=bits,
                               symmetric=symmetric, method=method)
        s = part.scale.reshape(N)
        scales[b] = s
        z = None if symmetric else part.zero_point.reshape(N).astype(np.float32)
        if zps is not None:
            zps[b] = z
        errs = np.zeros((hi_k - lo_k, N))
        for k in range(lo_k, hi_k):
            code = _codes(w[k].astype(np.float32)[:, None], s, z, bits)[:, 0]
            q[k] = code.astype(np.int16)
            deq = (code - (0 if z is None else z)) * s
            err = (w[k] - deq) / hinv[k, k]
            errs[k - lo_k] = err
            w[k + 1:hi_k] -= np.outer(hinv[k, k + 1:hi_k], err)
        # the block's errors reach the later blocks in one GEMM (GPTQ's lazy batch update)
        w[hi_k:] -= hinv[lo_k:hi_k, hi_k:].T @ errs
    return BlockQuant(q=q, scale=scales, zero_point=zps, axis=0, block=block, bits=bits)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), retrying with more damping if H is not
    positive definite in floating point."""
    eye = np.eye(h.shape[0])
    extra = 0.0
    for _ in range(6):
        try:
            inv = np.linalg.inv(np.linalg.cholesky(h + extra * eye))
            return np.linalg.cholesky(inv.T @ inv).T
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(h))))
    raise np.linalg.LinAlgError("H stays singular after damping")
