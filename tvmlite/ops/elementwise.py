"""Element-wise NumPy kernels: unary math, binary arithmetic/logic/comparison, variadic ops, Where,
and the helpers the other element-wise modules share (Cast in cast.py; activations, Identity/Dropout
and the Softmax family in activations.py).

Results keep ONNX's output dtypes: float32 stays float32 (attributes are Python floats, which NumPy
treats as weak scalars), comparisons give bool, Pow keeps the base's dtype.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.registry import kernel

try:  # ml_dtypes ships with onnx; it gives bfloat16 / float8 / int4 numpy dtypes
    import ml_dtypes as _mld
except ImportError:  # pragma: no cover
    _mld = None


def _quiet(fn):
    """Run ``fn`` with NumPy floating-point warnings silenced (log(0), 0/0, overflow ...)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapped


_BLOCK = 1 << 16


def _blocked(fn):
    """Evaluate an element-wise ``fn(x, ...)`` over cache-sized blocks of a large ``x``: multi-pass
    formulas (erf, sigmoid, gelu ...) run several times faster than over the whole array."""

    @functools.wraps(fn)
    def wrapped(x, *args, **kwargs):
        x = np.asarray(x)
        n = x.size
        if n <= 2 * _BLOCK:
            return fn(x, *args, **kwargs)
        xf = np.ascontiguousarray(x).reshape(-1)
        out = None
        for i in range(0, n, _BLOCK):
            r = np.asarray(fn(xf[i:i + _BLOCK], *args, **kwargs))
            if out is None:
                out = np.empty(n, r.dtype)
            out[i:i + _BLOCK] = r
        return out.reshape(x.shape)

    return wrapped


def _like(y, x):
    """``y`` as an array of ``x``'s dtype (no copy when it already is)."""
    return np.asarray(y).astype(np.asarray(x).dtype, copy=False)


def _is_ml_float(dt) -> bool:
    """bfloat16 / float8 / float4 (ml_dtypes): NumPy has no native math for them."""
    dt = np.dtype(dt)
    return dt.kind == "V" and "float" in dt.name


def _float_compute(fn):
    """Decorator for float unary kernels: ml_dtypes floats (bfloat16, fp8) are computed in float32."""

    @functools.wraps(fn)
    def wrapped(x, *args, **kwargs):
        x = np.asarray(x)
        if _is_ml_float(x.dtype):
            return _like(fn(x.astype(np.float32), *args, **kwargs), x)
        return fn(x, *args, **kwargs)

    return wrapped


def _legacy_b(a, b, broadcast, axis):
    """Opset < 7 broadcasting: B's shape matches a contiguous run of A's dims, starting at ``axis``
    (default: the trailing dims, which NumPy broadcasting already does)."""
    if broadcast and axis is not None:
        b = np.asarray(b)
        a_rank = np.ndim(a)
        ax = axis + a_rank if axis < 0 else axis
        trail = a_rank - ax - b.ndim
        if trail < 0:
            raise UnsupportedError(f"legacy broadcast: axis {axis} does not fit shapes")
        return b.reshape(b.shape + (1,) * trail)
    return b


# --------------------------------------------------------------------------------------------------
# unary math
# --------------------------------------------------------------------------------------------------

# Maclaurin coefficients of erf(x) / x in powers of x^2: (2/sqrt(pi)) (-1)^n / (n! (2n+1))
_ERF_SERIES = [2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(19)]


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in pure NumPy: absolute error below 1e-8 in float64, about 2e-7 for float32/float16
    inputs (computed in float32, which is faster).

    |x| < 1: Maclaurin series (exact to the working precision);
    |x| >= 1: erfc via the Chebyshev fit of Numerical Recipes (relative error < 1.2e-7 on erfc,
    erfc(1) < 0.16).
    """
    x = np.asarray(x)
    wdt = np.float32 if x.dtype in (np.float32, np.float16) else np.float64
    xd = x.astype(wdt, copy=False)
    coeffs = [wdt(c) for c in (_ERF_SERIES[:12] if wdt is np.float32 else _ERF_SERIES)]
    a = np.abs(xd)
    small = a < 1.0
    # series on min(|x|, 1)
    xs = np.minimum(a, wdt(1))
    z2 = xs * xs
    acc = np.full_like(z2, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc *= z2
        acc += c
    acc *= xs
    # erfc on max(|x|, 1)
    z = np.maximum(a, wdt(1))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    big = 1.0 - t * np.exp(poly - z * z)
    return np.copysign(np.where(small, acc, big), xd)


def _unary(name, fn, legacy=True, versions=(1,)):
    """Register a unary element-wise op for each ``since`` in ``versions``."""

    @_quiet
    def k_legacy(x, *, consumed_inputs=None):
        return fn(np.asarray(x))

    @_quiet
    def k(x):
        return fn(np.asarray(x))

    for v in versions:
        kernel(name, since=v)(k_legacy if (legacy and v == 1) else k)


def _round_half_even(x):
    return np.round(x)  # NumPy rounds half to even


def _sign(x):
    return np.sign(x)


def _reciprocal(x):
    return _like(1 / x, x) if x.dtype.kind in "fV" else np.reciprocal(x)


_f = _float_compute
_unary("Abs", np.abs, versions=(1, 6))
_unary("Neg", np.negative, versions=(1, 6))
_unary("Exp", _f(np.exp), versions=(1, 6))
_unary("Log", _f(np.log), versions=(1, 6))
_unary("Sqrt", _f(np.sqrt), versions=(1, 6))
_unary("Reciprocal", _f(_reciprocal), versions=(1, 6))
_unary("Floor", _f(np.floor), versions=(1, 6))
_unary("Ceil", _f(np.ceil), versions=(1, 6))
_unary("Tanh", _f(np.tanh), versions=(1, 6))
_unary("Round", _f(_round_half_even), legacy=False, versions=(11,))
_unary("Sign", _f(_sign), legacy=False, versions=(9,))
for _name, _fn in [("Sin", np.sin), ("Cos", np.cos), ("Tan", np.tan), ("Asin", np.arcsin),
                   ("Acos", np.arccos), ("Atan", np.arctan)]:
    _unary(_name, _f(_fn), legacy=False, versions=(7,))
for _name, _fn in [("Sinh", np.sinh), ("Cosh", np.cosh), ("Asinh", np.arcsinh),
                   ("Acosh", np.arccosh), ("Atanh", np.arctanh)]:
    _unary(_name, _f(_fn), legacy=False, versions=(9,))
_unary("Erf", _blocked(_f(lambda x: _like(_erf(x), x))), legacy=False, versions=(9,))
_unary("IsNaN", lambda x: np.isnan(x.astype(np.float32) if _is_ml_float(x.dtype) else x),
       legacy=False, versions=(9,))
_unary("Not", np.logical_not, legacy=False, versions=(1,))
_unary("BitwiseNot", np.invert, legacy=False, versions=(18,))


@kernel("IsInf", since=10)
def isinf(x, *, detect_negative=1, detect_positive=1):
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        x = x.astype(np.float32)
    if detect_negative and detect_positive:
        return np.isinf(x)
    if detect_positive:
        return np.isposinf(x)
    if detect_negative:
        return np.isneginf(x)
    return np.zeros(x.shape, dtype=bool)


# --------------------------------------------------------------------------------------------------
# binary
# --------------------------------------------------------------------------------------------------

def _binary(name, fn, versions_legacy=(1, 6), versions=(7,), legacy_consumed=True, pw=None):
    """Register a broadcasting binary op. Legacy versions (<7) had broadcast/axis attributes.
    ``pw``: the ufunc the op is for same-dtype float inputs (its ``pointwise`` description)."""

    @_quiet
    def k_v1(a, b, *, axis=None, broadcast=0, consumed_inputs=None):
        return fn(np.asarray(a), np.asarray(_legacy_b(a, b, broadcast, axis)))

    @_quiet
    def k_v6(a, b, *, axis=None, broadcast=0):
        return fn(np.asarray(a), np.asarray(_legacy_b(a, b, broadcast, axis)))

    @_quiet
    def k(a, b):
        return fn(np.asarray(a), np.asarray(b))

    def pointwise(consts, attrs, dtype, ndim):
        if attrs.get("broadcast") and attrs.get("axis") is not None:
            return None  # legacy axis broadcasting: not NumPy's
        return [(pw, (0, 1))]

    hook = pointwise if pw is not None else None
    for v in versions_legacy:
        kernel(name, since=v, pointwise=hook)(k_v1 if (v == 1 and legacy_consumed) else k_v6)
    for v in versions:
        kernel(name, since=v, pointwise=hook)(k)


def _same(op):
    """Arithmetic where both inputs have the same dtype (ONNX's T, T -> T)."""

    def f(a, b):
        r = op(a, b)
        return r if r.dtype == a.dtype else _like(r, a)

    return f


def _div(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if a.dtype.kind == "u" and b.dtype.kind == "u":
            return _like(np.floor_divide(a, b), a)
        q = np.floor_divide(a, b)
        # C semantics: truncate toward zero
        fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return _like(q + fix, a)
    if _is_ml_float(a.dtype):
        return _like(np.divide(a.astype(np.float32), b.astype(np.float32)), a)
    return _like(np.divide(a, b), a)


def _pow(x, y):
    if x.dtype.kind in "iu":
        if y.dtype.kind in "iu" and not (y < 0).any():
            return _like(np.power(x, y.astype(x.dtype, copy=False)), x)
        return _like(np.power(x.astype(np.float64), y.astype(np.float64)), x)
    if x.dtype.kind not in "fc":  # bfloat16 etc.
        return _like(np.power(x.astype(np.float32), y.astype(np.float32)), x)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype) if y.dtype.kind in "iub" or x.dtype.itemsize >= y.dtype.itemsize else y
    return _like(np.power(x, y), x)


def _as_bool(a):
    return a if a.dtype == np.bool_ else a.astype(bool)


def _cmp(op):
    def f(a, b):
        if a.dtype.kind == "O" or b.dtype.kind == "O":
            return np.asarray(op(a, b), dtype=bool)
        if _is_ml_float(a.dtype):
            a, b = a.astype(np.float32), b.astype(np.float32)
        return op(a, b)

    return f


_binary("Add", _same(np.add), pw=np.add)
_binary("Sub", _same(np.subtract), pw=np.subtract)
_binary("Mul", _same(np.multiply), pw=np.multiply)
_binary("Div", _div, pw=np.divide)
_binary("Pow", _pow, versions_legacy=(1,), legacy_consumed=False)
_binary("And", lambda a, b: np.logical_and(_as_bool(a), _as_bool(b)), versions_legacy=(1,),
        legacy_consumed=False)
_binary("Or", lambda a, b: np.logical_or(_as_bool(a), _as_bool(b)), versions_legacy=(1,),
        legacy_consumed=False)
_binary("Xor", lambda a, b: np.logical_xor(_as_bool(a), _as_bool(b)), versions_legacy=(1,),
        legacy_consumed=False)
_binary("Equal", _cmp(np.equal), versions_legacy=(1,), legacy_consumed=False)
_binary("Less", _cmp(np.less), versions_legacy=(1,), legacy_consumed=False)
_binary("Greater", _cmp(np.greater), versions_legacy=(1,), legacy_consumed=False)
_binary("LessOrEqual", _cmp(np.less_equal), versions_legacy=(), versions=(12,))
_binary("GreaterOrEqual", _cmp(np.greater_equal), versions_legacy=(), versions=(12,))
_binary("BitwiseAnd", np.bitwise_and, versions_legacy=(), versions=(18,))
_binary("BitwiseOr", np.bitwise_or, versions_legacy=(), versions=(18,))
_binary("BitwiseXor", np.bitwise_xor, versions_legacy=(), versions=(18,))


@kernel("Mod", since=10)
@_quiet
def mod(a, b, *, fmod=0):
    a, b = np.asarray(a), np.asarray(b)
    if fmod not in (0, 1):
        raise UnsupportedError(f"Mod: fmod={fmod} must be 0 or 1")
    low = a.dtype.kind not in "fciu"  # bfloat16
    aa, bb = (a.astype(np.float32), b.astype(np.float32)) if low else (a, b)
    r = np.fmod(aa, bb) if fmod else np.mod(aa, bb)
    return _like(r, a)


@kernel("BitShift", since=11)
def bitshift(x, y, *, direction=""):
    x, y = np.asarray(x), np.asarray(y)
    bits = x.dtype.itemsize * 8
    y = y.astype(np.int64, copy=False)
    bad = (y < 0) | (y >= bits)
    ys = np.where(bad, 0, y).astype(x.dtype)
    if direction == "LEFT":
        r = np.left_shift(x, ys)
        fill = np.zeros((), x.dtype)
    elif direction == "RIGHT":
        r = np.right_shift(x, ys)
        fill = np.where(x < 0, np.array(-1).astype(x.dtype), 0).astype(x.dtype) if x.dtype.kind == "i" \
            else np.zeros((), x.dtype)
    else:
        raise UnsupportedError(f"BitShift: direction must be LEFT or RIGHT, got {direction!r}")
    if bad.any():
        r = np.where(bad, fill, r)
    return _like(r, x)


# --------------------------------------------------------------------------------------------------
# variadic
# --------------------------------------------------------------------------------------------------

def _variadic(name, op, finish=None):
    @_quiet
    def k(*xs, consumed_inputs=None):
        xs = [np.asarray(x) for x in xs if x is not None]
        if not xs:
            raise UnsupportedError(f"{name} needs at least one input")
        dt = xs[0].dtype
        low = dt.kind not in "fciub"
        if low:
            xs = [x.astype(np.float32) for x in xs]
        r = functools.reduce(op, xs)
        if finish is not None:
            r = finish(r, len(xs))
        return r if r.dtype == dt else r.astype(dt)

    @_quiet
    def k6(*xs):
        return k(*xs)

    kernel(name, since=1)(k)
    kernel(name, since=6)(k6)


_variadic("Sum", np.add)
_variadic("Mean", np.add, finish=lambda r, n: r / n)
_variadic("Max", np.maximum)
_variadic("Min", np.minimum)


@kernel("Where", since=9)
def where(condition, x, y):
    x, y = np.asarray(x), np.asarray(y)
    r = np.where(np.asarray(condition, dtype=bool), x, y)
    return r if r.dtype == x.dtype else r.astype(x.dtype)
