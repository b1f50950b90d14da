"""Timing one layer (or one region of layers) in int8 against the same in float, alone in onnxruntime.

The layer is cut out of the model as a fragment (tvmlite.runtime.ort.fragment: its constant inputs,
its other inputs at the static shapes of the calibration example), once as it is and once in QDQ
form including the Q of its inputs and the DQ of its output, so a layer pays for its own boundary
conversions. Most comparisons are not close (a 3x3 conv in int8 is 2-4x faster, a tiny element-wise
op 2x slower): ``timed_ratio`` decides them in a few interleaved rounds and gives more only to a
ratio near the threshold. The median stays the statistic (robust on a loaded host).
A region (tvmlite.quant.regions) is timed the same way: its nodes as one fragment, its units in int8
with the carry ops between them extended, so the region pays its boundary conversions once.
"""
from __future__ import annotations

from tvmlite.errors import TvmliteError, UnsupportedError
from tvmlite.ir.graph import Model
from tvmlite.quant import qdq
# the timing loop lives in the runtime layer; its name stays importable from here
from tvmlite.runtime.ort import fragment, ort_session, random_feeds, timed_ratio

__all__ = ["time_int8_layer", "time_int8_nodes", "timed_ratio"]


def time_int8_nodes(model: Model, nodes: list, keys: set, spec: qdq.QuantSpec, shapes: dict,
                    threads: int = 2, repeats: int = 60, *, extend: bool = True) -> tuple[float, float]:
    """Median ms of ``nodes`` (in graph order) in float and with the units ``keys`` in int8, timed
    interleaved; (0, inf) when they cannot be cut out at static shapes (they then stay float)."""
    outs = [o for n in nodes for o in n.outputs[:1]]
    if len(nodes) == 1 and outs[0] not in shapes:
        return 0.0, float("inf")
    try:
        frag = fragment(model, nodes, shapes, outputs=None if len(nodes) > 1 else outs)
    except UnsupportedError:
        return 0.0, float("inf")
    f_sess = ort_session(frag, threads)
    plan = qdq.plan_qdq(frag.graph, set(keys), spec, extend=extend)
    qdq.apply_qdq(frag, plan, spec)
    q_sess = ort_session(frag, threads)
    feeds = random_feeds(frag, spec.ranges)
    try:
        t_f, t_q, _ = timed_ratio(lambda: f_sess.run(None, feeds), lambda: q_sess.run(None, feeds), 1.0,
                                  max_rounds=repeats)
    except TvmliteError:  # cut out at shapes it cannot run at (PP-OCR rec: a Reshape's 0 dims)
        return 0.0, float("inf")
    return t_f, t_q


def time_int8_layer(model: Model, key: str, spec: qdq.QuantSpec, shapes: dict, threads: int = 2,
                    repeats: int = 60) -> tuple[float, float]:
    """Median ms of the node ``key`` (qdq.node_key) in float and in int8 (see time_int8_nodes)."""
    node = next(n for n in model.graph.nx.nodes if qdq.node_key(n) == key)
    return time_int8_nodes(model, [node], {key}, spec, shapes, threads, repeats, extend=False)
