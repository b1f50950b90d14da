"""Ops the TVM backend used to leave to host calls, now emitted as kernels (issue 15 item 2/3):
Split on any axis in each of its forms, checked against onnxruntime, and the YOLO-style detector
of real_graphs.py built with no host-run op left."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from real_graphs import detector
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model, unsupported_ops  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402


def _ort(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _any(name, rank):
    return h.make_tensor_value_info(name, T.FLOAT, [f"{name}_{i}" for i in range(rank)])


def _split_model(shape, outs, opset, inits=(), split_input=None, **attrs):
    ins = ["x"] + ([split_input] if split_input else [])
    nodes = [h.make_node("Split", ins, outs, **attrs)]
    # each part goes through a float kernel so the split results are read by TVM too
    nodes += [h.make_node("Neg", [o], [o + "_neg"]) for o in outs]
    g = h.make_graph(nodes, "split", [h.make_tensor_value_info("x", T.FLOAT, list(shape))],
                     [_any(o + "_neg", len(shape)) for o in outs] + [_any(outs[0], len(shape))], list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


CASES = {
    "even_axis0": ((6, 4), ["a", "b", "c"], 13, (), None, {"axis": 0}),
    "input_sizes_last_axis": ((2, 3, 7), ["a", "b"], 13, [nh.from_array(np.array([2, 5], np.int64), "s")], "s",
                              {"axis": -1}),
    "attr_sizes_opset11": ((2, 9, 3), ["a", "b", "c"], 11, (), None, {"axis": 1, "split": [1, 3, 5]}),
    "num_outputs_uneven": ((1, 10, 2), ["a", "b", "c"], 18, (), None, {"axis": 1, "num_outputs": 3}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_matches_onnxruntime_without_host_calls(case):
    shape, outs, opset, inits, split_input, attrs = CASES[case]
    proto = _split_model(shape, outs, opset, inits, split_input, **attrs)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert unsupported_ops(import_model(proto), {"x": shape}) == []
    cm = compile_model(import_model(proto), {"x": shape})
    got = cm.run({"x": x})
    ref = _ort(proto, {"x": x})
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_array_equal(g, r)


def test_split_with_an_empty_part_runs_on_the_host():
    proto = _split_model((2, 4), ["a", "b"], 13, [nh.from_array(np.array([4, 0], np.int64), "s")], "s", axis=1)
    probs = unsupported_ops(import_model(proto), {"x": (2, 4)})
    assert any(p.startswith("Split (") for p in probs), probs


def test_detector_builds_without_host_calls_and_matches_onnxruntime():
    proto, shapes = detector()
    assert unsupported_ops(import_model(proto), shapes) == []
    cm = compile_model(import_model(proto), shapes)
    assert "host" not in cm.summary
    feeds = {n: np.random.default_rng(2).standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    got, ref = cm.run(feeds), _ort(proto, feeds)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        rel = np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-6)
        assert rel <= 1e-4, rel
