"""Per-output error metrics for checks: scale-robust, NaN-aware, mask-aware.

For one output, the reference and candidate values over all check batches give:

- ``rel``: max|cand - ref| / (max ref - min ref), the largest error against the output's own spread
  (the default metric: a box moved by 3 px out of a 0..320 range is 0.009 whatever other outputs
  hold, and probabilities in 0..0.005 are judged against 0.005, not against the largest output);
- ``rms``: ||cand - ref|| / ||ref - mean ref||, the typical error against the spread (reported);
- ``cosine``: cosine similarity of the flattened values (error 1 - cosine);
- ``argmax`` / ``topk``: for classifier-like outputs ([N, C] or [N, T, C] scores), the share of rows
  whose argmax agrees / whose reference argmax is in the candidate's top ``TOPK`` (error 1 - share).

A candidate NaN or Inf where the reference is finite makes every error infinite: damage never
passes a check. Where a mask is given (an attention mask [B, S]), positions with mask 0 (padding)
are left out of every figure for outputs whose leading dims are [B, S].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.errors import OptionError

METRICS = ("rel", "cosine", "argmax", "topk")
DEFAULT_METRIC = "rel"
TOPK = 5


@dataclass
class OutputCheck:
    name: str
    rel: float
    rms: float
    cosine: float
    argmax: float | None
    topk: float | None
    nonfinite: int  # candidate elements that are NaN/Inf where the reference is finite
    masked: int  # elements left out as padding
    note: str = ""

    def error(self, metric: str) -> float:
        """The error the budget of ``metric`` applies to (0 is perfect)."""
        if self.nonfinite or self.note:
            return float("inf")
        if metric == "rel":
            return self.rel
        if metric == "cosine":
            return max(0.0, 1.0 - self.cosine)
        share = self.argmax if metric == "argmax" else self.topk
        if share is None:
            raise OptionError(f"--metric {metric}: output {self.name!r} is not a classifier output "
                              "([N, C] or [N, T, C] scores)")
        return 1.0 - share


def is_classifier(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" and arr.ndim in (2, 3) and arr.shape[-1] > 1


def _keep(arr: np.ndarray, mask) -> np.ndarray | None:
    """Elements of ``arr`` to keep: the mask broadcast over trailing dims when its shape leads."""
    if mask is None or arr.ndim < mask.ndim or arr.shape[:mask.ndim] != mask.shape:
        return None
    m = np.asarray(mask).astype(bool).reshape(mask.shape + (1,) * (arr.ndim - mask.ndim))
    return np.broadcast_to(m, arr.shape)


def nonfinite_count(ref, cand) -> int:
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.dtype.kind not in "fc" and cand.dtype.kind not in "fc":
        return 0
    return int(np.count_nonzero(np.isfinite(ref) & ~np.isfinite(cand)))


def output_check(name: str, refs: list, cands: list, masks: list | None = None) -> OutputCheck:
    """Metrics of one output over check batches (``refs[i]``, ``cands[i]``, ``masks[i]`` per batch)."""
    masks = masks or [None] * len(refs)
    if len(refs) == len(cands) and all(r is c for r, c in zip(refs, cands)):
        return _against_itself(name, refs, masks)
    rows_r, rows_c = [], []
    acc = _Sums()
    nonfinite = masked = 0
    for r, c, m in zip(refs, cands, masks):
        r, c = np.asarray(r), np.asarray(c)
        if r.shape != c.shape:
            return OutputCheck(name, np.inf, np.inf, 0.0, None, None, 0, 0,
                               f"shape {c.shape} instead of {r.shape}")
        if r.dtype.kind not in "fiub":
            if not np.array_equal(r, c):
                return OutputCheck(name, np.inf, np.inf, 0.0, None, None, 0, 0, "values differ")
            continue
        keep = _keep(r, m)
        if is_classifier(r):
            rr, cc = r.reshape(-1, r.shape[-1]), c.reshape(-1, r.shape[-1])
            if keep is not None and r.ndim == 3:
                rows = keep[..., 0].reshape(-1)
                rr, cc = rr[rows], cc[rows]
            rows_r.append(rr)
            rows_c.append(cc)
        r64, c64 = r.astype(np.float64), c.astype(np.float64)
        if keep is not None:
            masked += int(keep.size - np.count_nonzero(keep))
            r64, c64 = r64[keep], c64[keep]
        nonfinite += nonfinite_count(r64, c64)
        if nonfinite:
            continue
        # figures accumulate batch by batch: one float64 copy of all of rec's 16x40x6625 scores is
        # 34 MB, above malloc's mmap threshold, page-faulted afresh on every check (0.6 s)
        r64, c64 = r64.ravel(), c64.ravel()
        both = np.isfinite(r64) & np.isfinite(c64)
        if not both.all():
            r64, c64 = r64[both], c64[both]
        acc.add(r64, c64)
    if nonfinite:
        return OutputCheck(name, np.inf, np.inf, float("nan"), None, None, nonfinite, masked)
    if not acc.batches:
        return OutputCheck(name, 0.0, 0.0, 1.0, None, None, 0, masked)
    rel, rms, cosine = acc.figures()
    argmax = topk = None
    if rows_r:
        rr, cc = np.concatenate(rows_r), np.concatenate(rows_c)
        if len(rr):
            ra, ca = rr.argmax(1), cc.argmax(1)
            argmax = float(np.mean(ra == ca))
            k = min(TOPK, rr.shape[1])
            top = np.argpartition(-cc, k - 1, axis=1)[:, :k]
            topk = float(np.mean((top == ra[:, None]).any(1)))
    return OutputCheck(name, rel, rms, min(cosine, 1.0), argmax, topk, 0, masked)


class _Sums:
    """Running sums over batches for rel, rms and cosine, in float64."""

    def __init__(self):
        self.batches = 0
        self.n = 0
        self.lo, self.hi, self.absmax, self.diffmax = np.inf, -np.inf, 0.0, 0.0
        self.sr = self.srr = self.scc = self.src = self.sdd = 0.0
        self.equal = True

    def add(self, r: np.ndarray, c: np.ndarray) -> None:
        self.batches += 1
        if not r.size:
            return
        d = np.abs(r - c)
        self.n += r.size
        self.lo, self.hi = min(self.lo, float(r.min())), max(self.hi, float(r.max()))
        self.absmax = max(self.absmax, float(np.abs(r).max()))
        self.diffmax = max(self.diffmax, float(d.max()))
        self.sr += float(r.sum())
        self.srr += float(r @ r)
        self.scc += float(c @ c)
        self.src += float(r @ c)
        self.sdd += float(d @ d)
        self.equal = self.equal and bool(np.array_equal(r, c))

    def figures(self) -> tuple[float, float, float]:
        if not self.n:
            return 0.0, 0.0, 1.0
        spread = (self.hi - self.lo) or self.absmax or 1.0
        centred = float(np.sqrt(max(self.srr - self.sr * self.sr / self.n, 0.0)))
        centred = centred or float(np.sqrt(self.srr)) or 1.0
        denom = float(np.sqrt(self.srr) * np.sqrt(self.scc))
        cosine = self.src / denom if denom > 0 else (1.0 if self.equal else 0.0)
        return self.diffmax / spread, float(np.sqrt(self.sdd)) / centred, cosine


def _against_itself(name: str, refs: list, masks: list) -> OutputCheck:
    """An output's figures against the very same arrays (the original's own report row): exact by
    definition, so only what is counted is counted (0.6 s a row on PP-OCR rec's 16x40x6625 scores)."""
    masked, rows = 0, 0
    for r, m in zip(refs, masks):
        r = np.asarray(r)
        if r.dtype.kind not in "fiub":
            continue
        keep = _keep(r, m)
        if keep is not None:
            masked += int(keep.size - np.count_nonzero(keep))
        if is_classifier(r):
            rows += int(np.count_nonzero(keep[..., 0])) if keep is not None and r.ndim == 3 else 1
    share = 1.0 if rows else None
    return OutputCheck(name, 0.0, 0.0, 1.0, share, share, 0, masked)
