"""Data-aware int8 weight rounding for Conv/Gemm/MatMul: GPTQ error compensation and bias correction.

Nearest rounding treats every weight alone. With the layer's calibration inputs X (a Conv's as its
im2col matrix: one row per output pixel, one column per (input channel, ky, kx)) the output error of
a rounded weight matrix W [K, N] is ``||X dW||^2 = tr(dW^T H dW)`` with ``H = X^T X``:

- ``gptq``: quantize W one input row at a time on the layer's usual per-output-channel int8 grid
  (scale max|w| / 127, codes -127..127; / 63 and -63..63 for quantize's 7-bit weights, reduce_range),
  so the written model is the same QDQ / Cast+Mul form) and push
  each row's rounding error onto the rows not yet rounded (tvmlite/quant/gptq.py's update, one block
  = all of K, i.e. one scale per output channel). Depthwise convs (a K of kh*kw per channel) are
  rounded to nearest; their bias is still corrected.
- ``bias correction``: the rounded layer's outputs are off on average by ``E[x] dW``; subtracting that
  from the bias (one added if the layer had none) removes the mean error (Nagel et al. 2019). A MatMul
  has no bias input: not corrected.

Both use the float model's activations (not re-captured after earlier layers are rounded).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.quant.calibrate import _feed_batches, _runner
from tvmlite.quant.gptq import _inverse_cholesky_upper
from tvmlite.quant.params import quantize_weight, weight_scales

#: im2col rows kept per layer and batch: the Hessian of a 640x640 detector's early layers from every
#: pixel costs minutes and says no more than a strided sample of them
MAX_ROWS = 16384
OPS = ("Conv", "Gemm", "MatMul")
#: rows rounded between two GEMM updates of the rows after them (GPTQ's lazy batch update)
LAZY_BLOCK = 128
METHODS = ("nearest", "gptq")


@dataclass
class RoundedWeight:
    """int8 codes and scales (per output channel, along ``axis``) of one weight, and the corrected
    bias (None: bias correction off or nothing to correct)."""

    q: np.ndarray
    scales: np.ndarray
    axis: int
    bias: np.ndarray | None = None


def weight_axis(node: Node, w: np.ndarray) -> int:
    """The output-channel axis of a Conv/Gemm/MatMul weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return w.ndim - 1


def why_not(g: Graph, node: Node) -> str | None:
    """Why ``node``'s weight is not rounded from data (None: it is)."""
    if node.op_type not in OPS or len(node.inputs) < 2:
        return "not a Conv/Gemm/MatMul"
    w = g.const_value(node.inputs[1])
    if w is None or w.dtype != np.float32 or w.ndim < 2 or not np.isfinite(w).all():
        return "weight is not a finite float32 constant"
    if node.op_type == "Conv":
        group = node.attrs.get("group", 1)
        if group != 1 and (group != w.shape[0] or w.shape[1] != 1):
            return "grouped conv that is not depthwise"
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "auto_pad SAME_*"
        if w.ndim != 4 and any(k != 1 for k in w.shape[2:]):
            return "only 2-D or 1x1 convs"
    elif node.op_type == "Gemm" and node.attrs.get("transA", 0):
        return "Gemm with transA"
    elif node.op_type == "MatMul" and w.ndim != 2:
        return "batched MatMul weight"
    return None


def depthwise(node: Node) -> bool:
    return node.op_type == "Conv" and node.attrs.get("group", 1) != 1


def as_matrix(node: Node, w: np.ndarray) -> np.ndarray:
    """The weight as W [K, N] with y = x_row @ W (a depthwise conv's as if it were dense: its
    channels' blocks on the diagonal, see :func:`_mean_error`)."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1).T
    if node.op_type == "Gemm" and node.attrs.get("transB", 0):
        return w.T
    return w


def from_matrix(node: Node, m: np.ndarray, shape) -> np.ndarray:
    if node.op_type == "Conv":
        return m.T.reshape(shape)
    if node.op_type == "Gemm" and node.attrs.get("transB", 0):
        return m.T
    return m


def input_rows(node: Node, x: np.ndarray, w_shape) -> np.ndarray:
    """The layer's input as rows [M, K] matching :func:`as_matrix` (im2col for a Conv)."""
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])
    c = x.shape[1]
    kernel = list(w_shape[2:])
    if all(k == 1 for k in kernel) and not any(node.attrs.get("pads", [])) \
            and all(s == 1 for s in node.attrs.get("strides", [1])):
        return np.moveaxis(x, 1, -1).reshape(-1, c)
    kh, kw = kernel
    sh, sw = node.attrs.get("strides", [1, 1])
    dh, dw = node.attrs.get("dilations", [1, 1])
    t, l_, b, r = node.attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l_, r)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [B, C, Ho, Wo, kh, kw]
    every = max(1, win.shape[0] * win.shape[2] * win.shape[3] // (2 * MAX_ROWS))
    win = win[:, :, ::every]  # every k-th output row only: the copy below is the big one
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)


class InputStats:
    """Running ``H = X^T X`` (float64; None when not ``hessian``), the row sum and the row count of
    one layer's input rows."""

    def __init__(self, k: int, hessian: bool = True):
        self.h = np.zeros((k, k)) if hessian else None
        self.sum = np.zeros(k)
        self.rows = 0

    def update(self, rows: np.ndarray) -> None:
        step = max(1, rows.shape[0] // MAX_ROWS)
        r = rows[::step].astype(np.float64)
        if self.h is not None:
            self.h += r.T @ r
        self.sum += r.sum(0)
        self.rows += r.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)


def gptq_int8(w: np.ndarray, h: np.ndarray, scales: np.ndarray, damp: float = 0.01, qmax: int = 127
              ) -> np.ndarray:
    """Codes (-qmax..qmax) of ``w`` [K, N] on the fixed grid ``scales`` [N] (one per column), each
    row's rounding error spread over the later rows through the inverse Cholesky factor of ``h``."""
    w = np.array(w, np.float64)
    k = w.shape[0]
    h = np.array(h, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    u = _inverse_cholesky_upper(h)
    s = scales.astype(np.float64)
    q = np.zeros(w.shape, np.int8)
    for lo in range(0, k, LAZY_BLOCK):
        hi = min(k, lo + LAZY_BLOCK)
        errs = np.zeros((hi - lo, w.shape[1]))
        for i in range(lo, hi):
            code = np.clip(np.rint(w[i] / s), -qmax, qmax)
            q[i] = code
            errs[i - lo] = (w[i] - code * s) / u[i, i]
            w[i + 1:hi] -= np.outer(u[i, i + 1:hi], errs[i - lo])
        w[hi:] -= u[lo:hi, hi:].T @ errs  # the block's errors reach the later rows in one GEMM
    return q


def round_weight(node: Node, w: np.ndarray, bias: np.ndarray | None, stats: InputStats | None,
                 method: str, correct_bias: bool, qmax: int = 127) -> RoundedWeight:
    """int8 codes (-qmax..qmax) of one layer's weight by ``method`` (nearest or gptq) and, with
    ``correct_bias``, its bias shifted by the mean output error on the calibration inputs."""
    axis = weight_axis(node, w)
    scales = weight_scales(w, axis, qmax)
    if method not in METHODS:
        raise ValueError(f"weight rounding {method!r} is not one of {', '.join(METHODS)}")
    if method == "gptq" and stats is not None and stats.rows and stats.h is not None:
        mat = as_matrix(node, w)
        q = from_matrix(node, gptq_int8(mat, stats.h, scales, qmax=qmax), w.shape)
    else:
        q = quantize_weight(w, scales, axis, qmax)
    out = RoundedWeight(q, scales, axis)
    if correct_bias and stats is not None and stats.rows and node.op_type != "MatMul":  # no bias input
        shape = [1] * w.ndim
        shape[axis] = -1
        shift = _mean_error(node, w, q.astype(np.float64) * scales.reshape(shape), stats.mean)
        base = np.zeros(shift.shape) if bias is None else np.broadcast_to(bias.reshape(-1), shift.shape)
        out.bias = (base - shift).astype(np.float32)
    return out


def _mean_error(node: Node, w: np.ndarray, deq: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """E[x] dW per output channel; a depthwise channel c reads only its own kh*kw input columns."""
    dw = as_matrix(node, deq) - as_matrix(node, w).astype(np.float64)  # [K, N]
    if depthwise(node):
        kk = dw.shape[0]
        return np.einsum("ck,kc->c", mean.reshape(-1, kk), dw)
    return mean @ dw


def input_stats(model: Model, calib, nodes: list[Node], *, hessian: bool = True, batch_size: int = 16,
                threads: int = 2) -> dict[str, InputStats]:
    """Per node key (first output), the Hessian and mean of its input rows on the calibration data."""
    g = model.graph
    tensors = list(dict.fromkeys(n.inputs[0] for n in nodes))
    shapes = {n.outputs[0]: g.const_value(n.inputs[1]).shape for n in nodes}
    stats = {}
    for n in nodes:
        w = g.const_value(n.inputs[1])
        k = w.shape[0] * w.shape[1] * int(np.prod(w.shape[2:])) if depthwise(n) else as_matrix(n, w).shape[0]
        stats[n.outputs[0]] = InputStats(k, hessian=hessian and not depthwise(n))
    run = _runner(model, tensors, "ort", threads)
    for feeds in _feed_batches(model, calib, batch_size):
        values = dict(zip(tensors, run(feeds)))
        for n in nodes:
            stats[n.outputs[0]].update(input_rows(n, values[n.inputs[0]], shapes[n.outputs[0]]))
    return stats


def round_weights(model: Model, calib, keys, *, method: str = "gptq", correct_bias: bool = False,
                  batch_size: int = 16, threads: int = 2, qmax: int | dict = 127) -> dict[str, RoundedWeight]:
    """Weight tensor name -> its data-aware int8 rounding (codes -qmax..qmax; ``qmax`` a dict: per
    node key, 127 for the keys it lacks), for the Conv/Gemm/MatMul nodes whose key
    (qdq.node_key: first output) is in ``keys`` and :func:`why_not` allows."""
    g = model.graph
    keys = set(keys)
    nodes = [n for n in g.toposort() if n.outputs and n.outputs[0] in keys and why_not(g, n) is None
             and g.num_uses(n.inputs[1]) == 1]
    if not nodes:
        return {}
    stats = input_stats(model, calib, nodes, hessian=method == "gptq", batch_size=batch_size, threads=threads)
    out = {}
    for n in nodes:
        w = g.const_value(n.inputs[1])
        b = g.const_value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        if len(n.inputs) > 2 and n.inputs[2] and b is None:
            continue  # a computed bias: nothing to shift
        out[n.inputs[1]] = round_weight(n, w, b, stats[n.outputs[0]], method,
                                        correct_bias and _bias_correctable(n, w, b),
                                        qmax.get(n.outputs[0], 127) if isinstance(qmax, dict) else qmax)
    return out


def _bias_correctable(node: Node, w: np.ndarray, b: np.ndarray | None) -> bool:
    """A per-output-channel (or scalar) bias added once: not Gemm's alpha/beta scaled or [M, N] C."""
    if node.op_type == "Gemm" and (node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
        return False
    return b is None or b.size in (1, w.shape[weight_axis(node, w)])
