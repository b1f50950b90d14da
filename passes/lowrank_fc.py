"""Low-rank factorization of Gemm/MatMul and 1x1 Conv layers: the rank choice and the factors of a
truncated SVD (or a data-aware reduced-rank refit), mixed into the LowRank pass (passes/lowrank.py)."""
from __future__ import annotations

import math

import numpy as np

from tvmlite.passes.lowrank_math import (Layer, energy_rank, evbmf_rank, principal_fit, split_singular_values,
                                 truncate_fit)


class FcFactorPlans:
    """Planning of SVD factorizations: ``self.options`` as LowRank's."""

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
