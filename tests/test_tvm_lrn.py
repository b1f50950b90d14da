"""LRN on the TVM backend (kernels/reduce.lrn): the channel window at both edges, even and odd
sizes, the betas that take square roots (0.75, 0.5), 1 and any other (a power), a fused ReLU,
rank 3 and 4; against NumPy, itself checked against onnxruntime where that takes the node (odd
sizes, rank 4)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, ort_run, tensor

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

tvm = require_tvm()

from tvmlite.backends.tvm import compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

RNG = np.random.default_rng(2)


def numpy_lrn(x, size, alpha, beta, bias):
    c = x.shape[1]
    sq = np.zeros_like(x, dtype=np.float64)
    lo, hi = (size - 1) // 2, size // 2
    for i in range(c):
        sq[:, i] = (x[:, max(0, i - lo):min(c, i + hi + 1)].astype(np.float64) ** 2).sum(axis=1)
    return (x / (bias + alpha / size * sq) ** beta).astype(np.float32)


@pytest.mark.parametrize("shape,size,beta", [((1, 12, 5, 16), 5, 0.75), ((1, 16, 11, 5), 5, 0.75), ((2, 7, 9), 3, 0.5), ((1, 6, 4, 8), 7, 1.0),
                                             ((1, 9, 3, 10), 3, 0.6), ((1, 10, 4, 8), 4, 0.75)])
@pytest.mark.parametrize("lanes", [8, 16])
def test_lrn(shape, size, beta, lanes, monkeypatch):
    """Planes of whole vectors and with a ragged tail (its own loop); every kernel parallel."""
    monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", "0")
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    nodes = [helper.make_node("LRN", ["x"], ["l"], size=size, alpha=0.3, beta=beta, bias=1.5),
             helper.make_node("Relu", ["l"], ["y"])]
    m = make_model(nodes, [tensor("x", shape)], [tensor("y", shape)], [])
    x = (RNG.standard_normal(shape) * 3).astype(np.float32)
    ref = np.maximum(numpy_lrn(x, size, 0.3, beta, 1.5), 0)
    if size % 2 and len(shape) == 4:  # the reference is onnxruntime's where it takes the node
        np.testing.assert_allclose(ref, ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-6)
    cm = compile_model(load(m), {"x": shape}, cache=False, lanes=lanes)
    got = cm.run({"x": x})
    got = got["y"] if isinstance(got, dict) else got[0]
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) <= 1e-5
    assert sum("lrn" in c.get("func", "") for c in cm.plan["calls"]) == 1  # the Relu fused
