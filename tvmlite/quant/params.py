"""Scale and zero point from a float range (seed 001's formulas), and weight/bias quantization.

    scale      = (max_f - min_f) / (max_int - min_int)
    zero_point = round(min_int - min_f / scale)        (clamped to [min_int, max_int])
    q          = saturate(round(x / scale) + zero_point),   x ~= scale * (q - zero_point)

The range is first widened to include 0, so zero is exactly representable (padding, ReLU outputs).
Symmetric quantization uses the restricted range -127..127 with zero_point 0, so that -max and +max
map to -127 and +127 alike (the full -128 would make the grid lopsided).
"""
from __future__ import annotations

import numpy as np

QRANGE = {  # (min_int, max_int) per activation kind
    "uint8": (0, 255),
    "int8": (-127, 127),  # symmetric, restricted
}
INT32_MAX = 2 ** 31 - 1
# smallest scale kept: float32 division by smaller scales overflows for ordinary activations
MIN_SCALE = 1e-30


def affine_params(lo: float, hi: float, dtype: str = "uint8", symmetric: bool = False
                  ) -> tuple[np.float32, np.integer]:
    """(scale, zero_point) of a per-tensor range, as the numpy scalars QuantizeLinear takes."""
    qmin, qmax = QRANGE[dtype]
    np_type = np.dtype(dtype)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric or dtype == "int8":
        m = max(-lo, hi)
        if m <= 0:  # all-zero (or never-seen) tensor: any positive scale represents it exactly
            return np.float32(1.0), np_type.type(0 if dtype == "int8" else qmin)
        if dtype == "uint8":  # symmetric uint8: zero point in the middle
            scale = 2 * m / (qmax - qmin)
            return np.float32(scale), np_type.type(128)
        return np.float32(max(m / qmax, MIN_SCALE)), np_type.type(0)
    if hi - lo <= 0:
        return np.float32(1.0), np_type.type(qmin)
    scale = np.float32(max((hi - lo) / (qmax - qmin), MIN_SCALE))
    zp = int(np.clip(np.rint(qmin - lo / float(scale)), qmin, qmax))
    return scale, np_type.type(zp)


#: the values of the quantize passes' ``reduce_range`` option (false/true read as off/on)
REDUCE_RANGE = ("off", "on", "auto")
#: the largest weight magnitude of 8-bit and of 7-bit ("reduced range") weights: onnxruntime's
#: uint8 x int8 kernels on x86 without VNNI add each pair of products in int16 (vpmaddubsw), which
#: 255 * 127 * 2 overflows and 255 * 63 * 2 does not
WEIGHT_MAX, REDUCED_WEIGHT_MAX = 127, 63


def reduce_range_error(value) -> str | None:
    """Why ``value`` is not a reduce_range setting, or None when it is."""
    if str(value).strip().lower() in REDUCE_RANGE + ("false", "true"):
        return None
    return f"reduce_range={value!r} (choose off, on or auto)"


def weight_max(reduce_range, saturates) -> int:
    """The largest weight magnitude for a reduce_range setting: 63 when on, or when auto and
    ``saturates()`` (the host probe, runtime.ort.u8s8_saturates, passed in so tests can replace
    it), else 127."""
    v = str(reduce_range).strip().lower()
    if v in ("off", "false"):
        return WEIGHT_MAX
    return REDUCED_WEIGHT_MAX if v in ("on", "true") or saturates() else WEIGHT_MAX


def weight_scales(w: np.ndarray, axis: int | None, qmax: int = 127) -> np.ndarray:
    """Symmetric int8 scales, per channel along ``axis`` (None: one per tensor), max|w| / ``qmax``
    (127; 63 for 7-bit weights, see quantize-dynamic's reduce_range).

    An all-zero channel gets the mean scale of the others (1.0 if all are zero): its weights are 0
    whatever the scale, but its bias is quantized with it, so it should be of the usual size."""
    a = np.abs(w.astype(np.float64))
    if axis is None:
        m = np.array([a.max() if a.size else 0.0])
    else:
        m = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1)
    s = m / float(qmax)
    zero = s <= 0
    if zero.all():
        s[:] = 1.0
    elif zero.any():
        s[zero] = s[~zero].mean()
    return s.astype(np.float32)


def quantize_weight(w: np.ndarray, scales: np.ndarray, axis: int | None, qmax: int = 127) -> np.ndarray:
    """int8 weights in -qmax..qmax (the same float32 division and rounding QuantizeLinear uses)."""
    if axis is None:
        s = scales.reshape(())
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = scales.reshape(shape)
    q = np.rint(w.astype(np.float32) / s)
    return np.clip(q, -qmax, qmax).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale: float, w_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale ``s_x * s_w`` (per output channel), zero point 0.

    Returns (q, scale). Where a bias would overflow int32 (a tiny weight scale next to a large bias),
    the weight scale must be raised first: see :func:`fit_bias_scales`."""
    scale = (np.float32(input_scale) * w_scales.astype(np.float32)).astype(np.float32)
    q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
    return np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32), scale


def fit_bias_scales(b: np.ndarray | None, input_scale: float, w_scales: np.ndarray) -> np.ndarray:
    """Weight scales raised where needed so that ``b / (s_x * s_w)`` fits int32 with headroom."""
    if b is None:
        return w_scales
    need = np.abs(b.astype(np.float64)) / (float(input_scale) * (INT32_MAX // 4))
    if np.size(w_scales) == 1:  # one scale per tensor stays one (per_channel=false)
        need = need.max(initial=0.0)
    return np.maximum(w_scales, need.astype(np.float32)).astype(np.float32)
