"""Model figures for reports: parameters, MACs per layer, op histogram. The counts themselves are
tvmlite.passes.counts (passes report them before and after); they are re-exported here."""
from __future__ import annotations

import collections

from tvmlite.ir.graph import Model
from tvmlite.passes.counts import node_macs, param_count, summarize  # noqa: F401


def op_histogram(model: Model) -> dict[str, int]:
    c = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in model.graph.nx.nodes)
    return dict(c.most_common())
