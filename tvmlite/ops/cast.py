"""Cast and CastLike kernels: every ONNX tensor type NumPy or ml_dtypes can hold (bfloat16, float8,
float4, int4, e8m0), with ONNX's saturate and round_mode rules.
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.elementwise import _mld, _quiet
from tvmlite.ops.registry import kernel


# --------------------------------------------------------------------------------------------------
# Cast
# --------------------------------------------------------------------------------------------------

_FP8 = {17, 18, 19, 20}  # FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ
_E8M0 = 24
_STRING = 8


def _np_dtype(to: int):
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except Exception as e:  # noqa: BLE001
        raise UnsupportedError(f"Cast: unsupported target type {to}") from e


def _to_e8m0(x, saturate, round_mode):
    x32 = np.asarray(x, dtype=np.float32)
    bits = x32.view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exp == 0xFF
    if round_mode == "nearest":
        g = (bits & 0x400000) > 0
        r = (bits & 0x200000) > 0
        s = (bits & 0x1FFFFF) > 0
        up = g & (r | s | (exp > 0)) & ~special
    elif round_mode == "up":
        up = ((bits & 0x7FFFFF) > 0) & ~special
    elif round_mode == "down":
        up = np.zeros(bits.shape, bool)
    else:
        raise UnsupportedError(f"Cast: round_mode must be up, down or nearest, got {round_mode!r}")
    if saturate:
        up &= exp != 0xFE
    exp = exp + up
    out = np.where(special, 0xFF, exp).astype(np.uint8)
    return out.view(_mld.float8_e8m0fnu)


def _cast(x, to: int, saturate: int = 1, round_mode: str = "up"):
    x = np.asarray(x)
    if to == _STRING:
        if x.dtype.kind == "O":
            return x.copy()
        if x.dtype.kind not in "biufUS":
            x = x.astype(np.float32)
        return x.astype(np.str_).astype(object)
    dt = _np_dtype(to)
    if x.dtype.kind in "OUS":  # from string
        if dt == np.bool_:
            return x.astype(np.float64).astype(bool)
        if dt.kind in "iu":
            try:
                return x.astype(dt)
            except (ValueError, TypeError):
                return x.astype(np.float64).astype(dt)
        return x.astype(np.float64).astype(dt) if dt.kind not in "f" else x.astype(dt)
    if x.dtype == dt:
        return x
    if to == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if to in _FP8 and saturate:
        info = _mld.finfo(dt)
        xf = x if x.dtype.kind == "f" else x.astype(np.float32)
        return np.clip(xf, float(info.min), float(info.max)).astype(dt)
    return x.astype(dt)


@kernel("Cast", since=1)
@_quiet
def cast_1(x, *, to):
    return _cast(x, to)


@kernel("Cast", since=19)
@_quiet
def cast_19(x, *, to, saturate=1):
    return _cast(x, to, saturate)


@kernel("Cast", since=24)
@_quiet
def cast_24(x, *, to, saturate=1, round_mode="up"):
    return _cast(x, to, saturate, round_mode)


def _target_type(t) -> int:
    from onnx import helper

    t = np.asarray(t)
    if t.dtype.kind in "OUS":
        return _STRING
    return helper.np_dtype_to_tensor_dtype(t.dtype)


@kernel("CastLike", since=15)
@_quiet
def castlike_15(x, target_type):
    return _cast(x, _target_type(target_type))


@kernel("CastLike", since=19)
@_quiet
def castlike_19(x, target_type, *, saturate=1):
    return _cast(x, _target_type(target_type), saturate)


@kernel("CastLike", since=24)
@_quiet
def castlike_24(x, target_type, *, saturate=1, round_mode="up"):
    return _cast(x, _target_type(target_type), saturate, round_mode)
