"""tvmlite::SparseMatMul: a product with a sparse constant weight in BSR form (CSR = 1x1 blocks).

The weight W [K, N] is stored transposed, W^T [N, K], as scipy's BSR arrays: ``data [nnzb, R, C]``
(the nonzero R x C blocks), ``indices [nnzb]`` (their block columns) and ``indptr [N/R + 1]`` (where
each block row starts). The NumPy kernel is scipy.sparse's compiled BSR product; at batch 1 it reads
only the stored blocks with one index per block, where CSR pays an index and a scalar loop per
weight (scipy CSR reaches only 1.25-2x over dense at 90% sparsity; see bench/bench_compress.py).
``axis`` is the reduction axis of x: -1 (MatMul/Gemm) or 1 (a 1x1 Conv over N, C, ...).

The ONNX function body rebuilds the dense weight from the three arrays with standard ops (the row
of each block from indptr, then ScatterND), so onnxruntime folds it into a constant when it loads
the model and runs its dense kernel.
"""
from __future__ import annotations

import collections

import numpy as np

from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.registry import tvmlite_op

_PREPARED: collections.OrderedDict = collections.OrderedDict()


def _prepared(data, indices, indptr):
    """(flat data, indices, indptr) as scipy's compiled BSR routines take them, made once per
    weight: the arrays are the plan's constants, the same objects at every run."""
    key = (id(data), id(indices), id(indptr))
    hit = _PREPARED.get(key)
    if hit is not None and hit[0] is data and hit[1] is indices and hit[2] is indptr:
        _PREPARED.move_to_end(key)
        return hit[3]
    idx = np.ascontiguousarray(indices, dtype=np.int64)
    ptr = np.ascontiguousarray(indptr, dtype=np.int64)
    prep = (np.ascontiguousarray(data).ravel(), idx, ptr)
    _PREPARED[key] = (data, indices, indptr, prep)
    if len(_PREPARED) > 256:
        _PREPARED.popitem(last=False)
    return prep


def _bsr_product(data, indices, indptr, x2):
    """W^T @ x2^T for x2 [B, K]: scipy's compiled BSR kernels called directly, since the public
    sparse-matrix product spends more time on checks than a batch-1 product takes."""
    nnzb, r, c = data.shape
    n_brow, k = len(indptr) - 1, x2.shape[1]
    flat, idx, ptr = _prepared(data, indices, indptr)
    try:
        from scipy.sparse import _sparsetools as st
    except ImportError:  # pragma: no cover - scipy moved its private module: use the public API
        import scipy.sparse as sp

        return (sp.bsr_matrix((data, indices, indptr), shape=(n_brow * r, k)) @ x2.T).T
    if x2.shape[0] == 1:
        y = np.zeros(n_brow * r, data.dtype)
        st.bsr_matvec(n_brow, k // c, r, c, ptr, idx, flat, x2[0], y)
        return y[None]
    xt = np.ascontiguousarray(x2.T)
    y = np.zeros((n_brow * r, x2.shape[0]), data.dtype)
    st.bsr_matvecs(n_brow, k // c, x2.shape[0], r, c, ptr, idx, flat, xt.ravel(), y.ravel())
    return y.T


def _shape(types, *, axis=-1):
    (xd, xs), dt, pt = types[0], types[1], types[3]
    if xs is None or dt is None or dt[1] is None or pt is None or pt[1] is None:
        return [(xd, None)]
    rows, r = pt[1][0], dt[1][1]
    out = list(xs)
    out[axis] = (rows - 1) * r if isinstance(rows, int) and isinstance(r, int) else None
    return [(xd, tuple(out))]


@tvmlite_op("SparseMatMul", shape=_shape, body=lambda fb, **a: _body(fb, **a))
def sparse_matmul(x, data, indices, indptr, bias=None, *, axis=-1):
    moved = axis not in (-1, x.ndim - 1)
    xm = np.moveaxis(x, axis, -1) if moved else x
    k = xm.shape[-1]
    if data.ndim != 3 or k % data.shape[2]:
        raise ShapeError(f"SparseMatMul: input size {k} is not a whole number of blocks {data.shape[1:]}")
    lead = xm.shape[:-1]
    x2 = np.ascontiguousarray(xm.reshape(-1, k), dtype=data.dtype)
    y = _bsr_product(data, indices, indptr, x2)
    y = y.reshape(lead + (y.shape[1],))
    if bias is not None:
        y = y + bias
    return np.moveaxis(y, -1, axis) if moved else y


def _body(fb, *, axis=-1):
    types = fb.input_types
    if any(t is None or t[1] is None for t in types[:4]) or fb.opset < 11:
        raise UnsupportedError("SparseMatMul export needs known input shapes and opset >= 11")
    rank = len(types[0][1])
    k = types[0][1][axis]
    nnzb, r, c = types[1][1]
    nbr = types[3][1][0] - 1
    if not isinstance(k, int):
        raise UnsupportedError("SparseMatMul export needs a static reduction size")
    n = nbr * r
    i64 = np.int64
    # block row of each block: how many row starts (indptr[1:]) are <= its position
    pos = fb.const(np.arange(nnzb, dtype=i64).reshape(-1, 1))
    starts = fb.node("Unsqueeze", [fb.node("Slice", [fb.inputs[3], fb.const(np.array([1], i64)),
                                                     fb.const(np.array([nbr + 1], i64))]),
                                   fb.const(np.array([0], i64))]) if fb.opset >= 13 else \
        fb.node("Unsqueeze", [fb.node("Slice", [fb.inputs[3], fb.const(np.array([1], i64)),
                                                fb.const(np.array([nbr + 1], i64))])], {"axes": [0]})
    below = fb.node("Cast", [fb.node("Not", [fb.node("Less", [pos, starts])])], {"to": 7})
    if fb.opset >= 13:
        rows = fb.node("ReduceSum", [below, fb.const(np.array([1], i64))], {"keepdims": 1})
    else:
        rows = fb.node("ReduceSum", [below], {"axes": [1], "keepdims": 1})
    cols = fb.node("Reshape", [fb.inputs[2], fb.const(np.array([-1, 1], i64))])
    where = fb.node("Concat", [rows, cols], {"axis": 1})  # [nnzb, 2]
    zeros = fb.node("ConstantOfShape", [fb.const(np.array([nbr, k // c, r, c], i64))],
                    {"value": __import__("onnx").numpy_helper.from_array(np.zeros(1, types[1][0]))})
    blocks = fb.node("ScatterND", [zeros, where, fb.inputs[1]])  # [nbr, nbc, R, C]
    wt = fb.node("Reshape", [fb.node("Transpose", [blocks], {"perm": [0, 2, 1, 3]}),
                             fb.const(np.array([n, k], i64))])  # W^T [N, K]
    x = fb.inputs[0]
    ax = axis % rank
    if ax != rank - 1:
        perm = [i for i in range(rank) if i != ax] + [ax]
        x = fb.node("Transpose", [x], {"perm": perm})
    y = fb.node("MatMul", [x, fb.node("Transpose", [wt], {"perm": [1, 0]})])
    if len(fb.inputs) > 4 and fb.inputs[4]:
        y = fb.node("Add", [y, fb.inputs[4]])
    if ax == rank - 1:
        fb.node("Identity", [y], output=fb.outputs[0])
        return
    inv = list(range(ax)) + [rank - 1] + list(range(ax, rank - 1))
    fb.node("Transpose", [y], {"perm": inv}, output=fb.outputs[0])


def to_bsr(w: np.ndarray, r: int, c: int):
    """W [K, N] -> (data [nnzb, R, C], indices [nnzb], indptr [N/R + 1]) of W^T; K and N must be
    multiples of C and R."""
    import scipy.sparse as sp

    k, n = w.shape
    if k % c or n % r:
        raise ShapeError(f"weight {w.shape} is not a whole number of {r}x{c} blocks")
    m = sp.bsr_matrix(np.ascontiguousarray(w.T), blocksize=(r, c))
    m.eliminate_zeros()
    m.sort_indices()
    return (np.ascontiguousarray(m.data), m.indices.astype(np.int64), m.indptr.astype(np.int64))
