"""Low-rank factorization of convolutions: rank choice and factors for Tucker-2 (1x1, kxk core,
1x1) and CP (1x1, depthwise kx1 and 1xk, 1x1), mixed into the LowRank pass (passes/lowrank.py)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from tvmlite.passes.lowrank_math import (Layer, energy_rank, evbmf_rank, gram_svd, principal_fit,
                                 truncate_fit, tucker2)


class ConvFactorPlans:
    """Planning of conv factorizations: ``self.options`` as LowRank's."""

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
                if (r3, id(st), "fit") not in projected:  # r4 only truncates it: one solve + eigh per r3
                    z0 = np.tensordot(w, us, axes=([1], [0]))  # [T, *k, r3]
                    z0 = np.moveaxis(z0, -1, 1).reshape(T, -1).T  # [r3*kk, T]
                    projected[r3, id(st), "fit"] = principal_fit(projected[r3, id(st)], z0, o.ridge)
                a, b, c = truncate_fit(projected[r3, id(st), "fit"], r4)
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
