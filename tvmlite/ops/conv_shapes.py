"""Conv / pooling window shapes: defaults, ``auto_pad`` resolution and output sizes (no arrays).

Shared by the NumPy kernels (ops/conv.py, ops/pool.py), :class:`tvmlite.ops.geometry.WindowGeometry`
and the shape rules.
"""
from __future__ import annotations

from tvmlite.errors import UnsupportedError


def _norm(v, n, default):
    if v is None or len(v) == 0:
        return [default] * n
    return [int(a) for a in v]


def kernel_geometry(w_shape, n: int, kernel_shape, strides, dilations) -> tuple[list, list, list]:
    """(kernel shape, strides, dilations) of a Conv/ConvTranspose with ``n`` spatial dims, the
    absent attributes at their defaults; UnsupportedError when kernel_shape disagrees with the
    weights."""
    kshape = [int(k) for k in (kernel_shape if kernel_shape else w_shape[2:])]
    if list(w_shape[2:]) != kshape:
        raise UnsupportedError(f"kernel_shape {kshape} does not match weight shape {list(w_shape)}")
    return kshape, _norm(strides, n, 1), _norm(dilations, n, 1)


def _auto_pad_str(auto_pad) -> str:
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    return auto_pad or "NOTSET"


def resolve_pads(auto_pad, in_shape, kernel, strides=None, dilations=None, pads=None) -> list[int]:
    """Explicit ``[begins..., ends...]`` pads for spatial ``in_shape`` under ONNX's ``auto_pad``.

    SAME_UPPER / SAME_LOWER give ``out = ceil(in / stride)`` with the odd extra pad at the end
    (UPPER) or the beginning (LOWER); VALID gives zero pads; NOTSET uses ``pads`` (default zeros).
    """
    n = len(in_shape)
    kernel = [int(k) for k in kernel]
    strides = _norm(strides, n, 1)
    dilations = _norm(dilations, n, 1)
    auto_pad = _auto_pad_str(auto_pad)
    if auto_pad == "NOTSET":
        p = _norm(pads, 2 * n, 0)
        if len(p) != 2 * n:
            raise UnsupportedError(f"pads has {len(p)} values, expected {2 * n}")
        return p
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedError(f"auto_pad={auto_pad!r} is not supported")
    begins, ends = [], []
    for i in range(n):
        out = -(-int(in_shape[i]) // strides[i])
        eff_k = (kernel[i] - 1) * dilations[i] + 1
        total = max(0, (out - 1) * strides[i] + eff_k - int(in_shape[i]))
        small, big = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(small)
            ends.append(big)
        else:
            begins.append(big)
            ends.append(small)
    return begins + ends


def conv_output_shape(in_shape, kernel, strides=None, dilations=None, pads=None,
                      ceil_mode: bool = False) -> list[int]:
    """Spatial output shape of a conv / pool window over ``in_shape`` with explicit ``pads``.

    ``ceil_mode`` follows ONNX / onnxruntime pooling: round up, but drop a last window that would
    start entirely inside the end padding.
    """
    n = len(in_shape)
    strides = _norm(strides, n, 1)
    dilations = _norm(dilations, n, 1)
    pads = _norm(pads, 2 * n, 0)
    out = []
    for i in range(n):
        eff_k = (int(kernel[i]) - 1) * dilations[i] + 1
        span = int(in_shape[i]) + pads[i] + pads[i + n] - eff_k
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            if (o - 1) * strides[i] >= int(in_shape[i]) + pads[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(int(o))
    return out


def conv_transpose_pads(auto_pad, in_shape, kernel, strides, dilations, pads, output_padding,
                        output_shape):
    """(explicit pads, output spatial shape) for ConvTranspose, per the ONNX spec."""
    n = len(in_shape)
    auto_pad = _auto_pad_str(auto_pad)
    full = [strides[i] * (int(in_shape[i]) - 1) + output_padding[i]
            + (kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    if output_shape is not None and len(output_shape) > 0:
        out = [int(v) for v in output_shape][-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [int(in_shape[i]) * strides[i] for i in range(n)]
    else:
        if auto_pad not in ("NOTSET", "VALID"):
            raise UnsupportedError(f"auto_pad={auto_pad!r} is not supported")
        p = [0] * (2 * n) if auto_pad == "VALID" else _norm(pads, 2 * n, 0)
        return p, [full[i] - p[i] - p[i + n] for i in range(n)]
    begins, ends = [], []
    for i in range(n):
        total = full[i] - out[i]
        if auto_pad == "SAME_UPPER":
            begins.append(total // 2)
            ends.append(total - total // 2)
        else:
            begins.append(total - total // 2)
            ends.append(total // 2)
    return begins + ends, out
