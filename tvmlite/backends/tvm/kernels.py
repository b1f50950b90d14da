"""TE computes for tvmlite's TVM backend, one builder per op family, each with its schedule.

A builder returns a `KernelDef`: the scheduled PrimFunc and its parameters in order (runtime
inputs by graph value name, constants as NumPy arrays already in the layout the schedule asked
for, outputs). Elementwise ops that follow an anchor (bias, activation, residual add, ...) are
folded into the anchor's epilogue block (`Epilogue`), so their data never makes a round trip
through memory.

Only float32 is emitted; this module imports TVM and is loaded only by the TVM backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm import schedules as S
from tvmlite.backends.tvm.lower import Epilogue, EwOp  # noqa: F401 - re-exported
from tvmlite.errors import UnsupportedError

F32 = "float32"


# ------------------------------------------------------------------------------------------ params
@dataclass
class Param:
    kind: str               # "input" (graph value), "const" (array), "output" (graph value)
    name: str               # graph value name, or the constant's name
    shape: tuple            # shape the PrimFunc sees (a view of the value's buffer)
    array: np.ndarray | None = None


@dataclass
class KernelDef:
    name: str
    params: list[Param]
    func: object            # scheduled PrimFunc
    nodes: list[str] = field(default_factory=list)  # labels of the graph nodes it computes
    steps: list[str] = field(default_factory=list)  # schedule steps applied


class Builder:
    """Collects placeholders and constants in parameter order for one kernel."""

    def __init__(self, name: str):
        self.name = name
        self.params: list[Param] = []
        self.tensors: list = []
        self._by_key: dict = {}

    def input(self, value: str, shape) -> te.Tensor:
        key = ("input", value, tuple(shape))
        if key not in self._by_key:
            t = te.placeholder(tuple(int(d) for d in shape), F32, name=f"in{len(self.params)}")
            self.params.append(Param("input", value, tuple(int(d) for d in shape)))
            self.tensors.append(t)
            self._by_key[key] = t
        return self._by_key[key]

    def const(self, array: np.ndarray, shape=None, label: str = "w") -> te.Tensor:
        array = np.ascontiguousarray(array, dtype=np.float32)
        shape = tuple(int(d) for d in (array.shape if shape is None else shape))
        t = te.placeholder(shape, F32, name=f"{label}{len(self.params)}")
        self.params.append(Param("const", f"{self.name}.{label}{len(self.params)}", shape, array))
        self.tensors.append(t)
        return t

    def table(self, array: np.ndarray, label: str = "idx") -> te.Tensor:
        """An int32 constant (gather indices computed on the host in float64, exactly as ONNX
        defines them, so no rounding decision is left to float32 arithmetic in the kernel)."""
        array = np.ascontiguousarray(array, dtype=np.int32)
        t = te.placeholder(array.shape, "int32", name=f"{label}{len(self.params)}")
        self.params.append(Param("const", f"{self.name}.{label}{len(self.params)}", array.shape, array))
        self.tensors.append(t)
        return t

    def finish(self, outputs: list[tuple[str, te.Tensor]]):
        for value, t in outputs:
            self.params.append(Param("output", value, tuple(int(d) for d in t.shape)))
            self.tensors.append(t)
        return te.create_prim_func(self.tensors)



# --------------------------------------------------------------------------------------- epilogues
UNARY = {
    "Relu": lambda x, a: tirx.max(x, tirx.const(0.0, F32)),
    "LeakyRelu": lambda x, a: tirx.Select(x >= 0, x, x * tirx.const(a.get("alpha", 0.01), F32)),
    "Sigmoid": lambda x, a: tirx.sigmoid(x),
    "Tanh": lambda x, a: tirx.tanh(x),
    "Exp": lambda x, a: tirx.exp(x),
    "Log": lambda x, a: tirx.log(x),
    "Sqrt": lambda x, a: tirx.sqrt(x),
    "Abs": lambda x, a: tirx.abs(x),
    "Neg": lambda x, a: -x,
    "Reciprocal": lambda x, a: tirx.const(1.0, F32) / x,
    "Erf": lambda x, a: tirx.erf(x),
    "Floor": lambda x, a: tirx.floor(x),
    "Ceil": lambda x, a: tirx.ceil(x),
    "Identity": lambda x, a: x,
    "HardSigmoid": lambda x, a: tirx.max(tirx.const(0.0, F32), tirx.min(
        tirx.const(1.0, F32), x * tirx.const(a.get("alpha", 0.2), F32) + tirx.const(a.get("beta", 0.5), F32))),
    "HardSwish": lambda x, a: x * tirx.max(tirx.const(0.0, F32), tirx.min(
        tirx.const(1.0, F32), x * tirx.const(1.0 / 6.0, F32) + tirx.const(0.5, F32))),
    "Clip": lambda x, a: _clip(x, a.get("min"), a.get("max")),
    "Elu": lambda x, a: tirx.Select(x >= 0, x, tirx.const(a.get("alpha", 1.0), F32) * (tirx.exp(x) - 1)),
    "Softplus": lambda x, a: tirx.log(tirx.exp(x) + tirx.const(1.0, F32)),
    "Gelu": lambda x, a: x * tirx.const(0.5, F32) * (tirx.const(1.0, F32) + tirx.erf(x * tirx.const(1 / math.sqrt(2), F32))),
}

BINARY = {
    "Add": lambda x, y: x + y,
    "Sum": lambda x, y: x + y,
    "Sub": lambda x, y: x - y,
    "Mul": lambda x, y: x * y,
    "Div": lambda x, y: x / y,
    "Max": lambda x, y: tirx.max(x, y),
    "Min": lambda x, y: tirx.min(x, y),
    "Pow": lambda x, y: tirx.power(x, y),
    "PRelu": lambda x, y: tirx.Select(x >= 0, x, x * y),
}


def _clip(x, lo, hi):
    if lo is not None:
        x = tirx.max(x, tirx.const(float(lo), F32))
    if hi is not None:
        x = tirx.min(x, tirx.const(float(hi), F32))
    return x


def bind_epilogue(epilogue: Epilogue, b: Builder, out_shape: tuple):
    """Placeholders for the epilogue's operands (made once, in parameter order) -> a function
    applying the chain to a value at ONNX index ``idx`` of ``out_shape``."""
    bound = []
    for op in epilogue.ops:
        args = []
        for kind, *rest in op.operands:
            if kind == "value":
                name, shape = rest
                args.append(("t", b.input(name, shape), tuple(shape)))
            else:
                arr = np.asarray(rest[0], dtype=np.float32)
                if arr.size == 1:
                    args.append(("s", float(arr.reshape(-1)[0]), ()))
                else:
                    shape = _trim_ones(arr.shape)
                    args.append(("t", b.const(arr.reshape(shape), label="c"), shape))
        bound.append((op, args))
    out_shape = tuple(int(d) for d in out_shape)

    def apply(x, idx):
        spaces = {}
        for op, args in bound:
            if op.op in UNARY:
                x = UNARY[op.op](x, op.attrs)
                continue
            fn = BINARY[op.op]
            shape = tuple(op.shape) if op.shape is not None else out_shape
            if shape not in spaces:
                spaces[shape] = tuple(idx) if shape == out_shape else _reindex(tuple(idx), out_shape, shape)
            vals = [_broadcast_read(a, spaces[shape], len(shape)) for a in args]
            if len(vals) != 1:  # variadic Sum/Max/Min
                for v in vals:
                    x = fn(x, v)
                continue
            (y,) = vals
            x = fn(x, y) if op.first == 0 else fn(y, x)
        return x
    return apply


def _reindex(idx, shape, view):
    """Index into ``view`` (a reshape of ``shape``) of element ``idx`` of ``shape``: the common
    leading dims are kept, the rest flattened and unflattened (so a split of the last dim, the
    usual case, costs one div/mod)."""
    lead = 0
    while lead < min(len(shape), len(view)) and shape[lead] == view[lead]:
        lead += 1
    flat = 0
    for i, d in zip(idx[lead:], shape[lead:]):
        flat = flat * d + i
    return tuple(idx[:lead]) + _unflatten(flat, view[lead:])


def _trim_ones(shape):
    shape = tuple(int(d) for d in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _broadcast_read(arg, idx, rank):
    kind, t, shape = arg
    if kind == "s":
        return tirx.const(t, F32)
    off = rank - len(shape)
    ix = [0 if d == 1 else idx[off + i] for i, d in enumerate(shape)]
    return t[tuple(ix)]


# ------------------------------------------------------------------------------------ conv as GEMM
def conv_tile(co: int, p: int, lanes: int) -> S.GemmTile:
    """Register tile for Y[co, p] = W[co, k] cols[k, p]: up to 8 rows x 2 vectors of columns."""
    nr = 2 * lanes if p >= 2 * lanes else lanes
    mr = 8 if co >= 8 else co
    return S.GemmTile(mr=mr, nr=nr)


def conv2d_gemm(name: str, x: str, x_shape, w: np.ndarray, bias, *, pads, strides, dilations,
                out_value: str, epilogue: Epilogue, lanes: int, group: int = 1,
                tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Conv2D as im2col + GEMM (per group: the groups are a batch dim of the GEMM). The im2col
    columns are packed [P/nr, K, nr] and made per column tile inside the GEMM; the weights are
    packed [CO/mr, K, mr] at build time; bias and ``epilogue`` are applied to the register tile
    on its way out."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = w.shape
    g = int(group)
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    p, k = oh * ow, ci * kh * kw
    # a 1x1, stride-1, unpadded conv reads its columns straight from the input rows
    pointwise = kh == kw == 1 and sh == sw == 1 and not any(pads)
    tile = tile or conv_tile(co // g, p, lanes)
    pp = _round_up(p, tile.nr)
    b = Builder(name)
    X = b.input(x, (n, c, h * wd) if pointwise else (n, c, h, wd))
    khw = kh * kw

    def im2col(nn, gg, kk, j):
        if pointwise:
            v = X[nn, gg * ci + kk, tirx.min(j, p - 1)]
            return v if pp == p else tirx.Select(j < p, v, tirx.const(0.0, F32))
        cc, r = kk // khw, kk % khw
        y = (j // ow) * sh - pt + (r // kw) * dh
        xx = (j % ow) * sw - pl + (r % kw) * dw
        inside = tirx.all(j < p, y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(inside, X[nn, gg * ci + cc, y, xx], tirx.const(0.0, F32))

    return column_gemm(name, b, im2col, w.reshape(g, co // g, k), bias, out_shape=(n, co, oh, ow),
                       out_value=out_value, epilogue=epilogue, lanes=lanes, tile=tile, steps=steps)


def column_gemm(name: str, b: Builder, columns, w: np.ndarray, bias, *, out_shape, out_value: str,
                epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Y[n, g*CoG + co, p] = W[g, co, k] @ columns(n, g, k, p) (+ bias) then ``epilogue``, for
    convolutions lowered to a GEMM over columns made on the fly: ``columns(n, g, k, j)`` gives
    column entry (k, j) of image n, group g, for j up to P rounded to the tile (past P: any
    value read from valid memory). ``out_shape`` is NC + spatial, P the spatial size. The
    columns are packed [P/nr, K, nr] per column tile inside the GEMM; W is packed [CoG/mr, K, mr]
    at build time. The caller has made ``b``'s input placeholders."""
    g, cog, k = (int(d) for d in w.shape)
    n, co = int(out_shape[0]), int(out_shape[1])
    spatial = tuple(int(d) for d in out_shape[2:])
    p = int(np.prod(spatial))
    tile = tile or conv_tile(cog, p, lanes)
    cop, pp = _round_up(cog, tile.mr), _round_up(p, tile.nr)
    wmat = np.zeros((g, cop, k), np.float32)
    wmat[:, :cog] = w
    packing = steps is None or "pack_array" in steps
    W = b.const(S.pack_host_array(wmat, tile.mr, along="rows", leading=1) if packing else wmat, (g, cop, k))
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(g, cog), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, (n, co) + spatial)

    cols = te.compute((n, g, k, pp), columns, name="im2col")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((n, g, cop, pp), lambda nn, gg, i, j: te.sum(W[gg, i, r] * cols[nn, gg, r, j], axis=r),
                     name="acc")

    def out(nn, gg, cc, j):
        v = acc[nn, gg, cc, j]
        if B is not None:
            v = v + B[gg, cc]
        return apply(v, (nn, gg * cog + cc) + _unflatten(j, spatial))

    Y = te.compute((n, g, cog, p), out, name="epilogue")  # the NC... output, channels split by group
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, producer="im2col", parallel=S.worth_parallel(n * co * p * k),
                    packs=[("acc", ("read", 0), "rows", 1), ("im2col", ("write", 0), "cols", 2)],
                    steps=steps)
    params = b.params
    if packing:  # the transform changed the parameter's shape to the packed one
        params[w_index].shape = params[w_index].array.shape
    return KernelDef(name, params, sch.mod["main"], steps=_step_names(steps))


# ----------------------------------------------------------------------------- direct conv (NCHW)
def direct_tile(cog: int, ow: int, lanes: int) -> S.GemmTile:
    """Register tile for the direct conv: ``nr`` output channels (SIMD lanes, up to two vectors)
    by ``mr`` output pixels of one row. ``mr`` is the width (up to what the vector registers
    hold beside the accumulators: 24 accumulator vectors) that pads the row least, the widest
    among equals, so few multiply-adds are spent on columns past the row's end."""
    nr = 2 * lanes if cog >= 2 * lanes else lanes
    cap = max(1, 24 // (nr // lanes))
    if ow <= cap:
        return S.GemmTile(mr=ow, nr=nr)
    lo = min(4, cap)
    mr = min(range(lo, cap + 1), key=lambda m: (_round_up(ow, m) - ow, -m))
    return S.GemmTile(mr=mr, nr=nr)


def use_direct_conv(x_shape, w_shape, group: int, pads, strides, dilations, lanes: int) -> bool:
    """Whether `conv2d_direct` fits a conv better than im2col + GEMM, from the work each pads:
    the direct kernel rounds the channels up to its vector tile and the row to its pixel tile,
    the GEMM rounds the channels up to 8 rows and the pixels (all rows) up to 2 vectors; the
    direct kernel is taken when it wastes no more, so it also saves the im2col gathers. Not for
    a 1x1 stride-1 unpadded conv (a plain GEMM over the input rows), and not for a short
    reduction (K < 8 vectors): the direct tile leaves through a transposing scalar write of its
    mr x nr values, which only a long K hides."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = (int(d) for d in w_shape)
    cog = co // int(group)
    pointwise = kh == kw == 1 and tuple(strides) == (1, 1) and not any(pads)
    if pointwise or ci * kh * kw < 8 * lanes:
        return False
    pt, pl, pb, pr = (int(p) for p in pads)
    oh = (h + pt + pb - int(dilations[0]) * (kh - 1) - 1) // int(strides[0]) + 1
    ow = (wd + pl + pr - int(dilations[1]) * (kw - 1) - 1) // int(strides[1]) + 1
    dt, gt = direct_tile(cog, ow, lanes), conv_tile(cog, oh * ow, lanes)
    direct = cog / _round_up(cog, dt.nr) * ow / _round_up(ow, dt.mr)
    gemm = cog / _round_up(cog, gt.mr) * (oh * ow) / _round_up(oh * ow, gt.nr)
    return direct >= gemm


def conv2d(name: str, x: str, x_shape, w: np.ndarray, bias, *, pads, strides, dilations, out_value: str,
           epilogue: Epilogue, lanes: int, group: int = 1) -> KernelDef:
    """Conv2D: direct (`conv2d_direct`) where `use_direct_conv` says so, else im2col + GEMM."""
    direct = use_direct_conv(x_shape, w.shape, group, pads, strides, dilations, lanes)
    fn = conv2d_direct if direct else conv2d_gemm
    return fn(name, x, x_shape, w, bias, pads=pads, strides=strides, dilations=dilations, out_value=out_value,
              epilogue=epilogue, lanes=lanes, group=group)


def zero_padded(X, x_shape, padded_hw, top: int, left: int):
    """X [n, c, h, w] placed at (top, left) in a zero plane of ``padded_hw`` (the "pad" stage
    conv kernels read instead of bounds-checking every tap)."""
    n, c, h, wd = x_shape
    hp, wp = padded_hw
    return te.compute((n, c, hp, wp), lambda nn, cc, y, xx: tirx.if_then_else(
        tirx.all(y >= top, y < top + h, xx >= left, xx < left + wd), X[nn, cc, y - top, xx - left],
        tirx.const(0.0, F32)), name="pad")


def conv2d_direct(name: str, x: str, x_shape, w: np.ndarray, bias, *, pads, strides, dilations,
                  out_value: str, epilogue: Epilogue, lanes: int, group: int = 1,
                  tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Conv2D without im2col columns: the register tile is nr output channels (vector lanes) by
    mr pixels of one output row; per (input channel, ky, kx) it loads nr packed weights and
    broadcasts mr input pixels read straight from the zero-padded input (strided for a strided
    conv). Nothing of size K x P is made, no gathers, and the pixel tile follows the row width,
    so small outputs (7x7) are not padded to a vector of pixels. Weights are packed
    [G, CO/nr, CI, KH, KW, nr] at build time; bias and ``epilogue`` are applied on the way out."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, ci, kh, kw = (int(d) for d in w.shape)
    g = int(group)
    cog = co // g
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilations)
    pt, pl, pb, pr = (int(p) for p in pads)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    tile = tile or direct_tile(cog, ow, lanes)
    mr, nr = int(tile.mr), int(tile.nr)
    cop, owp = _round_up(cog, nr), _round_up(ow, mr)
    # padded plane: the pads plus the columns read by the last pixel tile's padding
    hp = max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl + pr, (owp - 1) * sw + (kw - 1) * dw + 1)
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    wmat = np.zeros((g, cop, ci, kh, kw), np.float32)
    wmat[:, :cog] = w.reshape(g, cog, ci, kh, kw)
    packing = steps is None or "pack_array" in steps
    W = b.const(pack_direct_weights(wmat, nr) if packing else wmat, (g, cop, ci, kh, kw))
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(g, cog), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, (n, co, oh, ow))

    pad = zero_padded(X, (n, c, h, wd), (hp, wp), pt, pl)
    rc = te.reduce_axis((0, ci), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    # channels last: the register tile [mr, nr] has its vector lanes contiguous
    acc = te.compute((n, g, oh, owp, cop), lambda nn, gg, y, xx, i: te.sum(
        pad[nn, gg * ci + rc, y * sh + ry * dh, xx * sw + rx * dw] * W[gg, i, rc, ry, rx], axis=[rc, ry, rx]),
        name="acc")

    def out(nn, gg, cc, y, xx):
        v = acc[nn, gg, y, xx, cc]
        if B is not None:
            v = v + B[gg, cc]
        return apply(v, (nn, gg * cog + cc, y, xx))

    Y = te.compute((n, g, cog, oh, ow), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.schedule_direct_conv(sch, "pad", "acc", "epilogue", tile, lanes=lanes, steps=steps,
                           parallel=S.worth_parallel(n * co * oh * ow * ci * kh * kw))
    params = b.params
    if packing:
        params[w_index].shape = params[w_index].array.shape
    return KernelDef(name, params, sch.mod["main"], steps=_direct_step_names(steps))


def pack_direct_weights(wmat: np.ndarray, nr: int) -> np.ndarray:
    """[G, CO, CI, KH, KW] -> [G, CO/nr, CI, KH, KW, nr] (`S.pack_direct_weights`' layout)."""
    g, cop, ci, kh, kw = wmat.shape
    return np.ascontiguousarray(wmat.reshape(g, cop // nr, nr, ci, kh, kw).transpose(0, 1, 3, 4, 5, 2))


def _direct_step_names(steps) -> list[str]:
    return [s for s in S.DIRECT_CONV_STEPS if steps is None or s in steps]


# -------------------------------------------------------------------------------- dense (MatMul/Gemm)
def dense_tile(m: int, nn: int, lanes: int) -> S.GemmTile:
    nr = 2 * lanes if nn >= 2 * lanes else lanes
    mr = 8 if m >= 8 else m
    return S.GemmTile(mr=mr, nr=nr)


def dense_gemm(name: str, a: str, a_shape, w: np.ndarray, bias, *, out_value: str, out_shape,
               epilogue: Epilogue, lanes: int, trans_a: bool = False, tile: S.GemmTile | None = None,
               steps=None) -> KernelDef:
    """Y[m, n] = A[m, k] @ W[k, n] (+ bias[n]) then ``epilogue``; W is a constant packed
    [N/nr, K, nr]. Leading dims of A (MatMul on [.., M, K]) fold into M."""
    a_shape = tuple(int(d) for d in a_shape)
    if trans_a:
        k, m = a_shape
    else:
        k = a_shape[-1]
        m = int(np.prod(a_shape[:-1])) if len(a_shape) > 1 else 1
    kw_, nn = w.shape
    assert kw_ == k, (a_shape, w.shape)
    tile = tile or dense_tile(m, nn, lanes)
    mp, np_ = _round_up(m, tile.mr), _round_up(nn, tile.nr)
    b = Builder(name)
    A = b.input(a, (k, m) if trans_a else (m, k))
    wpad = np.zeros((k, np_), np.float32)
    wpad[:, :nn] = w
    packing = steps is None or "pack_array" in steps
    W = b.const(S.pack_host_array(wpad, tile.nr, along="cols") if packing else wpad, (k, np_))
    w_index = len(b.params) - 1
    B = b.const(np.asarray(bias, np.float32).reshape(nn), label="bias") if bias is not None else None
    out_shape = tuple(int(d) for d in out_shape)
    apply = bind_epilogue(epilogue, b, out_shape)
    r = te.reduce_axis((0, k), name="k")
    last = m - 1

    def a_at(i, kk):  # rows past M (tile padding) read row M-1: valid memory, result dropped
        return A[kk, tirx.min(i, last)] if trans_a else A[tirx.min(i, last), kk]

    acc = te.compute((mp, np_), lambda i, j: te.sum(a_at(i, r) * W[r, j], axis=r), name="acc")
    lead = out_shape[:-1]

    def out(i, j):
        v = acc[i, j]
        if B is not None:
            v = v + B[j]
        return apply(v, _unflatten(i, lead) + (j,))

    Y = te.compute((m, nn), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, packs=[("acc", ("read", 1), "cols", 0)],
                    parallel=S.worth_parallel(m * nn * k),
                    parallel_rows=m > tile.mr, steps=steps)
    params = b.params
    params[-1].shape = (m, nn)
    if packing:
        params[w_index].shape = params[w_index].array.shape
    return KernelDef(name, params, sch.mod["main"], steps=_step_names(steps))


def _unflatten(i, dims):
    """ONNX index of flat row ``i`` over leading dims ``dims``."""
    if len(dims) <= 1:
        return (i,) if dims else ()
    out = []
    for d in reversed(dims):
        out.append(i % d)
        i = i // d
    return tuple(reversed(out))


# ----------------------------------------------------------------------------- batched matmul (A@B)
def batch_matmul(name: str, a: str, a_shape, bname: str, b_shape, *, out_value: str, out_shape,
                 epilogue: Epilogue, lanes: int) -> KernelDef:
    """MatMul of two runtime tensors [.., M, K] @ [.., K, N] with broadcast batch dims."""
    out_shape = tuple(int(d) for d in out_shape)
    a_shape, b_shape = tuple(int(d) for d in a_shape), tuple(int(d) for d in b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise UnsupportedError("MatMul with 1-D operands")
    k = a_shape[-1]
    b = Builder(name)
    A = b.input(a, a_shape)
    Bt = b.input(bname, b_shape)
    apply = bind_epilogue(epilogue, b, out_shape)
    r = te.reduce_axis((0, k), name="k")
    rank = len(out_shape)

    def read(t, shape, idx, last2):
        off = rank - len(shape)
        ix = [0 if shape[i] == 1 else idx[off + i] for i in range(len(shape) - 2)]
        return t[tuple(ix) + last2]

    acc = te.compute(out_shape, lambda *idx: te.sum(
        read(A, a_shape, idx, (idx[-2], r)) * read(Bt, b_shape, idx, (r, idx[-1])), axis=r), name="acc")
    Y = te.compute(out_shape, lambda *idx: apply(acc[idx], idx), name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    blk = sch.get_sblock("acc")
    loops = sch.get_loops(blk)
    *outer, i, j, kk = loops
    sch.set_scope(blk, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("epilogue"), j)
    if outer and S.worth_parallel(int(np.prod(out_shape)) * k):
        S.parallel_outer(sch, outer + [i])
    sch.decompose_reduction(blk, kk)
    return KernelDef(name, b.params, sch.mod["main"], steps=["write_cache", "parallel_outer"])


# ------------------------------------------------------------------------------------ depthwise conv
def depthwise_conv2d(name: str, x: str, x_shape, w: np.ndarray, bias, *, pads, strides, dilations,
                     out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """Conv with group == input channels: per channel a small 2-D stencil. The padded plane is
    made per channel (compute_at) so the inner loop reads without bounds checks; a row of
    outputs is accumulated in vector registers (write cache) and written through the epilogue."""
    n, c, h, wd = (int(d) for d in x_shape)
    co, _, kh, kw = w.shape
    mult = co // c
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    hp, wp = h + pt + pb, wd + pl + pr
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    W = b.const(w.reshape(co, kh, kw))
    B = b.const(np.asarray(bias, np.float32).reshape(co), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, (n, co, oh, ow))
    pad = zero_padded(X, (n, c, h, wd), (hp, wp), pt, pl)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    acc = te.compute((n, co, oh, ow), lambda nn, cc, y, xx: te.sum(
        pad[nn, cc // mult, y * sh + ry * dh, xx * sw + rx * dw] * W[cc, ry, rx], axis=[ry, rx]), name="acc")

    def out(nn, cc, y, xx):
        v = acc[nn, cc, y, xx]
        if B is not None:
            v = v + B[cc]
        return apply(v, (nn, cc, y, xx))

    Y = te.compute((n, co, oh, ow), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    blk = sch.get_sblock("acc")
    nl, cl, yl, xl, ryl, rxl = sch.get_loops(blk)
    vec = lanes if ow >= lanes else ow
    xo, xi = sch.split(xl, factors=[None, int(vec)])
    sch.reorder(nl, cl, yl, xo, ryl, rxl, xi)
    S.write_cache(sch, blk, sch.get_sblock("epilogue"), xo)
    sch.vectorize(xi)
    sch.vectorize(sch.get_loops(sch.get_sblock("epilogue"))[-1])
    if mult == 1:
        sch.compute_at(sch.get_sblock("pad"), cl)
    if S.worth_parallel(n * co * oh * ow * kh * kw):
        S.parallel_outer(sch, [nl, cl])
    sch.decompose_reduction(blk, ryl)
    return KernelDef(name, b.params, sch.mod["main"],
                     steps=["tile_for_cache", "write_cache", "vectorize_columns", "parallel_outer"])


# ------------------------------------------------------------------------------------------ pooling
def pool2d(name: str, x: str, x_shape, *, kind: str, kernel, pads, strides, dilations, out_shape,
           count_include_pad: bool, out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """MaxPool / AveragePool over NCHW (out_shape already accounts for ceil_mode)."""
    n, c, h, wd = (int(d) for d in x_shape)
    _, _, oh, ow = (int(d) for d in out_shape)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    pt, pl = pads[0], pads[1]
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    apply = bind_epilogue(epilogue, b, (n, c, oh, ow))
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def at(nn, cc, y, xx):
        iy, ix = y * sh - pt + ry * dh, xx * sw - pl + rx * dw
        return tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd), iy, ix

    if kind == "max":
        def red(nn, cc, y, xx):
            ok, iy, ix = at(nn, cc, y, xx)
            return te.max(tirx.if_then_else(ok, X[nn, cc, iy, ix], tirx.min_value(F32)), axis=[ry, rx])
    else:
        def red(nn, cc, y, xx):
            ok, iy, ix = at(nn, cc, y, xx)
            return te.sum(tirx.if_then_else(ok, X[nn, cc, iy, ix], tirx.const(0.0, F32)), axis=[ry, rx])
    acc = te.compute((n, c, oh, ow), red, name="acc")

    def count(y, xx):
        if count_include_pad:  # pads count, the part past the end added by ceil_mode does not
            y0, x0 = y * sh - pt, xx * sw - pl
            y1 = tirx.min(y0 + (kh - 1) * dh + 1, h + pads[2])
            x1 = tirx.min(x0 + (kw - 1) * dw + 1, wd + pads[3])
            ny = (y1 - y0 + dh - 1) // dh
            nx = (x1 - x0 + dw - 1) // dw
            return (ny * nx).astype(F32)
        def valid(o, s, p_, d, k_, lim):
            start = o * s - p_
            # taps start + t*d inside [0, lim): count over t in [0, k_)
            lo = tirx.max((-start + d - 1) // d, 0)
            hi = tirx.min((lim - 1 - start) // d + 1, k_)
            return tirx.max(hi - lo, 0)
        return (valid(y, sh, pt, dh, kh, h) * valid(xx, sw, pl, dw, kw, wd)).astype(F32)

    def out(nn, cc, y, xx):
        v = acc[nn, cc, y, xx]
        if kind != "max":
            v = v / count(y, xx)
        return apply(v, (nn, cc, y, xx))

    Y = te.compute((n, c, oh, ow), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    blk = sch.get_sblock("acc")
    loops = sch.get_loops(blk)
    S.write_cache(sch, blk, sch.get_sblock("epilogue"), loops[3])
    if S.worth_parallel(n * c * oh * ow * kh * kw):
        S.parallel_outer(sch, loops[:3] if n * c * oh >= 2 else loops[:2])
    return KernelDef(name, b.params, sch.mod["main"], steps=["write_cache", "parallel_outer"])


def global_pool(name: str, x: str, x_shape, *, kind: str, out_value: str, epilogue: Epilogue,
                lanes: int) -> KernelDef:
    shape = tuple(int(d) for d in x_shape)
    n, c, spatial = shape[0], shape[1], shape[2:]
    size = int(np.prod(spatial))
    b = Builder(name)
    X = b.input(x, (n, c, size))
    out_shape = (n, c) + (1,) * len(spatial)
    apply = bind_epilogue(epilogue, b, out_shape)
    r = te.reduce_axis((0, size), name="r")
    if kind == "max":
        acc = te.compute((n, c), lambda nn, cc: te.max(X[nn, cc, r], axis=r), name="acc")
    else:
        acc = te.compute((n, c), lambda nn, cc: te.sum(X[nn, cc, r], axis=r), name="acc")
    scale = 1.0 / size

    def out(nn, cc):
        v = acc[nn, cc] if kind == "max" else acc[nn, cc] * tirx.const(scale, F32)
        return apply(v, (nn, cc) + (0,) * len(spatial))

    Y = te.compute((n, c), out, name="epilogue")
    func = b.finish([(out_value, Y)])
    b.params[-1].shape = (n, c)
    sch = _schedule(func)
    blk = sch.get_sblock("acc")
    loops = sch.get_loops(blk)
    S.write_cache(sch, blk, sch.get_sblock("epilogue"), loops[1])
    if S.worth_parallel(n * c * size):
        S.parallel_outer(sch, loops[:2])
    return KernelDef(name, b.params, sch.mod["main"], steps=["write_cache", "parallel_outer"])


# --------------------------------------------------------------------------------------- elementwise
def elementwise(name: str, first: tuple, out_shape, *, out_value: str, epilogue: Epilogue,
                lanes: int) -> KernelDef:
    """A fused chain of elementwise ops: ``first`` = ("value", name, shape) or ("const", array)
    is the running value, broadcast to ``out_shape``; ``epilogue`` applies the chain."""
    out_shape = tuple(int(d) for d in out_shape) or ()
    b = Builder(name)
    rank = len(out_shape)
    if first[0] == "value":
        src = ("t", b.input(first[1], first[2]), tuple(first[2]))
    else:
        src = ("t", b.const(first[1]), tuple(np.shape(first[1])))
    apply = bind_epilogue(epilogue, b, out_shape)
    shape = out_shape if rank else (1,)

    def f(*idx):
        idx = idx if rank else ()
        v = _broadcast_read(src, idx, rank) if (src[2] or rank) else src[1][()]
        return apply(v, idx)

    Y = te.compute(shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes,
                         parallel=S.worth_parallel(int(np.prod(shape)) * (1 + len(epilogue.ops))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


# ------------------------------------------------------------------------------------- softmax etc.
def softmax(name: str, x: str, x_shape, *, axis: int, log: bool, opset: int, out_value: str,
            epilogue: Epilogue, lanes: int) -> KernelDef:
    """Softmax/LogSoftmax: opset >= 13 over one axis; older opsets over all dims from ``axis``
    (coerced to 2-D)."""
    shape = tuple(int(d) for d in x_shape)
    axis = axis % len(shape)
    if opset < 13:
        rows = int(np.prod(shape[:axis])) if axis else 1
        view = (rows, int(np.prod(shape[axis:])))
        ax = 1
    else:
        view = shape
        ax = axis
    pre, red, post = int(np.prod(view[:ax])), view[ax], int(np.prod(view[ax + 1:]))
    b = Builder(name)
    X = b.input(x, (pre, red, post))
    apply = bind_epilogue(epilogue, b, (pre, red, post))
    r1 = te.reduce_axis((0, red), name="r1")
    mx = te.compute((pre, post), lambda i, j: te.max(X[i, r1, j], axis=r1), name="max")
    r2 = te.reduce_axis((0, red), name="r2")
    sm = te.compute((pre, post), lambda i, j: te.sum(tirx.exp(X[i, r2, j] - mx[i, j]), axis=r2), name="sum")
    if log:
        Y = te.compute((pre, red, post), lambda i, c, j: apply(X[i, c, j] - mx[i, j] - tirx.log(sm[i, j]),
                                                                 (i, c, j)), name="norm")
    else:
        Y = te.compute((pre, red, post), lambda i, c, j: apply(tirx.exp(X[i, c, j] - mx[i, j]) / sm[i, j],
                                                                 (i, c, j)), name="norm")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    if pre >= 2 and S.worth_parallel(pre * red * post * 4):
        outer = sch.get_loops(sch.get_sblock("norm"))[0]
        sch.compute_at(sch.get_sblock("sum"), outer)
        sch.compute_at(sch.get_sblock("max"), sch.get_loops(sch.get_sblock("sum"))[0])
        sch.parallel(outer)
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_outer"])


def reduce(name: str, x: str, x_shape, *, op: str, axes, keepdims: bool, out_value: str, out_shape,
           epilogue: Epilogue, lanes: int) -> KernelDef:
    shape = tuple(int(d) for d in x_shape)
    axes = sorted({a % len(shape) for a in axes}) if axes else list(range(len(shape)))
    b = Builder(name)
    X = b.input(x, shape)
    kept = [i for i in range(len(shape)) if i not in axes]
    rs = [te.reduce_axis((0, shape[a]), name=f"r{a}") for a in axes]
    acc_shape = tuple(shape[i] for i in kept) or (1,)
    count = int(np.prod([shape[a] for a in axes])) if axes else 1

    def src_index(idx):
        ix, ri = [], 0
        ki = iter(idx)
        for i in range(len(shape)):
            if i in axes:
                ix.append(rs[ri])
                ri += 1
            else:
                ix.append(next(ki))
        return tuple(ix)

    def body(*idx):
        idx = idx if kept else ()
        v = X[src_index(idx)]
        if op == "ReduceMax":
            return te.max(v, axis=rs)
        if op == "ReduceMin":
            return te.min(v, axis=rs)
        if op == "ReduceSumSquare":
            return te.sum(v * v, axis=rs)
        return te.sum(v, axis=rs)

    acc = te.compute(acc_shape, body, name="acc")
    out_shape = tuple(int(d) for d in out_shape)
    apply = bind_epilogue(epilogue, b, out_shape)

    def out(*idx):
        v = acc[idx]
        if op == "ReduceMean":
            v = v * tirx.const(1.0 / count, F32)
        if keepdims:
            full, ki = [], iter(idx)
            for i in range(len(shape)):
                full.append(0 if i in axes else next(ki))
            return apply(v, tuple(full))
        return apply(v, idx)

    Y = te.compute(acc_shape, out, name="epilogue")
    func = b.finish([(out_value, Y)])
    b.params[-1].shape = acc_shape
    sch = _schedule(func)
    if kept and int(np.prod(acc_shape)) >= 2 and S.worth_parallel(int(np.prod(shape))):
        S.parallel_outer(sch, [sch.get_loops(sch.get_sblock("acc"))[0]])
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_outer"])


def concat(name: str, inputs: list[tuple[str, tuple]], *, axis: int, out_value: str, out_shape,
           lanes: int) -> KernelDef:
    out_shape = tuple(int(d) for d in out_shape)
    axis = axis % len(out_shape)
    b = Builder(name)
    ts, offs, off = [], [], 0
    for v, shape in inputs:
        ts.append(b.input(v, shape) if isinstance(v, str) else b.const(v))
        offs.append(off)
        off += int(shape[axis])

    def f(*idx):
        val = None
        for t, o, (_, shape) in reversed(list(zip(ts, offs, inputs))):
            ix = list(idx)
            # clamped so that the branch not taken still reads inside the buffer
            ix[axis] = tirx.min(tirx.max(idx[axis] - o, 0) if o else idx[axis], int(shape[axis]) - 1)
            read = t[tuple(ix)]
            val = read if val is None else tirx.if_then_else(idx[axis] < o + int(shape[axis]), read, val)
        return val

    Y = te.compute(out_shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def transpose(name: str, x: str, x_shape, perm, *, out_value: str, lanes: int) -> KernelDef:
    shape = tuple(int(d) for d in x_shape)
    out_shape = tuple(shape[p] for p in perm)
    b = Builder(name)
    X = b.input(x, shape)
    inv = [perm.index(i) for i in range(len(perm))]
    Y = te.compute(out_shape, lambda *idx: X[tuple(idx[inv[i]] for i in range(len(shape)))], name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def strided_slice(name: str, x: str, x_shape, starts, steps, *, out_value: str, out_shape,
                  lanes: int) -> KernelDef:
    """Slice with every axis resolved to (start, step): out[i] = x[start + i * step]."""
    shape = tuple(int(d) for d in x_shape)
    out_shape = tuple(int(d) for d in out_shape)
    b = Builder(name)
    X = b.input(x, shape)
    Y = te.compute(out_shape, lambda *idx: X[tuple(int(s0) + i * int(st) for s0, st, i in zip(starts, steps, idx))],
                   name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(int(np.prod(out_shape))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def lrn(name: str, x: str, x_shape, *, size: int, alpha: float, beta: float, bias: float, out_value: str,
        epilogue: Epilogue, lanes: int) -> KernelDef:
    """Local response normalization across channels (NCHW...)."""
    shape = tuple(int(d) for d in x_shape)
    c = shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    b = Builder(name)
    X = b.input(x, shape)
    apply = bind_epilogue(epilogue, b, shape)
    r = te.reduce_axis((0, size), name="r")

    def sq(nn, cc, *rest):
        src = cc - lo + r
        v = X[(nn, tirx.min(tirx.max(src, 0), c - 1)) + rest]
        return te.sum(tirx.if_then_else(tirx.all(src >= 0, src < c), v * v, tirx.const(0.0, F32)), axis=r)

    ssum = te.compute(shape, sq, name="acc")
    del hi
    Y = te.compute(shape, lambda *idx: apply(X[idx] / tirx.power(
        tirx.const(bias, F32) + tirx.const(alpha / size, F32) * ssum[idx], tirx.const(beta, F32)), idx),
        name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    if S.worth_parallel(int(np.prod(shape)) * size):
        S.parallel_outer(sch, sch.get_loops(sch.get_sblock("epilogue"))[:2])
    sch.compute_at(sch.get_sblock("acc"), sch.get_loops(sch.get_sblock("epilogue"))[-1])
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_outer"])


# ----------------------------------------------------------------------------------- ConvTranspose
def conv_transpose_gemm_weights(w: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weights [C, M/g, *k] as the weights of a grouped 1x1 conv producing the
    columns [N, M*K, H, W]: column channel (m*K + tap) of group g is W[g*Cg + c, m, tap] summed
    over c, i.e. the transposed per-group matrix."""
    c, mg = w.shape[:2]
    k = int(np.prod(w.shape[2:]))
    cg = c // group
    wt = w.reshape(group, cg, mg * k).transpose(0, 2, 1)
    return np.ascontiguousarray(wt.reshape(group * mg * k, cg, 1, 1), dtype=np.float32)


def col2im(name: str, cols: str, cols_shape, bias, *, kernel, pads, strides, dilations, out_shape,
           out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """The second half of ConvTranspose: every output pixel gathers the column entries of the
    taps that land on it (scatter-add turned into a gather, so no two threads write one pixel),
    adds the bias and applies ``epilogue``. ``cols`` is [N, M*K, H, W] (`conv2d_gemm` with
    `conv_transpose_gemm_weights`); ``pads`` are the begin pads (negative: the output starts
    before the first tap)."""
    n, mk, h, wd = (int(d) for d in cols_shape)
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilations)
    pt, pl = (int(p) for p in pads)
    out_shape = tuple(int(d) for d in out_shape)
    m = out_shape[1]
    assert mk == m * kh * kw, (cols_shape, kernel, out_shape)
    b = Builder(name)
    X = b.input(cols, (n, mk, h, wd))
    B = b.const(np.asarray(bias, np.float32).reshape(m), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, out_shape)
    zero = tirx.const(0.0, F32)
    # stride = kernel, no dilation (2x2 stride-2 upsampling): exactly one tap per pixel
    disjoint = (kh, kw) == (sh, sw) and dh == dw == 1

    def read(nn, mm, ty, tx, ky, kx):
        iy, ix = ty // sh, tx // sw  # floor division: ty may be negative
        ok = tirx.all(ty >= 0, iy < h, tx >= 0, ix < wd)
        if not disjoint:
            ok = tirx.all(ok, ty % sh == 0, tx % sw == 0)
        ch = mm * (kh * kw) + ky * kw + kx
        v = X[nn, ch, tirx.min(tirx.max(iy, 0), h - 1), tirx.min(tirx.max(ix, 0), wd - 1)]
        return tirx.if_then_else(ok, v, zero)

    def out(nn, mm, oy, ox):
        py, px = oy + pt, ox + pl
        if disjoint:
            v = read(nn, mm, py, px, py % sh, px % sw)
        else:  # few taps (a kernel's area): unrolled, so the block stays purely spatial
            v = None
            for ky in range(kh):
                for kx in range(kw):
                    t = read(nn, mm, py - ky * dh, px - kx * dw, ky, kx)
                    v = t if v is None else v + t
        if B is not None:
            v = v + B[mm]
        return apply(v, (nn, mm, oy, ox))

    Y = te.compute(out_shape, out, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes,
                         parallel=S.worth_parallel(int(np.prod(out_shape)) * (1 if disjoint else kh * kw)))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


# ------------------------------------------------------------------------------------------ Resize
def resize(name: str, x: str, x_shape, *, axes_maps, out_shape, out_value: str, epilogue: Epilogue,
           lanes: int) -> KernelDef:
    """ONNX Resize as a gather. ``axes_maps[i]`` says how output index o of axis i reads the
    input: None (same index), ("div", num, den): floor(o * num / den) (nearest with an exact
    rational scale, computed in the kernel), ("nearest", idx[out]) or ("linear", idx[out, 2],
    weights[out, 2]) from host tables; the linear axes' taps are combined separably (bilinear
    on two axes)."""
    shape = tuple(int(d) for d in x_shape)
    out_shape = tuple(int(d) for d in out_shape)
    b = Builder(name)
    X = b.input(x, shape)
    maps = []
    for ax, mp in enumerate(axes_maps):
        if mp is None or mp[0] == "div":
            maps.append(mp)
        elif mp[0] == "nearest":
            maps.append(("nearest", b.table(np.asarray(mp[1]).reshape(-1), label=f"idx{ax}_")))
        else:
            maps.append(("linear", b.table(mp[1], label=f"idx{ax}_"),
                         b.const(np.asarray(mp[2], np.float32), label=f"wt{ax}_")))
    apply = bind_epilogue(epilogue, b, out_shape)
    linear = [ax for ax, mp in enumerate(maps) if mp is not None and mp[0] == "linear"]

    def f(*idx):
        base = []
        for o, mp in zip(idx, maps):
            if mp is None:
                base.append(o)
            elif mp[0] == "div":
                base.append(o * mp[1] // mp[2])
            elif mp[0] == "nearest":
                base.append(mp[1][o])
            else:
                base.append(None)
        v = None
        for taps in np.ndindex(*([2] * len(linear))):
            ix = list(base)
            w = None
            for ax, t in zip(linear, taps):
                _, tab, wt = maps[ax]
                ix[ax] = tab[idx[ax], int(t)]
                w = wt[idx[ax], int(t)] if w is None else w * wt[idx[ax], int(t)]
            term = X[tuple(ix)] if w is None else X[tuple(ix)] * w
            v = term if v is None else v + term
        return apply(v, idx)

    Y = te.compute(out_shape, f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes,
                         parallel=S.worth_parallel(int(np.prod(out_shape)) * (1 << len(linear))))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


# ------------------------------------------------------------------- tvmlite's conv-lowering ops
def const_a_batch_gemm(name: str, a: np.ndarray, bname: str, b_shape, *, out_value: str, out_shape,
                       epilogue: Epilogue, lanes: int, tile: S.GemmTile | None = None, steps=None) -> KernelDef:
    """Y[..., M, N] = A[..., M, K] @ B[..., K, N] with A constant and batch dims broadcast (the
    GEMMs of lower-conv and Winograd: weights on the left, columns/tiles on the right). The
    batch dims are flattened into one loop; A is packed [Ba, M/mr, K, mr] at build time; B's
    columns are packed [bt, N/nr, K, nr] per column tile inside the GEMM (as conv's im2col)."""
    out_shape = tuple(int(d) for d in out_shape)
    b_shape = tuple(int(d) for d in b_shape)
    m, k = (int(d) for d in a.shape[-2:])
    nn = b_shape[-1]
    batch = out_shape[:-2]
    bt = int(np.prod(batch)) if batch else 1
    a_batch, b_batch = tuple(a.shape[:-2]), b_shape[:-2]
    tile = tile or conv_tile(m, nn, lanes)
    mp, np_ = _round_up(m, tile.mr), _round_up(nn, tile.nr)
    b = Builder(name)
    ba = int(np.prod(a_batch)) if a_batch else 1
    apad = np.zeros((ba, mp, k), np.float32)
    apad[:, :m] = np.asarray(a, np.float32).reshape(ba, m, k)
    packing = steps is None or "pack_array" in steps
    A = b.const(S.pack_host_array(apad, tile.mr, along="rows", leading=1) if packing else apad, (ba, mp, k))
    a_index = len(b.params) - 1
    bb = int(np.prod(b_batch)) if b_batch else 1
    Bt = b.input(bname, (bb, k, nn))
    apply = bind_epilogue(epilogue, b, out_shape)

    def flat_index(idx, dims):
        """Flat index into a broadcast operand with batch ``dims`` (aligned right) of batch ``idx``."""
        off = len(batch) - len(dims)
        flat = 0
        for i, d in enumerate(dims):
            if d != 1:
                flat = flat * d + idx[off + i]
            # a broadcast dim contributes nothing
        return flat

    def split(t):
        return _unflatten(t, batch) if batch else ()

    pack = te.compute((bt, k, np_), lambda t, kk, j: Bt[flat_index(split(t), b_batch), kk, tirx.min(j, nn - 1)],
                      name="pack")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((bt, mp, np_), lambda t, i, j: te.sum(A[flat_index(split(t), a_batch), i, r] * pack[t, r, j],
                                                          axis=r), name="acc")
    Y = te.compute((bt, m, nn), lambda t, i, j: apply(acc[t, i, j], split(t) + (i, j)), name="epilogue")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.schedule_gemm(sch, "acc", "epilogue", tile, producer="pack", parallel=S.worth_parallel(bt * m * nn * k),
                    packs=[("acc", ("read", 0), "rows", 1), ("pack", ("write", 0), "cols", 1)], steps=steps)
    if packing:
        b.params[a_index].shape = b.params[a_index].array.shape
    return KernelDef(name, b.params, sch.mod["main"], steps=_step_names(steps))


def im2col(name: str, x: str, x_shape, *, kernel, pads, strides, dilations, out_value: str,
           lanes: int) -> KernelDef:
    """tvmlite Im2Col (2-D; 1-D as a unit height): [N, C, H, W] -> [N, C*kh*kw, OH*OW]."""
    n, c, h, wd = (int(d) for d in x_shape)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    khw = kh * kw

    def f(nn, row, col):
        cc, t = row // khw, row % khw
        y = (col // ow) * sh - pt + (t // kw) * dh
        xx = (col % ow) * sw - pl + (t % kw) * dw
        ok = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), wd - 1)],
                                 tirx.const(0.0, F32))

    Y = te.compute((n, c * khw, oh * ow), f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(n * c * khw * oh * ow))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def winograd_input(name: str, x: str, x_shape, *, m: int, r: int, pads, bt: np.ndarray, out_value: str,
                   lanes: int) -> KernelDef:
    """tvmlite WinogradInput: V[a*α+b, c, tile] = (Bᵀ d B)[a, b] of every α×α input tile d (zero
    beyond the pads), tiles ordered (n, ty, tx). Separable: rows first (T = Bᵀ d, α terms per
    entry), then columns; both sums are unrolled so each stage is a plain vectorized map over
    the tiles."""
    n, c, h, wd = (int(d) for d in x_shape)
    alpha = m + r - 1
    pt, pl, pb, pr = (int(p) for p in pads)
    oh, ow = h + pt + pb - r + 1, wd + pl + pr - r + 1
    th, tw = -(-oh // m), -(-ow // m)
    p = n * th * tw
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))
    BT = b.const(np.asarray(bt, np.float32), label="bt")

    def tile_read(cc, t, i, j):
        nn, ty, tx = t // (th * tw), (t // tw) % th, t % tw
        y, xx = ty * m + i - pt, tx * m + j - pl
        ok = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), wd - 1)],
                                 tirx.const(0.0, F32))

    rows = te.compute((alpha, alpha, c, p), lambda a, j, cc, t: _unrolled_sum(
        [BT[a, i] * tile_read(cc, t, i, j) for i in range(alpha)]), name="rows")
    V = te.compute((alpha * alpha, c, p), lambda ab, cc, t: _unrolled_sum(
        [BT[ab % alpha, j] * rows[ab // alpha, j, cc, t] for j in range(alpha)]), name="ew")
    func = b.finish([(out_value, V)])
    sch = _schedule(func)
    par = S.worth_parallel(alpha * alpha * c * p * alpha * 2)
    S.parallel_vectorize(sch, "rows", lanes, parallel=par)
    S.parallel_vectorize(sch, "ew", lanes, parallel=par)
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def winograd_output(name: str, mt: str, mt_shape, bias, *, m: int, r: int, out_shape, at: np.ndarray,
                    out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """tvmlite WinogradOutput: Y[n, M, y, x] = (Aᵀ Mt A)[y % m, x % m] of tile (n, y//m, x//m),
    cropped to ``out_shape`` (+ bias, epilogue). Separable: columns first into Z[a, M, tile, q],
    then rows inside the output map. With q innermost in Z, an output row reads Z contiguously
    (tile x//m, column x%m is Z's flat index tile*m + q) and the row coefficient is one scalar
    per row: the columns stage vectorizes over tiles and stores with stride m instead (7x faster
    than Z[a, q, M, tile], whose output rows gathered two varying indices)."""
    a2, mm, p = (int(d) for d in mt_shape)
    alpha = m + r - 1
    out_shape = tuple(int(d) for d in out_shape)
    n, _, oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    b = Builder(name)
    T = b.input(mt, (a2, mm, p))
    AT = b.const(np.asarray(at, np.float32), label="at")
    B = b.const(np.asarray(bias, np.float32).reshape(mm), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, out_shape)
    Z = te.compute((alpha, mm, p, m), lambda a, ch, t, q: _unrolled_sum(
        [AT[q, bb] * T[a * alpha + bb, ch, t] for bb in range(alpha)]), name="cols")

    def out(nn, ch, y, xx):
        t = (nn * th + y // m) * tw + xx // m
        v = _unrolled_sum([AT[y % m, a] * Z[a, ch, t, xx % m] for a in range(alpha)])
        if B is not None:
            v = v + B[ch]
        return apply(v, (nn, ch, y, xx))

    Y = te.compute(out_shape, out, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    par = S.worth_parallel(alpha * m * mm * p * alpha * 2)
    al, cl, tl, ql = sch.get_loops(sch.get_sblock("cols"))
    if p >= lanes:
        to, ti = sch.split(tl, factors=[None, int(lanes)])
        sch.reorder(to, ql, ti)
        sch.unroll(ql)
        sch.vectorize(ti)
    if par:
        S.parallel_outer(sch, [al, cl])
    S.parallel_vectorize(sch, "ew", lanes, parallel=par)
    return KernelDef(name, b.params, sch.mod["main"], steps=["tile_for_cache", "vectorize_columns", "parallel_outer"])


def mec_lower(name: str, x: str, x_shape, *, kernel, pads, strides, dilations, out_value: str,
              lanes: int) -> KernelDef:
    """tvmlite MecLower: [N, C, H, W] -> L[N, OW, Hp, C*KW], L[n, j, y, c*KW + t] = the padded
    input at row y, column j*sw + t*dw of channel c."""
    n, c, h, wd = (int(d) for d in x_shape)
    kh, kw = (int(k) for k in kernel)
    sw, dw = int(strides[1]), int(dilations[1])
    pt, pl, pb, pr = (int(p) for p in pads)
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    hp = h + pt + pb
    b = Builder(name)
    X = b.input(x, (n, c, h, wd))

    def f(nn, j, y, q):
        cc, t = q // kw, q % kw
        iy, ix = y - pt, j * sw + t * dw - pl
        ok = tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
        return tirx.if_then_else(ok, X[nn, cc, tirx.min(tirx.max(iy, 0), h - 1), tirx.min(tirx.max(ix, 0), wd - 1)],
                                 tirx.const(0.0, F32))

    Y = te.compute((n, ow, hp, c * kw), f, name="ew")
    func = b.finish([(out_value, Y)])
    sch = _schedule(func)
    S.parallel_vectorize(sch, "ew", lanes, parallel=S.worth_parallel(n * ow * hp * c * kw))
    return KernelDef(name, b.params, sch.mod["main"], steps=["parallel_vectorize"])


def mec_matmul(name: str, lowered: str, l_shape, w: np.ndarray, bias, *, stride_h: int, dilation_h: int,
               out_h: int, out_value: str, epilogue: Epilogue, lanes: int) -> KernelDef:
    """tvmlite MecMatMul: Y[n, M, o, j] = sum over (i, q) of L[n, j, o*s + i*d, q] W'[i, q, M]
    (+ bias): a GEMM whose columns (o, j) are read from MEC's lowered matrix on the fly, each
    window row shared by the KH output rows that use it, with `column_gemm`'s packed schedule."""
    n, ow, hp, ckw = (int(d) for d in l_shape)
    kh, _, m = (int(d) for d in w.shape)
    s, d = int(stride_h), int(dilation_h)
    b = Builder(name)
    L = b.input(lowered, (n, ow, hp, ckw))

    def columns(nn, gg, kk, j):
        i, q = kk // ckw, kk % ckw
        jc = tirx.min(j, out_h * ow - 1)  # past P: a valid read, the result is dropped
        return L[nn, jc % ow, (jc // ow) * s + i * d, q]

    wmat = np.asarray(w, np.float32).reshape(kh * ckw, m).T.reshape(1, m, kh * ckw)
    return column_gemm(name, b, columns, wmat, bias, out_shape=(n, m, out_h, ow), out_value=out_value,
                       epilogue=epilogue, lanes=lanes)


def _unrolled_sum(terms):
    v = terms[0]
    for t in terms[1:]:
        v = v + t
    return v


# ------------------------------------------------------------------------------------------ helpers
def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _schedule(func):
    from tvm import s_tir

    return s_tir.Schedule(func)


def _step_names(steps) -> list[str]:
    all_steps = ["tile_for_cache", "pack_array", "write_cache", "vectorize_columns", "unroll_rows",
                 "parallel_outer", "finish_reduction"]
    return [s for s in all_steps if steps is None or s in steps]
