"""tvmlite.optimize: presets, checked passes that are undone (whole or per layer) when they break the budget."""
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest

import tvmlite
from passes import Pass, PassResult, register_pass
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.optimize import optimize

from conftest import corpus_model
from helpers import conv_bn_relu_model, ort_run


@register_pass
class ScaleWeights(Pass):
    """Test pass: scales each constant MatMul/Conv weight by `factor` (a per-layer decision)."""

    name = "test-scale-weights"
    exclude_option = "exclude"

    @dataclass
    class Options:
        factor: float = 1.5
        exclude: list = field(default_factory=list)

    def run(self, model):
        result = PassResult(self.name)
        g = model.graph
        for node in g.toposort():
            if node.op_type in ("MatMul", "Conv") and node.label not in self.options.exclude:
                w = g.const_value(node.inputs[1])
                scale = self.options.factor if node.op_type == "MatMul" else 1.0 + 1e-9
                g.set_input(node, 1, g.add_constant(w * np.float32(scale), "scaled"))
                result.rewrote(node)
        return result


def test_exact_preset_is_bit_identical():
    path = corpus_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    m, report = optimize(str(path), preset="exact", shapes={"x": (1, 3, 48, 192)}, repeats=2)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)
    assert np.array_equal(ort_run(str(path), {"x": x})[0], ort_run(export_model(m), {"x": x})[0])
    assert report.rows[-1].max_error == 0.0


def test_pass_breaking_budget_is_undone_per_layer():
    proto = conv_bn_relu_model()
    m, report = optimize(proto, passes="test-scale-weights(factor=1.5)", shapes={"x": (4, 3, 4, 4)},
                         max_error=1e-3, repeats=1)
    row = report.rows[-1]
    # the MatMul scaling breaks the budget; the (harmless) Conv change is kept
    assert row.kept and row.excluded == ["fc"], row
    assert "kept without 1 layer" in row.note
    assert row.max_error < 1e-3
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-5)


def test_pass_without_exclude_is_undone_whole():
    proto = conv_bn_relu_model()

    @register_pass
    class Break(Pass):
        name = "test-break-output"

        def run(self, model):
            r = PassResult(self.name)
            g = model.graph
            node = g.producer("y")
            g.set_input(node, 1, g.add_constant(np.float32(-1.0), "minus"))
            r.rewrote(node)
            return r

    m, report = optimize(proto, passes="fold-bn,test-break-output,dce", shapes={"x": (2, 3, 4, 4)}, repeats=1)
    names = [(r.name, r.kept) for r in report.rows]
    assert names == [("(input)", True), ("fold-bn", True), ("test-break-output", False), ("dce", True)]
    assert "undone" in report.rows[2].note
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-4,
                               atol=1e-5)


def test_accuracy_budget_with_labels():
    proto = conv_bn_relu_model()
    x = np.random.default_rng(5).standard_normal((32, 3, 4, 4)).astype(np.float32)
    labels = ort_run(proto, {"x": x})[0].argmax(1)
    m, report = optimize(proto, passes="test-scale-weights(factor=-1.0)", inputs={"x": x}, labels=labels,
                         max_error=10.0, max_accuracy_drop=0.5, repeats=1)
    assert report.rows[0].accuracy == 1.0
    # flipping the classifier's weights costs all accuracy: that layer is undone, the Conv kept
    last = report.rows[-1]
    assert last.kept and last.excluded == ["fc"] and last.accuracy == 1.0
    assert "accuracy" in last.note


def test_bad_preset():
    with pytest.raises(OptionError, match="unknown preset"):
        optimize(conv_bn_relu_model(), preset="fastest")
