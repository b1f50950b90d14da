"""exp, erf and sigmoid as plain float arithmetic that LLVM vectorizes.

`tirx.exp` lowers to the llvm.exp intrinsic, which the x86 backend scalarizes into one libm
``expf`` call per lane: a SiLU epilogue (x * sigmoid(x)) then cost as much as the conv under it
(3.2 of 7.9 ms of the YOLO-style detector's kernels). Here exp is Cephes' expf: x = n*ln2 + r
with |r| <= ln2/2, a degree-6 polynomial for e^r (relative error ~1e-7, like libm's within a few
ulp), and 2^n made by writing n into the float's exponent bits. Inputs are clamped to the range
where 2^n is a normal float; below it exp is 0 (a -inf attention mask gives exactly 0, as
onnxruntime's softmax), above it saturates at ~1.7e38 (float32's inf is 3.4e38), which leaves
sigmoid exact to float precision. NaN stays NaN. erf (TVM's is a scalar ``erff`` call per element
too) is Eigen's and XLA's float rational approximation.

e^r is 1 + r + r^2 q(r) with q of degree 3 (Cephes has degree 5), its coefficients fitted for least
relative error on |r| <= ln2/2 (a least-squares fit reweighted toward minimax): 1.6e-7 at most in
float32 against 6.6e-8, two FMAs fewer per exp. Sigmoid and SiLU take the clamped exp without its
two guards (the exp of -x past 87 is ~1e-38 instead of 0, and 1 + that rounds to 1 all the same),
SiLU as one division x / (1 + e^-x) with no NaN test (a NaN x makes the quotient NaN). The
detector's convs with SiLU, one thread, CPU time (the conv alone, interleaved): 3->16 s2 at
320x320 0.88-0.90x of the time before, 16->32 s2 0.95-0.97x, 64->32 1x1 0.90-0.96x.
"""
from __future__ import annotations

from tvm import tirx

F32 = "float32"
_LOG2E = 1.44269504088896341
_C1, _C2 = 0.693359375, -2.12194440e-4  # ln2 split so n*_C1 is exact in float32
_POLY = (8.333759382367134e-3, 4.189853370189667e-2, 1.666688770055771e-1, 4.9999141693115234e-1)
_LO, _HI = -87.0, 88.0


def _c(v):
    return tirx.const(v, F32)


def fast_exp(x):
    """e^x for a float32 expression, vectorizable (see the module's note)."""
    y = tirx.Select(x < _c(_LO), _c(0.0), clamped_exp(x))
    return tirx.Select(is_nan(x), x, y)


def clamped_exp(x):
    """e^x of x clamped to [_LO, _HI]: ~1.6e-38 below, ~1.7e38 above, a number for NaN."""
    xc = tirx.min(tirx.max(x, _c(_LO)), _c(_HI))
    n = tirx.floor(xc * _c(_LOG2E) + _c(0.5))
    r = xc - n * _c(_C1) - n * _c(_C2)
    y = _horner(r, _POLY) * r * r + r + _c(1.0)
    bits = tirx.shift_left(tirx.Cast("int32", n) + tirx.const(127, "int32"), tirx.const(23, "int32"))
    return y * tirx.reinterpret(F32, bits)


_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _horner(x, coeffs):
    acc = _c(coeffs[0])
    for coef in coeffs[1:]:
        acc = acc * x + _c(coef)
    return acc


def fast_erf(x):
    """erf on [-4, 4] as a rational function (erf is +-1 in float32 beyond): a few 1e-7 absolute."""
    x = tirx.max(tirx.min(x, _c(4.0)), _c(-4.0))
    x2 = x * x
    return x * _horner(x2, _ERF_P) / _horner(x2, _ERF_Q)


def is_nan(x):
    """x is NaN, tested on its bits: LLVM's fast-math flags (TVM sets them) fold ``x != x``."""
    mag = tirx.bitwise_and(tirx.reinterpret("int32", x), tirx.const(0x7FFFFFFF, "int32"))
    return mag > tirx.const(0x7F800000, "int32")


def fast_sigmoid(x):
    """1 / (1 + e^-x) through `clamped_exp` (see the module's note); NaN stays NaN."""
    return tirx.Select(is_nan(x), x, _c(1.0) / (_c(1.0) + clamped_exp(-x)))


def fast_silu(x):
    """x * sigmoid(x) (SiLU, Swish) as x / (1 + e^-x): the graph's Mul(x, Sigmoid(x)) within a
    rounding; NaN stays NaN and +-inf stay +-inf (as x * `fast_sigmoid` (x) gives them)."""
    return x / (_c(1.0) + clamped_exp(-x))
