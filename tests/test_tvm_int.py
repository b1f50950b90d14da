"""Ops the TVM backend used to leave to host calls, now emitted as kernels (issue 15 item 2/3), each
checked against onnxruntime: Split in each of its forms, Gather, integer and bool tensors
(comparisons, logical ops, Where, Expand, Cast, integer arithmetic, data movement, values made at
run time), shape arithmetic folded at build time; the YOLO-style detector and MiniLM with no
host-run op, the VAD model with only its control flow left on the host."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from real_graphs import detector, vad, vad_without_if
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


@pytest.mark.slow
def test_minilm_encoder_builds_with_no_host_call():
    from tvmlite.zoo import wheel_cache
    from tvmlite.zoo_encoder import MINILM_WHEEL, minilm_encoder

    stem = f"{MINILM_WHEEL[0].replace('-', '_').lower()}-{MINILM_WHEEL[1]}-"
    if not any(p.name.lower().startswith(stem) for p in wheel_cache().glob("*.whl")):
        pytest.skip(f"all-MiniLM-L6-v2 wheel not in the cache {wheel_cache()} (this test does not download)")
    proto, _ = minilm_encoder()
    shapes = {i.name: (1, 128) for i in proto.graph.input}
    cm = compile_model(import_model(proto), shapes)
    assert cm.host_ops == [], cm.host_ops  # its mask arithmetic included (Cast, Sub, Mul, Unsqueeze)
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


def test_vad_without_if_leaves_only_the_loop_on_the_host():
    proto, shapes = vad_without_if()
    cm = compile_model(import_model(proto), shapes)
    # the Loop runs a constant number of steps and keeps its state's shape (loop_shapes.py), so what
    # reads its outputs (the new state's Unsqueeze/Concat, the decoder conv) has static shapes: kernels
    assert len(cm.host_ops) == 1 and cm.host_ops[0].startswith("Loop: control flow"), cm.host_ops
    _vad_matches_onnxruntime(proto, shapes, cm, [None])


def test_vad_with_if_runs_its_sample_rate_test_as_a_kernel():
    """The If's branches make features of different lengths (31 frames at 16 kHz, 63 at 8 kHz):
    what follows it moves into both branches (control.sink_into_branches), so the If alone is
    host-run; the Equal that picks the branch reads the int64 rate as a kernel."""
    proto, shapes = vad()
    shapes = dict(shapes, sr=())
    cm = compile_model(import_model(proto), shapes)
    assert len(cm.host_ops) == 1 and cm.host_ops[0].startswith("If: control flow"), cm.host_ops
    assert not any(line.startswith("Equal") for line in cm.host_ops), cm.host_ops
    _vad_matches_onnxruntime(proto, shapes, cm, [16000, 8000])


def _vad_matches_onnxruntime(proto, shapes, cm, rates):
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items() if n != "sr"}
    for sr in rates:
        if sr is not None:
            feeds["sr"] = np.array(sr, np.int64)
        _close(cm.run(feeds), _ort(proto, feeds))


def _close(got, ref):
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        rel = np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-6)
        assert rel <= 1e-4, rel


# ------------------------------------------------------------- integer and bool ops as kernels
_NP2T = {np.dtype(k): v for k, v in ((np.float32, T.FLOAT), (np.int64, T.INT64), (np.int32, T.INT32),
                                     (np.uint8, T.UINT8), (np.int8, T.INT8), (np.bool_, T.BOOL))}


def _typed_model(nodes, feeds, outputs, inits=None, opset=17):
    """A model of ``nodes`` over inputs shaped and typed like ``feeds``; ``outputs``: (name, rank),
    each declared with symbolic dims and the element type onnx infers for it."""
    ins = [h.make_tensor_value_info(n, _NP2T[a.dtype], list(a.shape)) for n, a in feeds.items()]
    inits = [nh.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    probe = h.make_model(h.make_graph(nodes, "m", ins, [], inits), opset_imports=[h.make_opsetid("", opset)],
                         ir_version=8)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in onnx.shape_inference.infer_shapes(probe).graph.value_info}
    outs = [h.make_tensor_value_info(n, types[n], [f"{n}_{i}" for i in range(r)]) for n, r in outputs]
    return h.make_model(h.make_graph(nodes, "m", ins, outs, inits), opset_imports=[h.make_opsetid("", opset)],
                        ir_version=8)


def _matches_onnxruntime(proto, feeds, tmp_path=None):
    """Built with no host call, the outputs equal onnxruntime's (dtype, shape and values; floats to
    1e-6); through a saved artifact too when ``tmp_path`` is given."""
    shapes = {n: a.shape for n, a in feeds.items()}
    assert unsupported_ops(import_model(proto), shapes) == []
    cm = compile_model(import_model(proto), shapes)
    assert "host" not in cm.summary, cm.host_ops
    ref = _ort(proto, feeds)
    runs = [cm]
    if tmp_path is not None:
        cm.save(str(tmp_path / "m.so"))
        runs.append(load_module(str(tmp_path / "m.so")))
    for built in runs:
        for g, r, o in zip(built.run(feeds), ref, proto.graph.output):
            assert g.dtype == r.dtype and g.shape == r.shape, (o.name, g.dtype, r.dtype, g.shape, r.shape)
            if r.dtype.kind == "f":
                np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6, err_msg=o.name)
            else:
                np.testing.assert_array_equal(g, r, err_msg=o.name)


_RNG = np.random.default_rng(11)


def _ints(shape, dtype=np.int64, lo=-9, hi=10, nonzero=False):
    a = _RNG.integers(lo, hi, shape).astype(dtype)
    if nonzero:
        a[a == 0] = 1
    return a


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.uint8])
def test_comparisons_broadcast_like_onnxruntime(dtype):
    a = _ints((2, 1, 5), np.int64, 0, 6).astype(dtype)
    b = _ints((3, 1), np.int64, 0, 6).astype(dtype)
    ops = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]
    nodes = [h.make_node(op, ["a", "b"], [op.lower()]) for op in ops]
    nodes.append(h.make_node("Less", ["a", "three"], ["lt_scalar"]))  # a 0-d constant operand
    proto = _typed_model(nodes, {"a": a, "b": b}, [(op.lower(), 3) for op in ops] + [("lt_scalar", 3)],
                         {"three": np.array(3, dtype)})
    _matches_onnxruntime(proto, {"a": a, "b": b})


def test_logical_ops_and_not_on_bool_buffers():
    p = _RNG.integers(0, 2, (2, 3, 1)).astype(bool)
    q = _RNG.integers(0, 2, (4,)).astype(bool)
    nodes = [h.make_node("And", ["p", "q"], ["and"]), h.make_node("Or", ["p", "q"], ["or"]),
             h.make_node("Xor", ["p", "q"], ["xor"]), h.make_node("Not", ["and"], ["nand"]),
             h.make_node("Equal", ["p", "q"], ["eq"])]
    proto = _typed_model(nodes, {"p": p, "q": q}, [("and", 3), ("or", 3), ("xor", 3), ("nand", 3), ("eq", 3)])
    _matches_onnxruntime(proto, {"p": p, "q": q})


def test_where_broadcasts_float_and_int_branches(tmp_path):
    c = _RNG.integers(0, 2, (3, 1, 4)).astype(bool)
    x = _RNG.standard_normal((2, 1)).astype(np.float32)
    i = _ints((1, 4))
    nodes = [h.make_node("Where", ["c", "x", "half"], ["wf"]),         # float, a 0-d constant branch
             h.make_node("Where", ["c", "i", "ic"], ["wi"]),           # int64, constant [3, 1, 1]
             h.make_node("Neg", ["x"], ["negx"]),
             h.make_node("Greater", ["x", "zero"], ["pos"]),           # a bool made by a kernel...
             h.make_node("Where", ["pos", "x", "negx"], ["relu_like"])]  # ...read as the condition
    proto = _typed_model(nodes, {"c": c, "x": x, "i": i}, [("wf", 3), ("wi", 3), ("relu_like", 2)],
                         {"half": np.array(0.5, np.float32), "ic": _ints((3, 1, 1)), "zero": np.array(0, np.float32)})
    _matches_onnxruntime(proto, {"c": c, "x": x, "i": i}, tmp_path)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_arithmetic_truncates_and_wraps_like_onnxruntime(dtype):
    a = np.array([[-7, 7, -8, 9, 0, -1], [5, -5, 6, -6, 13, -13]], dtype)
    b = np.array([2, -2, 3, -3, 4, -4], dtype)  # no zero divisor: onnxruntime leaves that undefined
    ops = ["Add", "Sub", "Mul", "Div", "Min", "Max"]
    nodes = [h.make_node(op, ["a", "b"], [op.lower()]) for op in ops]
    nodes += [h.make_node("Mod", ["a", "b"], ["mod"]), h.make_node("Mod", ["a", "b"], ["fmod"], fmod=1),
              h.make_node("Neg", ["a"], ["neg"]), h.make_node("Abs", ["a"], ["abs"]),
              h.make_node("Div", ["a", "two"], ["div_c"]), h.make_node("Sub", ["two", "a"], ["rsub"]),
              h.make_node("Max", ["a", "b", "two"], ["max3"])]
    outs = [(n, 2) for n in [op.lower() for op in ops] + ["mod", "fmod", "neg", "abs", "div_c", "rsub", "max3"]]
    proto = _typed_model(nodes, {"a": a, "b": b}, outs, {"two": np.array(2, dtype)}, opset=13)
    _matches_onnxruntime(proto, {"a": a, "b": b})


def test_uint8_and_int8_arithmetic_wraps():
    a = np.array([200, 3, 255, 0], np.uint8)
    s = np.array([100, -100, 127, -128], np.int8)
    nodes = [h.make_node("Add", ["a", "hundred"], ["au"]), h.make_node("Mul", ["s", "two"], ["sm"]),
             h.make_node("Sub", ["s", "s2"], ["ss"]), h.make_node("Abs", ["s"], ["sa"])]
    proto = _typed_model(nodes, {"a": a, "s": s}, [("au", 1), ("sm", 1), ("ss", 1), ("sa", 1)],
                         {"hundred": np.array(100, np.uint8), "two": np.array(2, np.int8),
                          "s2": np.array([-100, 100, -1, 1], np.int8)}, opset=14)
    _matches_onnxruntime(proto, {"a": a, "s": s})


def test_casts_between_float_int_and_bool():
    f = np.array([[-2.7, -0.5, 0.0, 0.4, 1.5, 2.99]], np.float32)
    i = np.array([[300, -1, 0, 7, -300, 65]], np.int32)
    nodes = [h.make_node("Cast", ["f"], ["f_i64"], to=T.INT64), h.make_node("Cast", ["f"], ["f_b"], to=T.BOOL),
             h.make_node("Cast", ["i"], ["i_u8"], to=T.UINT8), h.make_node("Cast", ["i"], ["i_i64"], to=T.INT64),
             h.make_node("Cast", ["i"], ["i_b"], to=T.BOOL), h.make_node("Cast", ["i_b"], ["b_i32"], to=T.INT32),
             h.make_node("Cast", ["i_i64"], ["i64_i32"], to=T.INT32), h.make_node("Cast", ["i_b"], ["b_f"], to=T.FLOAT)]
    outs = [(n, 2) for n in ("f_i64", "f_b", "i_u8", "i_i64", "i_b", "b_i32", "i64_i32", "b_f")]
    proto = _typed_model(nodes, {"f": f, "i": i}, outs)
    _matches_onnxruntime(proto, {"f": f, "i": i})


def test_expand_of_any_dtype_with_bidirectional_broadcast():
    x = _ints((3, 1))
    m = _RNG.integers(0, 2, (1, 4)).astype(bool)
    f = _RNG.standard_normal((3, 1)).astype(np.float32)
    nodes = [h.make_node("Expand", ["x", "s234"], ["xe"]), h.make_node("Expand", ["m", "s31"], ["me"]),
             h.make_node("Expand", ["f", "s14"], ["fe"])]  # [3, 1] by [1, 4]: [3, 4]
    proto = _typed_model(nodes, {"x": x, "m": m, "f": f}, [("xe", 3), ("me", 2), ("fe", 2)],
                         {"s234": np.array([2, 3, 4], np.int64), "s31": np.array([3, 1], np.int64),
                          "s14": np.array([1, 4], np.int64)})
    _matches_onnxruntime(proto, {"x": x, "m": m, "f": f})


def test_data_movement_on_integer_values():
    x = _ints((2, 3, 4))
    nodes = [h.make_node("Add", ["x", "one"], ["x1"]),  # a value made at run time
             h.make_node("Concat", ["x1", "c"], ["cat"], axis=1),
             h.make_node("Slice", ["cat", "st", "en", "ax", "sp"], ["sl"]),
             h.make_node("Transpose", ["sl"], ["tr"], perm=[2, 0, 1]),
             h.make_node("Split", ["tr", "parts"], ["s0", "s1"], axis=0),
             h.make_node("Unsqueeze", ["s1", "ax0"], ["un"]),
             h.make_node("Reshape", ["un", "flat"], ["re"]),
             h.make_node("Gather", ["re", "gi"], ["ga"], axis=0)]
    proto = _typed_model(nodes, {"x": x}, [("cat", 3), ("sl", 3), ("s0", 3), ("re", 1), ("ga", 2)],
                         {"one": np.array(1, np.int64), "c": _ints((2, 2, 4)),
                          "st": np.array([4, 1], np.int64), "en": np.array([-6, 100], np.int64),
                          "ax": np.array([1, 2], np.int64), "sp": np.array([-2, 2], np.int64),
                          "parts": np.array([1, 1], np.int64), "ax0": np.array([0], np.int64),
                          "flat": np.array([-1], np.int64), "gi": np.array([[0, -1], [2, 1]], np.int64)})
    _matches_onnxruntime(proto, {"x": x})


def test_a_run_time_id_chain_stays_in_kernels(tmp_path):
    """Position ids from a padding mask (Equal, Not, Cast, Mul, Sub, Where) feed an embedding
    Gather: every integer and bool value between them lives in a kernel buffer."""
    ids = np.array([[5, 9, 0, 3, 0, 0, 7, 1]], np.int64)
    nodes = [h.make_node("Equal", ["ids", "zero"], ["pad"]), h.make_node("Not", ["pad"], ["keep"]),
             h.make_node("Cast", ["keep"], ["keep_i"], to=T.INT64), h.make_node("Mul", ["keep_i", "ar"], ["pos"]),
             h.make_node("Sub", ["pos", "one"], ["pos1"]), h.make_node("Where", ["keep", "pos1", "zero"], ["pid"]),
             h.make_node("Gather", ["table", "pid"], ["emb"])]
    proto = _typed_model(nodes, {"ids": ids}, [("emb", 3), ("pid", 2), ("keep", 2)],
                         {"zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                          "ar": np.arange(1, 9, dtype=np.int64),
                          "table": _RNG.standard_normal((8, 6)).astype(np.float32)})
    _matches_onnxruntime(proto, {"ids": ids}, tmp_path)


def test_shape_arithmetic_folds_even_when_the_shape_is_a_graph_output():
    """Shape/Gather/Range/ConstantOfShape/Equal/Where/Cast on static shapes fold at build time,
    also when the Shape is itself a graph output (it is then a constant output)."""
    x = _RNG.standard_normal((2, 5, 3)).astype(np.float32)
    nodes = [h.make_node("Shape", ["x"], ["shp"]), h.make_node("Gather", ["shp", "one"], ["n"], axis=0),
             h.make_node("Range", ["zero", "n", "one"], ["ar"]),
             h.make_node("ConstantOfShape", ["shp"], ["ones"], value=nh.from_array(np.array([1.0], np.float32))),
             h.make_node("Equal", ["n", "five"], ["is5"]), h.make_node("Where", ["is5", "ar", "zero"], ["w"]),
             h.make_node("Cast", ["w"], ["wf"], to=T.FLOAT), h.make_node("Unsqueeze", ["wf", "axes"], ["wu"]),
             h.make_node("Mul", ["x", "wu"], ["xw"]), h.make_node("Add", ["xw", "ones"], ["y"])]
    proto = _typed_model(nodes, {"x": x}, [("y", 3), ("shp", 1)],
                         {"zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                          "five": np.array(5, np.int64), "axes": np.array([1], np.int64)})
    _matches_onnxruntime(proto, {"x": x})


def test_range_of_a_run_time_limit_is_host_run_with_the_reason():
    nodes = [h.make_node("Range", ["zero", "n", "one"], ["r"])]
    proto = _typed_model(nodes, {"n": np.array(4, np.int64)}, [("r", 1)],
                         {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)})
    assert unsupported_ops(import_model(proto), {"n": ()}) == [
        "Range (output shape depends on run-time values (folded when its inputs are constant))"]


def test_a_host_made_integer_value_is_read_by_a_kernel():
    """CumSum (no kernel) makes int64 ids on the host; the Gather kernel reads its int64 buffer."""
    ids = np.array([[1, 0, 2, 1]], np.int64)
    nodes = [h.make_node("CumSum", ["ids", "axis"], ["cs"]), h.make_node("Gather", ["table", "cs"], ["y"])]
    proto = _typed_model(nodes, {"ids": ids}, [("y", 3)],
                         {"axis": np.array(1, np.int64), "table": _RNG.standard_normal((5, 3)).astype(np.float32)})
    cm = compile_model(import_model(proto), {"ids": ids.shape})
    assert [line.split(":")[0] for line in cm.host_ops] == ["CumSum"], cm.host_ops
    assert cm.plan["buffers"]["cs"]["dtype"] == "int64"
    np.testing.assert_array_equal(cm.run({"ids": ids})[0], _ort(proto, {"ids": ids})[0])



def test_zero_d_integer_values_through_kernels_and_an_artifact(tmp_path):
    a, b = np.array(7, np.int64), np.array(-3, np.int64)
    nodes = [h.make_node("Div", ["a", "b"], ["q"]), h.make_node("Less", ["q", "a"], ["lt"]),
             h.make_node("Where", ["lt", "q", "b"], ["w"]), h.make_node("Unsqueeze", ["w", "ax"], ["wu"]),
             h.make_node("Concat", ["wu", "wu"], ["cat"], axis=0), h.make_node("Expand", ["lt", "sh"], ["lte"])]
    proto = _typed_model(nodes, {"a": a, "b": b}, [("w", 0), ("cat", 1), ("lte", 2), ("q", 0)],
                         {"ax": np.array([0], np.int64), "sh": np.array([2, 3], np.int64)})
    _matches_onnxruntime(proto, {"a": a, "b": b}, tmp_path)
