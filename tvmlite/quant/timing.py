"""Timing one layer in int8 against the same layer in float, alone in onnxruntime.

The layer is cut out of the model as a fragment (tvmlite.runtime.ort.fragment: its constant inputs,
its other inputs at the static shapes of the calibration example), once as it is and once in QDQ
form including the Q of its inputs and the DQ of its output, so a layer pays for its own boundary
conversions. Most comparisons are not close (a 3x3 conv in int8 is 2-4x faster, a tiny element-wise
op 2x slower): ``timed_ratio`` decides them in a few interleaved rounds and gives more only to a
ratio near the threshold. The median stays the statistic (robust on a loaded host).
"""
from __future__ import annotations

from tvmlite.errors import UnsupportedError
from tvmlite.ir.graph import Model
from tvmlite.quant import qdq
# the timing loop lives in the runtime layer; its name stays importable from here
from tvmlite.runtime.ort import fragment, ort_session, random_feeds, timed_ratio

__all__ = ["time_int8_layer", "timed_ratio"]


def time_int8_layer(model: Model, key: str, spec: qdq.QuantSpec, shapes: dict, threads: int = 2,
                    repeats: int = 60) -> tuple[float, float]:
    """Median ms of the node ``key`` (qdq.node_key) in float and in int8, timed interleaved; (0, inf)
    when the layer cannot be cut out at static shapes (it then stays float)."""
    node = next(n for n in model.graph.nx.nodes if qdq.node_key(n) == key)
    out = node.outputs[0]
    if out not in shapes:
        return 0.0, float("inf")
    try:
        frag = fragment(model, [node], shapes, outputs=[out])
    except UnsupportedError:
        return 0.0, float("inf")
    f_sess = ort_session(frag, threads)
    plan = qdq.plan_qdq(frag.graph, {key}, spec, extend=False)
    qdq.apply_qdq(frag, plan, spec)
    q_sess = ort_session(frag, threads)
    feeds = random_feeds(frag, spec.ranges)
    t_f, t_q, _ = timed_ratio(lambda: f_sess.run(None, feeds), lambda: q_sess.run(None, feeds), 1.0,
                              max_rounds=repeats)
    return t_f, t_q
