"""Values of a graph on one input, from the NumPy backend: what a pass reads when it needs the
activations themselves (low rank's refit) or shapes onnx's inference could not give (an op with no
onnx shape rule, such as com.microsoft GatherBlockQuantized, leaves everything after it unknown)."""
from __future__ import annotations

import networkx as nx
import numpy as np

from tvmlite.backends.numpy.plan import Plan
from tvmlite.ir.graph import Model


def capture_values(model: Model, names: list[str], feeds: dict) -> dict[str, np.ndarray]:
    """Run ``model`` on the NumPy backend and return the arrays of the named values."""
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
