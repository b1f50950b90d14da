"""export.shapes.TypeLookup: the one "recorded type, else onnx's inference run once" lookup the
passes share (remove-redundant, matmul-add-to-gemm, affine-as-conv, conv lowering)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import tvmlite
from tvmlite.export import shapes as shapes_mod
from tvmlite.export.shapes import TypeLookup

from helpers import make_model, tensor


def _model(x_shape=(1, 3, 4, 4)):
    """x -> Relu -> ReduceSum(keepdims=0, all axes) -> scalar s -> Neg -> y; r and s carry no
    recorded type."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ReduceSum", ["r"], ["s"], name="sum", keepdims=0),
             helper.make_node("Neg", ["s"], ["y"], name="neg")]
    return tvmlite.load(make_model(nodes, [tensor("x", list(x_shape))], [tensor("y", [])],
                                   initializers=[("w", np.ones((2, 5), np.float32))]))


def _count_inference(monkeypatch) -> list:
    calls = []
    real = shapes_mod.inferred_types

    def counting(model, *a, **kw):
        calls.append(1)
        return real(model, *a, **kw)

    monkeypatch.setattr(shapes_mod, "inferred_types", counting)
    return calls


def test_complete_recorded_types_need_no_inference(monkeypatch):
    calls = _count_inference(monkeypatch)
    types = TypeLookup(_model())
    assert types.type("x") == (TensorProto.FLOAT, (1, 3, 4, 4))
    assert types.type("w") == (TensorProto.FLOAT, (2, 5))  # an initializer
    assert calls == []


def test_untyped_values_are_inferred_once(monkeypatch):
    calls = _count_inference(monkeypatch)
    types = TypeLookup(_model())
    assert types.shape("r") == (1, 3, 4, 4)
    assert types.elem("r") == TensorProto.FLOAT
    assert types.shape("s") == ()  # a scalar's empty shape is a shape, not "unknown"
    assert types.static_shape("s") == ()
    assert calls == [1]


def test_symbolic_dims_are_not_static():
    types = TypeLookup(_model(("N", 3, 4, 4)))
    assert types.shape("r") == ("N", 3, 4, 4)
    assert types.static_shape("r") is None
    assert types.static_shape("x") is None


def test_values_unknown_to_both_stay_unknown():
    m = _model()
    types = TypeLookup(m)
    assert types.shape("r") == (1, 3, 4, 4)  # inference has run
    assert types.type("added-later") == (None, None)
    with pytest.raises(KeyError):
        m.graph.value("added-later")
