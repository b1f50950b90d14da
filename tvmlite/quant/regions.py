"""int8 regions: connected chains of quantizable layers, timed as one piece, and cut (not dropped)
when layers must go back to float for accuracy.

A layer timed alone pays the Q of its inputs and the DQ of its output; in a chain of int8 layers
those conversions are paid once, at the chain's edges. On PP-OCR det at 640x640 every Conv timed
alone was not faster in int8 (the default preset kept float, 1.02x), while the whole model with
every Conv in int8 ran in 0.55x of float's time. So each region (the connected component of the
nodes the QDQ plan runs in int8: the units, the activations folded into them, the carry and
requantizing ops between them) is timed first as a whole; only the layers outside a winning region
are timed alone (on det that is 1 fragment where it was 92).

When the model's error is over budget, layers go back to float from a region's edges (the first
layers from the inputs, or the last ones before the outputs), so what stays int8 is still one
contiguous region per cut, or, on a large model, from wherever the error is carried: blocks of
consecutive layers ranked by their error alone in int8 (sensitive_blocks), most sensitive first;
the fewest layers meeting the budget are found by doubling and bisecting on the whole model's error
(O(log n) runs where ranking every layer by its error alone took a whole-model run per layer: 237
on det). A region that changed is timed again.

The timer is a parameter (``timer(model, nodes, unit_keys) -> (float_ms, int8_ms)``) so that the
choice can be tested with a deterministic cost model.
"""
from __future__ import annotations

import networkx as nx

from tvmlite.ir.graph import Model
from tvmlite.quant import qdq


def regions(model: Model, units, spec: qdq.QuantSpec, excluded=frozenset()) -> list[tuple[list, set]]:
    """(nodes in graph order, unit keys) of each connected int8 region holding two or more units,
    largest first."""
    g = model.graph
    plan = qdq.plan_qdq(g, set(units), spec, excluded=excluded)
    members = set(plan.nodes) | set(plan.folded.values())
    inside = [n for n in g.nx.nodes if qdq.node_key(n) in members]
    order = {n: i for i, n in enumerate(g.toposort())}
    out = []
    for comp in nx.weakly_connected_components(g.nx.subgraph(inside)):
        keys = {qdq.node_key(n) for n in comp} & set(units)
        if len(keys) >= 2:
            out.append((sorted(comp, key=order.__getitem__), keys))
    out.sort(key=lambda r: -len(r[1]))
    return out


def winning_regions(model: Model, units, spec: qdq.QuantSpec, timer, decisions: dict,
                    excluded=frozenset(), timed: dict | None = None) -> set:
    """The units of every region of ``units`` that runs faster in int8 as a whole. ``timed`` caches
    (float ms, int8 ms) per region (its unit keys), so a region left unchanged by a cut is not
    timed again. Each unit's decision records its region; a winning region's gain is shared by its
    layers (what the whole-model guard ranks them by)."""
    timed = {} if timed is None else timed
    won = set()
    for nodes, keys in regions(model, units, spec, excluded):
        key = frozenset(keys)
        if key not in timed:
            timed[key] = timer(model, nodes, keys)
        t_f, t_q = timed[key]
        rid = qdq.node_key(nodes[0])  # stable across re-timing: a cut region gets a new first node
        for u in keys:
            d = decisions[u]
            d.update(region=rid, region_layers=len(keys), region_float_ms=t_f, region_int8_ms=t_q)
            d.pop("gain_ms", None)
            if t_q < t_f:
                d["gain_ms"] = (t_f - t_q) / len(keys)
                d["reason"] = f"int8 region of {len(keys)} layers faster as a whole ({t_q:.4f} vs {t_f:.4f} ms)"
        if t_q < t_f:
            won |= keys
    return won


def edge_orders(model: Model, chosen) -> dict[str, list]:
    """Orders in which int8 layers go back to float, each cutting regions at an edge: from the
    inputs (the first layers, whose rounding every later layer amplifies) and from the outputs."""
    order = {qdq.node_key(n): i for i, n in enumerate(model.graph.toposort())}
    seq = sorted(chosen, key=order.__getitem__)
    return {"from the inputs": seq, "from the outputs": seq[::-1]}


def sensitive_blocks(model: Model, chosen, error_of, blocks: int) -> tuple[list, dict]:
    """An order for the error step that finds the layers carrying the error wherever they sit, at
    ``blocks`` whole-model runs instead of one per layer: ``chosen`` in graph order is split into
    ``blocks`` runs of consecutive layers, each block alone in int8 (the rest float) gives its
    error, and the blocks go back to float most sensitive first, each from its input edge. Returns
    (order, {layer: its block's error alone})."""
    seq = edge_orders(model, chosen)["from the inputs"]
    n = max(1, min(blocks, len(seq)))
    parts = [seq[i * len(seq) // n:(i + 1) * len(seq) // n] for i in range(n)]
    errs = [error_of(set(p)) for p in parts]
    ranked = sorted(range(n), key=lambda i: -errs[i])
    return [u for i in ranked for u in parts[i]], {u: errs[i] for i in range(n) for u in parts[i]}


def fewest_back_to_float(ranked: list, error_without, budget: float, cap: int | None = None):
    """The fewest first layers of ``ranked`` (k, and the model's error without them) to put back in
    float for the error to meet ``budget``: k doubles until it does, then bisects down, O(log n)
    whole-model runs (the error falls as layers go back, which the ranking assumes). ``cap``: give
    up (None) once k would exceed it (another order already needs no more)."""
    n = len(ranked)
    errs = {}
    lo, k = 0, 1
    while True:
        if cap is not None and k > cap:
            return None
        errs[k] = error_without(k)
        if errs[k] <= budget or k >= n:
            break
        lo, k = k, min(2 * k, n)
    hi = k
    if errs[hi] > budget:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        errs[mid] = error_without(mid)
        if errs[mid] <= budget:
            hi = mid
        else:
            lo = mid
    return hi, errs[hi]


def cut_for_error(orders: dict[str, list], error_of, budget: float):
    """(order name, layers back to float, model error) of the order needing the fewest layers taken
    back for ``error_of(int8 set)`` to meet ``budget``; ties go to the lower error."""
    best = None
    for name, seq in orders.items():
        found = fewest_back_to_float(seq, lambda k, s=seq: error_of(set(s[k:])) if k < len(s) else 0.0,
                                     budget, cap=None if best is None else len(best[1]))
        if found is not None and (best is None or (found[0], found[1]) < (len(best[1]), best[2])):
            best = (name, seq[:found[0]], found[1])
    return best
