"""Block-quantized weight kernels of onnxruntime's com.microsoft domain: MatMulNBits and
GatherBlockQuantized, plus the low-bits-first packing both use.

The standard form (DequantizeLinear with ``block_size``, opset 21) is in tvmlite/ops/quant.py.
These two follow onnxruntime's contrib-operator specs:

- ``MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?)``, attributes K, N, bits, block_size:
  B is uint8 ``[N, k_blocks, block_size * bits / 8]``, codes packed low bits first along K; the
  weight is ``W[n, k] = (code[n, k] - zp[n, k // block_size]) * scales[n, k // block_size]`` and
  ``Y = A @ W.T (+ bias)``. Zero points are packed uint8 ``[N, ceil(k_blocks * bits / 8)]``, or
  unpacked floats ``[N, k_blocks]``; absent, they are ``2 ** (bits - 1)``.
- ``GatherBlockQuantized(data, indices, scales, zero_points?)``: Gather on a table quantized in
  blocks along ``quantize_axis``; int4/uint4 data default to zero point 0, uint8 data (``bits``
  packed along the last axis) to ``2 ** (bits - 1)``. Out-of-range indices give zeros (not an
  error, unlike ONNX Gather).

The weight is unpacked once per compiled plan (``prepare``), so a run is one float GEMM: the NumPy
backend's numbers match onnxruntime's fp32 path (accuracy_level 0/1) to float rounding.
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ir.builder import MS_DOMAIN
from tvmlite.ops.quant import bcast_param
from tvmlite.ops.registry import kernel


def pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (< 2**bits) along the last axis -> uint8, ``8 // bits`` codes per byte, the
    first in the low bits; the last axis is zero-padded to whole bytes."""
    codes = np.asarray(codes).astype(np.uint8)
    if bits == 8:
        return codes
    per = 8 // bits
    n = codes.shape[-1]
    pad = (-n) % per
    if pad:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (pad,), np.uint8)], axis=-1)
    c = codes.reshape(codes.shape[:-1] + (-1, per))
    out = np.zeros(c.shape[:-1], np.uint8)
    for j in range(per):
        out |= (c[..., j] << (bits * j)).astype(np.uint8)
    return out


def unpack_low_first(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_low_first`: the first ``count`` codes along the last axis (uint8)."""
    packed = np.asarray(packed).astype(np.uint8)
    if bits == 8:
        return packed[..., :count]
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    parts = [(packed >> np.uint8(bits * j)) & mask for j in range(per)]
    out = np.stack(parts, axis=-1).reshape(packed.shape[:-1] + (-1,))
    return out[..., :count]


def _check_bits(bits: int, op: str) -> int:
    bits = int(bits)
    if bits not in (2, 4, 8):
        raise UnsupportedError(f"{op}: bits={bits} is not 2, 4 or 8")
    return bits


def nbits_weight(b, scales, zero_points, K: int, N: int, bits: int, block_size: int,
                 dtype=np.float32) -> np.ndarray:
    """MatMulNBits' logical weight as ``[N, K]`` floats of ``dtype``."""
    bits = _check_bits(bits, "MatMulNBits")
    K, N, bs = int(K), int(N), int(block_size)
    if bs < 16 or bs & (bs - 1):
        raise UnsupportedError(f"MatMulNBits: block_size={bs} is not a power of two >= 16")
    kb = -(-K // bs)
    b = np.asarray(b)
    blob = bs * bits // 8
    if b.dtype != np.uint8 or b.shape != (N, kb, blob):
        raise UnsupportedError(f"MatMulNBits: B of type {b.dtype} and shape {list(b.shape)} does not fit "
                               f"K={K}, N={N}, bits={bits}, block_size={bs} (uint8 {[N, kb, blob]})")
    codes = unpack_low_first(b, bits, bs).reshape(N, kb * bs).astype(np.float32)
    s = np.asarray(scales).astype(np.float32)
    if s.size != N * kb:
        raise UnsupportedError(f"MatMulNBits: scales of shape {list(s.shape)} do not hold N * k_blocks = {N * kb}")
    s = s.reshape(N, kb)
    if zero_points is None:
        zp = np.full((N, kb), float(1 << (bits - 1)), np.float32)
    else:
        z = np.asarray(zero_points)
        if z.dtype == np.uint8:
            zb = -(-kb * bits // 8)
            if z.size != N * zb:
                raise UnsupportedError(f"MatMulNBits: packed zero points of shape {list(z.shape)} do not "
                                       f"hold N * ceil(k_blocks * bits / 8) = {N * zb} bytes")
            zp = unpack_low_first(z.reshape(N, zb), bits, kb).astype(np.float32)
        else:
            if z.size != N * kb:
                raise UnsupportedError(f"MatMulNBits: zero points of shape {list(z.shape)} do not hold N * k_blocks")
            zp = z.astype(np.float32).reshape(N, kb)
    w = (codes.reshape(N, kb, bs) - zp[:, :, None]) * s[:, :, None]
    return w.reshape(N, kb * bs)[:, :K].astype(dtype, copy=False)


def _nbits_apply(a, w_t, bias):
    a = np.asarray(a)
    if a.ndim < 1 or a.shape[-1] != w_t.shape[0]:
        raise UnsupportedError(f"MatMulNBits: A of shape {list(a.shape)} does not end in K={w_t.shape[0]}")
    y = np.matmul(a, w_t.astype(a.dtype, copy=False))
    if bias is not None:
        y += np.asarray(bias).astype(y.dtype, copy=False)
    return y


def matmul_nbits(a, b, scales, zero_points=None, g_idx=None, bias=None, *, K, N, bits=4, block_size,
                 accuracy_level=0, weight_prepacked=0):
    if g_idx is not None and np.asarray(g_idx).size:
        raise UnsupportedError("MatMulNBits: g_idx (deprecated act-order groups) is not supported")
    if int(weight_prepacked):
        raise UnsupportedError("MatMulNBits: weight_prepacked layouts are EP-specific and not supported")
    dt = np.asarray(a).dtype
    w = nbits_weight(b, scales, zero_points, K, N, bits, block_size, np.float32)
    return _nbits_apply(a, np.ascontiguousarray(w.T).astype(dt, copy=False), bias)


def _matmul_nbits_prepare(consts, attrs):
    """B, scales (and zero points) constant: the float weight is built once per plan."""
    if len(consts) < 3 or consts[0] is not None or any(c is None for c in consts[1:3]):
        return None
    if int(attrs.get("weight_prepacked", 0)) or (len(consts) > 4 and consts[4] is not None
                                                  and np.asarray(consts[4]).size):
        return None
    zp = consts[3] if len(consts) > 3 else None
    w_t = np.ascontiguousarray(nbits_weight(consts[1], consts[2], zp, attrs["K"], attrs["N"],
                                            attrs.get("bits", 4), attrs["block_size"]).T)

    def run(a, b, scales, zero_points=None, g_idx=None, bias=None):
        # a None constant may also be an input computed at run time: then the plain kernel
        if np.asarray(a).dtype != np.float32 or (zero_points is None) != (zp is None):
            return matmul_nbits(a, b, scales, zero_points, g_idx, bias, **attrs)
        return _nbits_apply(a, w_t, bias)

    return run


# the weight unpacked once per plan; each run writes a new array
kernel("MatMulNBits", domain=MS_DOMAIN, prepare=_matmul_nbits_prepare, fresh_output=True)(matmul_nbits)


def _gather_block_quantized_shape(ins, *, gather_axis=0, bits=4, **_):
    """Output dtype and shape (onnx has no rule for this contrib op): the scales' dtype; data's
    shape, its last axis unpacked (uint8 data holds 8 // bits codes a byte), with the gather axis
    replaced by the indices' shape."""
    (ddt, dshape), (_, ishape), (sdt, _) = ins[:3]
    shape = list(dshape)
    if np.dtype(ddt) == np.uint8:
        shape[-1] = shape[-1] * 8 // _check_bits(bits, "GatherBlockQuantized")  # a symbolic dim fails
    ga = int(gather_axis) % len(shape)
    return [(sdt, tuple(shape[:ga]) + tuple(ishape) + tuple(shape[ga + 1:]))]


@kernel("GatherBlockQuantized", domain=MS_DOMAIN, shape=_gather_block_quantized_shape)
def gather_block_quantized(data, indices, scales, zero_points=None, *, gather_axis=0, quantize_axis=1,
                           block_size=128, bits=4):
    data = np.asarray(data)
    scales = np.asarray(scales)
    r = data.ndim
    if r < 1:
        raise UnsupportedError("GatherBlockQuantized: data must have rank >= 1")
    ga, qa = int(gather_axis) % r, int(quantize_axis) % r
    bs = int(block_size)
    name = data.dtype.name
    if name in ("int4", "uint4"):
        codes = data.astype(np.int8 if name == "int4" else np.uint8)
        default_zp = 0
    elif data.dtype == np.uint8:
        bits = _check_bits(bits, "GatherBlockQuantized")
        if ga != 0 or (bits < 8 and ga == r - 1):
            raise UnsupportedError("GatherBlockQuantized: uint8 data needs gather_axis 0 and, packed, "
                                   "a quantize axis other than the gather axis")
        full = data.shape[-1] * 8 // bits
        codes = unpack_low_first(data, bits, full)
        default_zp = 1 << (bits - 1)
    else:
        raise UnsupportedError(f"GatherBlockQuantized: data of type {name} is not supported")
    shape = codes.shape
    if bs < 16 or bs & (bs - 1):
        raise UnsupportedError(f"GatherBlockQuantized: block_size={bs} is not a power of two >= 16")
    idx = np.asarray(indices).astype(np.int64)
    size = shape[ga]
    idx = np.where(idx < 0, idx + size, idx)
    valid = (idx >= 0) & (idx < size)
    safe = np.where(valid, idx, 0)
    if zero_points is not None:
        z = np.asarray(zero_points)
        if z.dtype == np.uint8 and name not in ("int4", "uint4"):
            z = unpack_low_first(z, bits, scales.shape[-1])
        zp = z.astype(np.float32)
    else:
        zp = None
    if ga != qa:
        # gather rows first (cheap), then dequantize only what was gathered
        rows = np.take(codes, safe, axis=ga).astype(np.float32)
        s_rows = np.take(scales, safe, axis=ga)
        out_shape = rows.shape
        q_axis = qa if qa < ga else qa + idx.ndim - 1
        s = bcast_param(s_rows.astype(np.float32), out_shape, q_axis, bs)
        z = default_zp if zp is None else bcast_param(np.take(zp, safe, axis=ga), out_shape, q_axis, bs)
        y = (rows - z) * s
    else:
        s = bcast_param(scales.astype(np.float32), shape, qa, bs)
        z = default_zp if zp is None else bcast_param(zp, shape, qa, bs)
        y = np.take((codes.astype(np.float32) - z) * s, safe, axis=ga)
    if not valid.all():
        mask_shape = (1,) * ga + valid.shape + (1,) * (r - ga - 1)
        y = np.where(valid.reshape(mask_shape), y, 0)
    return y.astype(scales.dtype, copy=False)
