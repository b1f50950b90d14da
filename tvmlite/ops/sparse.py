"""tvmlite::BlockSparseMatMul: a product with a block-sparse constant weight.

The weight W [K, N] is stored transposed in R x C blocks, block-ELL style: every block row of W^T
(R outputs) holds the same number m of blocks (rows with fewer are padded with zero blocks), as
``data [N/R, R, m*C]`` (the row's blocks side by side) and ``cols [N/R, m]`` (their block columns).
Then one gather of the inputs each row needs and one stacked BLAS product compute every output::

    xg = x[:, cols * C + arange(C)]            # [B, N/R, m*C]
    y  = data @ xg                              # per block row: [R, m*C] @ [m*C, B]

At batch 1 this reads only the stored blocks, where CSR pays an index per weight and a scalar
loop (scipy CSR reaches 1.25-2x at 90% sparsity; this reaches far more, see bench_compress.py).
``axis`` is the reduction axis of x: -1 (MatMul/Gemm) or 1 (a 1x1 Conv over NC...).
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.registry import tvmlite_op


def _shape(types, *, block, axis=-1):
    (xd, xs), (_, ds) = types[0], types[1]
    if xs is None or ds is None:
        return [(xd, None)]
    n = ds[0] * ds[1] if isinstance(ds[0], int) and isinstance(ds[1], int) else None
    out = list(xs)
    out[axis] = n
    return [(xd, tuple(out))]


def gather_index(cols: np.ndarray, c: int) -> np.ndarray:
    nbr, m = cols.shape
    return (cols.astype(np.int64)[:, :, None] * c + np.arange(c)).reshape(nbr, m * c)


@tvmlite_op("BlockSparseMatMul", shape=_shape, body=lambda fb, **a: _body(fb, **a))
def block_sparse_matmul(x, data, cols, bias=None, *, block, axis=-1):
    r, c = (int(v) for v in block)
    nbr, rr, mc = data.shape
    if rr != r or mc % c or cols.shape != (nbr, mc // c):
        raise ShapeError(f"BlockSparseMatMul: data {data.shape} / cols {cols.shape} do not fit block {r}x{c}")
    moved = axis not in (-1, x.ndim - 1)
    xm = np.moveaxis(x, axis, -1) if moved else x
    lead = xm.shape[:-1]
    x2 = xm.reshape(-1, xm.shape[-1])
    xg = np.take(x2, gather_index(cols, c), axis=1)  # [B, nbr, m*C]
    y = np.matmul(data, xg.transpose(1, 2, 0))  # [nbr, R, B]
    y = y.transpose(2, 0, 1).reshape(lead + (nbr * r,))
    if bias is not None:
        y = y + bias
    return np.moveaxis(y, -1, axis) if moved else y


def _body(fb, *, block, axis=-1):
    r, c = (int(v) for v in block)
    types = fb.input_types
    if types[0] is None or types[0][1] is None or types[1] is None or types[1][1] is None:
        raise UnsupportedError("BlockSparseMatMul export needs the input rank and the data shape")
    rank = len(types[0][1])
    nbr, _, mc = types[1][1]
    n = nbr * r
    ax = axis % rank
    x = fb.inputs[0]
    if ax != rank - 1:
        perm = [i for i in range(rank) if i != ax] + [ax]
        x = fb.node("Transpose", [x], {"perm": perm})
    lead = fb.node("Slice", [fb.node("Shape", [x]), fb.const(np.array([0], np.int64)),
                             fb.const(np.array([rank - 1], np.int64))])
    x2 = fb.node("Flatten", [x], {"axis": rank - 1})
    cols = fb.node("Mul", [fb.inputs[2], fb.const(np.array(c, np.int64))])
    if fb.opset >= 13:
        cols = fb.node("Unsqueeze", [cols, fb.const(np.array([2], np.int64))])
    else:
        cols = fb.node("Unsqueeze", [cols], {"axes": [2]})
    idx = fb.node("Add", [cols, fb.const(np.arange(c, dtype=np.int64))])
    idx = fb.node("Reshape", [idx, fb.const(np.array([nbr, mc], np.int64))])
    xg = fb.node("Gather", [x2, idx], {"axis": 1})  # [B, nbr, mc]
    y = fb.node("MatMul", [fb.inputs[1], fb.node("Transpose", [xg], {"perm": [1, 2, 0]})])
    y = fb.node("Reshape", [fb.node("Transpose", [y], {"perm": [2, 0, 1]}),
                            fb.const(np.array([-1, n], np.int64))])
    if len(fb.inputs) > 3 and fb.inputs[3]:
        y = fb.node("Add", [y, fb.inputs[3]])
    shape = fb.node("Concat", [lead, fb.const(np.array([n], np.int64))], {"axis": 0})
    if ax == rank - 1:
        fb.node("Reshape", [y, shape], output=fb.outputs[0])
        return
    y = fb.node("Reshape", [y, shape])
    inv = list(range(ax)) + [rank - 1] + list(range(ax, rank - 1))
    fb.node("Transpose", [y], {"perm": inv}, output=fb.outputs[0])


def to_block_ell(w: np.ndarray, r: int, c: int):
    """W [K, N] -> (data [N/R, R, m*C], cols [N/R, m], padded fraction of stored blocks);
    K and N must be multiples of C and R."""
    k, n = w.shape
    if k % c or n % r:
        raise ShapeError(f"weight {w.shape} is not a whole number of {r}x{c} blocks")
    wt = w.T.reshape(n // r, r, k // c, c).transpose(0, 2, 1, 3)  # [nbr, nbc, R, C]
    nz = np.any(wt != 0, axis=(2, 3))
    counts = nz.sum(1)
    m = max(1, int(counts.max()))
    cols = np.zeros((n // r, m), np.int64)
    data = np.zeros((n // r, m, r, c), w.dtype)
    for i in range(n // r):
        j = np.flatnonzero(nz[i])
        cols[i, :len(j)] = j
        data[i, :len(j)] = wt[i, j]
    padded = 1 - counts.sum() / (m * (n // r))
    return np.ascontiguousarray(data.transpose(0, 2, 1, 3).reshape(n // r, r, m * c)), cols, float(padded)
