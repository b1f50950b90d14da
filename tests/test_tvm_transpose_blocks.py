"""Transpose on the TVM backend when the input's last axis moves (attention's keys): copied in
blocks of output rows x a vector of the input's last axis; exact against NumPy and onnxruntime, at
AVX2's 8 lanes and AVX-512's 16, and left to the plain schedule where it does not apply."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("shape,perm,lanes,blocked", [
    ((1, 128, 12, 32), (0, 2, 3, 1), 8, True),     # MiniLM's keys [B, S, h, d] -> [B, h, d, S]
    ((1, 32, 2, 16), (0, 2, 3, 1), 16, True),      # the same at AVX-512's width
    ((16, 24), (1, 0), 8, True),                   # 2-D
    ((3, 12, 8), (2, 0, 1), 8, True),              # last axis 12: blocks of 4 rows
    ((3, 10, 8), (2, 0, 1), 8, False),             # last axis 10: no block divides
    ((2, 5, 12), (0, 2, 1), 8, False),             # the moved axis (12) is no whole vectors
    ((1, 128, 12, 32), (0, 2, 1, 3), 8, False),    # the last axis stays (queries): runs copy as they are
])
@pytest.mark.parametrize("parallel", [False, True])
def test_transpose_kernel_is_exact(shape, perm, lanes, blocked, parallel, monkeypatch):
    from tvmlite.backends.tvm.kernels import schedules as S
    from tvmlite.backends.tvm.kernels.tensor import transpose
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args

    monkeypatch.setattr(S, "worth_parallel", lambda work: parallel)
    x = RNG.standard_normal(shape).astype(np.float32)
    kd = transpose("t", "x", shape, perm, out_value="y", lanes=lanes)
    assert ("block_transpose" in kd.steps) == blocked
    assert ("T.parallel" in kd.func.script()) == parallel
    args, outs = kernel_args(kd, {"x": x})
    build_kernel(kd)["main"](*args)
    assert np.array_equal(outs[0].numpy().reshape(x.transpose(perm).shape), x.transpose(perm))


@pytest.mark.parametrize("threads_work", ["1", None])
def test_key_transpose_in_a_model_matches_onnxruntime(threads_work, monkeypatch):
    """Through the backend, serial and with every kernel parallel."""
    if threads_work:
        monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", threads_work)
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])]
    model = make_model(nodes, [tensor("x", [1, 64, 4, 16])], [tensor("y", [1, 4, 16, 64])])
    feeds = {"x": RNG.standard_normal((1, 64, 4, 16)).astype(np.float32)}
    cm = compile_model(load(model), {"x": feeds["x"].shape})
    assert cm.host_ops == []
    np.testing.assert_array_equal(cm.run(feeds)[0], ort_run(model, feeds)[0])
