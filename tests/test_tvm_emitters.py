"""The TVM emitter registry: every op the backend emits is found through ``@emitter`` entries
(one module per op family under backends/tvm/emitters/), the lowering calls what is registered,
and deciding what can be emitted never imports TVM."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import make_model, tensor
from tvmlite.backends.tvm import unsupported_ops
from tvmlite.backends.tvm.emitters import registry
from tvmlite.backends.tvm.emitters.registry import emitter, lookup
from tvmlite.frontend import load


def test_lookup_by_domain_and_family():
    conv = lookup("", "Conv")
    assert conv is lookup("ai.onnx", "Conv") and conv.fn.__module__.endswith("emitters.conv")
    assert lookup("tvmlite", "Im2Col").fn.__module__.endswith("emitters.lowered")
    assert lookup("", "Im2Col") is None and lookup("", "TopK") is None
    assert lookup("", "Reshape").checks_dtype and not lookup("", "Conv").checks_dtype
    families = {e.fn.__module__.rsplit(".", 1)[1] for e in registry._EMITTERS.values()}
    assert families == {"conv", "elementwise", "gemm", "index", "lowered", "pool", "qdq", "reduce", "resize",
                        "tensor", "transformer"}
    # 80 ONNX ops, tvmlite's 5 conv-lowering ops and its 4 int8 ops (QDQConv, QDQMatMul, QMaxPool, QConcat)
    assert len(registry.registered()) == 89
    assert lookup("tvmlite", "QDQConv").fn.__module__.endswith("emitters.qdq")


def _softsign():
    return load(make_model([helper.make_node("Softsign", ["x"], ["y"])], [tensor("x", [1, 4])],
                           [tensor("y", [1, 4])]))


def test_the_lowering_calls_what_is_registered():
    model = _softsign()
    assert unsupported_ops(model, {"x": (1, 4)}) == ["Softsign (no TVM emitter)"]
    seen = []

    @emitter("Softsign")
    def emit(low, node):
        seen.append(node.name or node.op_type)
        low.add(lambda: None, node, node.outputs[0])
    try:
        assert unsupported_ops(model, {"x": (1, 4)}) == [] and len(seen) == 1
        with pytest.raises(RuntimeError, match="two TVM emitters"):
            emitter("Softsign")(emit)
    finally:
        del registry._EMITTERS[("", "Softsign")]
    assert unsupported_ops(model, {"x": (1, 4)}) == ["Softsign (no TVM emitter)"]


def test_deciding_what_can_be_emitted_does_not_import_tvm(tmp_path):
    path = tmp_path / "m.onnx"
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Softsign", ["r"], ["y"])]
    onnx.save(make_model(nodes, [tensor("x", [1, 2, 5, 5])], [tensor("y", [1, 3, 5, 5])],
                         [("w", np.ones((3, 2, 3, 3), np.float32))]), path)
    code = ("import sys\nfrom tvmlite.backends.tvm import unsupported_ops\nfrom tvmlite.frontend import load\n"
            f"print(unsupported_ops(load({str(path)!r})), 'tvm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ)).stdout.strip()
    assert out == "['Softsign (no TVM emitter)'] False"
