"""tvmlite's conv-lowering ops: Im2Col, MEC (MecLower + MecMatMul) and Winograd (WinogradInput +
WinogradOutput, with a standard MatMul between them).

Each op is a NumPy kernel, a shape rule and an ONNX function body of standard ops, so a lowered
model runs in the NumPy backend and, exported, in onnxruntime. The bodies use the fact that every
data-rearranging step of a conv lowering is linear: gathering windows (im2col), kw-wide bars (MEC)
or transformed tiles (Bᵀ d B) is a grouped Conv with a constant 0/1 (or Bᵀ⊗Bᵀ) weight.

Layouts (``x`` is ``[N, C, *spatial]``):

* ``Im2Col``: ``[N, C*prod(k), prod(out)]``, the layout of :func:`tvmlite.ops.im2col.im2col`, so a
  conv is ``W.reshape(M, C*K) @ cols``.
* ``MecLower``: ``[N, OW, Hp, C*KW]`` — per output column one row per padded input row made of the
  kw-wide bar of every channel (Cho & Brand, MEC, 2017). ``MecMatMul`` multiplies the ``KH``
  consecutive rows of each output row with ``W'[KH, C*KW, M]``: the window rows are shared between
  vertically adjacent outputs instead of copied ``KH`` times.
* ``WinogradInput``: ``V[α², C, N*th*tw]`` with ``α = m + r - 1``; ``MatMul(U[α², M, C], V)`` is the
  batched GEMM over tile positions that reduces the channels; ``WinogradOutput`` maps
  ``[α², M, N*th*tw]`` back to ``[N, M, OH, OW]`` through ``Aᵀ · A`` and crops the ragged edge.

The Winograd matrices come from :func:`winograd_matrices` (Cook–Toom from interpolation points).
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tvmlite.errors import UnsupportedError
from tvmlite.ops.conv_shapes import _norm, conv_output_shape
from tvmlite.ops.im2col import im2col, pad_spatial
from tvmlite.ops.registry import tvmlite_op

# --------------------------------------------------------------------------------------------------
# Winograd / Cook–Toom matrices
# --------------------------------------------------------------------------------------------------

#: finite interpolation points per output tile size m (∞ is always the last point). Small integers
#: and their reciprocals keep the transforms well conditioned (Lavin & Gray 2016, Table 1 choices).
WINOGRAD_POINTS = {
    2: (0, 1, -1),
    3: (0, 1, -1, 2),
    4: (0, 1, -1, 2, -2),
    5: (0, 1, -1, 2, -2, Fraction(1, 2)),
    6: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)),
}


def _inverse(mat: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss–Jordan inverse (the Vandermonde systems are tiny and must stay exact)."""
    n = len(mat)
    a = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(mat)]
    for col in range(n):
        piv = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[piv] = a[piv], a[col]
        inv = 1 / a[col][col]
        a[col] = [v * inv for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                f = a[r][col]
                a[r] = [v - f * p for v, p in zip(a[r], a[col])]
    return [row[n:] for row in a]


@functools.lru_cache(maxsize=None)
def winograd_matrices(m: int, r: int = 3, points: tuple | None = None):
    """``(AT, G, BT)`` of Winograd's F(m, r) built by Cook–Toom from ``points`` (+ ∞), as float64.

    The linear convolution h = u * g (deg m-1 times deg r-1) is evaluated at the α = m + r - 1
    points (the point ∞ picks leading coefficients) and interpolated back: h = V⁻¹((E_u u)⊙(E_g g))
    with V the α×α Vandermonde matrix. Correlation, which convolution layers compute, is the
    transposed algorithm: y = E_uᵀ((E_g g) ⊙ (V⁻ᵀ d)), so Aᵀ = E_uᵀ, G = E_g, Bᵀ = V⁻ᵀ. Row k of G
    is then divided by Π_{l≠k}(p_k - p_l) and row k of Bᵀ multiplied by it (Lavin's convention),
    which leaves Bᵀ with small integer entries and puts the fractions in the precomputed G.
    """
    alpha = m + r - 1
    pts = tuple(Fraction(p) for p in (points if points is not None else WINOGRAD_POINTS.get(m, ())))
    if len(pts) != alpha - 1 or len(set(pts)) != len(pts):
        raise UnsupportedError(f"Winograd F({m},{r}) needs {alpha - 1} distinct finite points, got {len(pts)}")

    def evaluation(cols: int) -> list[list[Fraction]]:
        rows = [[p ** j for j in range(cols)] for p in pts]
        rows.append([Fraction(int(j == cols - 1)) for j in range(cols)])
        return rows

    vand = evaluation(alpha)
    e_u, e_g = evaluation(m), evaluation(r)
    vinv = _inverse(vand)
    bt = [[vinv[j][i] for j in range(alpha)] for i in range(alpha)]  # V⁻ᵀ
    g = [row[:] for row in e_g]
    for k, p in enumerate(pts):
        s = math.prod((p - q for q in pts if q != p), start=Fraction(1))
        g[k] = [v / s for v in g[k]]
        bt[k] = [v * s for v in bt[k]]
    at = [[e_u[k][i] for k in range(alpha)] for i in range(m)]
    f64 = lambda rows: np.array([[float(v) for v in row] for row in rows], np.float64)  # noqa: E731
    return f64(at), f64(g), f64(bt)


def winograd_weight(w: np.ndarray, m: int) -> np.ndarray:
    """U = G g Gᵀ for every (output, input) channel pair, as ``[α², M, C]`` (computed in float64)."""
    M, C, r, _ = w.shape
    _, G, _ = winograd_matrices(m, r)
    u = np.einsum("ai,mcij,bj->abmc", G, w.astype(np.float64), G, optimize=True)
    alpha = G.shape[0]
    return np.ascontiguousarray(u.reshape(alpha * alpha, M, C)).astype(w.dtype)


def winograd_tiles(out_spatial, m: int) -> tuple[int, int]:
    return -(-int(out_spatial[0]) // m), -(-int(out_spatial[1]) // m)


# --------------------------------------------------------------------------------------------------
# helpers for shape rules and bodies
# --------------------------------------------------------------------------------------------------

def _prod(v):
    return int(np.prod([int(d) for d in v], dtype=np.int64))


def _static(shape, what):
    if shape is None or any(not isinstance(d, int) for d in shape[1:]):
        raise UnsupportedError(f"{what} needs static channel and spatial dims, got {shape}")
    return shape


def _i64(v):
    return np.array(v, dtype=np.int64)


def _slice(fb, x, starts, ends, axes, output=None):
    if fb.opset < 10:
        return fb.node("Slice", [x], {"starts": list(starts), "ends": list(ends), "axes": list(axes)},
                       output=output)
    return fb.node("Slice", [x, fb.const(_i64(starts)), fb.const(_i64(ends)), fb.const(_i64(axes))],
                   output=output)


def _conv_attrs(kernel_shape, pads, strides, dilations, group):
    return {"kernel_shape": [int(k) for k in kernel_shape], "pads": [int(p) for p in pads],
            "strides": [int(s) for s in strides], "dilations": [int(d) for d in dilations],
            "group": int(group)}


# --------------------------------------------------------------------------------------------------
# Im2Col
# --------------------------------------------------------------------------------------------------

def _im2col_shape(types, *, kernel_shape, pads, strides=None, dilations=None):
    dtype, shape = types[0]
    n = len(kernel_shape)
    out = conv_output_shape(shape[2:], kernel_shape, strides, dilations, pads)
    C = shape[1]
    rows = C * _prod(kernel_shape) if isinstance(C, int) else None
    return [(dtype, (shape[0], rows, _prod(out) if n else 1))]


def _im2col_body(fb, *, kernel_shape, pads, strides=None, dilations=None):
    dtype, shape = fb.input_types[0]
    shape = _static(shape, "Im2Col")
    n = len(kernel_shape)
    C, K = int(shape[1]), _prod(kernel_shape)
    # output channel c*K + t of a group=C conv reads channel c only: a one-hot weight on tap t
    onehot = np.eye(K, dtype=dtype).reshape((K, 1) + tuple(int(k) for k in kernel_shape))
    w = fb.const(np.tile(onehot, (C, 1) + (1,) * n))
    cols = fb.node("Conv", [fb.inputs[0], w],
                   _conv_attrs(kernel_shape, pads, _norm(strides, n, 1), _norm(dilations, n, 1), C))
    fb.node("Reshape", [cols, fb.const(_i64([0, C * K, -1]))], output=fb.outputs[0])


@tvmlite_op("Im2Col", shape=_im2col_shape, body=_im2col_body)
def im2col_op(x, *, kernel_shape, pads, strides=None, dilations=None):
    """``[N, C, *spatial]`` -> ``[N, C*prod(kernel), prod(out)]``, one strided copy."""
    return im2col(np.asarray(x), kernel_shape, strides, dilations, pads)


# --------------------------------------------------------------------------------------------------
# MEC
# --------------------------------------------------------------------------------------------------

def _mec_dims(shape, kernel_shape, pads, strides, dilations):
    H, W = int(shape[2]), int(shape[3])
    oh, ow = conv_output_shape((H, W), kernel_shape, strides, dilations, pads)
    return H + pads[0] + pads[2], oh, ow


def _mec_lower_shape(types, *, kernel_shape, pads, strides=None, dilations=None):
    dtype, shape = types[0]
    hp, _, ow = _mec_dims(shape, kernel_shape, pads, _norm(strides, 2, 1), _norm(dilations, 2, 1))
    C = shape[1]
    return [(dtype, (shape[0], ow, hp, C * int(kernel_shape[1]) if isinstance(C, int) else None))]


def _mec_lower_body(fb, *, kernel_shape, pads, strides=None, dilations=None):
    dtype, shape = fb.input_types[0]
    shape = _static(shape, "MecLower")
    C, KW = int(shape[1]), int(kernel_shape[1])
    strides, dilations = _norm(strides, 2, 1), _norm(dilations, 2, 1)
    onehot = np.eye(KW, dtype=dtype).reshape(KW, 1, 1, KW)
    w = fb.const(np.tile(onehot, (C, 1, 1, 1)))
    # a 1×KW window with vertical stride 1 keeps every padded row: [N, C*KW, Hp, OW]
    bars = fb.node("Conv", [fb.inputs[0], w],
                   _conv_attrs((1, KW), pads, (1, strides[1]), (1, dilations[1]), C))
    fb.node("Transpose", [bars], {"perm": [0, 3, 2, 1]}, output=fb.outputs[0])


@tvmlite_op("MecLower", shape=_mec_lower_shape, body=_mec_lower_body)
def mec_lower(x, *, kernel_shape, pads, strides=None, dilations=None):
    """``[N, C, H, W]`` -> ``[N, OW, Hp, C*KW]``: for output column j, every padded input row's
    kw-wide bar (channels interleaved), in one strided copy."""
    x = np.asarray(x)
    strides, dilations = _norm(strides, 2, 1), _norm(dilations, 2, 1)
    pads = [int(p) for p in pads]
    N, C = x.shape[:2]
    hp, _, ow = _mec_dims(x.shape, kernel_shape, pads, strides, dilations)
    KW = int(kernel_shape[1])
    xp = np.ascontiguousarray(pad_spatial(x, pads[:2], pads[2:]))
    sn, sc, sh, sw = xp.strides
    view = as_strided(xp, shape=(N, ow, hp, C, KW),
                      strides=(sn, sw * strides[1], sh, sc, sw * dilations[1]), writeable=False)
    out = np.empty(view.shape, dtype=x.dtype)
    np.copyto(out, view)
    return out.reshape(N, ow, hp, C * KW)


def _mec_matmul_shape(types, *, kernel_h, stride_h, dilation_h, out_h):
    dtype, shape = types[0]
    M = types[1][1][2]
    return [(dtype, (shape[0], M, int(out_h), shape[1]))]


def _mec_matmul_body(fb, *, kernel_h, stride_h, dilation_h, out_h):
    _, wshape = fb.input_types[1]
    kh, ckw, M = (int(d) for d in wshape)
    rows = _i64([[o * stride_h + i * dilation_h for i in range(kh)] for o in range(out_h)])
    win = fb.node("Gather", [fb.inputs[0], fb.const(rows)], {"axis": 2})  # [N, OW, OH, KH, C*KW]
    win = fb.node("Reshape", [win, fb.const(_i64([0, 0, 0, kh * ckw]))])
    w2 = fb.node("Reshape", [fb.inputs[1], fb.const(_i64([kh * ckw, M]))])
    y = fb.node("MatMul", [win, w2])  # [N, OW, OH, M]
    if len(fb.inputs) > 2 and fb.inputs[2]:
        y = fb.node("Transpose", [y], {"perm": [0, 3, 2, 1]})
        b = fb.node("Reshape", [fb.inputs[2], fb.const(_i64([M, 1, 1]))])
        fb.node("Add", [y, b], output=fb.outputs[0])
    else:
        fb.node("Transpose", [y], {"perm": [0, 3, 2, 1]}, output=fb.outputs[0])


@tvmlite_op("MecMatMul", shape=_mec_matmul_shape, body=_mec_matmul_body)
def mec_matmul(lowered, w, b=None, *, kernel_h, stride_h, dilation_h, out_h):
    """MEC's GEMMs: output row o is ``L[:, :, o*s : o*s + KH]`` (a [N*OW, KH*C*KW] view of the
    lowered matrix, no copy) times ``W'[KH*C*KW, M]``; result ``[N, M, OH, OW]``."""
    lowered = np.asarray(lowered)
    w = np.asarray(w)
    N, OW, hp, ckw = lowered.shape
    kh, _, M = w.shape
    kernel_h, stride_h, dilation_h, out_h = int(kernel_h), int(stride_h), int(dilation_h), int(out_h)
    flat = lowered.reshape(N * OW, hp * ckw)
    y = np.empty((out_h, N * OW, M), dtype=np.result_type(lowered.dtype, w.dtype))
    if dilation_h == 1:
        w2 = w.reshape(kh * ckw, M)
        for o in range(out_h):
            r0 = o * stride_h * ckw
            np.matmul(flat[:, r0:r0 + kh * ckw], w2, out=y[o])
    else:
        tmp = np.empty((N * OW, M), dtype=y.dtype)
        for o in range(out_h):
            for i in range(kh):
                r0 = (o * stride_h + i * dilation_h) * ckw
                np.matmul(flat[:, r0:r0 + ckw], w[i], out=y[o] if i == 0 else tmp)
                if i:
                    y[o] += tmp
    out = np.empty((N, M, out_h, OW), dtype=y.dtype)
    np.copyto(out, y.reshape(out_h, N, OW, M).transpose(1, 3, 0, 2))
    if b is not None:
        out += np.asarray(b).astype(out.dtype, copy=False).reshape(1, M, 1, 1)
    return out


# --------------------------------------------------------------------------------------------------
# Winograd
# --------------------------------------------------------------------------------------------------

def _winograd_geometry(shape, m, r, pads):
    H, W = int(shape[2]), int(shape[3])
    oh, ow = H + pads[0] + pads[2] - r + 1, W + pads[1] + pads[3] - r + 1
    th, tw = winograd_tiles((oh, ow), m)
    alpha = m + r - 1
    # the tile grid covers (th-1)*m + α rows; zeros beyond the conv's own bottom/right padding
    extra_h = (th - 1) * m + alpha - (H + pads[0] + pads[2])
    extra_w = (tw - 1) * m + alpha - (W + pads[1] + pads[3])
    return oh, ow, th, tw, extra_h, extra_w


def _winograd_input_shape(types, *, m, pads, r=3):
    dtype, shape = types[0]
    _, _, th, tw, _, _ = _winograd_geometry(shape, m, r, pads)
    a = m + r - 1
    N = shape[0]
    return [(dtype, (a * a, shape[1], N * th * tw if isinstance(N, int) else None))]


def _winograd_input_body(fb, *, m, pads, r=3):
    dtype, shape = fb.input_types[0]
    shape = _static(shape, "WinogradInput")
    C = int(shape[1])
    _, _, th, tw, eh, ew = _winograd_geometry(shape, m, r, pads)
    _, _, BT = winograd_matrices(m, r)
    a = m + r - 1
    # tile (i, j) of channel c transformed = a stride-m α×α group=C conv with weight Bᵀ⊗Bᵀ
    kern = np.einsum("ai,bj->abij", BT, BT).reshape(a * a, 1, a, a).astype(dtype)
    w = fb.const(np.tile(kern, (C, 1, 1, 1)))
    conv_pads = [pads[0], pads[1], pads[2] + eh, pads[3] + ew]
    v = fb.node("Conv", [fb.inputs[0], w], _conv_attrs((a, a), conv_pads, (m, m), (1, 1), C))
    v = fb.node("Reshape", [v, fb.const(_i64([0, C, a * a, th * tw]))])
    v = fb.node("Transpose", [v], {"perm": [2, 1, 0, 3]})
    fb.node("Reshape", [v, fb.const(_i64([a * a, C, -1]))], output=fb.outputs[0])


@tvmlite_op("WinogradInput", shape=_winograd_input_shape, body=_winograd_input_body)
def winograd_input(x, *, m, pads, r=3):
    """``[N, C, H, W]`` -> ``V = Bᵀ d B`` of every overlapping α×α tile, as ``[α², C, N*th*tw]``."""
    x = np.asarray(x)
    m, r = int(m), int(r)
    pads = [int(p) for p in pads]
    N, C = x.shape[:2]
    _, _, th, tw, eh, ew = _winograd_geometry(x.shape, m, r, pads)
    _, _, BT = winograd_matrices(m, r)
    BT = BT.astype(x.dtype)
    a = m + r - 1
    xp = np.ascontiguousarray(pad_spatial(x, pads[:2], [pads[2] + eh, pads[3] + ew]))
    sn, sc, sh, sw = xp.strides
    # tiles as [i, j, C, N, th, tw]: both transform steps are then plain GEMMs on contiguous data
    tiles = as_strided(xp, shape=(a, a, C, N, th, tw), strides=(sh, sw, sc, sn, m * sh, m * sw),
                       writeable=False)
    d = np.empty(tiles.shape, dtype=x.dtype)
    np.copyto(d, tiles)
    rest = C * N * th * tw
    t = np.matmul(BT, d.reshape(a, a * rest))  # rows: Bᵀ d     -> [a, (j, rest)]
    v = np.matmul(BT, t.reshape(a, a, rest))  # cols: (Bᵀ d) B -> [a, b, rest]
    return v.reshape(a * a, C, N * th * tw)


def _winograd_output_shape(types, *, m, out_shape, r=3):
    dtype, shape = types[0]
    th, tw = winograd_tiles(out_shape, m)
    P = shape[2]
    N = P // (th * tw) if isinstance(P, int) else None
    return [(dtype, (N, shape[1], int(out_shape[0]), int(out_shape[1])))]


def _winograd_output_body(fb, *, m, out_shape, r=3):
    dtype, shape = fb.input_types[0]
    M = int(shape[1])
    th, tw = winograd_tiles(out_shape, m)
    AT, _, _ = winograd_matrices(m, r)
    a = m + r - 1
    kron = np.einsum("pa,qb->pqab", AT, AT).reshape(m * m, a * a).astype(dtype)
    y = fb.node("Reshape", [fb.inputs[0], fb.const(_i64([a * a, -1]))])
    y = fb.node("MatMul", [fb.const(kron), y])  # [m², M*P]
    y = fb.node("Reshape", [y, fb.const(_i64([m, m, M, -1, th, tw]))])
    y = fb.node("Transpose", [y], {"perm": [3, 2, 4, 0, 5, 1]})  # [N, M, th, m, tw, m]
    y = fb.node("Reshape", [y, fb.const(_i64([0, 0, th * m, tw * m]))])
    has_bias = len(fb.inputs) > 1 and fb.inputs[1]
    oh, ow = int(out_shape[0]), int(out_shape[1])
    if oh != th * m or ow != tw * m:
        y = _slice(fb, y, [0, 0], [oh, ow], [2, 3], output=None if has_bias else fb.outputs[0])
    elif not has_bias:
        fb.node("Identity", [y], output=fb.outputs[0])
    if has_bias:
        b = fb.node("Reshape", [fb.inputs[1], fb.const(_i64([M, 1, 1]))])
        fb.node("Add", [y, b], output=fb.outputs[0])


@tvmlite_op("WinogradOutput", shape=_winograd_output_shape, body=_winograd_output_body)
def winograd_output(mt, b=None, *, m, out_shape, r=3):
    """``[α², M, N*th*tw]`` -> ``Aᵀ · A`` of every tile, assembled into ``[N, M, OH, OW]`` (+ bias)."""
    mt = np.asarray(mt)
    m, r = int(m), int(r)
    oh, ow = int(out_shape[0]), int(out_shape[1])
    th, tw = winograd_tiles((oh, ow), m)
    AT, _, _ = winograd_matrices(m, r)
    AT = AT.astype(mt.dtype)
    a = m + r - 1
    _, M, P = mt.shape
    N = P // (th * tw)
    rest = M * P
    # columns first, with the tile axis as BLAS's transposed operand: q lands innermost next to the
    # tile column, so every later step moves whole output rows instead of m-wide pieces
    z = np.matmul(mt.reshape(a, a, rest).transpose(0, 2, 1), AT.T)  # [a, (M, N, th, tw), q]
    y = np.matmul(AT, z.reshape(a, rest * m))  # [p, M, N, th, tw*m]
    rows = y.reshape(m, M, N, th, tw * m)[..., :ow].transpose(2, 1, 3, 0, 4)  # [N, M, th, p, OW]
    full = np.empty((N, M, th, m, ow), dtype=mt.dtype)
    np.copyto(full, rows)
    out = full.reshape(N, M, th * m, ow)
    if oh != th * m:
        out = np.ascontiguousarray(out[:, :, :oh])
    if b is not None:
        out += np.asarray(b).astype(out.dtype, copy=False).reshape(1, M, 1, 1)
    return out
