"""Activation kernels (Sigmoid, Relu family, HardSigmoid/HardSwish, Gelu, Clip ...), Identity and
Dropout (inference: the identity), and the Softmax family.

Several register a ``pointwise`` form (see :class:`tvmlite.ops.registry.OpDef`) so the NumPy plan can
fuse chains of them in place after a Conv; each computes exactly what its kernel does.
"""
from __future__ import annotations

import math

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.elementwise import _blocked, _erf, _like, _quiet
from tvmlite.ops.registry import kernel


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
    if not x.size:  # nothing to normalize: the empty tensor, as onnxruntime returns
        return np.empty_like(x)
    n = int(np.prod(x.shape[:axis], dtype=np.int64))
    return fn(x.reshape(n, -1), 1).reshape(x.shape)


def _single_axis(fn, x, axis):
    x = np.asarray(x)
    if x.ndim == 0:
        return fn(x.reshape(1), 0).reshape(())
    if not -x.ndim <= axis < x.ndim:
        raise UnsupportedError(f"axis {axis} out of range for rank {x.ndim}")
    if not x.size:  # an empty axis has no max: the empty tensor, as onnxruntime returns
        return np.empty_like(x)
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
