"""Element-wise NumPy kernels: unary math, binary arithmetic/logic/comparison, variadic ops, Cast,
activations, Softmax-family, Identity/Dropout.

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

    pointwise = None
    if pw is not None:
        def pointwise(consts, attrs, dtype, ndim):
            if attrs.get("broadcast") and attrs.get("axis") is not None:
                return None  # legacy axis broadcasting: not NumPy's
            return [(pw, (0, 1))]

    for v in versions_legacy:
        kernel(name, since=v, pointwise=pointwise)(k_v1 if (v == 1 and legacy_consumed) else k_v6)
    for v in versions:
        kernel(name, since=v, pointwise=pointwise)(k)


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


# --------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------

def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _float_in(x):
    """(x in a dtype NumPy computes well, original dtype): float16/bfloat16/fp8 go via float32."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc" or x.dtype == np.float16:
        return x.astype(np.float32), x.dtype
    return x, x.dtype


@_blocked
@_quiet
def _k_sigmoid(x, *, consumed_inputs=None):
    x, dt = _float_in(x)
    return _sigmoid(x).astype(dt, copy=False)


_k_sigmoid_6 = _quiet(lambda x: _k_sigmoid(x))
kernel("Sigmoid", since=1, fresh_output=True)(_k_sigmoid)
kernel("Sigmoid", since=6, fresh_output=True)(_k_sigmoid_6)


def _relu_pw(consts, attrs, dt, ndim):
    return [(np.maximum, (0, np.zeros((), dt)))]


@kernel("Relu", since=1, pointwise=_relu_pw)
def relu_1(x, *, consumed_inputs=None):
    x = np.asarray(x)
    return np.maximum(x, np.zeros((), x.dtype))


@kernel("Relu", since=6, pointwise=_relu_pw)
def relu(x):
    return relu_1(x)


@kernel("LeakyRelu", since=1)
@_quiet
def leaky_relu_1(x, *, alpha=0.01, consumed_inputs=None):
    x, dt = _float_in(x)
    if 0.0 <= alpha <= 1.0:
        r = np.maximum(x, x * alpha)
    elif alpha > 1.0:
        r = np.minimum(x, x * alpha)
    else:
        r = np.where(x < 0, x * alpha, x)
    return r.astype(dt, copy=False)


@kernel("LeakyRelu", since=6)
def leaky_relu(x, *, alpha=0.01):
    return leaky_relu_1(x, alpha=alpha)


@kernel("PRelu", since=1)
@_quiet
def prelu_1(x, slope, *, consumed_inputs=None):
    x = np.asarray(x)
    slope = np.asarray(slope)
    r = np.where(x < 0, x * slope, x)
    return _like(r, x)


@kernel("PRelu", since=6)
def prelu(x, slope):
    return prelu_1(x, slope)


@kernel("Elu", since=1)
@_blocked
@_quiet
def elu_1(x, *, alpha=1.0, consumed_inputs=None):
    x, dt = _float_in(x)
    return np.where(x > 0, x, alpha * np.expm1(x)).astype(dt, copy=False)


@kernel("Elu", since=6)
def elu(x, *, alpha=1.0):
    return elu_1(x, alpha=alpha)


_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


@kernel("Selu", since=1)
@_blocked
@_quiet
def selu_1(x, *, alpha=_SELU_ALPHA, gamma=_SELU_GAMMA, consumed_inputs=None):
    x, dt = _float_in(x)
    return (gamma * np.where(x > 0, x, alpha * np.expm1(x))).astype(dt, copy=False)


@kernel("Selu", since=6)
def selu(x, *, alpha=_SELU_ALPHA, gamma=_SELU_GAMMA):
    return selu_1(x, alpha=alpha, gamma=gamma)


@kernel("Celu", since=12)
@_blocked
@_quiet
def celu(x, *, alpha=1.0):
    x, dt = _float_in(x)
    r = np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))
    return r.astype(dt, copy=False)


def _hard_sigmoid_pw(consts, attrs, dt, ndim):
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    return [(np.multiply, (0, alpha)), (np.add, (None, beta)), (_CLIP_UFUNC, (None, 0.0, 1.0))]


@kernel("HardSigmoid", since=1, pointwise=_hard_sigmoid_pw)
@_blocked
@_quiet
def hard_sigmoid_1(x, *, alpha=0.2, beta=0.5, consumed_inputs=None):
    x, dt = _float_in(x)
    return np.clip(x * alpha + beta, 0, 1).astype(dt, copy=False)


@kernel("HardSigmoid", since=6, pointwise=_hard_sigmoid_pw)
def hard_sigmoid(x, *, alpha=0.2, beta=0.5):
    return hard_sigmoid_1(x, alpha=alpha, beta=beta)


@kernel("HardSwish", since=14)
@_blocked
@_quiet
def hard_swish(x):
    x, dt = _float_in(x)
    return (x * np.clip(x * (1 / 6) + 0.5, 0, 1)).astype(dt, copy=False)


@kernel("Softplus", since=1)
@_blocked
@_quiet
def softplus(x):
    x, dt = _float_in(x)
    return np.logaddexp(0, x).astype(dt, copy=False)


@kernel("Softsign", since=1)
@_blocked
@_quiet
def softsign(x):
    x, dt = _float_in(x)
    return (x / (1 + np.abs(x))).astype(dt, copy=False)


@kernel("Gelu", since=20)
@_blocked
@_quiet
def gelu(x, *, approximate="none"):
    x, dt = _float_in(x)
    if approximate == "none":
        r = 0.5 * x * (1 + _like(_erf(x * (1 / math.sqrt(2))), x))
    elif approximate == "tanh":
        r = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    else:
        raise UnsupportedError(f"Gelu: approximate={approximate!r} (expected 'none' or 'tanh')")
    return r.astype(dt, copy=False)


@kernel("Mish", since=18)
@_blocked
@_quiet
def mish(x):
    x, dt = _float_in(x)
    return (x * np.tanh(np.logaddexp(0, x))).astype(dt, copy=False)


@kernel("ThresholdedRelu", since=10)
def thresholded_relu(x, *, alpha=1.0):
    x = np.asarray(x)
    return np.where(x > alpha, x, np.zeros((), x.dtype)).astype(x.dtype, copy=False)


@kernel("Shrink", since=9)
def shrink(x, *, bias=0.0, lambd=0.5):
    x = np.asarray(x)
    xf = x if x.dtype.kind == "f" else x.astype(np.float64)
    r = np.where(xf < -lambd, xf + bias, np.where(xf > lambd, xf - bias, 0))
    return _like(r, x)


@kernel("Swish", since=24)
@_blocked
@_quiet
def swish(x, *, alpha=1.0):
    x, dt = _float_in(x)
    return (x * _sigmoid(x * alpha)).astype(dt, copy=False)


#: np.clip's ufunc itself: same values, without the Python wrapper's few microseconds per call
#: (it adds up in fused chains over small tensors)
_CLIP_UFUNC = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None) or np.clip


def _clip(x, lo, hi):
    x = np.asarray(x)
    if lo is not None and hi is not None and x.dtype.kind in "fiu":
        # np.clip is one pass; with lo > hi it gives hi everywhere, as ONNX asks
        return np.clip(x, np.asarray(lo).astype(x.dtype, copy=False),
                       np.asarray(hi).astype(x.dtype, copy=False))
    if lo is not None:
        x = np.maximum(x, np.asarray(lo).astype(x.dtype, copy=False))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi).astype(x.dtype, copy=False))
    return x


_FLT_MAX = 3.4028234663852886e38


def _clip_pw_ops(lo, hi, dt):
    """:func:`_clip` on a float array as pointwise steps."""
    if lo is not None and hi is not None:
        return [(_CLIP_UFUNC, (0, np.asarray(lo).astype(dt, copy=False),
                           np.asarray(hi).astype(dt, copy=False)))]
    if lo is not None:
        return [(np.maximum, (0, np.asarray(lo).astype(dt, copy=False)))]
    if hi is not None:
        return [(np.minimum, (0, np.asarray(hi).astype(dt, copy=False)))]
    return None


def _clip_pw_attrs(consts, attrs, dt, ndim):
    return _clip_pw_ops(attrs.get("min", -_FLT_MAX), attrs.get("max", _FLT_MAX), dt)


def _clip_pw_inputs(consts, attrs, dt, ndim):
    lo = consts[1] if len(consts) > 1 else None
    hi = consts[2] if len(consts) > 2 else None
    return _clip_pw_ops(lo, hi, dt)  # a bound computed at run time is None here: not fused


@kernel("Clip", since=1, pointwise=_clip_pw_attrs)
def clip_1(x, *, min=-_FLT_MAX, max=_FLT_MAX, consumed_inputs=None):  # noqa: A002
    return _clip(np.asarray(x), min, max)


@kernel("Clip", since=6, pointwise=_clip_pw_attrs)
def clip_6(x, *, min=-_FLT_MAX, max=_FLT_MAX):  # noqa: A002
    return _clip(np.asarray(x), min, max)


@kernel("Clip", since=11, pointwise=_clip_pw_inputs)
def clip_11(x, min=None, max=None):  # noqa: A002
    x = np.asarray(x)
    if min is None and max is None:
        return x
    return _clip(x, min, max)


# --------------------------------------------------------------------------------------------------
# Identity, Dropout
# --------------------------------------------------------------------------------------------------

@kernel("Identity", since=1)
def identity(x):
    return x


def _dropout_out(x):
    x = np.asarray(x)
    return x, np.broadcast_to(np.True_, x.shape)


# only the data output read (inference graphs): no mask
def _dropout_data_1(x, *, is_test=0, ratio=0.5, consumed_inputs=None):
    return np.asarray(x)


def _dropout_data_7(x, *, ratio=0.5):
    return np.asarray(x)


def _dropout_data_12(x, ratio=None, training_mode=None, *, seed=None):
    return dropout_12(x, ratio, training_mode, seed=seed)[0]


@kernel("Dropout", since=1, single_output=_dropout_data_1)
def dropout_1(x, *, is_test=0, ratio=0.5, consumed_inputs=None):
    # Legacy versions: the backend runs inference, so dropout is the identity.
    x = np.asarray(x)
    return x, np.broadcast_to(np.ones((), x.dtype), x.shape)


@kernel("Dropout", since=6, single_output=_dropout_data_1)
def dropout_6(x, *, is_test=0, ratio=0.5):
    return dropout_1(x)


@kernel("Dropout", since=7, single_output=_dropout_data_7)
def dropout_7(x, *, ratio=0.5):
    return dropout_1(x)


@kernel("Dropout", since=10, single_output=_dropout_data_7)
def dropout_10(x, *, ratio=0.5):
    return _dropout_out(x)


@kernel("Dropout", since=12, single_output=_dropout_data_12)
def dropout_12(x, ratio=None, training_mode=None, *, seed=None):
    if training_mode is not None and bool(np.asarray(training_mode)):
        r = 0.5 if ratio is None else float(np.asarray(ratio))
        if r != 0.0:
            raise UnsupportedError("Dropout: training_mode=True with a non-zero ratio (random masks) "
                                   "is not supported")
    return _dropout_out(x)


# --------------------------------------------------------------------------------------------------
# Softmax family
# --------------------------------------------------------------------------------------------------

def _softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def _logsoftmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    s = x - m
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _hardmax(x, axis):
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, 1, axis=axis)
    return out


def _coerced(fn, x, axis):
    """Opset < 13: the input is coerced to 2-D [prod(shape[:axis]), prod(shape[axis:])]."""
    x = np.asarray(x)
    r = x.ndim
    if r == 0:
        return fn(x.reshape(1, 1), 1).reshape(())
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis <= r:
        raise UnsupportedError(f"axis {axis} out of range for rank {r}")
    n = int(np.prod(x.shape[:axis], dtype=np.int64))
    x2 = x.reshape(n, -1) if x.size else x.reshape(n, int(np.prod(x.shape[axis:], dtype=np.int64)))
    return fn(x2, 1).reshape(x.shape)


def _single_axis(fn, x, axis):
    x = np.asarray(x)
    if x.ndim == 0:
        return fn(x.reshape(1), 0).reshape(())
    return fn(x, axis)


def _softmax_family(name, fn):
    # float16 / bfloat16 are computed in their own precision, step by step, like ONNX's reference
    # implementation (whose results the conformance cases hold).
    @_quiet
    def k1(x, *, axis=1):
        x = np.asarray(x)
        return _coerced(fn, x, axis).astype(x.dtype, copy=False)

    @_quiet
    def k13(x, *, axis=-1):
        x = np.asarray(x)
        return _single_axis(fn, x, axis).astype(x.dtype, copy=False)

    kernel(name, since=1)(k1)
    kernel(name, since=13)(k13)


_softmax_family("Softmax", _softmax)
_softmax_family("LogSoftmax", _logsoftmax)
_softmax_family("Hardmax", _hardmax)
