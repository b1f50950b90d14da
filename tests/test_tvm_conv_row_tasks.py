"""The padded direct conv's parallel loop as one block of output rows per thread, each block
padding the input rows it reads under the parallel loop (kernels/tile_order.row_tasks,
schedules.pad_rows): the rule, the loop structure (the pad made inside the parallel loop, one
task per thread), and the numbers, the same as the chunked schedule's and NumPy's, on two
threads, for the NCHW direct kernel and the layout-taking one, in either tile order."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import plan_func  # noqa: E402
from tvmlite.backends.tvm.kernels import conv as KC  # noqa: E402
from tvmlite.backends.tvm.kernels import conv_nhwc as KN  # noqa: E402
from tvmlite.backends.tvm.kernels import target  # noqa: E402
from tvmlite.backends.tvm.kernels import tile_order as TO  # noqa: E402
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp  # noqa: E402
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args  # noqa: E402
from tvmlite.ops.conv import conv  # noqa: E402
from tvmlite.ops.geometry import WindowGeometry  # noqa: E402

RNG = np.random.default_rng(29)


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    """Two pool threads, every kernel parallel (the loops really split)."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", "0")
    plan_func.use_threads(2)
    yield
    plan_func.use_threads(target.host_threads())


def geometry(ci, co, k, s, hw, group=1):
    return WindowGeometry.conv(dict(pads=[k // 2] * 4, strides=[s, s], group=group), (1, ci) + hw,
                               (co, ci // group, k, k))


@pytest.mark.parametrize("case,tasks", [
    ((64, 64, 3, 1, (20, 20)), 2),  # the detector's 3x3 convs at 20x20
    ((48, 64, 3, 2, (40, 40)), 2),  # and its stride-2 ones into 20x20
    ((64, 64, 3, 1, (7, 7)), 2),  # 7 output rows: blocks of 4 and 3
    ((64, 64, 3, 2, (6, 6)), 0),  # 3 output rows: fewer than two per thread
    ((64, 64, 3, 1, (20, 20), 2), 0),  # grouped
    ((256, 256, 3, 1, (14, 14)), 0),  # weights (2.3 MiB) past half the L2: each block reads them all
])
def test_row_tasks_rule(case, tasks, monkeypatch):
    monkeypatch.setattr(TO, "l2_floats", lambda: 2 * 1024 * 1024 // 4)
    geom = geometry(*case)
    co, ci, k = case[1], case[0] // (case[5] if len(case) > 5 else 1), case[2]
    assert TO.row_tasks(geom, co * ci * k * k) == tasks
    monkeypatch.setenv("TVMLITE_THREADS", "1")
    assert TO.row_tasks(geom, co * ci * k * k) == 0  # one thread: nothing to split


def parallel_body(script: str) -> tuple[str, str]:
    """(extent, text) of the parallel loop that holds the conv's tiles (the pad copy may have a
    parallel loop of its own ahead of it)."""
    loops = [m for m in re.finditer(r"^( *)for \w+ in T\.parallel\((\d+)\):\n((?:\1 .*\n)+)", script, re.M)
             if 'T.sblock("acc_update")' in m.group(3)]
    assert len(loops) == 1, script
    return loops[0].group(2), loops[0].group(3)


def run(kd, feeds):
    args, outs = kernel_args(kd, feeds)
    build_kernel(kd)["main"](*args)
    return outs[0].numpy()


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("outer", [False, True])
@pytest.mark.parametrize("ci,co,k,attrs,batch", [
    (6, 40, 3, dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), 2),  # uneven pads, ragged channels,
    # 7 output rows: blocks of 4 and 3
    (5, 24, 3, dict(pads=[1, 1, 1, 1], strides=[2, 2]), 1),  # stride 2, a row the pixel tile does not divide
    (16, 32, 3, dict(pads=[1, 1, 1, 1]), 1),
])
def test_direct_conv_pads_its_rows_inside_the_parallel_loop(monkeypatch, lanes, outer, ci, co, k, attrs, batch):
    monkeypatch.setattr(KC, "pixel_tiles_outer", lambda *a, **kw: outer)
    x = RNG.standard_normal((batch, ci, 12, 13)).astype(np.float32)
    w = RNG.standard_normal((co, ci, k, k)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)

    def make():
        return KC.conv2d_direct("d", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                                lanes=lanes)
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    kd = make()
    extent, body = parallel_body(kd.func.script())
    assert TO.row_tasks(geom, w.size) == 2  # 6-12 output rows, a ragged last block where odd
    assert int(extent) == batch * 2 and 'T.sblock("pad")' in body
    y = run(kd, {"x": x}).reshape(ref.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(KC, "row_tasks", lambda *a: 0)  # the chunked loop, the pad made ahead of it
    kd = make()
    assert 'T.sblock("pad")' not in parallel_body(kd.func.script())[1]
    np.testing.assert_allclose(run(kd, {"x": x}).reshape(ref.shape), y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("outer", [False, True])
@pytest.mark.parametrize("xl,yl", [("NHWC", "NHWC"), ("NCHW", "NHWC"), ("NHWC", "NCHW")])
def test_layout_taking_conv_pads_its_rows_inside_the_parallel_loop(monkeypatch, lanes, outer, xl, yl):
    monkeypatch.setattr(KN, "pixel_tiles_outer", lambda *a, **kw: outer)
    x = RNG.standard_normal((1, 8, 12, 12)).astype(np.float32)
    w = RNG.standard_normal((20, 8, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(20).astype(np.float32)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    kd = KN.conv2d_nhwc("k", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                        lanes=lanes, x_layout=xl, y_layout=yl)
    extent, body = parallel_body(kd.func.script())
    assert int(extent) == 2 and 'T.sblock("pad")' in body
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if xl == "NHWC" else x
    y = run(kd, {"x": xin})
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    y = y.reshape(1, 12, 12, 20).transpose(0, 3, 1, 2) if yl == "NHWC" else y.reshape(ref.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ci,co,hw,parallel_pad", [
    (3, 16, 320, True),   # the detector's stem (im2col + GEMM): a 311K-element copy in stride phases
    (1, 32, 96, False),   # a 1-channel conv (im2col + GEMM): its 9.6K-element copy on one core
])
def test_gemm_conv_pad_copy_splits_by_rows_where_worth_it(monkeypatch, ci, co, hw, parallel_pad):
    """The copy ahead of a parallel im2col + GEMM conv runs across the cores where its elements,
    at `S.PAD_ELEMENT_WEIGHT` multiply-adds each, are worth it, split by its 12 stride-phase planes
    (4 tasks a thread, `S.copy_tasks_loops`), not by its 3 channels; the numbers as NumPy's."""
    monkeypatch.delenv("TVMLITE_MIN_PARALLEL_WORK")
    x = RNG.standard_normal((1, ci, hw, hw)).astype(np.float32)
    w = RNG.standard_normal((co, ci, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    attrs = dict(pads=[1] * 4, strides=[2, 2])
    geom = WindowGeometry.conv(attrs, x.shape, w.shape)
    assert not KC.use_direct_conv(w.shape, geom, 16)
    kd = KC.conv2d("c", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]), lanes=16)
    script = kd.func.script()
    pads = [int(m.group(2)) for m in re.finditer(r"^( *)for \w+ in T\.parallel\((\d+)\):\n((?:\1 .*\n)+)", script, re.M)
            if 'T.sblock("pad")' in m.group(3)]
    assert pads == ([ci * 4] if parallel_pad else []), script[:1500]
    ref = np.maximum(conv(x, w, b, **attrs), 0)
    np.testing.assert_allclose(run(kd, {"x": x}).reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,loops", [((1, 3, 2, 2, 161, 161), 4), ((1, 64, 130, 130), 2),
                                         ((1, 3, 226, 226), 3), ((5, 7), 1)])
def test_copy_split_by_the_fewest_loops_making_four_tasks_a_thread(shape, loops):
    import tvm
    from tvm import te

    from tvmlite.backends.tvm.kernels import schedules as S

    a = te.placeholder(shape, name="a")
    b = te.compute(shape, lambda *i: a[i] + 1, name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    assert S.copy_tasks_loops(sch, "b") == loops


@pytest.mark.parametrize("yl", ["NHWC", "NCHW"])
@pytest.mark.parametrize("ci,co,threads,pixels_first", [
    (96, 64, "2", True),     # 2 channel tiles, parallel
    (96, 128, "2", False),   # 4 channel tiles: the split stays on them
    (16, 128, "2", True),    # a short reduction (SqueezeNet's expand 1x1s): up to 7 tiles split by pixels
    (16, 256, "2", False),   # 8 tiles
    (96, 64, "1", False),    # one thread: nothing split, the order as before
])
def test_flat_1x1_splits_by_pixels(monkeypatch, ci, co, threads, pixels_first, yl):
    """A parallel flat 1x1 conv with fewer than 4 channel tiles (8 with at most 64 input
    channels) runs its pixel tiles outside (`tile_order.flat_pixels_split`), written NHWC or
    NCHW: its parallel loop is cut along the pixels, each thread reading and writing its own half;
    the numbers as NumPy's."""
    monkeypatch.setenv("TVMLITE_THREADS", threads)
    x = RNG.standard_normal((1, ci, 23, 23)).astype(np.float32)
    w = RNG.standard_normal((co, ci, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    geom = WindowGeometry.conv({}, x.shape, w.shape)
    kd = KN.conv2d_nhwc("k", "x", x.shape, w, b, geom, out_value="y", epilogue=Epilogue([EwOp("Relu")]),
                        lanes=16, x_layout="NHWC", y_layout=yl)
    script = kd.func.script()
    assert ("T.parallel" in script) is (threads != "1")
    assert bool(re.search(r"for nn_gg_y_xx_0_i_0_fused\w* in", script)) is pixels_first
    ref = np.maximum(conv(x, w, b), 0)
    y = run(kd, {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})
    y = y.reshape(1, 23, 23, co).transpose(0, 3, 1, 2) if yl == "NHWC" else y.reshape(ref.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
