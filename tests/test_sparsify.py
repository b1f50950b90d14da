"""tvmlite::SparseMatMul (BSR/CSR) and the sparsify pass."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.passes.sparsify import Sparsify
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.ops.sparse import sparse_matmul, to_bsr

from helpers import make_model, ort_run, tensor

RNG = np.random.default_rng(2)


def _block_sparse(k, n, r, c, density):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    mask = RNG.random((k // c, n // r)) < density
    mask[0, 0] = True
    return w * np.kron(mask, np.ones((c, r), np.float32))


@pytest.mark.parametrize("r,c", [(4, 4), (8, 2), (1, 8), (1, 1)])
def test_bsr_kernel_matches_dense(r, c):
    w = _block_sparse(32, 24, r, c, 0.3)
    data, indices, indptr = to_bsr(w, r, c)
    assert data.shape[1:] == (r, c) and len(indptr) == 24 // r + 1
    assert data.shape[0] == np.count_nonzero(np.abs(w.T).reshape(24 // r, r, 32 // c, c).sum(axis=(1, 3)))
    for x in (RNG.standard_normal((5, 32)), RNG.standard_normal((2, 3, 32)), RNG.standard_normal((32,))[None]):
        x = x.astype(np.float32)
        np.testing.assert_allclose(sparse_matmul(x, data, indices, indptr), x @ w, rtol=1e-5, atol=1e-5)
    x4 = RNG.standard_normal((2, 32, 3, 5)).astype(np.float32)  # channel axis 1 (a 1x1 conv)
    want = np.einsum("nkhw,kc->nchw", x4, w)
    np.testing.assert_allclose(sparse_matmul(x4, data, indices, indptr, axis=1), want, rtol=1e-4, atol=1e-4)


def _layers_model():
    w1 = _block_sparse(64, 64, 8, 8, 0.1)  # Gemm, stored transposed
    w2 = _block_sparse(64, 32, 8, 8, 0.1)  # 1x1 conv [T=32, S=64]
    w3 = RNG.standard_normal((32, 16)).astype(np.float32)  # dense: stays
    nodes = [helper.make_node("Conv", ["x", "w2c", "b2"], ["c"], name="pw"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3t", "b3"], ["h"], name="dense", transB=1),
             helper.make_node("Gemm", ["x2", "w1t", "b1"], ["g"], name="fc", transB=1, alpha=0.5, beta=2.0)]
    inits = [("w2c", w2.T.reshape(32, 64, 1, 1).copy()), ("b2", RNG.standard_normal(32).astype(np.float32)),
             ("w3t", w3.T.copy()), ("b3", RNG.standard_normal(16).astype(np.float32)),
             ("w1t", w1.T.copy()), ("b1", RNG.standard_normal(64).astype(np.float32))]
    return make_model(nodes, [tensor("x", ["N", 64, 4, 4]), tensor("x2", ["N", 64])],
                      [tensor("h", ["N", 16]), tensor("g", ["N", 64])], inits)


def test_sparsify_rewrites_and_onnxruntime_agrees():
    proto = _layers_model()
    m = tvmlite.load(proto)
    # min_speedup=0: always take the fastest sparse kernel, whatever this machine's load says
    (r,) = Pipeline([Sparsify(blocks=["8x8", "4x4", "1x1"], min_speedup=0.0, max_density=0.3, repeats=3)]).run(m)
    chosen = {d["node"]: d for d in r.decisions}
    assert chosen["fc"]["format"] in ("bsr", "csr") and chosen["pw"]["format"] in ("bsr", "csr")
    assert chosen["dense"]["format"] == "dense" and "max_density" in chosen["dense"]["reason"]
    assert "ms vs dense" in chosen["fc"]["reason"]
    ops = sorted(n.op_type for n in m.graph.toposort())
    assert ops.count("SparseMatMul") == 2
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": RNG.standard_normal((2, 64, 4, 4)).astype(np.float32),
             "x2": RNG.standard_normal((3, 64)).astype(np.float32)}
    want = ort_run(proto, feeds)
    for got in (ort_run(out, feeds), compile_model(m).run(feeds)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # re-imported, the op is a tvmlite op again
    assert sum(n.op_type == "SparseMatMul" for n in tvmlite.load(out).graph.toposort()) == 2


def test_slow_sparse_stays_dense_and_sparse_initializers_shrink_the_file():
    w = RNG.standard_normal((48, 40)).astype(np.float32)
    w[RNG.random(w.shape) < 0.9] = 0  # unstructured: no 8x8 block is empty
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                       [tensor("x", ["N", 48])], [tensor("y", ["N", 40])], [("w", w)])
    m = tvmlite.load(proto)
    (r,) = Pipeline([Sparsify(blocks=["8x8"], min_speedup=1e9, repeats=2)]).run(m)
    d = r.decisions[0]
    assert d["format"] == "dense" and "sparse initializer" in d["reason"]
    out = export_model(m)
    # not full_check: ONNX shape inference types a sparse initializer as sparse_tensor, which no
    # standard op accepts; runtimes (onnxruntime) densify it when they load the model
    onnx.checker.check_model(out)
    assert len(out.graph.sparse_initializer) == 1
    assert len(out.SerializeToString()) < len(proto.SerializeToString())
    x = RNG.standard_normal((2, 48)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], x @ w, rtol=1e-4, atol=1e-4)


def test_bad_options():
    with pytest.raises(OptionError):
        Pipeline("sparsify(blocks=4by4)").run(tvmlite.load(_layers_model()))
