"""Low-rank factorization, the numerics: activations captured on the NumPy backend, rank rules
(EVBMF, energy), Tucker-2 by HOOI, least-squares statistics and the reduced-rank refit, and the
layer record the pass plans with. No graph rewriting here (passes/lowrank.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvmlite.backends.numpy.capture import capture_values  # noqa: F401 - importable from here too
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.ir.graph import Model, Node


# ------------------------------------------------------------------------------- activations
def capture_groups(model: Model, names: list[str], groups: list[dict]) -> dict[str, np.ndarray]:
    """capture_values over feed dicts that must run apart, stacked along the batch axis (0)."""
    runs = [capture_values(model, names, feeds) for feeds in groups]
    return runs[0] if len(runs) == 1 else {n: np.concatenate([r[n] for r in runs]) for n in runs[0]}



def output_error(model: Model, targets: dict[str, np.ndarray], groups: list[dict]) -> float:
    """Largest relative (Frobenius) error of the model's floating-point outputs against ``targets``."""
    outs = capture_groups(model, list(model.graph.outputs), groups)
    errs = [float(np.linalg.norm(outs[n].astype(np.float64) - targets[n]) /
                  max(float(np.linalg.norm(np.asarray(targets[n], np.float64))), 1e-12))
            for n in model.graph.outputs if np.issubdtype(np.asarray(targets[n]).dtype, np.floating)]
    return max(errs, default=0.0)

# ------------------------------------------------------------------------------------- EVBMF
def _evb_tau(x, alpha):
    return 0.5 * (x - (1 + alpha) + np.sqrt(np.maximum((x - (1 + alpha)) ** 2 - 4 * alpha, 0.0)))


def evbmf_rank(matrix: np.ndarray) -> int:
    """Rank estimated by empirical variational Bayes matrix factorization (Nakajima et al., 2013,
    "Global analytic solution of fully-observed variational Bayesian matrix factorization"), with
    the noise variance estimated by minimizing the free energy. The count of singular values above
    the EVB threshold."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(matrix, np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    if L < 2:
        return L
    s = np.linalg.svd(y, compute_uv=False)
    H = L
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    residual = max(float(np.sum(y ** 2) - np.sum(s ** 2)), 0.0)
    e_h_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
    e_h_ub = max(0, min(e_h_ub, H - 2))
    upper = (np.sum(s ** 2) + residual) / (L * M)
    lower = max(s[e_h_ub + 1] ** 2 / (M * xubar), np.mean(s[e_h_ub + 1:] ** 2) / M)
    if not (upper > lower > 0):
        return int(np.sum(s > 1e-12 * s[0])) if s[0] > 0 else 0

    def free_energy(sigma2):
        x = s ** 2 / (M * sigma2)
        z1 = x[x > xubar]
        z2 = x[x <= xubar]
        tau_z1 = _evb_tau(z1, alpha)
        return (np.sum(z2 - np.log(z2)) + np.sum(z1 - tau_z1) + np.sum(np.log((tau_z1 + 1) / z1))
                + alpha * np.sum(np.log(tau_z1 / alpha + 1)) + residual / (M * sigma2)
                + (L - H) * np.log(sigma2))

    sigma2 = minimize_scalar(free_energy, bounds=(lower, upper), method="bounded").x
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold))


def energy_rank(matrix: np.ndarray, energy: float) -> int:
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    cum = np.cumsum(s ** 2)
    if cum[-1] <= 0:
        return 1
    return int(np.searchsorted(cum / cum[-1], energy - 1e-12) + 1)


def gram_svd(matrix, n_eigenvecs=None, **_):
    """Truncated SVD through the eigendecomposition of the smaller Gram matrix: for the short, wide
    unfoldings of conv weights this is many times faster than LAPACK's SVD, and accurate enough
    for the leading vectors that a truncation keeps. Passed to TensorLy as its ``svd``."""
    m = np.asarray(matrix, np.float64)
    wide = m.shape[0] <= m.shape[1]
    a = m if wide else m.T
    k = min(a.shape) if n_eigenvecs is None else min(int(n_eigenvecs), min(a.shape))
    vals, vecs = np.linalg.eigh(a @ a.T)
    order = np.argsort(vals)[::-1][:k]
    s = np.sqrt(np.maximum(vals[order], 0.0))
    u = vecs[:, order]
    safe = np.where(s > s[0] * 1e-12 if s.size and s[0] > 0 else np.zeros_like(s, bool), s, 1.0)
    v = (u.T @ a) / safe[:, None]
    if wide:
        return u, s, v
    return v.T, s, u.T


def tucker2(w: np.ndarray, r_out: int, r_in: int, n_iter: int = 10, tol: float = 1e-6):
    """Tucker-2 of a conv weight [T, S, *k] over its two channel modes by HOOI (TensorLy's
    unfolding and n-mode products): (core [r_out, r_in, *k], U_out [T, r_out], U_in [S, r_in]).
    TensorLy's own partial_tucker ignores a custom SVD inside its iterations and LAPACK's SVD of
    these wide unfoldings is slow, hence this loop with :func:`gram_svd`."""
    import tensorly as tl
    from tensorly.tenalg import multi_mode_dot

    ranks = [r_out, r_in]
    factors = [gram_svd(tl.unfold(w, m), r)[0] for m, r in zip((0, 1), ranks)]  # HOSVD start
    core = multi_mode_dot(w, factors, modes=[0, 1], transpose=True)
    last = np.linalg.norm(core)
    for _ in range(n_iter):
        for i in (0, 1):
            partial = multi_mode_dot(w, factors, modes=[0, 1], skip=i, transpose=True)
            factors[i] = gram_svd(tl.unfold(partial, i), ranks[i])[0]
        core = multi_mode_dot(w, factors, modes=[0, 1], transpose=True)
        now = np.linalg.norm(core)  # orthonormal factors: a larger core norm is a smaller error
        if abs(now - last) <= tol * max(now, 1e-30):
            break
        last = now
    return np.asarray(core), np.asarray(factors[0]), np.asarray(factors[1])


# ------------------------------------------------------------------------ sufficient statistics
class LinearStats:
    """Sufficient statistics of a linear regression Y ~ F Z + c, accumulated over rows (float64):
    every fit and error below is computed from them, never from the rows again."""

    def __init__(self, d: int, out: int):
        self.n = 0
        self.sf = np.zeros(d)
        self.sy = np.zeros(out)
        self.ff = np.zeros((d, d))
        self.fy = np.zeros((d, out))
        self.yy = np.zeros((out, out))

    def add(self, f: np.ndarray, y: np.ndarray) -> None:
        f = f.astype(np.float64, copy=False)
        y = y.astype(np.float64, copy=False)
        self.n += f.shape[0]
        self.sf += f.sum(0)
        self.sy += y.sum(0)
        self.ff += f.T @ f
        self.fy += f.T @ y
        self.yy += y.T @ y

    def __add__(self, other: LinearStats) -> LinearStats:
        s = LinearStats(0, 0)
        for k in ("n", "sf", "sy", "ff", "fy", "yy"):
            setattr(s, k, getattr(self, k) + getattr(other, k))
        return s

    def project(self, u: np.ndarray) -> LinearStats:
        """Statistics of the features F @ u."""
        s = LinearStats(0, 0)
        s.n, s.sy, s.yy = self.n, self.sy, self.yy
        s.sf = self.sf @ u
        s.ff = u.T @ self.ff @ u
        s.fy = u.T @ self.fy
        return s

    @property
    def centered(self):
        n = max(self.n, 1)
        mf, my = self.sf / n, self.sy / n
        g = self.ff - n * np.outer(mf, mf)
        h = self.fy - n * np.outer(mf, my)
        yc = self.yy - n * np.outer(my, my)
        return mf, my, g, h, yc

    def rel_error(self, z: np.ndarray, c: np.ndarray | None = None) -> float:
        """||Y - (F z + c)|| / ||Y - mean Y|| with c defaulting to the best constant."""
        n = max(self.n, 1)
        mf, my, g, h, yc = self.centered
        err = np.trace(yc) - 2 * np.sum(h * z) + np.sum(z * (g @ z))
        if c is not None:  # the offset's own error, added to the centered one
            off = my - mf @ z - c
            err += n * float(off @ off)
        denom = np.trace(yc)
        return float(math.sqrt(max(err, 0.0) / denom)) if denom > 0 else 0.0


def reduced_rank_fit(stats: LinearStats, z0: np.ndarray, rank: int, ridge: float):
    """The rank-``rank`` map F -> Y fitted on ``stats``, pulled towards ``z0`` by a ridge term
    ``ridge * tr(G)/d * ||Z - z0||^2``. Returns (A [d, r], B [r, out], c [out]) with
    Y ~ F A B + c: the ridge solution, projected onto the top principal directions of its outputs
    (the regularized output covariance), which is the exact reduced-rank solution."""
    return truncate_fit(principal_fit(stats, z0, ridge), rank)


def principal_fit(stats: LinearStats, z0: np.ndarray, ridge: float):
    """The rank-independent part of reduced_rank_fit: (ridge solution Z, principal directions of
    its outputs, best first, feature mean, output mean). A rank search truncates one of these
    instead of solving and diagonalizing again per rank."""
    mf, my, g, h, _ = stats.centered
    d = g.shape[0]
    lam = ridge * max(np.trace(g) / max(d, 1), 1e-30)
    greg = g + lam * np.eye(d)
    z = np.linalg.solve(greg, h + lam * z0)
    m = z.T @ greg @ z
    _, v = np.linalg.eigh((m + m.T) / 2)
    return z, v[:, ::-1], mf, my


def truncate_fit(fit, rank: int):
    """(A, B, c) of rank ``rank`` from principal_fit's result."""
    z, v, mf, my = fit
    p = v[:, :rank]
    a = z @ p
    b = p.T
    c = my - mf @ a @ b
    return a, b, c


def split_singular_values(a: np.ndarray, b: np.ndarray):
    """Rewrite the product a @ b (a [d, r], b [r, out]) as U sqrt(S), sqrt(S) V^T: the singular
    values split evenly between the factors, so neither carries the whole dynamic range."""
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(b.T)
    u, s, vt = np.linalg.svd(ra @ rb.T)
    root = np.sqrt(s)
    return (qa @ u) * root, root[:, None] * (vt @ qb.T)


# --------------------------------------------------------------------------------- the layers
@dataclass
class Layer:
    """A Gemm/MatMul/Conv seen as a linear map with a constant weight."""

    node: Node
    kind: str  # "fc" or "conv"
    weight: np.ndarray  # fc: [in, out] (transB and alpha applied); conv: [T, S, *k]
    bias: np.ndarray | None  # [out], or None
    bias_const: bool  # False when a bias exists but is not constant (no refit then)
    in_shape: tuple | None = None  # conv: input [N, S, *spatial]; fc: input shape
    out_shape: tuple | None = None
    geometry: WindowGeometry | None = None  # conv: strides, dilations, explicit pads (input shape known)
    rows: int = 1  # fc: rows per inference (product of the leading dims)

    @property
    def macs(self) -> int:
        if self.kind == "fc":
            return self.rows * self.weight.shape[0] * self.weight.shape[1]
        return int(np.prod(self.out_shape[2:])) * self.weight.size
