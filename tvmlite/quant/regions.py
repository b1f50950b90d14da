"""int8 regions: connected chains of quantizable layers, timed as one piece.

A layer timed alone pays the Q of its inputs and the DQ of its output; in a chain of int8 layers
those conversions are paid once, at the chain's edges. On PP-OCR det at 640x640 every Conv timed
alone was not faster in int8 (the default preset kept float, 1.02x), while the whole model with
every Conv in int8 ran in 0.55x of float's time. So the layers that lose alone are given a second
chance as members of their region: the connected component of the nodes the full QDQ plan runs in
int8 (the units, the activations folded into them, the carry and requantizing ops between them).
A region is kept in int8 when it is measured faster as a whole; else each of its layers keeps its
own verdict.

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


def rescue_by_region(model: Model, units, chosen: set, spec: qdq.QuantSpec, timer, decisions: dict,
                     excluded=frozenset()) -> set:
    """``chosen`` plus every layer of a region that is faster in int8 as a whole. Only regions
    holding a layer that lost alone are timed (a region of winners needs no second look)."""
    chosen = set(chosen)
    lost = set(units) - chosen
    for i, (nodes, keys) in enumerate(regions(model, units, spec, excluded)):
        if not keys & lost:
            continue
        t_f, t_q = timer(model, nodes, keys)
        for u in keys:
            decisions[u].update(region=i, region_layers=len(keys), region_float_ms=t_f, region_int8_ms=t_q)
            if t_q < t_f:  # the region's gain, shared: what the whole-model guard ranks layers by
                decisions[u]["gain_ms"] = (t_f - t_q) / len(keys)
        if t_q < t_f:
            for u in keys & lost:
                decisions[u]["reason"] = (f"int8 region of {len(keys)} layers faster ({t_q:.4f} vs "
                                          f"{t_f:.4f} ms), though slower alone")
            chosen |= keys
    return chosen
