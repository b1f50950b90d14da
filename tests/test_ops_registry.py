"""The registry's OpDef: typed fields filled at registration, checked there, and what the NumPy plan
reads (no attributes stuck onto kernel functions)."""
import numpy as np
import onnx
import pytest

import tvmlite
from tvmlite.backends.numpy.plan import Plan
from tvmlite.ops import registry
from tvmlite.ops.registry import (NONDETERMINISTIC, RegistrationError, is_deterministic, kernel, lookup,
                                  supported_ops, tvmlite_op)

from helpers import make_model, tensor

HOOKS = ("prepare", "pointwise", "fresh_output", "single_output", "num_outputs_param", "shape", "body")


@pytest.fixture
def scratch_op(monkeypatch):
    """Registrations under a test domain, removed again afterwards."""

    def reserve(domain, op_type):
        monkeypatch.setitem(registry._REGISTRY, (domain, op_type), [])

    return reserve


def test_builtin_hooks_are_opdef_fields_not_function_attributes():
    conv = lookup("Conv", "", 17)
    assert conv.prepare is not None and conv.fresh_output
    assert lookup("MaxPool", "", 12).single_output is not None
    assert lookup("MaxPool", "", 7).single_output is None  # MaxPool-1 has one output only
    assert lookup("Relu", "", 14).pointwise is not None
    assert lookup("BatchNormalization", "", 15).prepare is not None
    assert lookup("Split", "", 13).num_outputs_param == "n_outputs_"
    assert lookup("Split", "", 18).num_outputs_param is None
    assert not lookup("Dropout", "", 13).deterministic and lookup("Relu", "", 14).deterministic
    assert lookup("Im2Col", "tvmlite").shape is not None and lookup("Im2Col", "tvmlite").body is not None
    stuck = [f"{d}::{op}-{v.since}.{h}" for d, op in supported_ops() for v in registry._REGISTRY[(d, op)]
             for h in HOOKS if hasattr(v.kernel, h)]
    assert stuck == []


def test_num_outputs_param_is_not_an_attribute():
    assert "n_outputs" not in lookup("Split", "", 13).attrs
    assert {"axis", "split"} <= lookup("Split", "", 2).attrs


def test_determinism_for_ops_without_kernels():
    assert "RandomNormal" in NONDETERMINISTIC and lookup("RandomNormal") is None
    assert not is_deterministic("RandomNormal")
    assert is_deterministic("Add", "", 17)
    assert is_deterministic("RandomNormal", "com.example")  # another domain's op of the same name


def test_tvmlite_op_without_shape_rule_is_refused(scratch_op):
    scratch_op("tvmlite", "TestNoShape")
    with pytest.raises(RegistrationError, match=r"tvmlite::TestNoShape-1: .*needs a shape rule"):
        kernel("TestNoShape", domain="tvmlite")(lambda x: x)
    with pytest.raises(RegistrationError, match="needs a shape rule and an ONNX function body"):
        kernel("TestNoShape", domain="tvmlite", since=2)(lambda x: x)
    with pytest.raises(RegistrationError, match="needs an ONNX function body"):
        tvmlite_op("TestNoShape", shape=lambda types: types, body=None)(lambda x: x)
    assert registry._REGISTRY[("tvmlite", "TestNoShape")] == []  # nothing half-registered


def test_inconsistent_hooks_are_refused(scratch_op):
    scratch_op("test.hooks", "Bad")
    with pytest.raises(RegistrationError, match="prepare must be callable"):
        kernel("Bad", domain="test.hooks", prepare=True)(lambda x: x)
    with pytest.raises(RegistrationError, match="num_outputs_param 'count' is not a keyword-only"):
        kernel("Bad", domain="test.hooks", num_outputs_param="count")(lambda x, count=None: x)
    assert registry._REGISTRY[("test.hooks", "Bad")] == []


def _model_with(op_type, domain, n_outputs=1, read=1):
    proto = make_model([onnx.helper.make_node("Relu", ["x"], ["r"])], [tensor("x", [2, 3])],
                       [tensor("r", [2, 3])])
    m = tvmlite.load(proto)
    c = np.array([1.0, 2.0, 3.0], np.float32)
    m.graph.add_initializer("c", c)
    outs = ["y"] + [f"y{i}" for i in range(1, n_outputs)]
    m.graph.add_node(op_type, ["r", "c"], outs, {"scale": 2.0}, domain=domain, name="t")
    m.graph.outputs[:] = outs[:read]
    return m, c


def test_plan_calls_the_opdefs_prepare(scratch_op):
    scratch_op("test.hooks", "AddScaled")
    calls = {"kernel": 0, "prepared": 0, "prepare": []}

    def prepare(consts, attrs):
        calls["prepare"].append((consts[0] is None, consts[1] is not None, dict(attrs)))
        k = consts[1] * np.float32(attrs["scale"])

        def run(x, _c):
            calls["prepared"] += 1
            return x + k

        return run

    @kernel("AddScaled", domain="test.hooks", prepare=prepare)
    def add_scaled(x, c, *, scale):
        calls["kernel"] += 1
        return x + c * np.float32(scale)

    m, c = _model_with("AddScaled", "test.hooks")
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    (y,) = Plan(m.graph, {**m.opsets, "test.hooks": 1}).run({"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0) + c * 2)
    assert calls == {"kernel": 0, "prepared": 1, "prepare": [(True, True, {"scale": 2.0})]}
    assert not hasattr(add_scaled, "prepare")


def test_plan_uses_single_output_and_num_outputs_param(scratch_op):
    scratch_op("test.hooks", "Pair")
    used = []

    def first_only(x, c, *, scale, count_=None):
        used.append(("single", count_))
        return x * np.float32(scale)

    @kernel("Pair", domain="test.hooks", single_output=first_only, num_outputs_param="count_")
    def pair(x, c, *, scale, count_=None):
        used.append(("both", count_))
        return x * np.float32(scale), x + c

    x = np.ones((2, 3), np.float32)
    m, c = _model_with("Pair", "test.hooks", n_outputs=2, read=1)
    (y,) = Plan(m.graph, {**m.opsets, "test.hooks": 1}).run({"x": x})
    np.testing.assert_array_equal(y, 2 * x)
    m, c = _model_with("Pair", "test.hooks", n_outputs=2, read=2)
    y, z = Plan(m.graph, {**m.opsets, "test.hooks": 1}).run({"x": x})
    np.testing.assert_array_equal(z, x + c)
    assert used == [("single", 2), ("both", 2)]
