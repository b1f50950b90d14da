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

from tvmlite.backends.tvm import compile_model, load_module, unsupported_ops  # noqa: E402
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


def _gather_model(data_shape, ids, axis, ids_dtype=T.INT64, const_ids=False, data_input=False):
    rng = np.random.default_rng(3)
    table = rng.standard_normal(data_shape).astype(np.float32)
    inits, ins = [], []
    if data_input:
        ins.append(h.make_tensor_value_info("table", T.FLOAT, list(data_shape)))
    else:
        inits.append(nh.from_array(table, "table"))
    if const_ids:
        inits.append(nh.from_array(ids, "ids"))
    else:
        ins.append(h.make_tensor_value_info("ids", ids_dtype, list(ids.shape)))
    nodes = [h.make_node("Gather", ["table", "ids"], ["g"], axis=axis), h.make_node("Neg", ["g"], ["y"])]
    g = h.make_graph(nodes, "gather", ins, [_any("y", len(data_shape) - 1 + ids.ndim)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8), table


GATHERS = {
    "embedding_int64": ((30, 16), np.array([[1, 29, -1, 0, -30, 7]], np.int64), 0, T.INT64, False, False),
    "axis1_int32": ((4, 9, 5), np.array([[8, -2], [0, 3]], np.int32), 1, T.INT32, False, False),
    "last_axis_data_input": ((3, 4, 6), np.array([5, -6, 2], np.int64), -1, T.INT64, False, True),
    "scalar_index": ((7, 5), np.array(-3, np.int64), 0, T.INT64, False, False),
    "const_negative_ids": ((6, 3, 2), np.array([[-1, 2], [0, -6]], np.int64), 0, T.INT64, True, True),
}


@pytest.mark.parametrize("case", sorted(GATHERS))
def test_gather_matches_onnxruntime_without_host_calls(case, tmp_path):
    shape, ids, axis, dt, const_ids, data_input = GATHERS[case]
    proto, table = _gather_model(shape, ids, axis, dt, const_ids, data_input)
    shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in proto.graph.input}
    assert unsupported_ops(import_model(proto), shapes) == []
    feeds = {}
    if not const_ids:
        feeds["ids"] = ids
    if data_input:
        feeds["table"] = table
    cm = compile_model(import_model(proto), shapes)
    ref = _ort(proto, feeds)
    np.testing.assert_array_equal(cm.run(feeds)[0], ref[0])
    cm.save(str(tmp_path / "g.so"))  # integer input buffers survive the artifact and its checks
    np.testing.assert_array_equal(load_module(str(tmp_path / "g.so")).run(feeds)[0], ref[0])


@pytest.mark.parametrize("dt,np_dt", [(T.INT64, np.int64), (T.INT32, np.int32), (T.BOOL, np.bool_),
                                      (T.UINT8, np.uint8), (T.INT8, np.int8)])
def test_cast_of_an_integer_input_to_float(dt, np_dt):
    nodes = [h.make_node("Cast", ["m"], ["f"], to=T.FLOAT), h.make_node("Neg", ["f"], ["y"])]
    g = h.make_graph(nodes, "cast", [h.make_tensor_value_info("m", dt, [2, 5])], [_any("y", 2)])
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8)
    m = (np.arange(10).reshape(2, 5) * 37 - 100).astype(np_dt)
    assert unsupported_ops(import_model(proto), {"m": (2, 5)}) == []
    got = compile_model(import_model(proto), {"m": (2, 5)}).run({"m": m})[0]
    np.testing.assert_array_equal(got, _ort(proto, {"m": m})[0])


def test_gather_of_indices_made_at_run_time_is_a_kernel():
    # the indices come from an integer kernel (Add) through an int64 buffer, not from a host call
    nodes = [h.make_node("Add", ["ids", "one"], ["ids1"]), h.make_node("Gather", ["table", "ids1"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("ids", T.INT64, [3])], [_any("y", 2)],
                     [nh.from_array(np.arange(20, dtype=np.float32).reshape(5, 4), "table"),
                      nh.from_array(np.array(1), "one")])
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8)
    assert unsupported_ops(import_model(proto), {"ids": (3,)}) == []
    cm = compile_model(import_model(proto), {"ids": (3,)})
    assert "host" not in cm.summary
    got = cm.run({"ids": np.array([0, -2, 3])})[0]
    np.testing.assert_array_equal(got, _ort(proto, {"ids": np.array([0, -2, 3])})[0])


SHAPE_OPS = {"Gather", "Cast", "Equal", "Where", "Expand", "Split", "Shape", "Concat", "Range", "ConstantOfShape"}


@pytest.mark.slow
def test_minilm_encoder_leaves_no_shape_or_index_op_to_the_host():
    from tvmlite.zoo import wheel_cache
    from tvmlite.zoo_encoder import MINILM_WHEEL, minilm_encoder

    stem = f"{MINILM_WHEEL[0].replace('-', '_').lower()}-{MINILM_WHEEL[1]}-"
    if not any(p.name.lower().startswith(stem) for p in wheel_cache().glob("*.whl")):
        pytest.skip(f"all-MiniLM-L6-v2 wheel not in the cache {wheel_cache()} (this test does not download)")
    proto, _ = minilm_encoder()
    shapes = {i.name: (1, 128) for i in proto.graph.input}
    cm = compile_model(import_model(proto), shapes)
    host = {line.split(" ")[0].rstrip(":") for line in cm.host_ops}
    assert not host & SHAPE_OPS, cm.host_ops
    rng = np.random.default_rng(4)
    feeds = {}
    for i in proto.graph.input:
        hi = {"input_ids": 30000, "token_type_ids": 2, "attention_mask": 2}.get(i.name, 2)
        feeds[i.name] = rng.integers(0, hi, (1, 128)).astype(np.int64)
    feeds["attention_mask"][0, :100] = 1
    got, ref = cm.run(feeds), _ort(proto, feeds)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        rel = np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-6)
        assert rel <= 1e-4, rel


def _vad_without_if():
    """real_graphs.vad with its If replaced by the 16 kHz branch inlined (and the sr input gone):
    the If-free variant of issue 15, whose state Gathers and trip-count arithmetic must not stay
    on the host (its Loop does: control flow is issue 15 item 1's)."""
    import onnx

    from real_graphs import vad

    proto, shapes = vad()
    g = proto.graph
    nodes = []
    for n in g.node:
        if n.op_type == "If":
            then = next(a.g for a in n.attribute if a.name == "then_branch")
            inner = list(then.node)
            for m in inner:
                m.output[:] = [n.output[0] if o == then.output[0].name else o for o in m.output]
            nodes += inner
            g.initializer.extend(then.initializer)
        elif n.op_type == "Equal" and "sr" in n.input:
            continue
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    keep = [i for i in g.input if i.name != "sr"]
    del g.input[:]
    g.input.extend(keep)
    onnx.checker.check_model(proto)
    return proto, shapes


def test_vad_without_if_leaves_only_the_loop_on_the_host():
    proto, shapes = _vad_without_if()
    cm = compile_model(import_model(proto), shapes)
    # the Loop runs a constant number of steps and keeps its state's shape (loop_shapes.py), so what
    # reads its outputs (the new state's Unsqueeze/Concat, the decoder conv) has static shapes: kernels
    assert cm.host_ops == ["Loop: control flow"], cm.host_ops
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    got, ref = cm.run(feeds), _ort(proto, feeds)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        rel = np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-6)
        assert rel <= 1e-4, rel
