"""SmoothQuant-style scaling (Xiao et al. 2022) for dynamic int8 MatMuls.

Dynamic int8 quantizes each activation with one range for the whole tensor, so one outlier channel
(transformer LayerNorm outputs and Gelu outputs have a few channels 10-20x the median) spends most
of the 256 codes and the other channels keep a handful. For ``Y = X @ W`` the same product is
``(X / s) @ (diag(s) W)``: a per-input-channel ``s`` moves range from the activation into the
weight, which is quantized per output column and absorbs it with little loss. SmoothQuant's choice
``s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha)`` balances the two (its default alpha: 0.5).

The activation statistics come from calibration inputs run through the float model (NumPy backend):
every position counts, padding too, because the run-time quantizer's range covers them as well.

One alpha does not fit every activation (all-MiniLM-L6, 32 sentences, embedding cosine min against
float: alpha 0.5 0.9885, 0.6 0.9963, 0.7 0.9966, 0.8 0.9926, 0.9 0.9839; none 0.9846), so
``choose_alpha`` picks it per activation: the alpha (or none) whose simulated dynamic int8 product
(DynamicQuantizeLinear's per-tensor uint8 range per sample, int8 weights per column) is closest to
the float product on the calibration activations. That local choice is not the best for the
model: it picked 0.8 for most MiniLM activations and reached cosine min 0.9937, below a fixed 0.7,
so the default preset uses ``smooth=0.7``; ``auto`` is there for models where one alpha is wrong.
"""
from __future__ import annotations

import numpy as np

from tvmlite.backends.numpy.capture import capture_values
from tvmlite.calibration import load_calibration
from tvmlite.ir.graph import Model
from tvmlite.ops.quant import dynamic_quantize_linear
from tvmlite.quant.params import quantize_weight, weight_scales

#: alphas choose_alpha tries (0: no smoothing)
ALPHAS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
#: calibration rows (tokens) captured per activation for its channel ranges
CAPTURE_ROWS = 8192
#: of those, the rows the error simulation runs on (a float GEMM per alpha tried): 4 sentences of 128
#: tokens take ~15 s for all of MiniLM's 24 activations on a loaded 2-core host, 16 took ~75 s
SIMULATE_ROWS = 512


def capture_samples(model: Model, names: list[str], calibration) -> dict[str, list[np.ndarray]]:
    """Each named float activation over the calibration data (``calibration``: anything
    ``load_calibration`` takes; None: random inputs) as a list of 2-D [rows, channels] arrays, one
    per sample (the first axis of a tensor of rank >= 3 is its batch: dynamic quantization takes
    one range per run, so per sample at batch 1); it stops once CAPTURE_ROWS rows are in."""
    if not names:
        return {}
    calib = load_calibration(calibration, model)
    groups = list(calib._groups()) if hasattr(calib, "_groups") else list(calib)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in groups:
        got = capture_values(model, names, feeds)
        for n in names:
            x = np.asarray(got[n], np.float32)
            rows = sum(p.shape[0] for p in out[n])
            for p in (list(x) if x.ndim >= 3 else [x]):
                if rows >= CAPTURE_ROWS:
                    break
                out[n].append(p.reshape(-1, x.shape[-1]))
                rows += out[n][-1].shape[0]
        if all(sum(p.shape[0] for p in out[n]) >= CAPTURE_ROWS for n in names):
            break
    return out


def _dynamic_int8_product(xs: list[np.ndarray], w: np.ndarray) -> list[np.ndarray]:
    """X @ W as quantize-dynamic computes it: X per sample to uint8 (DynamicQuantizeLinear), W int8
    per column."""
    ws = weight_scales(w, 1)
    wd = quantize_weight(w, ws, 1).astype(np.float32) * ws
    out = []
    for x in xs:
        q, sc, zp = dynamic_quantize_linear(x)
        out.append(((q.astype(np.float32) - np.float32(zp)) * sc) @ wd)
    return out


def choose_alpha(xs: list[np.ndarray], w: np.ndarray, alphas=ALPHAS) -> tuple[float, np.ndarray, dict]:
    """The alpha whose smoothed dynamic int8 ``X @ W`` is closest to float on ``xs`` (per-sample 2-D
    activations; the ranges from all, the products on the first SIMULATE_ROWS rows), its ``s``, and
    each alpha's relative squared error."""
    absmax = np.max([np.abs(x).max(axis=0) for x in xs], axis=0)
    if len(alphas) == 1:  # nothing to choose: no simulated products (each costs a float GEMM)
        return alphas[0], smooth_scales(absmax, w, alphas[0]), {}
    keep, rows = [], 0
    for x in xs:
        if rows >= SIMULATE_ROWS:
            break
        keep.append(x)
        rows += x.shape[0]
    xs = keep
    ref = [x @ w for x in xs]
    norm = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref) or 1.0
    best, errs = None, {}
    for a in alphas:
        s = smooth_scales(absmax, w, a) if a > 0 else np.ones(w.shape[0], np.float32)
        got = _dynamic_int8_product([x / s for x in xs], w * s[:, None])
        errs[a] = sum(float(np.sum((g - r).astype(np.float64) ** 2)) for g, r in zip(got, ref)) / norm
        if best is None or errs[a] < errs[best[0]]:
            best = (a, s)
    return best[0], best[1], errs


def smooth_scales(x_absmax: np.ndarray, w: np.ndarray, alpha: float, *, floor: float = 1e-5) -> np.ndarray:
    """``s`` [K] for ``X @ W`` (``w`` [K, N], the weights of every reader of X side by side):
    ``max|X_j|^alpha / max|W_j,:|^(1-alpha)``, 1 where a channel or its weights are all zero (nothing
    to balance), normalised so its geometric mean is 1 (the overall scale belongs to neither side)."""
    xa = np.asarray(x_absmax, np.float64)
    wa = np.abs(np.asarray(w, np.float64)).max(axis=1)
    live = (xa > floor) & (wa > floor)
    s = np.ones_like(xa)
    s[live] = xa[live] ** alpha / wa[live] ** (1.0 - alpha)
    if live.any():
        s[live] /= np.exp(np.mean(np.log(s[live])))
    return s.astype(np.float32)
