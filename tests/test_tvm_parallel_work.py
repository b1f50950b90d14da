"""TVM backend: the work `schedules.worth_parallel` weighs for depthwise convs (float and int8:
`schedules.depthwise_work`) and int8 convs (`qgemm.qconv_work`). PP-OCR cls's 5x5 depthwise convs
and K-16 pointwise int8 convs took 60-260 us on one core but stayed there by their raw
multiply-add count; weighted, they split across the cores. Each case builds the kernel both
ways (weighted: parallel; the raw count: serial), runs both on two threads and checks they agree
exactly and with a NumPy reference; a smaller shape stays serial (must-not-apply)."""
from __future__ import annotations

import numpy as np
import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import plan_func  # noqa: E402
from tvmlite.backends.tvm.kernels import conv as KC  # noqa: E402
from tvmlite.backends.tvm.kernels import qgemm, target  # noqa: E402
from tvmlite.backends.tvm.kernels import schedules as S  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp, window_2d  # noqa: E402
from tvmlite.backends.tvm.kernels.qdepthwise import depthwise_int8  # noqa: E402
from tvmlite.backends.tvm.kernels.qgemm import QuantSpec, conv2d_int8, qconv_work  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.ops.conv import conv  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402

RNG = np.random.default_rng(16)


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    """The host's default work threshold, two pool threads (the parallel loops really split)."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.delenv("TVMLITE_MIN_PARALLEL_WORK", raising=False)
    plan_func.use_threads(2)
    yield
    plan_func.use_threads(target.host_threads())


def _run(kd, feeds):
    args, outs = kernel_args(kd, feeds)
    build_kernel(kd)["main"](*args)
    return outs[0].numpy()


def _both(make, feeds, monkeypatch):
    """(parallel?, output) of ``make()`` as weighted, then of ``make()`` with the threshold raised
    past any kernel here (the serial schedule of the same kernel)."""
    kd = make()
    par, y = "T.parallel" in kd.func.script(), _run(kd, feeds)
    monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", str(1 << 40))
    kd = make()
    assert "T.parallel" not in kd.func.script()
    y1 = _run(kd, feeds)
    monkeypatch.delenv("TVMLITE_MIN_PARALLEL_WORK")
    np.testing.assert_array_equal(y, y1)  # the split changes no number
    return par, y


def _np_depthwise(x, w, pads):
    c, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads, pads), (pads, pads)))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    return sum(xp[:, :, i:i + oh, j:j + ow] * w[:, 0, i, j].reshape(1, c, 1, 1)
               for i in range(kh) for j in range(kw))


@pytest.mark.parametrize("ext,threads,chunks", [(200, 2, 8), (9, 2, 1), (12, 2, 6), (6, 4, 1), (12, 4, 4), (5, 1, 5), (2, 2, 2)])
def test_chunk_count(ext, threads, chunks, monkeypatch):
    """The most chunks up to 8 that divide the loop and share evenly among the threads (1: none)."""
    monkeypatch.setenv("TVMLITE_THREADS", str(threads))
    assert S.chunk_count(ext) == chunks


def test_parallel_loops_run_in_chunks(monkeypatch):
    """The depthwise plane and the int8 conv's task buffers sit under a serial loop inside the
    parallel one (allocated once per chunk, not once per channel or task). The int8 conv takes
    AVX2's dot step on every host: with VNNI's (half the weighted work) this shape stays serial."""
    monkeypatch.setattr(qgemm, "dot_step", lambda w2=None: qgemm.DotStep(False))
    shape, c = (1, 200, 2, 96), 200
    w = np.ones((c, 1, 5, 5), np.float32)
    geom = WindowGeometry.conv(dict(pads=[2] * 4, group=c), shape, w.shape)
    text = KC.depthwise_conv2d("d", "x", shape, w, None, geom, out_value="y", epilogue=Epilogue(),
                               lanes=8).func.script()
    assert "T.parallel(8)" in text
    wq = np.ones((104, 16, 1, 1), np.int8)
    geom = window_2d(WindowGeometry.conv({}, (1, 16, 3, 96), wq.shape))
    kd = conv2d_int8("c", "x", (1, 16, 3, 96), wq, np.ones(104, np.float32), None, QuantSpec(0.04, 128, 0), geom,
                     out_value="y", out_shape=(1, 104, 3, 96), epilogue=Epilogue())
    assert "T.parallel(" in kd.func.script() and "T.parallel(1)" not in kd.func.script()


def test_weights():
    assert S.depthwise_work(1, 200, 2, 96, 5, 5) == 4 * 200 * 192 * 25
    assert qconv_work(288, 104, 16, vnni=False) == 2 * 288 * 104 * (16 + qgemm.QCONV_OUTPUT_MACS)
    assert qconv_work(288, 104, 16, vnni=True) == 288 * 104 * (16 + qgemm.QCONV_OUTPUT_MACS)


@pytest.mark.parametrize("shape,k,parallel", [
    ((1, 200, 2, 96), 5, True),   # cls Conv@48: 0.96M multiply-adds, ~0.26 ms on one core
    ((1, 32, 6, 96), 5, True),    # cls Conv@13's input (0.46M)
    ((1, 8, 12, 40), 3, False),   # 35K: one core
])
def test_float_depthwise_split(shape, k, parallel, monkeypatch):
    c = shape[1]
    x = RNG.standard_normal(shape).astype(np.float32)
    w = RNG.standard_normal((c, 1, k, k)).astype(np.float32)
    b = RNG.standard_normal(c).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=[k // 2] * 4, group=c), shape, w.shape)
    par, y = _both(lambda: KC.depthwise_conv2d("d", "x", shape, w, b, geom, out_value="y",
                                               epilogue=Epilogue([EwOp("HardSwish")]), lanes=8),
                   {"x": x}, monkeypatch)
    assert par is parallel
    ref = _np_depthwise(x, w, k // 2) + b.reshape(1, c, 1, 1)
    ref = ref * np.clip(ref / 6 + 0.5, 0, 1)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,parallel", [((1, 64, 12, 96), True), ((1, 16, 6, 24), False)])
def test_int8_depthwise_split(shape, parallel, monkeypatch):
    c = shape[1]
    wq = RNG.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    ws = RNG.uniform(0.01, 0.02, c).astype(np.float32)
    x = (RNG.standard_normal(shape) * 2).astype(np.float32)
    geom = window_2d(WindowGeometry.conv({"pads": [1, 1, 1, 1], "group": c}, shape, wq.shape))
    spec = QuantSpec(0.03, 120, 0, y_scale=0.05, y_zero_point=128)
    par, y = _both(lambda: depthwise_int8("d", "x", shape, wq, ws, None, spec, geom, out_value="y",
                                          out_shape=shape, epilogue=Epilogue()), {"x": x}, monkeypatch)
    assert par is parallel
    xq = np.clip(np.rint(x / np.float32(0.03)) + 120, 0, 255) - 120
    acc = _np_depthwise(xq, wq, 1) * 0.03 * ws.reshape(1, c, 1, 1)
    ref = np.clip(np.rint(acc / 0.05) + 128, 0, 255) * 0.05 - 128 * 0.05  # the output's grid
    assert np.abs(y.reshape(ref.shape) - ref).max() <= 0.05 * 1.001  # within one output step


@pytest.mark.parametrize("vnni", [False, True])
def test_int8_pointwise_split(vnni, monkeypatch):
    """cls's 16 -> 104 1x1 at 3x96 (0.48M multiply-adds, ~0.1 ms on one AVX2 core): parallel on
    AVX2, serial where VNNI makes the multiply-adds cheaper (only scheduled there: this host may
    lack VNNI); an 8 -> 8 1x1 at 12x40 stays serial either way."""
    monkeypatch.setattr(target, "has_vnni", lambda: vnni)
    spec = QuantSpec(0.04, 128, 0)

    def make(ci, co, hw):
        wq = RNG.integers(-127, 128, (co, ci, 1, 1)).astype(np.int8)
        ws = RNG.uniform(0.01, 0.02, co).astype(np.float32)
        x_shape = (1, ci) + hw
        geom = window_2d(WindowGeometry.conv({}, x_shape, wq.shape))
        return wq, ws, x_shape, (lambda: conv2d_int8("c", "x", x_shape, wq, ws, None, spec, geom, out_value="y",
                                                     out_shape=(1, co) + hw, epilogue=Epilogue()))

    *_, small = make(8, 8, (12, 40))
    assert "T.parallel" not in small().func.script()
    wq, ws, x_shape, big = make(16, 104, (3, 96))
    if vnni:
        assert "T.parallel" not in big().func.script()
        return
    x = (RNG.standard_normal(x_shape) * 3).astype(np.float32)
    par, y = _both(big, {"x": x}, monkeypatch)
    assert par
    xq = np.clip(np.rint(x / np.float32(0.04)) + 128, 0, 255) - 128
    ref = np.einsum("nchw,oc->nohw", xq.astype(np.float64), wq[:, :, 0, 0].astype(np.float64))
    ref = ref * np.float32(0.04) * ws.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("ci,co,hw,stride,loops,direct", [
    (16, 64, 55, 1, 1, True),    # SqueezeNet's 3x3 expand: a 52K-element copy on one core, the conv parallel
    (3, 24, 224, 2, 1, True),    # ShuffleNet's stem: 153K elements
    (64, 8, 128, 1, 2, True),    # a 1.1M-element copy (the host's threshold): still split
    (1, 32, 96, 1, 1, False),    # a 1-channel conv takes im2col + GEMM: its copy alike (9.6K elements)
])
def test_pad_copy_weighs_its_own_elements(ci, co, hw, stride, loops, direct, monkeypatch):
    """The zero-padded copy ahead of a conv (`schedules.pad_input`) runs across cores only where
    its own elements are worth it, not because the conv's multiply-adds are: one parallel loop
    (the conv's) where it is small, two where it is large; the numbers the same as the serial build.
    (The direct conv's rows in blocks that pad their own rows, `tile_order.row_tasks`, kept off.)"""
    monkeypatch.setattr(KC, "row_tasks", lambda *a: 0)
    x = RNG.standard_normal((1, ci, hw, hw)).astype(np.float32)
    w = RNG.standard_normal((co, ci, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    attrs = dict(pads=[1] * 4, strides=[stride] * 2)
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    assert KC.use_direct_conv(w.shape, geom, 8) is direct
    make = (lambda: KC.conv2d("c", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                              lanes=8))
    assert make().func.script().count("T.parallel") == loops
    par, y = _both(make, {"x": x}, monkeypatch)
    assert par
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("kind", ["direct", "gemm"])
def test_float_conv_tiles_run_in_chunks_and_match(kind, lanes, monkeypatch):
    """The float direct conv's and GEMM's tile loops run across the cores in chunks
    (`schedules.parallel_tiles`: 8 here, a serial loop of tiles under each), so the register
    tile's buffer is allocated once per chunk, not once per tile; the numbers match the serial
    kernel and NumPy. (The direct conv's rows in blocks, `tile_order.row_tasks`, kept off.)"""
    monkeypatch.setattr(KC, "row_tasks", lambda *a: 0)
    x = RNG.standard_normal((1, 64, 32, 32)).astype(np.float32)
    w = (RNG.standard_normal((64, 64, 3, 3)) * 0.1).astype(np.float32)
    geom = WindowGeometry.conv(dict(pads=[1] * 4), x.shape, w.shape)
    fn = KC.conv2d_direct if kind == "direct" else KC.conv2d_gemm

    def make():
        return fn("c", "x", x.shape, w, None, geom, out_value="y", epilogue=Epilogue(), lanes=lanes)
    assert "T.parallel(8)" in make().func.script()
    par, y = _both(make, {"x": x}, monkeypatch)
    assert par
    np.testing.assert_allclose(y.reshape(1, 64, 32, 32), conv(x, w, None, pads=[1] * 4), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ext,chunks", [(64, 8), (25, 2), (3, 2), (2, 2)])
def test_parallel_tiles_chunk_count(ext, chunks):
    """`chunk_count` chunks where some divide the tiles evenly among the threads, else one per
    thread (25 tiles: 13 and 12; 3: 2 and 1); a loop no longer than that runs its iterations in parallel."""
    import tvm
    from tvm import te

    a = te.placeholder((ext, 4), name="a")
    b = te.compute((ext, 4), lambda i, j: a[i, j] * 2, name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    i, j = sch.get_loops(sch.get_sblock("b"))
    S.parallel_tiles(sch, [i])
    assert f"T.parallel({chunks})" in sch.mod["main"].script()
