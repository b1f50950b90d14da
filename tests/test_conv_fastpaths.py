"""The NumPy backend's conv fast paths against the generic im2col path (float64 reference).

Flat depthwise (stride 1, im2col on the flattened padded image in per-thread scratch), the
unchunked small 1x1 conv, and GlobalAveragePool's contiguous path.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import tvmlite.ops.conv as conv_mod
import tvmlite.ops.conv_paths as conv_paths
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ops.conv import _conv_fn, im2col
from tvmlite.ops.pool import global_average_pool


def _reference(x, w, b, group, pads, strides, dilations):
    """Grouped conv as float64 im2col + matmul."""
    n = x.ndim - 2
    N, C = x.shape[:2]
    M = w.shape[0]
    k = w.shape[2:]
    cols = im2col(x.astype(np.float64), k, strides, dilations, pads)
    K = int(np.prod(k))
    P = cols.shape[-1]
    Cg, Mg = C // group, M // group
    y = np.matmul(w.astype(np.float64).reshape(group, Mg, Cg * K), cols.reshape(N, group, Cg * K, P))
    from tvmlite.ops.conv import conv_output_shape
    y = y.reshape((N, M) + tuple(conv_output_shape(x.shape[2:], k, strides, dilations, pads)))
    if b is not None:
        y = y + b.reshape((1, M) + (1,) * n)
    return y


_DW_CASES = [
    # (x shape, kernel, mult, pads, strides, dilations, bias)
    ((1, 8, 2, 20), (5, 5), 1, [2, 2, 2, 2], [1, 1], [1, 1], True),
    ((1, 5, 7, 9), (3, 3), 2, [1, 0, 2, 1], [1, 1], [1, 1], True),   # asymmetric pads, multiplier
    ((3, 5, 7, 9), (3, 3), 1, [1, 0, 2, 1], [1, 1], [1, 1], True),   # a batch: batched path
    ((2, 4, 9, 10), (3, 3), 1, [2, 2, 2, 2], [1, 1], [2, 2], False),  # dilation
    ((1, 6, 6, 6), (2, 3), 1, [0, 0, 0, 0], [1, 1], [1, 1], True),   # no pads, non-square kernel
    ((2, 3, 13), (5,), 1, [2, 2], [1], [1], True),                    # 1-D
    ((1, 3, 5, 4, 6), (3, 3, 3), 1, [1, 1, 1, 1, 1, 1], [1, 1, 1], [1, 1, 1], False),  # 3-D
    ((2, 6, 8, 9), (5, 5), 1, [2, 2, 2, 2], [2, 1], [1, 1], True),   # strided: generic path
]


def _case(xs, k, mult, seed):
    rng = np.random.default_rng(seed)
    C = xs[1]
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((C * mult, 1) + k).astype(np.float32)
    b = rng.standard_normal(C * mult).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("xs,k,mult,pads,strides,dil,bias", _DW_CASES)
@pytest.mark.parametrize("chunk", [None, 64])
def test_depthwise_matches_reference(xs, k, mult, pads, strides, dil, bias, chunk, monkeypatch):
    if chunk is not None:  # tiny chunks: one channel and one output row at a time
        monkeypatch.setattr(conv_paths, "DW_CHUNK_BYTES", chunk)
    x, w, b = _case(xs, k, mult, hash((xs, k, mult)) % 2 ** 32)
    b = b if bias else None
    C = xs[1]
    f = _conv_fn(x.shape, x.dtype, w, b, group=C, pads=pads, strides=strides, dilations=dil)
    ref = _reference(x, w, b, C, pads, strides, dil)
    y = f(x)
    assert y.dtype == np.float32 and y.shape == ref.shape and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # scratch reuse: a second input gives its own result (the border is still zero)
    x2 = -2 * x + 1
    np.testing.assert_allclose(f(x2), _reference(x2, w, b, C, pads, strides, dil), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f(x), ref, rtol=1e-5, atol=1e-5)


def test_depthwise_flat_equals_tap_path():
    """The flat path and the tap-by-tap path compute the same sums (up to rounding)."""
    x, w, b = _case((1, 16, 12, 40), (5, 5), 1, 7)
    pads, st, dil = [2, 2, 2, 2], [1, 1], [1, 1]
    flat = _conv_fn(x.shape, x.dtype, w, b, group=16, pads=pads, strides=st, dilations=dil)(x)
    taps = conv_mod._depthwise(x, w, b, WindowGeometry.conv(
        {"group": 16, "pads": pads, "strides": st, "dilations": dil}, x.shape, w.shape), 1)
    np.testing.assert_allclose(flat, taps, rtol=1e-5, atol=1e-5)


def test_depthwise_flat_threads_do_not_share_scratch():
    x, w, b = _case((1, 8, 6, 20), (3, 3), 1, 3)
    f = _conv_fn(x.shape, x.dtype, w, b, group=8, pads=[1, 1, 1, 1])
    inputs = [x * (i + 1) for i in range(4)]
    want = [f(v) for v in inputs]
    errors = []

    def worker(i):
        for _ in range(50):
            if not np.array_equal(f(inputs[i]), want[i]):
                errors.append(i)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("N", [1, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_small_1x1_conv(N, bias):
    rng = np.random.default_rng(N)
    x = rng.standard_normal((N, 24, 1, 1)).astype(np.float32)
    w = rng.standard_normal((6, 24, 1, 1)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32) if bias else None
    y = _conv_fn(x.shape, x.dtype, w, b)(x)
    np.testing.assert_allclose(y, _reference(x, w, b, 1, [0, 0, 0, 0], [1, 1], [1, 1]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.float16])
def test_global_average_pool_same_as_mean(dt):
    rng = np.random.default_rng(0)
    for shape in [(2, 5, 7, 9), (1, 3, 1, 1), (2, 4, 11), (1, 2, 3, 4, 5)]:
        x = (rng.standard_normal(shape) * 10).astype(dt)
        ax = tuple(range(2, x.ndim))
        want = np.mean(x, axis=ax, keepdims=True,
                       dtype=np.float32 if dt == np.float16 else dt).astype(dt)
        got = global_average_pool(x)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        # a non-contiguous input takes np.mean itself
        xs = x[..., ::2]
        np.testing.assert_array_equal(global_average_pool(xs), np.mean(
            xs, axis=ax, keepdims=True, dtype=np.float32 if dt == np.float16 else dt).astype(dt))
