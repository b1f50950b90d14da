"""Transformer ops: LayerNormalization (opset 17), scale and bias constant."""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.errors import UnsupportedError


@emitter("LayerNormalization")
def emit_layer_norm(low, node) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    a = node.attrs
    if int(a.get("stash_type", 1)) != 1:
        raise UnsupportedError("stash_type other than float32")
    if any(o for o in node.outputs[1:]):
        raise UnsupportedError("Mean/InvStdDev outputs")
    axis = int(a.get("axis", -1))
    if not -len(xs) <= axis < len(xs):
        raise UnsupportedError(f"axis {axis} out of range for rank {len(xs)}")
    trail = tuple(int(d) for d in xs[axis % len(xs):])
    try:
        scale = np.broadcast_to(low.const_input(node, 1, "scale", required=True), trail).astype(np.float32)
        bias = low.const_input(node, 2, "bias")
        bias = None if bias is None else np.broadcast_to(bias, trail).astype(np.float32)
    except ValueError as e:
        raise UnsupportedError(f"scale/bias do not broadcast to {trail}") from e
    epsilon = float(a.get("epsilon", 1e-5))
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.transformer import layer_norm

        return layer_norm(name, x, xs, axis=axis, epsilon=epsilon, scale=scale, bias=bias, out_value=final,
                          epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)
