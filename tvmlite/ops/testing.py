"""Run a single NodeProto through its registered kernel: for kernel unit tests."""
from __future__ import annotations

import numpy as np
import onnx

from tvmlite.ir.attrs import attr_to_python
from tvmlite.ops.registry import kernel_attr_name, lookup


def run_node(node: onnx.NodeProto, inputs: list, opset: int = 21) -> list[np.ndarray]:
    op = lookup(node.op_type, node.domain, opset)
    if op is None:
        raise NotImplementedError(f"no kernel for {node.domain or 'ai.onnx'}::{node.op_type}-{opset}")
    attrs = {kernel_attr_name(a.name): attr_to_python(a) for a in node.attribute}
    args = list(inputs)
    out = op.kernel(*args, **attrs)
    return list(out) if isinstance(out, tuple) else [out]
