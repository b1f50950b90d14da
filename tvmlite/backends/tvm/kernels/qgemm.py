"""int8 GEMM and convolution with AVX-512 VNNI (AVX2 without it): uint8 activations x int8 weights,
int32 accumulation.

The inner step is one `vpdpbusd`: 16 int32 lanes (16 output channels) each add the dot product of
4 uint8 activation bytes (broadcast) with 4 int8 weight bytes. Weights are packed at build time as
[N/16, K/4, 16, 4]; the activations are quantized once into a uint8 [M, K] operand (for a conv: a
uint8 NHWC copy of the padded input, then columns ordered (kh, kw, channel), so each step reads 4
consecutive channels). int8 activations run as uint8 with their zero point shifted by 128. The
accumulator is corrected for the activation zero point (``- zx * colsum(W)``), scaled by
``x_scale * w_scale[n]`` and given the bias, the activation, the output quantize-dequantize and any
fused elementwise epilogue, in float32, exactly the QDQ graph's arithmetic up to the order of the
float products.

Without VNNI (AVX2 CPUs: LLVM aborts the process on `vpdpbusd` there) the step is AVX2's
`vpmaddubsw` + `vpmaddwd` (8 lanes x 4 bytes, the same layout) where the weights provably cannot
saturate its int16 pair sums, else one exact `vpmaddwd` on int16 weights and activations (8 lanes x
2); kernels/qintrin.py has the steps, their intrinsics and the choice.
"""
from __future__ import annotations

import copy

import numpy as np
from tvm import te, tirx

from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.builder import Builder, schedule
from tvmlite.backends.tvm.kernels.defs import Epilogue, KernelDef, round_up, unflatten
from tvmlite.backends.tvm.kernels.epilogue import bind_epilogue
from tvmlite.backends.tvm.kernels.qintrin import DotStep, dot_step
from tvmlite.ops.qdq_fused import fake_quant as fake_quant_np

def _quantized(v, scale: float, zero_point: int, signed: int, on_grid: bool = False):
    """QuantizeLinear of a float32 TE value (x / scale, round half to even, add the zero point,
    saturate), still as float32. ``scale`` None: ``v`` is in steps of the grid already.
    ``on_grid``: ``v`` is fl((k - zero point) * scale) for integers k (a fake-quantized value on
    this very grid), so x * (1 / scale) lies a few ulps from k - zero point and rounds to it as the
    division does: a multiply instead of a division."""
    lo, hi = (-128, 127) if signed else (0, 255)
    if scale is None:  # v is already in steps of the grid
        step = v
    elif on_grid:
        step = v * tirx.const(float(np.float32(1) / np.float32(scale)), "float32")
    else:
        step = v / tirx.const(scale, "float32")
    q = tirx.nearbyint(step) + tirx.const(float(zero_point), "float32")
    return te.max(te.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))


def quantize_u8(v, scale: float, zero_point: int, signed: int, on_grid: bool = False):
    """QuantizeLinear as uint8: int8 values are shifted by 128 (the zero point shifts with them)."""
    q = _quantized(v, scale, zero_point, signed, on_grid)
    return (q.astype("int32") + (128 if signed else 0)).astype("uint8")


def fake_quant(v, scale: float, zero_point: int, signed: int):
    """DequantizeLinear(QuantizeLinear(v)) in float32."""
    z = tirx.const(float(zero_point), "float32")
    return (_quantized(v, scale, zero_point, signed) - z) * tirx.const(scale, "float32")


def silu_table(c_grid, s_grid) -> np.ndarray:
    """fq(Sigmoid(c), s_grid) for each integer of c's grid (256 entries, lowest first), in float32
    as the NumPy kernel computes it: onnxruntime's QLinearSigmoid is such a table too."""
    (cs, cz, csg), (ss, sz, ssg) = c_grid, s_grid
    lo = -128 if csg else 0
    c = (np.arange(lo, lo + 256, dtype=np.float32) - np.float32(cz)) * np.float32(cs)
    return fake_quant_np(np.float32(1) / (np.float32(1) + np.exp(-c)), ss, sz, ssg)


def silu_lut(b, spec: QuantSpec):
    """SiLU's table as a kernel constant, indexed by its input's integer (lowest first). With an
    integer output it is the output integer itself, int32: (q - zero point) * scale * sigmoid, over
    y_scale, rounded half to even, plus the zero point, saturated, as `requant_tail` computed it per
    element in float32 (the same operations in the same order, so the same integers), leaving one
    table read per output instead of a read and nine float operations (the detector's 64 -> 32
    channel pointwise conv at 80 x 80, one thread: 1.32 -> 1.07 ms, the same outputs). Else the
    quantized sigmoid."""
    sig = silu_table(*spec.silu)
    if not spec.yq:
        return b.const(sig, label="sigmoid")
    (cs, cz, csg) = spec.silu[0]
    lo = -128 if csg else 0
    q = np.arange(lo, lo + 256, dtype=np.float32)
    v = (q - np.float32(cz)) * np.float32(cs) * sig / np.float32(spec.ys)
    ylo, yhi = (-128, 127) if spec.ysg else (0, 255)
    y = np.clip(np.rint(v) + np.float32(spec.yz), ylo, yhi).astype(np.int32)
    return b.const(y, label="silu_q", dtype=np.int32)


def _requantized(v, spec: QuantSpec):
    """The output integer from its float value in output steps: a Relu before QuantizeLinear is the
    clip at the zero point."""
    lo, hi = (-128, 127) if spec.ysg else (0, 255)
    if spec.activation == "Relu":
        lo = max(lo, spec.yz)
    q = tirx.nearbyint(v) + tirx.const(float(spec.yz), "float32")
    q = te.max(te.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
    return q.astype("int32").astype("int8" if spec.ysg else "uint8")


_SILU_FOLD = True  # requant_scales: SiLU's input step folded into the multiplier


def requant_scales(spec: QuantSpec, w_scale: np.ndarray, bias):
    """(per-channel multiplier of the int32 accumulator, float bias or None): x_scale * w_scale, and
    for an integer output (not SiLU) both divided by y_scale, as QLinearConv: one float multiply,
    then round half to even. Before a fused SiLU both are divided by the step of SiLU's input grid
    instead (`requant_tail` then rounds the value as it comes), which saves the QDQ graph's
    division per output (`vdivps`, on Zen 1 several multiplies' time). One thread, CPU time, each
    kernel alone, interleaved, load 12-14: the
    detector's 64 -> 32 1x1 at 80x80 1.06 -> 0.97 ms, the 3 -> 16 stem 2.21 -> 2.01 ms; 1 output
    in 204800 moved by one step (a value within an ulp of a rounding boundary), as QLinearConv's
    own folded multiplier may. ``_SILU_FOLD`` off: the division, for the A/B."""
    scale = np.float32(spec.xs) * w_scale.astype(np.float32)
    bias = bias.astype(np.float32) if bias is not None else None
    step = np.float32(spec.silu[0][0]) if spec.activation == "SiLU" and _SILU_FOLD else (
        np.float32(spec.ys) if spec.yq and spec.activation != "SiLU" else None)
    if step is not None:
        scale, bias = scale / step, (bias / step if bias is not None else None)
    return scale, bias


def requant_tail(v, spec: QuantSpec, lut, apply, onnx_idx):
    """The float value ``v`` (accumulator scaled, bias added) through the activation and the output
    quantization: the integer when ``spec.yq``, else the float (fake-quantized when y_scale is set)
    through the fused elementwise ``apply`` at ONNX index ``onnx_idx``. ``lut``: SiLU's table
    (`silu_lut`)."""
    if spec.activation == "SiLU":  # its input's integer picks the quantized sigmoid (a table)
        (cs, cz, csg), lo = spec.silu[0], (-128 if spec.silu[0][2] else 0)
        q = _quantized(v, None if _SILU_FOLD else cs, cz, csg)
        if spec.yq:  # the table holds the output integers (silu_lut)
            return lut[q.astype("int32") - lo].astype("int8" if spec.ysg else "uint8")
        v = (q - tirx.const(float(cz), "float32")) * tirx.const(cs, "float32") * lut[q.astype("int32") - lo]
    if spec.yq:
        return _requantized(v / tirx.const(spec.ys, "float32") if spec.activation == "SiLU" else v, spec)
    if spec.activation == "Relu":
        v = te.max(v, tirx.const(0.0, "float32"))
    if spec.ys > 0:
        v = fake_quant(v, spec.ys, spec.yz, spec.ysg)
    return apply(v, onnx_idx)


def pack_weights(w2: np.ndarray, kp: int, np_: int, lanes: int = 16, group: int = 4, dtype=np.int8) -> np.ndarray:
    """int8 [K, N] -> [Np/lanes, Kp/group, lanes, group] of ``dtype``, zero-padded (zero weights add
    nothing)."""
    k, n = w2.shape
    full = np.zeros((kp, np_), dtype)
    full[:k, :n] = w2
    return np.ascontiguousarray(full.reshape(kp // group, group, np_ // lanes, lanes).transpose(2, 0, 3, 1))


def _tile(m: int, n16: int, vnni: bool) -> tuple[int, int]:
    """(rows, vectors of the dot step's lanes) of the register tile. VNNI: 8 x 2 keeps 16 int32
    accumulators in zmm registers (6 x 4 and 12 x 2 measured the same within noise on the digits
    convs). AVX2 (8 lanes, 16 ymm registers): 4 x 2, 8 accumulators beside the weights and the
    broadcast activations."""
    if vnni:
        return (8 if m >= 8 else m), (2 if n16 % 2 == 0 else 1)
    return (4 if m >= 4 else m), 2  # n16 * 2 vectors of 8: always even


def task_rows(m: int, mr: int) -> int:
    """Rows per parallel task (a multiple of the register tile's ``mr``): up to 64, while at least 8
    tasks remain. Long tasks let an NCHW epilogue write 64-pixel runs (16-lane vectors) instead
    of 8-pixel pieces 16 channel planes apart."""
    g = 8
    while g > 1 and m < 8 * g * mr:
        g //= 2
    return mr * g


class QuantSpec:
    """Per-tensor input / output quantization and the tail of a fused QDQ node; ``x_quantized`` /
    ``y_quantized``: the input / output is the integer tensor (int8 when signed, else uint8),
    ``x_nhwc`` / ``y_nhwc``: a conv's integer input / output is stored channels-last; ``x_on_grid``:
    the float input already lies on the input grid (`_quantized`'s ``on_grid``)."""

    def __init__(self, x_scale, x_zero_point, x_signed, y_scale=0.0, y_zero_point=0, y_signed=0, activation="",
                 x_quantized=0, y_quantized=0, x_nhwc=False, y_nhwc=False, silu=None, x_on_grid=False):
        self.xs, self.xz, self.xsg = float(x_scale), int(x_zero_point), int(x_signed)
        self.ys, self.yz, self.ysg = float(y_scale), int(y_zero_point), int(y_signed)
        self.activation = activation
        self.xq, self.yq = bool(x_quantized), bool(y_quantized)
        self.x_nhwc, self.y_nhwc = bool(x_nhwc), bool(y_nhwc)
        self.silu = silu  # "SiLU": ((scale, zero point, signed) of its input, of the sigmoid)
        self.x_on_grid = bool(x_on_grid) and not self.xq

    @property
    def x_zero_u8(self) -> int:
        return self.xz + (128 if self.xsg else 0)

    @property
    def x_dtype(self) -> str:
        return ("int8" if self.xsg else "uint8") if self.xq else "float32"

    def x_u8(self, v):
        """An input element as the GEMM's uint8 operand: quantized here, or shifted when int8."""
        if not self.xq:
            return quantize_u8(v, self.xs, self.xz, self.xsg, self.x_on_grid)
        return (v.astype("int32") + 128).astype("uint8") if self.xsg else v


def _gemm(name, b: Builder, aq, w2: np.ndarray, w_scale: np.ndarray, bias, spec: QuantSpec, dot: DotStep, *, m: int,
          out_value: str, out_shape, y_shape, mn_of, onnx_index, epilogue: Epilogue, parallel: bool,
          tiled: bool):
    """acc[m, n] = aq[m, :] . W[:, n] with ``dot``'s step (qintrin.py), then the float epilogue,
    computed over ``y_shape`` (the output buffer's view; ``mn_of`` maps its index to (m, n), ``onnx_index`` to the ONNX output's).
    ``aq`` is a [Mp, Kp] TE tensor of ``dot.a_dtype``. ``tiled``: y's first dims follow m's row tiles, so each row
    tile quantizes its own rows of ``aq``, runs its GEMM and writes its outputs in one parallel task
    (one pass of the thread pool instead of three). An epilogue that starts with a table read on
    the output grid (`table_split`) runs as a second stage, "lookup", over the integer outputs."""
    table, epilogue = table_split(spec, epilogue)
    if table is not None:
        spec = copy.copy(spec)
        spec.yq = True
    k, n = w2.shape
    mp, kp = (int(d) for d in aq.shape)
    np_ = round_up(n, 16)
    mr, nb = _tile(m, np_ // 16, dot.vnni)
    rt = task_rows(m, mr) if tiled else mr
    L, G = dot.lanes, dot.group
    W = b.const(pack_weights(w2, kp, np_, L, G, dot.w_dtype), label="wq", dtype=dot.w_dtype)
    colsum = w2.astype(np.int64).sum(axis=0)
    corr = b.const(np.pad(-spec.x_zero_u8 * colsum, (0, np_ - n)).astype(np.int32), label="zcorr", dtype=np.int32)
    scale, bias = requant_scales(spec, w_scale, bias)
    scale = b.const(np.pad(scale, (0, np_ - n)), label="scale")
    B = b.const(np.pad(bias, (0, np_ - n)), label="bias") if bias is not None else None
    apply = bind_epilogue(epilogue, b, tuple(out_shape))
    lut = silu_lut(b, spec) if spec.activation == "SiLU" else None
    r = te.reduce_axis((0, kp), name="k")
    acc = te.compute((mp, np_), lambda i, j: te.sum(
        aq[i, r].astype("int32") * W[j // L, r // G, j % L, r % G].astype("int32"), axis=r), name="acc")

    def out(*idx):
        i, j = mn_of(idx)
        v = (acc[i, j] + corr[j]).astype("float32") * scale[j]
        if B is not None:
            v = v + B[j]
        return requant_tail(v, spec, lut, apply, onnx_index(idx))

    Y = te.compute(tuple(int(d) for d in y_shape), out, name="epilogue")
    if table is not None:  # the integers' table entries, then the rest of the epilogue
        T, lo = b.const(table, label="table"), (-128 if spec.ysg else 0)
        Y = te.compute(Y.shape, lambda *idx: apply(T[Y[idx].astype("int32") - lo], onnx_index(idx)), name="lookup")
    func = b.finish([(out_value, Y)])
    sch = schedule(func)
    intrin = dot.register()
    blk = sch.get_sblock("acc")
    i, j, kk = sch.get_loops(blk)
    chunks = S.chunk_count(mp // rt) if tiled and parallel else 1
    ic, it, io, ii = sch.split(i, [chunks, None, rt // mr, mr])
    jo, ji = sch.split(j, [None, L])
    joo, joi = sch.split(jo, [None, nb])
    ko, ki = sch.split(kk, [None, G])
    if tiled:
        sch.reorder(it, io, joo, ko, ii, joi, ji, ki)
        sch.compute_at(sch.get_sblock("aq"), it)
        sch.reverse_compute_at(sch.get_sblock("epilogue"), it)
        if table is not None:
            sch.reverse_compute_at(sch.get_sblock("lookup"), it)
        if parallel:  # in chunks where they divide the tasks: a task's rows of aq and its
            sch.parallel(ic if chunks > 1 else it)  # accumulators are then allocated once per chunk
    else:
        sch.reorder(joo, it, io, ko, ii, joi, ji, ki)
        if parallel:
            sch.parallel(sch.fuse(joo, it, io))
    sch.decompose_reduction(blk, ko)
    sch.unroll(ii)
    sch.unroll(joi)
    sch.tensorize(ji, intrin)
    return sch


def table_split(spec: QuantSpec, epilogue: Epilogue):
    """(float32[256] table, the epilogue after it) when ``epilogue`` starts with fusion.grid_chain's
    "GridTable" on the float output's own grid, else (None, ``epilogue``). The kernel then writes the
    output integers (as for an integer output) and reads their entries in a stage of its own: a
    table read inside the epilogue expression made TVM compute the whole expression lane by lane
    (its gather index is scalarized), 2.4x the kernel's time on PP-OCR cls's 32 -> 200 pointwise
    conv."""
    ops = epilogue.ops
    if spec.yq or not spec.ys > 0 or not ops or ops[0].op != "GridTable" or ops[0].shape is not None:
        return None, epilogue
    s, z, signed = ops[0].attrs["grid"]
    if np.float32(s) != np.float32(spec.ys) or (int(z), int(signed)) != (spec.yz, spec.ysg):
        return None, epilogue
    return np.asarray(ops[0].attrs["table"], np.float32).reshape(256), Epilogue(ops[1:], epilogue.layouts)


def _parallel_vectorize(sch, block: str, parallel: bool, vectorize: bool = True, outer: int = 1):
    loops = sch.get_loops(sch.get_sblock(block))
    if parallel and len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:max(1, min(outer, len(loops) - 1))]))
    if vectorize:  # a wide loop vectorized whole makes huge LLVM vectors: lanes of 16
        inner = loops[-1]
        extent = sch.get(inner).extent
        if int(extent) % 16 == 0:
            sch.vectorize(sch.split(inner, [None, 16])[1])


def dense_int8(name: str, x: str, x_shape, w_q: np.ndarray, w_scale: np.ndarray, bias, spec: QuantSpec, *,
               out_value: str, out_shape, epilogue: Epilogue) -> KernelDef:
    """Y[..., n] = QDQ-MatMul of x [..., K] with int8 W [K, N] (see the module docstring)."""
    x_shape = tuple(int(d) for d in x_shape)
    k, n = (int(d) for d in w_q.shape)
    lead = x_shape[:-1]
    m = int(np.prod(lead)) if lead else 1
    dot = dot_step(w_q)
    mr, _ = _tile(m, round_up(n, 16) // 16, dot.vnni)
    mp, kp = round_up(m, task_rows(m, mr)), round_up(k, 4)
    b = Builder(name)
    X = b.input(x, x_shape, spec.x_dtype)

    def aq_at(i, kk):
        inside = tirx.all(i < m, kk < k)
        v = X[unflatten(tirx.min(i, m - 1), lead) + (tirx.min(kk, k - 1),)]
        return tirx.if_then_else(inside, spec.x_u8(v), tirx.const(0, "uint8")).astype(dot.a_dtype)
    aq = te.compute((mp, kp), aq_at, name="aq")
    parallel = S.worth_parallel(m * n * k)

    sch = _gemm(name, b, aq, w_q, w_scale, bias, spec, dot, m=m, out_value=out_value, out_shape=out_shape,
                y_shape=(m, n), mn_of=lambda idx: idx, onnx_index=lambda idx: unflatten(idx[0], lead) + (idx[1],),
                epilogue=epilogue, parallel=parallel, tiled=True)
    aq_loops = sch.get_loops(sch.get_sblock("aq"))
    if kp % 16 == 0:
        sch.vectorize(sch.split(aq_loops[-1], [None, 16])[1])
    ep_loops = sch.get_loops(sch.get_sblock("epilogue"))
    if n % 16 == 0:
        sch.vectorize(sch.split(ep_loops[-1], [None, 16])[1])
    return KernelDef(name, b.params, sch.mod["main"], steps=[dot.step])


def _scaled_input(b: Builder, x: str, x_shape, spec: QuantSpec, x_mul):
    """The conv's input as a function of its index: the buffer read, times its ``x_mul`` factor."""
    X = b.input(x, x_shape, spec.x_dtype)
    if x_mul is None:
        return lambda *i: X[i]
    (kind, *rest), (mn, mc) = x_mul
    M = b.input(rest[0], (mn, mc)) if kind == "value" else b.const(rest[0].reshape(mn, mc), label="xmul")
    return lambda n, c, y, xx: X[n, c, y, xx] * M[n if mn > 1 else 0, c if mc > 1 else 0]


# Per output pixel and channel, the requantizing epilogue and the input's quantization cost about
# as much as this many multiply-adds of the int8 GEMM; without VNNI one such multiply-add weighs
# two float GEMM ones. Fitted on PP-OCR cls's 1x1 int8 convs (AVX2, one thread, each kernel alone,
# best of 20, load 6-9): 200->32 at 2x96 (K 200, 1.23M multiply-adds) 0.131 ms, 16->104 at 3x96
# (K 16, 0.48M) 0.097 ms, i.e. ~0.1 ns per multiply-add (10 G/s, a float GEMM conv 20-22 G/s)
# plus ~1.7 ns per output; by the raw count the K-16 convs (~80-100 us) stayed on one core.
# With VNNI (not measured here) the raw count per multiply-add stands.
QCONV_OUTPUT_MACS = 16


def qconv_work(m: int, co: int, k: int, vnni: bool) -> int:
    """The work `S.worth_parallel` weighs for an int8 conv of ``m`` output pixels, ``co`` channels
    and ``k`` multiply-adds per output (see QCONV_OUTPUT_MACS)."""
    return (1 if vnni else 2) * m * co * (k + QCONV_OUTPUT_MACS)


def conv2d_int8(name: str, x: str, x_shape, w_q: np.ndarray, w_scale: np.ndarray, bias, spec: QuantSpec, geom, *,
                out_value: str, out_shape, epilogue: Epilogue, x_mul=None) -> KernelDef:
    """QDQ-Conv (group 1, 2-D ``geom``) as the int8 GEMM over uint8 NHWC columns. ``x_mul``: (operand
    as `Lowering.operand` gives it, (N or 1, C or 1)) of factors each float NCHW input element is
    multiplied by before it is quantized (a squeeze-and-excitation Mul folded in)."""
    if spec.x_nhwc:
        nb_, h, w, ci = (int(d) for d in x_shape)
    else:
        nb_, ci, h, w = (int(d) for d in x_shape)
    co, _, kh, kw = (int(d) for d in w_q.shape)
    oh, ow = geom.out_spatial
    (sh, sw), (dh, dw) = geom.strides, geom.dilations
    pt, pl = geom.pads[0], geom.pads[1]
    hp, wp = h + geom.pads[0] + geom.pads[2], w + geom.pads[1] + geom.pads[3]
    cip = round_up(ci, 4)
    p = oh * ow
    m = nb_ * p
    k = kh * kw * cip
    w2 = np.zeros((kh, kw, cip, co), np.int8)
    w2[:, :, :ci] = w_q.transpose(2, 3, 1, 0)
    w2 = w2.reshape(k, co)
    dot = dot_step(w2)
    mr, _ = _tile(m, round_up(co, 16) // 16, dot.vnni)
    mp = round_up(m, task_rows(m, mr))
    b = Builder(name)
    X = _scaled_input(b, x, x_shape, spec, x_mul)
    zero = spec.x_zero_u8
    pointwise = kh == kw == 1 and not any(geom.pads)
    # a float input is quantized first, in its own layout: contiguous, 16 lanes at a time,
    # instead of one scalar division per strided read while the channels-last copy is made
    # (measured, one thread: 64-channel pointwise 0.46 -> 0.19 ms; since the copy is its own stage
    # the 3-channel stems gain too, CPU time, each kernel alone, interleaved, load 14: 3 -> 8 s2 at
    # 48x192 0.148 -> 0.130 ms, the detector's 3 -> 16 s2 at 320x320 0.94-0.99x, digits' 1 -> 32
    # at 32x32 the same; an earlier 0.65 against 1.05 ms that kept 3-channel stems strided no
    # longer holds)
    prequant = not spec.xq
    if prequant:
        src, to_u8 = te.compute(tuple(int(d) for d in x_shape), lambda *i: spec.x_u8(X(*i)), name="xu"), (lambda v: v)
    else:
        src, to_u8 = X, spec.x_u8

    def xq_at(n_, y, xx, c):
        yy, xi = y - pt, xx - pl
        inside = tirx.all(yy >= 0, yy < h, xi >= 0, xi < w, c < ci)
        yy, xi, c = tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xi, w - 1), 0), tirx.min(c, ci - 1)
        v = src(n_, yy, xi, c) if spec.x_nhwc else src(n_, c, yy, xi)
        # padding reads quantized zero (the zero point); padded channels meet zero weights
        return tirx.if_then_else(inside, to_u8(v), tirx.const(zero, "uint8"))
    # an integer NHWC input is read in place; otherwise each input value, which feeds kh*kw
    # columns, is quantized (or moved channels-last) once into a padded copy
    direct = pointwise or (spec.x_nhwc and spec.xq and not any(geom.pads))
    if not direct:
        xq = te.compute((nb_, hp, wp, cip), xq_at, name="xq")

    def aq_at(i, kk):
        ii = tirx.min(i, m - 1)
        n_, r = ii // p, ii % p
        y, xx = r // ow, r % ow
        t, c = kk // cip, kk % cip
        if direct:
            v = xq_at(n_, y * sh + (t // kw) * dh, xx * sw + (t % kw) * dw, c)
        else:
            v = xq[n_, y * sh + (t // kw) * dh, xx * sw + (t % kw) * dw, c]
        return tirx.if_then_else(i < m, v, tirx.const(0, "uint8")).astype(dot.a_dtype)
    aq = te.compute((mp, k), aq_at, name="aq")
    parallel = S.worth_parallel(qconv_work(m, co, k, dot.vnni))

    if spec.y_nhwc:  # the output [N, OH, OW, CO] is acc's [M, CO]: whole pixels, contiguous
        tiled, y_shape, mn_of = True, (m, co), (lambda idx: idx)
        onnx_index = (lambda idx: (idx[0] // p, (idx[0] % p) // ow, idx[0] % ow, idx[1]))
    elif nb_ == 1:  # batch 1: the output [1, CO, P] seen as [CO, P], its pixels = acc's rows
        tiled, y_shape, mn_of = True, (co, p), (lambda idx: (idx[1], idx[0]))
        onnx_index = (lambda idx: (0, idx[0], idx[1] // ow, idx[1] % ow))
    else:
        tiled, y_shape = False, tuple(out_shape)
        mn_of, onnx_index = (lambda idx: (idx[0] * p + idx[2] * ow + idx[3], idx[1])), (lambda idx: idx)
    table = table_split(spec, epilogue)[0] is not None
    sch = _gemm(name, b, aq, w2, w_scale, bias, spec, dot, m=m, out_value=out_value, out_shape=out_shape,
                y_shape=y_shape, mn_of=mn_of, onnx_index=onnx_index, epilogue=epilogue, parallel=parallel,
                tiled=tiled)
    if table:  # the table stage: contiguous integers in, contiguous floats out
        _parallel_vectorize(sch, "lookup", parallel and not tiled, outer=2)
    if not direct:
        _parallel_vectorize(sch, "xq", parallel, vectorize=False, outer=2)
    if prequant:
        _parallel_vectorize(sch, "xu", parallel, outer=2)
    # columns (kh, kw, channel): the channel run is contiguous in xq and in the column
    blk = sch.get_sblock("aq")
    *_, i, kk = sch.get_loops(blk)
    t, c = sch.split(kk, [kh * kw, cip])
    if parallel and not tiled:
        sch.parallel(i)
    if cip % 16 == 0 and not pointwise:
        sch.vectorize(sch.split(c, [None, 16])[1])
    if spec.y_nhwc:
        ep = sch.get_loops(sch.get_sblock("epilogue"))[-1]
        if co % 16 == 0:
            sch.vectorize(sch.split(ep, [None, 16])[1])
    elif tiled:  # NCHW: each channel's run of the task's pixels as 16-lane vectors
        *_, ep_c, ep = sch.get_loops(sch.get_sblock("epilogue"))
        lanes = next((v for v in (16, 8, 4) if co % v == 0), 0)
        if task_rows(m, mr) % 16 == 0 and p % 16 == 0:
            sch.vectorize(sch.split(ep, [None, 16])[1])
        elif lanes and p >= 4:
            # short pixel runs (a late layer's 3 x 12): the channels are the lanes instead, read
            # from one line of acc and stored p apart; a scalar epilogue (round half to even
            # is a libm call per element) cost 3x onnxruntime's whole QLinearConv there
            sch.reorder(ep, ep_c)
            sch.vectorize(sch.split(ep_c, [None, lanes])[1])
    else:
        # NCHW from acc[pixel, channel]: 16 channels per pixel read from one line of acc,
        # written into 16 rows of the output that the next pixels continue
        n_, c, y, xx = sch.get_loops(sch.get_sblock("epilogue"))
        pix = sch.fuse(y, xx)
        if co % 16 == 0:
            co_o, co_i = sch.split(c, [None, 16])
            sch.reorder(n_, co_o, pix, co_i)
            outer = sch.fuse(n_, co_o)
        else:
            outer = sch.fuse(n_, c)
        if parallel:
            sch.parallel(outer)
    return KernelDef(name, b.params, sch.mod["main"], steps=[dot.step])
