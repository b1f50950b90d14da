"""Models onnxruntime refuses are refused by tvmlite too, with a one-line message naming the node,
tensor or limit (issue 12): import checks, the NumPy backend's graph checks, the resource limits."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tvmlite import limits
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import ModelLoadError, ShapeError, TvmliteError
from tvmlite.frontend import load

X = h.make_tensor_value_info("x", T.FLOAT, [2, 2])
Y = h.make_tensor_value_info("y", T.FLOAT, [2, 2])
Y4 = h.make_tensor_value_info("y", T.FLOAT, ["a", "b", "c", "d"])


def model(nodes, inputs, outputs, inits=()):
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def add_w(w):
    return model([h.make_node("Add", ["x", "w"], ["y"], name="add")], [X], [Y], [w])


def run_numpy(m, feeds=None):
    plan = compile_model(load(m.SerializeToString()))
    return plan.run(feeds if feeds is not None else {"x": np.ones((2, 2), np.float32)})


def ort_refuses(m, feeds=None):
    try:
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        s.run(None, feeds if feeds is not None else {"x": np.ones((2, 2), np.float32)})
    except Exception:  # noqa: BLE001 - onnxruntime's own classes
        return True
    return False


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------------------- import
def test_raw_data_longer_than_dims():
    w = nh.from_array(np.ones((2, 2), np.float32), "w")
    w.raw_data += b"\0" * 8
    onnx.checker.check_model(add_w(w))  # the checker lets it through ...
    with pytest.raises(ModelLoadError) as e:
        load(add_w(w).SerializeToString())
    assert "initializer 'w'" in one_line(e) and "24 bytes" in str(e.value) and "need 16" in str(e.value)
    assert ort_refuses(add_w(w))  # ... onnxruntime does not


def test_unknown_data_type():
    w = nh.from_array(np.ones((2, 2), np.float32), "w")
    w.data_type = 999
    with pytest.raises(ModelLoadError, match="initializer 'w': data type 999 is not an ONNX"):
        load(add_w(w).SerializeToString())


def test_rank_100_and_huge_dims():
    w = h.make_tensor("w", T.FLOAT, [1] * 100, [1.0])
    with pytest.raises(limits.LimitError, match="'w': rank 100 is above the limit of 32"):
        load(add_w(w).SerializeToString())
    big = T(name="w", data_type=T.FLOAT, dims=[2**62, 2], raw_data=b"\0" * 16)
    with pytest.raises(limits.LimitError, match="TVMLITE_MAX_TENSOR_ELEMENTS"):
        load(add_w(big), check=False)


def test_typed_data_count_and_constant_attribute():
    w = h.make_tensor("w", T.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    del w.float_data[-1]
    with pytest.raises(ModelLoadError, match="float_data has 3 values, its dims \\[2, 2\\] need 4"):
        load(add_w(w), check=False)
    bad = nh.from_array(np.ones(3, np.float32), "c")
    bad.raw_data = bad.raw_data[:5]
    m = model([h.make_node("Constant", [], ["c"], name="k", value=bad),
               h.make_node("Add", ["x", "c"], ["y"])], [X], [Y])
    with pytest.raises(ModelLoadError, match="node 'k' attribute 'value': raw_data has 5 bytes"):
        load(m, check=False)


def test_huge_declared_input_is_refused_before_allocating():
    x = h.make_tensor_value_info("x", T.FLOAT, [2**20, 2**20])
    m = model([h.make_node("Relu", ["x"], ["y"])], [x], [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(limits.LimitError, match="input 'x'"):
        load(m, check=False)
    with limits.override(max_tensor_elements=2**41, max_tensor_bytes=2**43):
        load(m, check=False)
    # a graph output named like the input re-declares the input's type (found by the fuzzer)
    m = model([h.make_node("Relu", ["x"], ["y"])], [X], [h.make_tensor_value_info("x", T.FLOAT, [2**40, 3])])
    with pytest.raises(limits.LimitError, match="output 'x'"):
        load(m, check=False)


# ------------------------------------------------------------------------------- NumPy backend
def test_conv_with_empty_output_is_refused_like_onnxruntime():
    w = nh.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    m = model([h.make_node("Conv", ["x", "w"], ["y"], name="conv")],
              [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])], [Y4], [w])
    feeds = {"x": np.ones((1, 1, 2, 2), np.float32)}
    assert ort_refuses(m, feeds)
    with pytest.raises(ShapeError) as e:
        run_numpy(m, feeds)
    assert "node 'conv' (Conv)" in one_line(e) and "[0, 0] is empty" in str(e.value)
    # the same with the input shape unknown until run time: the kernel refuses it
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(ShapeError, match="node 'conv'.*empty"):
        run_numpy(m, feeds)


def test_pool_with_empty_output():
    m = model([h.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3])],
              [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])], [Y4])
    with pytest.raises(ShapeError, match="node 'pool' \\(MaxPool\\): output spatial shape \\[0, 0\\]"):
        compile_model(load(m))


def _branch(n_out, name, dtype=T.FLOAT):
    outs = [h.make_tensor_value_info(f"{name}_o{i}", dtype, [2, 2]) for i in range(n_out)]
    nodes = [h.make_node("Identity" if dtype == T.FLOAT else "Shape", ["x"], [f"{name}_o{i}"])
             for i in range(n_out)]
    return h.make_graph(nodes, name, [], outs)


@pytest.mark.parametrize("n_else", [0, 2])
def test_if_branch_output_counts(n_else):
    cond = h.make_tensor_value_info("c", T.BOOL, [])
    m = model([h.make_node("If", ["c"], ["y"], name="if", then_branch=_branch(1, "then"),
                           else_branch=_branch(n_else, "else"))], [cond, X], [Y])
    feeds = {"c": np.array(True), "x": np.ones((2, 2), np.float32)}
    assert ort_refuses(m, feeds)
    with pytest.raises(TvmliteError) as e:
        run_numpy(m, feeds)
    assert one_line(e) == f"node 'if' (If): else_branch has {n_else} outputs, the node has 1"


def test_if_branch_output_types_differ():
    cond = h.make_tensor_value_info("c", T.BOOL, [])
    m = model([h.make_node("If", ["c"], ["y"], name="if", then_branch=_branch(1, "then"),
                           else_branch=_branch(1, "else", T.INT64))], [cond, X], [Y])
    with pytest.raises(TvmliteError, match="node 'if' \\(If\\): output 0 is of type 1 in then_branch but 7"):
        run_numpy(m, {"c": np.array(True), "x": np.ones((2, 2), np.float32)})


def _loop_model(body_inputs, trip=3, cond=None, carried=("x",)):
    body_outs = [h.make_tensor_value_info("bc", T.BOOL, []), h.make_tensor_value_info("s2", T.FLOAT, [2, 2])]
    nodes = [h.make_node("Constant", [], ["bc"], value=nh.from_array(np.array(True))),
             h.make_node("Add", ["s" if len(body_inputs) > 2 else "x", "x"], ["s2"])]
    body = h.make_graph(nodes, "body", body_inputs, body_outs)
    inits = [nh.from_array(np.array(trip, np.int64), "M")]
    ins = ["M", ""]
    if cond is not None:
        inits.append(nh.from_array(np.array(cond), "C"))
        ins[1] = "C"
    return model([h.make_node("Loop", ins + list(carried), ["y"], name="loop", body=body)], [X], [Y], inits)


SIG = [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cin", T.BOOL, []),
       h.make_tensor_value_info("s", T.FLOAT, [2, 2])]


def test_loop_body_without_iteration_and_condition_inputs():
    m = _loop_model([], carried=())
    m.graph.node[0].ClearField("output")
    m.graph.node[0].output.append("y")
    m.graph.node[0].attribute[0].g.output.pop(1)
    m.graph.node[0].attribute[0].g.output.append(h.make_tensor_value_info("s2", T.FLOAT, [2, 2]))
    assert ort_refuses(m)
    with pytest.raises(TvmliteError) as e:
        run_numpy(m)
    assert "node 'loop' (Loop): body has 0 inputs, needs 2" in one_line(e)


def test_loop_runs_and_counts():
    np.testing.assert_allclose(run_numpy(_loop_model(SIG, trip=3))[0], np.full((2, 2), 4.0))


def test_loop_trip_count_beyond_limit_is_refused_at_load():
    m = _loop_model(SIG, trip=10**12)
    with pytest.raises(limits.LimitError) as e:
        load(m)
    msg = one_line(e)
    assert "Loop node 'loop': trip count 1,000,000,000,000" in msg and "TVMLITE_MAX_LOOP_ITERATIONS" in msg
    with limits.override(max_loop_iterations=2):  # the limit is configurable
        with pytest.raises(limits.LimitError):
            load(_loop_model(SIG, trip=3))
        load(_loop_model(SIG, trip=2))


def test_loop_with_a_condition_is_counted_at_run_time():
    # cond given and constant true, body condition constant true: cannot stop, refused at load
    with pytest.raises(limits.LimitError):
        load(_loop_model(SIG, trip=10**12, cond=True))
    # a trip count fed at run time: the NumPy kernel stops at the limit
    m = _loop_model(SIG, trip=0)
    m.graph.ClearField("initializer")
    m.graph.input.append(h.make_tensor_value_info("M", T.INT64, []))
    with limits.override(max_loop_iterations=50):
        plan = compile_model(load(m))
        np.testing.assert_allclose(plan.run({"x": np.ones((2, 2), np.float32),
                                             "M": np.array(50)})[0], np.full((2, 2), 51.0))
        with pytest.raises(limits.LimitError, match="node 'loop' \\(Loop\\): trip count M: 51 iter"):
            plan.run({"x": np.ones((2, 2), np.float32), "M": np.array(51)})


def test_graph_without_outputs():
    m = model([h.make_node("Relu", ["x"], ["r"], name="relu")], [X], [])
    with pytest.raises(TvmliteError, match="graph 'g' has no outputs"):
        run_numpy(m)


@pytest.mark.parametrize("case", ["gemm", "bn"])
def test_mismatched_gemm_and_batchnorm(case):
    if case == "gemm":
        m = model([h.make_node("Gemm", ["x", "w"], ["y"], name="gemm")], [X], [Y],
                  [nh.from_array(np.ones((3, 4), np.float32), "w")])
        feeds, want = None, "node 'gemm' (Gemm): Gemm: A is [2, 2], B is [3, 4]: inner dims differ"
    else:
        p = [nh.from_array(np.ones(3, np.float32), n) for n in "sbmv"]
        m = model([h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
                  [h.make_tensor_value_info("x", T.FLOAT, [1, 2, 2, 2])], [Y4], p)
        feeds = {"x": np.ones((1, 2, 2, 2), np.float32)}
        want = "node 'bn' (BatchNormalization): BatchNormalization scale of shape [3] does not fit"
    with pytest.raises(ShapeError) as e:
        run_numpy(m, feeds)
    assert one_line(e).startswith(want)
    # with a constant input the node is folded at compile time: same message
    m.graph.initializer.append(nh.from_array(np.ones((2, 2) if case == "gemm" else (1, 2, 2, 2),
                                                    np.float32), "x"))
    m.graph.ClearField("input")
    with pytest.raises(ShapeError) as e:
        compile_model(load(m, check=False))
    assert one_line(e).startswith(want)


# ------------------------------------------------------------------------------- resource limits
def test_folded_constant_beyond_limit_names_its_node():
    """ConstantOfShape of 2**40 elements: refused before allocating, at compile time (folding)."""
    shape = nh.from_array(np.array([2**20, 2**20], np.int64), "shape")
    m = model([h.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
               h.make_node("Add", ["x", "big"], ["y"], name="add")], [X],
              [h.make_tensor_value_info("y", T.FLOAT, None)], [shape])
    with pytest.raises(limits.LimitError) as e:
        compile_model(load(m, check=False))
    assert one_line(e).startswith("node 'fill' (ConstantOfShape): ConstantOfShape output: "
                                  "1,099,511,627,776 elements")
    with limits.override(max_tensor_bytes=1000):  # bytes are limited separately
        shape.CopyFrom(nh.from_array(np.array([16, 16], np.int64), "shape"))
        m.graph.initializer[0].CopyFrom(shape)
        with pytest.raises(limits.LimitError, match="1,024 bytes .*TVMLITE_MAX_TENSOR_BYTES"):
            compile_model(load(m, check=False))


def test_conv_pads_beyond_limit():
    w = nh.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    m = model([h.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[2**40, 0, 0, 0])],
              [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])], [Y4], [w])
    with pytest.raises(limits.LimitError, match="node 'conv' \\(Conv\\): Conv padded input"):
        run_numpy(m, {"x": np.ones((1, 1, 2, 2), np.float32)})


def test_limit_from_environment(monkeypatch):
    monkeypatch.setenv("TVMLITE_MAX_LOOP_ITERATIONS", "1_000")
    assert limits.max_loop_iterations() == 1000
    monkeypatch.setenv("TVMLITE_MAX_LOOP_ITERATIONS", "lots")
    with pytest.raises(limits.LimitError, match="TVMLITE_MAX_LOOP_ITERATIONS='lots' is not an integer"):
        limits.max_loop_iterations()


def test_output_listed_twice_with_different_types_is_refused():
    """Found by fuzzing (a renamed graph output): onnxruntime ran the file with the first type, the
    model tvmlite wrote carried the second, which onnxruntime refused."""
    nodes = [h.make_node("Relu", ["x"], ["y"], name="relu")]
    twice = model(nodes, [X], [Y, h.make_tensor_value_info("y", T.INT64, [2, 2])])
    with pytest.raises(ModelLoadError, match="output 'y' is listed twice with different types"):
        load(twice.SerializeToString())
    load(model(nodes, [X], [Y, Y]).SerializeToString())  # the same value twice, alike: fine


def test_negative_dims_are_read_as_unknown():
    """Exporters write -1 for a dynamic dim (invalid ONNX). onnx's inference computed with it
    (MaxPool halves it to 0): the clean preset recorded those dims and onnxruntime refused the model
    it wrote. Read (and inferred) as unknown, as onnxruntime reads them; the declarations are kept."""
    from tvmlite.export import export_model
    from tvmlite.optimize import optimize

    x = h.make_tensor_value_info("x", T.FLOAT, [1, 3, -1, 4])
    w = nh.from_array(np.ones((12, 5), np.float32) / 12, "w")
    nodes = [h.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 1], strides=[2, 1]),
             h.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 1, 3]),
             h.make_node("Reshape", ["t", "shape"], ["f"]),
             h.make_node("MatMul", ["f", "w"], ["y"])]
    shape = nh.from_array(np.array([1, -1, 12], np.int64), "shape")
    proto = model(nodes, [x], [h.make_tensor_value_info("y", T.FLOAT, [1, -1, 5])], [w, shape])
    m = load(proto.SerializeToString())
    assert m.graph.value("x").shape == (1, 3, None, 4)
    out, _ = optimize(proto.SerializeToString(), preset="clean", check=False, progress=False)
    written = export_model(out)
    assert all(d.dim_value >= 0 for vi in written.graph.value_info for d in vi.type.tensor_type.shape.dim)
    assert [o.type for o in written.graph.output] == [o.type for o in proto.graph.output]  # kept as declared
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 6, 4)).astype(np.float32)}
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)


def test_loop_body_output_that_is_its_input_with_another_type_is_refused():
    """Found by fuzzing: a Loop body whose condition output was renamed to the condition input,
    declared [3] where the input is a scalar. onnxruntime ran it; tvmlite took the output's type for
    the input and wrote a body onnxruntime refused. A compatible refinement still loads."""
    def loop(cond_out_shape, cond_in_shape=("c",)):
        body = h.make_graph(
            [h.make_node("Identity", ["s"], ["s2"])], "body",
            [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cin", T.BOOL, list(cond_in_shape)),
             h.make_tensor_value_info("s", T.FLOAT, [2, 2])],
            [h.make_tensor_value_info("cin", T.BOOL, cond_out_shape), h.make_tensor_value_info("s2", T.FLOAT, [2, 2])])
        nodes = [h.make_node("Loop", ["M", "", "x"], ["y"], name="loop", body=body)]
        return model(nodes, [X], [Y], [nh.from_array(np.array(2, np.int64), "M")])
    with pytest.raises(ModelLoadError, match="output 'cin' is also an input, declared there with another type"):
        load(loop([3, 1]).SerializeToString())
    load(loop([1]).SerializeToString())
    load(loop([-1], [1]).SerializeToString())  # a negative dim is unknown, as everywhere else on import
