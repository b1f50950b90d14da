"""Low-rank factorization of Gemm/MatMul (truncated SVD) and Conv (Tucker-2 or CP) layers.

    fold-bn,lowrank(rank=budget,budget=0.05,calib=models/digits_calib.npz),dce

Every factorization is written as plain ONNX ops (two Gemm/MatMul, or three/four Convs), so the
result runs anywhere. Per layer:

* **rank choice** (``rank=``): ``ratio`` (each rank = ratio x its channel count), ``energy``
  (smallest ranks keeping that share of the squared singular values of the weight unfoldings),
  ``vbmf`` (empirical variational Bayes matrix factorization, Nakajima et al. 2013, on the
  unfoldings) or ``budget`` (the cheapest ranks whose layer-output error on held-out calibration
  images stays within ``budget``).
* **data-aware refit** (``refit=true`` with calibration data, seed 000's "matrix regression"): the
  factors are fitted to the layer's *outputs* on calibration data rather than to its weights. The
  inputs are those of the model compressed so far (so each layer corrects the drift of the layers
  before it), the targets the original layer's outputs. With fixed input-side factors this is a
  reduced-rank ridge regression with a closed form: ridge solution pulled towards the weight-only
  factors, then projection onto the top principal directions of the fitted outputs, and the mean
  residual folded into the bias.
* **keep rule**: a factorization is kept only when it divides the layer's MACs by at least
  ``min_mac_ratio`` and, with ``measure=true``, makes the layer faster in onnxruntime by
  ``min_speedup``.

Errors are relative Frobenius errors of the layer output over its spread around its mean:
``||Y - Y_hat|| / ||Y - mean(Y)||`` on the calibration images held out from the fit.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from passes.base import Pass, PassResult, register_pass
from passes.cleanup import is_onnx
from tvmlite.errors import OptionError
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.ir.shapes import static_shapes
from tvmlite.ops.conv import im2col, resolve_pads

RANK_RULES = ("ratio", "energy", "vbmf", "budget")
#: layer inputs captured per NumPy-backend run while no layer was rewritten: one run instead of one
#: per layer (107 whole-model prefix runs on PP-OCR rec), with at most this many inputs held
CAPTURE_AHEAD = 16
CAPTURE_BYTES = 256 * 2**20
CONV_METHODS = ("tucker", "cp")


# ------------------------------------------------------------------------------- activations
def capture_values(model: Model, names: list[str], feeds: dict) -> dict[str, np.ndarray]:
    """Run ``model`` on the NumPy backend and return the arrays of the named values."""
    from tvmlite.backends.numpy.plan import Plan

    import networkx as nx

    g = model.graph
    saved = list(g.outputs)
    g.outputs[:] = list(dict.fromkeys(list(names)))
    try:
        plan = Plan(g, model.opsets)
    finally:
        g.outputs[:] = saved
    # run only what the requested values depend on
    needed: set = set()
    for name in names:
        p = g.producer(name)
        if p is not None and p not in needed:
            needed |= nx.ancestors(g.nx, p) | {p}
    plan.steps = [st for st in plan.steps if st.node in needed]
    with np.errstate(all="ignore"):
        outs = plan.run(feeds)
    return dict(zip(plan.output_names, outs))


def capture_groups(model: Model, names: list[str], groups: list[dict]) -> dict[str, np.ndarray]:
    """capture_values over feed dicts that must run apart, stacked along the batch axis (0)."""
    runs = [capture_values(model, names, feeds) for feeds in groups]
    return runs[0] if len(runs) == 1 else {n: np.concatenate([r[n] for r in runs]) for n in runs[0]}


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
    pads: list | None = None  # conv: explicit pads, when the input shape is known
    rows: int = 1  # fc: rows per inference (product of the leading dims)

    @property
    def macs(self) -> int:
        if self.kind == "fc":
            return self.rows * self.weight.shape[0] * self.weight.shape[1]
        return int(np.prod(self.out_shape[2:])) * self.weight.size


def conv_attrs(node: Node, ndim: int) -> dict:
    a = node.attrs
    return {"strides": list(a.get("strides") or [1] * ndim), "dilations": list(a.get("dilations") or [1] * ndim),
            "kernel": list(a.get("kernel_shape") or []), "auto_pad": a.get("auto_pad", "NOTSET"),
            "pads": list(a.get("pads") or [0] * (2 * ndim))}


@register_pass
class LowRank(Pass):
    """Gemm/MatMul -> two thinner products (truncated SVD); Conv -> Tucker-2 or CP as plain Convs."""

    name = "lowrank"
    exclude_option = "exclude"
    calibration_option = "calib"

    @dataclass
    class Options:
        #: conv decomposition: tucker (1x1, kxk core, 1x1) or cp (1x1, kx1 and 1xk depthwise, 1x1)
        method: str = "tucker"
        #: rank choice: ratio, energy, vbmf or budget (needs calibration data)
        rank: str = "budget"
        ratio: float = 0.33
        energy: float = 0.95
        #: largest relative layer-output error allowed per layer (rank=budget)
        budget: float = 0.1
        #: fixed rank for Gemm/MatMul layers (0: by the rank rule)
        fc_rank: int = 0
        #: calibration inputs: .npz, directory of .npy, iterable of feed dicts, or CalibrationData
        calib: Any = None
        calib_count: int = 64
        #: fit the factors to the layer outputs on calibration data instead of to the weights
        refit: bool = True
        #: pull of the refit towards the weight-only factors, relative to the mean feature variance
        ridge: float = 0.01
        #: keep a factorization only when it divides the layer's MACs by at least this
        min_mac_ratio: float = 1.25
        #: leave layers with less than this share of the model's MACs alone: factorizing them saves
        #: nothing that matters and spends accuracy (typically the classifier and the first conv)
        min_layer_share: float = 0.01
        #: also time each layer in onnxruntime and keep it only when faster by min_speedup
        measure: bool = False
        min_speedup: float = 1.1
        #: only these nodes (names or labels, "|"-separated in spec strings); empty: every eligible layer
        layers: list[str] = ()
        #: node names to leave alone (checked pipelines undo single layers through it)
        exclude: list[str] = ()
        #: largest number of conv output positions per image batch used for the statistics
        max_rows: int = 8192
        seed: int = 0

    def replay(self, result: PassResult, exclude: list[str]) -> Pass:
        """The layers this run factorized, without timing them again, minus ``exclude``."""
        kept = list(dict.fromkeys(result.rewritten))
        if not kept:
            return super().replay(result, exclude)
        return type(self)(**{**self.option_values(), "layers": kept, "measure": False,
                             "exclude": list(self.options.exclude) + list(exclude)})

    def _check_options(self) -> None:
        o = self.options
        if o.method not in CONV_METHODS:
            raise OptionError(f"lowrank: method={o.method!r} (choose {', '.join(CONV_METHODS)})")
        if o.rank not in RANK_RULES:
            raise OptionError(f"lowrank: rank={o.rank!r} (choose {', '.join(RANK_RULES)})")
        if not 0 < o.ratio <= 1:
            raise OptionError(f"lowrank: ratio={o.ratio} must be in (0, 1]")
        if not 0 < o.energy <= 1:
            raise OptionError(f"lowrank: energy={o.energy} must be in (0, 1]")
        if o.budget <= 0:
            raise OptionError(f"lowrank: budget={o.budget} must be positive")
        if o.min_mac_ratio <= 0:
            raise OptionError(f"lowrank: min_mac_ratio={o.min_mac_ratio} must be positive")
        if o.fc_rank < 0 or o.calib_count < 2 or o.ridge < 0 or not 0 <= o.min_layer_share < 1:
            raise OptionError("lowrank: fc_rank, ridge must be >= 0, calib_count >= 2, "
                              "0 <= min_layer_share < 1")

    # ------------------------------------------------------------------------------------ run
    def run(self, model: Model) -> PassResult:
        self._check_options()
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        # refits need real data: on random inputs (budget without calib) the factors stay weight-only
        need_data = o.rank == "budget" or o.calib is not None
        self._real_data = o.calib is not None
        calib = data = None
        if need_data:
            from tvmlite.calibration import load_calibration

            with warnings.catch_warnings():
                warnings.simplefilter("always")
                calib = load_calibration(o.calib, model, random_count=4, seed=o.seed)
            data = calib.groups(o.calib_count)  # several when shared inputs (a gain) differ
        # shapes at batch 1 as the data has them: symbolic H/W set to 1 would time and count
        # layers on 1x1 images (an unpadded 3x3 conv has no output there)
        shapes = static_shapes(model, None if data is None else
                               {k: np.shape(v) for k, v in calib.take(data[0], 1).items()})
        layers = []
        for node in g.toposort():
            if node.subgraphs:
                result.skip(node, f"{node.op_type} subgraph not looked into: left intact")
            if not is_onnx(node, "Gemm", "MatMul", "Conv"):
                continue
            if o.layers and node.name not in o.layers and node.label not in o.layers:
                continue
            if node.name in o.exclude or node.label in o.exclude:
                result.skip(node, "excluded by option")
                continue
            layer = self._layer(model, node, shapes, result)
            if layer is not None:
                layers.append(layer)
        from tvmlite.analysis import node_macs

        total = sum(node_macs(model, n, shapes) for n in g.nx.nodes) or 1
        small = [l for l in layers if l.macs < o.min_layer_share * total]
        for l in small:
            why = (f"{l.macs:,} MACs are {l.macs / total:.2%} of the model's, below min_layer_share "
                   f"{o.min_layer_share:g}")
            result.skip(l.node, why)
            result.decisions.append({"node": l.node.label, "kept": False, "reason": why})
        layers = [l for l in layers if l.macs >= o.min_layer_share * total]
        if not layers:
            return result

        if data is not None:
            n_img = sum(calib.count(d) for d in data)
            if n_img < 2:
                raise OptionError("lowrank: need at least 2 calibration examples (to hold one out)")
            # targets: every layer's output in the original model
            targets = capture_groups(model, [l.node.outputs[0] for l in layers], data)
            self._n_img = n_img
            self._n_fit = max(1, int(round(n_img * 0.75)))
        rng = np.random.default_rng(o.seed)

        # layer inputs come from the model compressed so far; until the next rewrite they are
        # those of one run, so the next CAPTURE_AHEAD layers' inputs are captured together
        inputs: dict = {}
        for i, layer in enumerate(layers):
            node = layer.node
            stats = None
            if data is not None:
                if node.inputs[0] not in inputs:
                    ahead, size = [], 0
                    for later in layers[i:]:
                        size += n_img * 4 * int(np.prod(later.in_shape or (1,)))
                        if ahead and (len(ahead) >= CAPTURE_AHEAD or size > CAPTURE_BYTES):
                            break
                        ahead.append(later.node.inputs[0])
                    inputs = capture_groups(model, list(dict.fromkeys(ahead)), data)
                stats = self._stats(layer, inputs[node.inputs[0]], targets[node.outputs[0]], rng)
            try:
                plan = self._plan(model, layer, stats)
            except np.linalg.LinAlgError as e:
                result.skip(node, f"factorization failed: {e}")
                continue
            if isinstance(plan, str):
                result.skip(node, plan)
                result.decisions.append({"node": node.label, "kept": False, "reason": plan})
                continue
            if o.measure:
                try:
                    speed = self._measure(model, layer, plan)
                except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
                    why = f"cannot time the layer in onnxruntime at shape {layer.in_shape}: " + \
                          (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    result.skip(node, why)
                    result.decisions.append({"node": node.label, "kept": False, "reason": why})
                    continue
                plan["speedup"] = round(speed, 3)
                if speed < o.min_speedup:
                    why = (f"onnxruntime speedup {speed:.2f}x < min_speedup {o.min_speedup} "
                           f"(ranks {plan['ranks']})")
                    result.skip(node, why)
                    result.decisions.append({"node": node.label, "kept": False, "reason": why,
                                             **self._summary(plan, layer)})
                    continue
            self._rewrite(g, layer, plan, model.opset)
            inputs = {}  # what follows now reads the factorized layer's outputs
            result.rewrote(node, kept=True, **self._summary(plan, layer))
        if result.changed:
            g.remove_unused_values()
        result.stats["factorized"] = len(result.rewritten)
        return result

    @staticmethod
    def _summary(plan: dict, layer: Layer) -> dict:
        keys = ("method", "ranks", "params_before", "params_after", "macs_before", "macs_after",
                "error", "error_weights_only", "weight_error", "speedup")
        return {k: plan[k] for k in keys if k in plan}

    # ------------------------------------------------------------------------ layer discovery
    def _layer(self, model: Model, node: Node, shapes: dict, result: PassResult) -> Layer | None:
        g = model.graph
        if node.op_type == "Conv":
            w = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if w is None:
                result.skip(node, "weight is not constant")
                return None
            if w.dtype.kind != "f":
                result.skip(node, f"weight dtype {w.dtype} is not floating point")
                return None
            if int(node.attrs.get("group", 1)) != 1:
                result.skip(node, f"grouped conv (group={node.attrs.get('group')}): the factors would "
                                  "have to respect the groups")
                return None
            b_name = node.inputs[2] if len(node.inputs) > 2 else ""
            b = g.const_value(b_name) if b_name else None
            xs, ys = shapes.get(node.inputs[0]), shapes.get(node.outputs[0])
            if xs is None or ys is None or len(xs) != w.ndim:
                result.skip(node, "input/output shapes unknown")
                return None
            a = conv_attrs(node, w.ndim - 2)
            pads = resolve_pads(a["auto_pad"], xs[2:], w.shape[2:], a["strides"], a["dilations"], a["pads"])
            return Layer(node, "conv", w, b, not (b_name and b is None), tuple(xs), tuple(ys), pads)
        # Gemm / MatMul
        w = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None:
            why = ("weight (second input) is not constant" if g.const_value(node.inputs[0]) is None
                   else "constant on the left of the product is not supported")
            result.skip(node, why)
            return None
        if w.ndim != 2:
            result.skip(node, f"weight has rank {w.ndim}, not 2")
            return None
        if w.dtype.kind != "f":
            result.skip(node, f"weight dtype {w.dtype} is not floating point")
            return None
        xs = shapes.get(node.inputs[0])
        if node.op_type == "Gemm":
            if model.opset < 7:
                result.skip(node, "Gemm before opset 7 (broadcast attribute)")
                return None
            wt = w.T if node.attrs.get("transB", 0) else w
            wt = wt * np.asarray(node.attrs.get("alpha", 1.0), wt.dtype)
            c_name = node.inputs[2] if len(node.inputs) > 2 else ""
            c = g.const_value(c_name) if c_name else None
            beta = float(node.attrs.get("beta", 1.0))
            if c is not None:
                c = c.astype(np.float64) * beta
                if c.ndim > 1 and c.shape[0] != 1:  # a per-row C passes through unchanged, no refit
                    return Layer(node, "fc", wt, None, False, xs, shapes.get(node.outputs[0]),
                                 rows=int(xs[0]) if xs else 1)
                c = np.broadcast_to(c.reshape(-1), (wt.shape[1],)).copy()
            rows = (xs[1] if node.attrs.get("transA", 0) else xs[0]) if xs else 1
            return Layer(node, "fc", wt, c, not (c_name and c is None), xs, shapes.get(node.outputs[0]),
                         rows=int(rows))
        rows = int(np.prod(xs[:-1])) if xs and len(xs) > 1 else 1
        return Layer(node, "fc", w, None, True, xs, shapes.get(node.outputs[0]), rows=rows)

    # ---------------------------------------------------------------------------- statistics
    def _features(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """Rows of the layer's input as its weight sees them: [rows, in] or im2col patches."""
        if layer.kind == "fc":
            if layer.node.op_type == "Gemm" and layer.node.attrs.get("transA", 0):
                x = x.T
            return x.reshape(-1, layer.weight.shape[0])
        a = conv_attrs(layer.node, layer.weight.ndim - 2)
        cols = im2col(x, layer.weight.shape[2:], a["strides"], a["dilations"], layer.pads)
        return cols.transpose(0, 2, 1)  # [N, P, S*K]

    def _stats(self, layer: Layer, x: np.ndarray, y: np.ndarray, rng) -> tuple[LinearStats, LinearStats]:
        """(fit, held-out) statistics; images after the first 75% are held out."""
        n_fit = self._n_fit
        if layer.kind == "fc":
            out = layer.weight.shape[1]
            f = self._features(layer, x)
            t = y.reshape(-1, out)
            n_img = self._n_img
            if f.shape[0] % n_img == 0:  # rows of the first 75% of the examples
                split = n_fit * (f.shape[0] // n_img)
            else:
                split = int(f.shape[0] * 0.75)
            fit, held = LinearStats(f.shape[1], out), LinearStats(f.shape[1], out)
            fit.add(f[:split], t[:split])
            if split < f.shape[0]:
                held.add(f[split:], t[split:])
            return fit, held
        T = layer.weight.shape[0]
        f = self._features(layer, x)  # [N, P, D]
        t = y.reshape(y.shape[0], T, -1).transpose(0, 2, 1)  # [N, P, T]
        P = f.shape[1]
        take = None
        per_image = max(1, self.options.max_rows // max(x.shape[0], 1))
        if P > per_image:
            take = np.sort(rng.choice(P, per_image, replace=False))
        stats = []
        for part in (slice(0, n_fit), slice(n_fit, None)):
            fp, tp = f[part], t[part]
            if take is not None:
                fp, tp = fp[:, take], tp[:, take]
            s = LinearStats(f.shape[2], T)
            if fp.shape[0]:
                s.add(fp.reshape(-1, f.shape[2]), tp.reshape(-1, T))
            stats.append(s)
        return stats[0], stats[1]

    # ----------------------------------------------------------------------------- planning
    def _plan(self, model: Model, layer: Layer, stats) -> dict | str:
        if layer.kind == "fc":
            return self._plan_fc(layer, stats)
        k = layer.weight.shape[2:]
        if all(d == 1 for d in k):
            return self._plan_fc_conv1x1(layer, stats)
        if self.options.method == "cp":
            if layer.weight.ndim != 4:
                return f"CP needs a 2-D conv (this one has {layer.weight.ndim - 2} spatial dims); use method=tucker"
            declared = model.graph.value(layer.node.inputs[0]).shape
            if layer.node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") and (
                    declared is None or not all(isinstance(d, int) for d in declared[2:])):
                return "CP splits the padding per axis: auto_pad SAME needs static spatial dims"
            return self._plan_cp(layer, stats)
        return self._plan_tucker(layer, stats)

    def _fits_refit(self, layer: Layer, stats) -> bool:
        return bool(self.options.refit and stats is not None and layer.bias_const and self._real_data)

    # .................................................................................. SVD
    def _plan_fc(self, layer: Layer, stats) -> dict | str:
        o = self.options
        w = layer.weight.astype(np.float64)  # [in, out]
        d_in, d_out = w.shape
        full = min(d_in, d_out)
        max_r = int((d_in * d_out / o.min_mac_ratio) // (d_in + d_out))
        if max_r < 1:
            return f"no rank divides MACs by min_mac_ratio {o.min_mac_ratio} ({d_in}x{d_out})"
        refit = self._fits_refit(layer, stats)
        svd: list = []  # the weights' SVD, computed when first needed (a refit needs it only for the report)
        fits: dict = {}  # id(stats) -> (stats, principal_fit): one solve + eigh per statistics, not per rank

        def weight_svd():
            if not svd:
                svd.extend(np.linalg.svd(w, full_matrices=False))
            return svd

        def factors(r, st):
            if refit:
                if id(st) not in fits:
                    fits[id(st)] = (st, principal_fit(st, w, o.ridge))
                return truncate_fit(fits[id(st)][1], r)
            u, s, vt = weight_svd()
            return u[:, :r] * s[:r], vt[:r], None

        def held_error(r):
            fit, held = stats
            a, b, c = factors(r, fit)
            ev = held if held.n else fit
            return ev.rel_error(a @ b, c if c is not None else self._bias_offset(layer))

        if o.fc_rank:
            r = o.fc_rank
        elif o.rank == "ratio":
            r = max(1, math.ceil(o.ratio * full))
        elif o.rank == "energy":
            r = energy_rank(w, o.energy)
        elif o.rank == "vbmf":
            r = max(1, evbmf_rank(w))
        else:
            r = self._search_1d(held_error, 1, max_r)
            if r is None:
                return (f"no rank <= {max_r} keeps the layer-output error within budget {o.budget} "
                        f"(rank {max_r}: {held_error(max_r):.3g})")
        r = min(r, full)
        if r > max_r:
            return f"rank {r} would not divide MACs by min_mac_ratio {o.min_mac_ratio} (largest useful {max_r})"
        all_stats = (stats[0] + stats[1]) if stats is not None else None
        a, b, c = factors(r, all_stats) if refit else factors(r, None)
        a, b = split_singular_values(a, b)
        plan = {"method": "svd", "ranks": [r], "A": a, "B": b, "c": c, "refit": refit,
                "params_before": w.size, "params_after": a.size + b.size,
                "macs_before": layer.macs, "macs_after": layer.rows * r * (d_in + d_out),
                "weight_error": float(np.linalg.norm(w - a @ b) / np.linalg.norm(w))}
        if stats is not None:
            plan["error"] = round(held_error(r), 5)
            if refit:
                ev = stats[1] if stats[1].n else stats[0]
                u, s, vt = weight_svd()
                plan["error_weights_only"] = round(
                    ev.rel_error((u[:, :r] * s[:r]) @ vt[:r], self._bias_offset(layer)), 5)
        return plan

    def _bias_offset(self, layer: Layer):
        """The offset a weight-only factorization adds: the original bias (targets include it)."""
        if layer.bias is not None:
            return layer.bias
        return np.zeros(layer.weight.shape[1] if layer.kind == "fc" else layer.weight.shape[0])

    def _search_1d(self, error_of, lo: int, hi: int) -> int | None:
        """Smallest r in [lo, hi] with error_of(r) <= budget (error taken as decreasing in r)."""
        budget = self.options.budget
        if error_of(hi) > budget:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if error_of(mid) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def _plan_fc_conv1x1(self, layer: Layer, stats) -> dict | str:
        """A 1x1 conv is a product over channels: SVD, written as two 1x1 convs."""
        w = layer.weight
        fc = Layer(layer.node, "fc", w.reshape(w.shape[0], w.shape[1]).T, layer.bias, layer.bias_const,
                   rows=int(np.prod(layer.out_shape[2:])))
        plan = self._plan_fc(fc, stats)
        if isinstance(plan, dict):
            plan["method"] = "svd-1x1"
            plan["macs_before"] = layer.macs
            plan["macs_after"] = (int(np.prod(layer.out_shape[2:])) * plan["ranks"][0]
                                  * (w.shape[0] + w.shape[1]))
            if plan["macs_before"] < self.options.min_mac_ratio * plan["macs_after"]:
                return "factorization does not cut MACs by min_mac_ratio"
        return plan

    # ............................................................................... Tucker-2
    def _tucker_macs(self, layer: Layer, r3: int, r4: int) -> int:
        T, S = layer.weight.shape[:2]
        kk = int(np.prod(layer.weight.shape[2:]))
        hw_in = int(np.prod(layer.in_shape[2:]))
        hw_out = int(np.prod(layer.out_shape[2:]))
        return hw_in * S * r3 + hw_out * r4 * r3 * kk + hw_out * T * r4

    def _plan_tucker(self, layer: Layer, stats) -> dict | str:
        o = self.options
        w = layer.weight.astype(np.float64)
        T, S = w.shape[:2]
        kshape = w.shape[2:]
        kk = int(np.prod(kshape))
        unfold0 = w.reshape(T, -1)
        unfold1 = w.transpose(1, 0, *range(2, w.ndim)).reshape(S, -1)
        refit = self._fits_refit(layer, stats)
        budget_limit = layer.macs / o.min_mac_ratio
        cache: dict = {}
        projected: dict = {}
        # the refit keeps the input factor of the weights' HOSVD: one eigendecomposition per layer,
        # any r3 is a slice of it; the core and the output factor come from the data
        us_all = gram_svd(unfold1)[0] if refit else None

        def decompose(r3, r4, st):
            key = (r3, r4, id(st))
            if key in cache:
                return cache[key]
            if refit and st is not None:
                us = us_all[:, :r3]
                if (r3, id(st)) not in projected:
                    u_feat = np.kron(us, np.eye(kk))  # [S*kk, r3*kk]: patches of the reduced input
                    projected[r3, id(st)] = st.project(u_feat)
                z0 = np.tensordot(w, us, axes=([1], [0]))  # [T, *k, r3]
                z0 = np.moveaxis(z0, -1, 1).reshape(T, -1).T  # [r3*kk, T]
                a, b, c = reduced_rank_fit(projected[r3, id(st)], z0, r4, o.ridge)
                core, ut = a.T.reshape((r4, r3) + kshape), b.T
            else:
                core, ut, us = tucker2(w, r4, r3)
                c = None
            cache[key] = (core, ut, us, c)
            return cache[key]

        def full_weight(core, ut, us):
            return np.einsum("ab...,ta,sb->ts...", core, ut, us, optimize=True)

        def held_error(r3, r4):
            fit, held = stats
            core, ut, us, c = decompose(r3, r4, fit)
            z = full_weight(core, ut, us).reshape(T, -1).T
            ev = held if held.n else fit
            return ev.rel_error(z, c if c is not None else self._bias_offset(layer))

        if o.rank == "ratio":
            r3, r4 = max(1, math.ceil(o.ratio * S)), max(1, math.ceil(o.ratio * T))
        elif o.rank == "energy":
            r3, r4 = energy_rank(unfold1, o.energy), energy_rank(unfold0, o.energy)
        elif o.rank == "vbmf":
            r3, r4 = max(1, evbmf_rank(unfold1)), max(1, evbmf_rank(unfold0))
        else:
            found = self._search_2d(layer, held_error, S, T, budget_limit)
            if isinstance(found, str):
                return found
            r3, r4 = found
        r3, r4 = min(r3, S), min(r4, T)
        macs = self._tucker_macs(layer, r3, r4)
        if macs > budget_limit:
            return (f"Tucker ranks ({r3}, {r4}) give {macs:,} MACs, not {o.min_mac_ratio}x fewer than "
                    f"{layer.macs:,}")
        all_stats = (stats[0] + stats[1]) if stats is not None else None
        core, ut, us, c = decompose(r3, r4, all_stats if refit else None)
        approx = full_weight(core, ut, us)
        plan = {"method": "tucker2", "ranks": [r3, r4], "core": core, "ut": ut, "us": us, "c": c,
                "refit": refit, "params_before": w.size, "params_after": core.size + ut.size + us.size,
                "macs_before": layer.macs, "macs_after": macs,
                "weight_error": float(np.linalg.norm(w - approx) / np.linalg.norm(w))}
        if stats is not None:
            plan["error"] = round(held_error(r3, r4), 5)
            if refit:
                ev = stats[1] if stats[1].n else stats[0]
                core0, ut0, us0, _ = decompose(r3, r4, None)
                plan["error_weights_only"] = round(ev.rel_error(
                    full_weight(core0, ut0, us0).reshape(T, -1).T, self._bias_offset(layer)), 5)
        return plan

    def _search_2d(self, layer: Layer, error_of, S: int, T: int, mac_limit: float):
        """Cheapest (r3, r4) within budget: a binary search on a shared fraction of the channel
        counts, then greedy steps that lower one rank at a time while the error stays in budget."""
        budget = self.options.budget
        steps = 32

        def ranks(i):
            return max(1, math.ceil(S * i / steps)), max(1, math.ceil(T * i / steps))

        hi = None
        for i in range(steps, 0, -1):  # the largest fraction that still saves enough MACs
            if self._tucker_macs(layer, *ranks(i)) <= mac_limit:
                hi = i
                break
        if hi is None:
            return "no Tucker ranks divide MACs by min_mac_ratio"
        err_hi = error_of(*ranks(hi))
        if err_hi > budget:
            return (f"no Tucker ranks within MAC limit keep the layer-output error within budget "
                    f"{budget} (ranks {ranks(hi)}: {err_hi:.3g})")
        lo = 1
        while lo < hi:
            mid = (lo + hi) // 2
            if error_of(*ranks(mid)) <= budget:
                hi = mid
            else:
                lo = mid + 1
        r3, r4 = ranks(hi)
        step3, step4 = max(1, S // steps), max(1, T // steps)
        improved = True
        while improved:
            improved = False
            options = []
            for n3, n4 in ((r3 - step3, r4), (r3, r4 - step4)):
                if n3 >= 1 and n4 >= 1 and error_of(n3, n4) <= budget:
                    options.append((self._tucker_macs(layer, n3, n4), n3, n4))
            if options:
                _, r3, r4 = min(options)
                improved = True
        return r3, r4

    # ..................................................................................... CP
    def _cp_macs(self, layer: Layer, r: int) -> int:
        T, S, kh, kw = layer.weight.shape
        hi, wi = layer.in_shape[2:]
        ho, wo = layer.out_shape[2:]
        return hi * wi * S * r + ho * wi * r * kh + ho * wo * r * kw + ho * wo * r * T

    def _plan_cp(self, layer: Layer, stats) -> dict | str:
        from tensorly.decomposition import parafac

        o = self.options
        w = layer.weight.astype(np.float64)
        T, S, kh, kw = w.shape
        refit = self._fits_refit(layer, stats)
        mac_limit = layer.macs / o.min_mac_ratio
        cache: dict = {}

        def decompose(r, st):
            key = (r, id(st))
            if key in cache:
                return cache[key]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cp = parafac(w, rank=r, init="svd", svd=gram_svd, n_iter_max=200, random_state=o.seed)
            lam = np.asarray(cp.weights)
            last, first, vert, horiz = (np.asarray(f) for f in cp.factors)
            last = last * lam
            c = None
            if refit and st is not None:
                kern = np.einsum("sr,ir,jr->sijr", first, vert, horiz, optimize=True).reshape(-1, r)  # [S*kh*kw, r]
                pst = st.project(kern)
                # the last 1x1 conv and bias refitted to the outputs: a ridge regression
                mf, my, gm, h, _ = pst.centered
                ridge = o.ridge * max(np.trace(gm) / r, 1e-30)
                last = np.linalg.solve(gm + ridge * np.eye(r), h + ridge * last.T).T
                c = my - mf @ last.T
            cache[key] = (last, first, vert, horiz, c)
            return cache[key]

        def full_weight(last, first, vert, horiz):
            return np.einsum("tr,sr,ir,jr->tsij", last, first, vert, horiz, optimize=True)

        def held_error(r):
            fit, held = stats
            last, first, vert, horiz, c = decompose(r, fit)
            ev = held if held.n else fit
            return ev.rel_error(full_weight(last, first, vert, horiz).reshape(T, -1).T,
                                c if c is not None else self._bias_offset(layer))

        max_r = 0
        for r in range(min(S * kh * kw, T * kh * kw), 0, -1):
            if self._cp_macs(layer, r) <= mac_limit:
                max_r = r
                break
        if max_r < 1:
            return "no CP rank divides MACs by min_mac_ratio"
        if o.rank == "ratio":
            r = max(1, math.ceil(o.ratio * min(S, T)))
        elif o.rank == "energy":
            r = max(energy_rank(w.reshape(T, -1), o.energy),
                    energy_rank(w.transpose(1, 0, 2, 3).reshape(S, -1), o.energy))
        elif o.rank == "vbmf":
            r = max(1, evbmf_rank(w.reshape(T, -1)), evbmf_rank(w.transpose(1, 0, 2, 3).reshape(S, -1)))
        else:
            r = self._search_1d(held_error, 1, max_r)
            if r is None:
                return (f"no CP rank <= {max_r} keeps the layer-output error within budget {o.budget}")
        if r > max_r:
            return f"CP rank {r} would not divide MACs by min_mac_ratio {o.min_mac_ratio} (largest useful {max_r})"
        all_stats = (stats[0] + stats[1]) if stats is not None else None
        last, first, vert, horiz, c = decompose(r, all_stats if refit else None)
        approx = full_weight(last, first, vert, horiz)
        plan = {"method": "cp", "ranks": [r], "last": last, "first": first, "vert": vert, "horiz": horiz,
                "c": c, "refit": refit, "params_before": w.size,
                "params_after": last.size + first.size + vert.size + horiz.size,
                "macs_before": layer.macs, "macs_after": self._cp_macs(layer, r),
                "weight_error": float(np.linalg.norm(w - approx) / np.linalg.norm(w))}
        if stats is not None:
            plan["error"] = round(held_error(r), 5)
            if refit:
                ev = stats[1] if stats[1].n else stats[0]
                l0, f0, v0, h0, _ = decompose(r, None)
                plan["error_weights_only"] = round(ev.rel_error(
                    full_weight(l0, f0, v0, h0).reshape(T, -1).T, self._bias_offset(layer)), 5)
        return plan

    # -------------------------------------------------------------------------------- rewrite
    def _nodes(self, g: Graph, layer: Layer, plan: dict, opset: int) -> tuple[list, list]:
        """(node specs, new initializers {name: array}) of the factorized layer; names are fresh."""
        node = layer.node
        dtype = layer.weight.dtype
        base = node.name or node.op_type.lower()
        consts: dict[str, np.ndarray] = {}
        taken: set = {n.name for n in g.nx.nodes}  # node names too: onnxruntime refuses duplicates

        def const(arr, suffix):
            name = g.fresh_name(f"{base}_{suffix}")
            while name in taken:
                name = g.fresh_name(f"{name}_")
            taken.add(name)
            consts[name] = np.ascontiguousarray(np.asarray(arr).astype(dtype))
            return name

        def tmp(suffix):
            name = g.fresh_name(f"{base}_{suffix}")
            while name in taken:
                name = g.fresh_name(f"{name}_")
            taken.add(name)
            return name

        x, y = node.inputs[0], node.outputs[0]
        out = tmp("lr_out")
        specs = []
        c = plan.get("c")
        if plan["method"] in ("svd", "svd-1x1"):
            a, b = plan["A"], plan["B"]  # [in, r], [r, out]
            r = a.shape[1]
            bias = layer.bias if c is None else c
            h = tmp("lr_mid")
            if plan["method"] == "svd-1x1":
                attrs = dict(node.attrs)
                attrs["kernel_shape"] = [1] * (layer.weight.ndim - 2)
                specs.append(("Conv", [x, const(a.T.reshape((r, -1) + (1,) * (layer.weight.ndim - 2)), "lr_U")],
                              [h], attrs, {"name": tmp(f"{base}_lr_a")}))
                ins = [h, const(b.T.reshape(b.shape[1], r, *([1] * (layer.weight.ndim - 2))), "lr_V")]
                if bias is not None:
                    ins.append(const(bias, "lr_B"))
                specs.append(("Conv", ins, [out], {}, {"name": tmp(f"{base}_lr_b")}))
            elif node.op_type == "Gemm":
                t_a = int(node.attrs.get("transA", 0))
                ins = [x, const(a.T, "lr_U")]
                if opset < 11:
                    ins.append(const(np.zeros(r), "lr_zero"))
                specs.append(("Gemm", ins, [h], {"transA": t_a, "transB": 1}, {"name": tmp(f"{base}_lr_a")}))
                ins = [h, const(b.T, "lr_V")]
                c_name = node.inputs[2] if len(node.inputs) > 2 else ""
                if c is not None:
                    ins.append(const(c, "lr_B"))
                elif c_name and layer.bias is not None:
                    ins.append(const(layer.bias, "lr_B"))
                elif c_name:  # a non-constant C passes through as it was
                    ins.append(c_name)
                    specs.append(("Gemm", ins, [out], {"transB": 1, "beta": float(node.attrs.get("beta", 1.0))},
                                  {"name": tmp(f"{base}_lr_b")}))
                    return specs, consts, out
                elif opset < 11:
                    ins.append(const(np.zeros(b.shape[1]), "lr_zero"))
                specs.append(("Gemm", ins, [out], {"transB": 1}, {"name": tmp(f"{base}_lr_b")}))
            else:  # MatMul
                specs.append(("MatMul", [x, const(a, "lr_U")], [h], {}, {"name": tmp(f"{base}_lr_a")}))
                if c is not None and np.any(c):
                    h2 = tmp("lr_mm")
                    specs.append(("MatMul", [h, const(b, "lr_V")], [h2], {}, {"name": tmp(f"{base}_lr_b")}))
                    specs.append(("Add", [h2, const(c, "lr_B")], [out], {}, {"name": tmp(f"{base}_lr_bias")}))
                else:
                    specs.append(("MatMul", [h, const(b, "lr_V")], [out], {}, {"name": tmp(f"{base}_lr_b")}))
            return specs, consts, out

        nd = layer.weight.ndim - 2
        a = conv_attrs(node, nd)
        one = [1] * nd
        # with a refit, c is the whole offset (the targets include the original bias)
        bias = layer.bias if c is None else c
        if plan["method"] == "tucker2":
            core, ut, us = plan["core"], plan["ut"], plan["us"]
            r3, r4 = us.shape[1], ut.shape[1]
            h1, h2 = tmp("lr_in"), tmp("lr_core")
            specs.append(("Conv", [x, const(us.T.reshape((r3, -1) + (1,) * nd), "lr_first")], [h1],
                          {"kernel_shape": one}, {"name": tmp(f"{base}_lr_first")}))
            core_attrs = {"kernel_shape": list(core.shape[2:]), "strides": a["strides"],
                          "dilations": a["dilations"]}
            if a["auto_pad"] not in ("NOTSET", b"NOTSET", ""):
                core_attrs["auto_pad"] = a["auto_pad"]
            else:
                core_attrs["pads"] = a["pads"]
            specs.append(("Conv", [h1, const(core, "lr_core")], [h2], core_attrs,
                          {"name": tmp(f"{base}_lr_core")}))
            ins = [h2, const(ut.reshape(ut.shape + (1,) * nd), "lr_last")]
            if bias is not None:
                ins.append(const(bias, "lr_B"))
            specs.append(("Conv", ins, [out], {"kernel_shape": one}, {"name": tmp(f"{base}_lr_last")}))
            return specs, consts, out
        # CP: 1x1 S->R, depthwise kh x 1 (stride/dilation/pads of H), depthwise 1 x kw, 1x1 R->T
        last, first, vert, horiz = plan["last"], plan["first"], plan["vert"], plan["horiz"]
        r = first.shape[1]
        kh, kw = vert.shape[0], horiz.shape[0]
        h1, h2, h3 = tmp("lr_in"), tmp("lr_v"), tmp("lr_h")
        specs.append(("Conv", [x, const(first.T.reshape(r, -1, 1, 1), "lr_first")], [h1],
                      {"kernel_shape": [1, 1]}, {"name": tmp(f"{base}_lr_first")}))
        p = layer.pads  # explicit [top, left, bottom, right]: each depthwise pads its own axis
        specs.append(("Conv", [h1, const(vert.T.reshape(r, 1, kh, 1), "lr_vert")], [h2],
                      {"kernel_shape": [kh, 1], "group": r, "strides": [a["strides"][0], 1],
                       "dilations": [a["dilations"][0], 1], "pads": [p[0], 0, p[2], 0]},
                      {"name": tmp(f"{base}_lr_vert")}))
        specs.append(("Conv", [h2, const(horiz.T.reshape(r, 1, 1, kw), "lr_horiz")], [h3],
                      {"kernel_shape": [1, kw], "group": r, "strides": [1, a["strides"][1]],
                       "dilations": [1, a["dilations"][1]], "pads": [0, p[1], 0, p[3]]},
                      {"name": tmp(f"{base}_lr_horiz")}))
        ins = [h3, const(last.reshape(last.shape[0], r, 1, 1), "lr_last")]
        if bias is not None:
            ins.append(const(bias, "lr_B"))
        specs.append(("Conv", ins, [out], {"kernel_shape": [1, 1]}, {"name": tmp(f"{base}_lr_last")}))
        return specs, consts, out

    def _rewrite(self, g: Graph, layer: Layer, plan: dict, opset: int) -> None:
        specs, consts, out = self._nodes(g, layer, plan, opset)
        for name, arr in consts.items():
            g.add_initializer(name, arr)
        g.replace_node_with(layer.node, specs, outputs=[out])

    # -------------------------------------------------------------------------------- measure
    def _measure(self, model: Model, layer: Layer, plan: dict, repeats: int = 30) -> float:
        """Median onnxruntime time of the original layer over the factorized one, alone, batch as in
        the model's static shapes, timed interleaved."""
        from onnx import helper, numpy_helper

        from tvmlite.compare import ort_session
        from tvmlite.quant.timing import timed_ratio

        node = layer.node
        g = model.graph
        x = node.inputs[0]
        xshape = list(layer.in_shape) if layer.in_shape else None
        if xshape is None:
            return float("inf")
        dtype = layer.weight.dtype
        elem = helper.np_dtype_to_tensor_dtype(dtype)

        def single(nodes_specs, inits):
            nodes = []
            for spec in nodes_specs:
                op, ins, outs, attrs = spec[:4]
                nodes.append(helper.make_node(op, ins, outs, **attrs))
            graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(x, elem, xshape)],
                                      [helper.make_tensor_value_info(nodes_specs[-1][2][0], elem, None)],
                                      [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
            m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(model.opset, 11))])
            m.ir_version = 8
            return m

        orig_inits = {n: g.const_value(n) for n in node.inputs[1:] if n}
        orig_inits = {n: a for n, a in orig_inits.items() if a is not None}
        attrs = {k: v for k, v in node.attrs.items()}
        orig = single([(node.op_type, list(node.inputs), [node.outputs[0]], attrs)], orig_inits)
        scratch = Graph("scratch")
        specs, consts, _ = self._nodes(scratch, layer, plan, max(model.opset, 11))
        new = single(specs, consts)
        feeds = {x: np.random.default_rng(0).standard_normal(xshape).astype(dtype)}
        s0, s1 = ort_session(orig, threads=2), ort_session(new, threads=2)
        # more rounds only where the speedup is close to min_speedup
        t0, t1, _ = timed_ratio(lambda: s0.run(None, feeds), lambda: s1.run(None, feeds),
                                self.options.min_speedup, max_rounds=repeats, warmup=3)
        return float(t0 / max(t1, 1e-12))

