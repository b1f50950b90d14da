"""The clean-up families behind `simplify` (--preset clean): each rewrites what it should, leaves alone
what it cannot prove equal (with a reason), keeps symbolic dims, output names and types, and keeps
outputs within 1e-5 in onnxruntime on real models."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvmlite
from tvmlite.passes import Pipeline
from tvmlite.export import export_model

from conftest import corpus_model
from helpers import make_model, ort_run, tensor

rng = np.random.default_rng(0)


def ops(m):
    return [n.op_type for n in m.graph.toposort()]


def same_outputs(proto, m, feeds, tol=1e-5):
    out = export_model(m)
    onnx.checker.check_model(out)  # incl. IR < 4 (light_*): initializers there must be graph inputs
    assert [o.name for o in out.graph.output] == [o.name for o in proto.graph.output]
    assert [o.type for o in out.graph.output] == [o.type for o in proto.graph.output]
    for a, b in zip(ort_run(proto, feeds), ort_run(out, feeds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=tol * max(1.0, float(np.abs(a).max())))
    return out


def test_shape_chain_folds_keeping_batch_symbolic():
    # paddle2onnx's flatten: Shape -> Cast(int32) -> Slice[0:1] -> Cast(int64) -> Concat([n, 12]) -> Reshape
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
             helper.make_node("Slice", ["s32", "st", "en", "ax"], ["n32"]),
             helper.make_node("Cast", ["n32"], ["n"], to=TensorProto.INT64),
             helper.make_node("Concat", ["n", "c12"], ["shape"], axis=0),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    proto = make_model(nodes, [tensor("x", ["N", 3, 2, 2])], [tensor("y", ["N", 12])],
                       [("st", np.array([0])), ("en", np.array([1])), ("ax", np.array([0])),
                        ("c12", np.array([12]))])
    m = tvmlite.load(proto)
    r = Pipeline("fold-shapes,dce").run(m)[0]
    assert r.rewritten == ["Reshape->y"]
    assert ops(m) == ["Relu", "Reshape"]
    assert list(m.graph.const_value(m.graph.producer("y").inputs[1])) == [0, 12]
    out = export_model(m)
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 5):
        same_outputs(proto, m, {"x": rng.standard_normal((n, 3, 2, 2)).astype(np.float32)}, tol=0)


def test_shape_of_other_tensor_becomes_minus_one_and_static_shapes_become_constants():
    # reshape z to [batch of x, -> symbolic dim of another tensor, 4]: only one unknown -> -1
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i1"], ["d1"], axis=0),
             helper.make_node("Unsqueeze", ["d1", "ax0"], ["d1v"]),
             helper.make_node("Concat", ["c0", "d1v", "c4"], ["shape"], axis=0),
             helper.make_node("Reshape", ["z", "shape"], ["y"]),
             helper.make_node("Shape", ["w"], ["ws"]),  # static: becomes a constant
             helper.make_node("Cast", ["ws"], ["y2"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["y2"], ["y3"])]
    proto = make_model(nodes, [tensor("x", ["B", "T"]), tensor("z", ["B", "T4"]), tensor("w", [2, 5])],
                       [tensor("y", ["B", "T", 4]), tensor("y3", [2])],
                       [("i1", np.array(1)), ("ax0", np.array([0])), ("c0", np.array([0])), ("c4", np.array([4]))])
    m = tvmlite.load(proto)
    Pipeline("fold-shapes,fold-constants,dce").run(m)
    assert ops(m) == ["Reshape", "Identity"]
    assert list(m.graph.const_value(m.graph.producer("y").inputs[1])) == [0, -1, 4]
    feeds = {"x": np.zeros((2, 3), np.float32), "z": rng.standard_normal((2, 12)).astype(np.float32),
             "w": np.zeros((2, 5), np.float32)}
    same_outputs(proto, m, feeds, tol=0)


def test_two_symbolic_dims_from_elsewhere_are_refused():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["z", "s"], ["y"])]
    proto = make_model(nodes, [tensor("x", ["A", "B"]), tensor("z", ["C"])], [tensor("y", ["A", "B"])])
    m = tvmlite.load(proto)
    r = Pipeline("fold-shapes").run(m)[0]
    assert not r.changed and "2 symbolic dims" in r.skipped[0][1]


def conv_model(post, c_shape, sub_first=False):
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    c = rng.uniform(0.5, 2, c_shape).astype(np.float32)
    ins = ["c", "p"] if sub_first else ["p", "c"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["p"], pads=[1, 1, 1, 1]),
             helper.make_node(post, ins, ["q"]), helper.make_node("Add", ["q", "t"], ["y"])]
    t = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    return make_model(nodes, [tensor("x", ["N", 2, 5, 5])], [tensor("y", ["N", 4, 5, 5])],
                      [("w", w), ("b", b), ("c", c), ("t", t)])


@pytest.mark.parametrize("post,c_shape,fused", [("Mul", (4, 1, 1), 2), ("Mul", (1,), 2), ("Sub", (), 2),
                                                ("Mul", (1, 1, 5, 1), 0), ("Mul", (2, 4, 1, 1), 0)])
def test_conv_affine(post, c_shape, fused):
    proto = conv_model(post, c_shape)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-conv-affine").run(m)[0]
    assert r.stats["fused"] == fused
    if not fused:
        assert "not per output channel" in r.skipped[0][1]
    assert ops(m) == ["Conv"] if fused == 2 else ["Conv", post, "Add"]
    same_outputs(proto, m, {"x": rng.standard_normal((2, 2, 5, 5)).astype(np.float32)})


def test_constant_minus_conv_is_left_alone():
    proto = conv_model("Sub", (4, 1, 1), sub_first=True)
    m = tvmlite.load(proto)
    r = Pipeline("fuse-conv-affine").run(m)[0]
    assert ops(m) == ["Conv", "Sub", "Add"] and r.skipped[0] == ("Sub->q", "constant minus Conv")


@pytest.mark.parametrize("a_shape,c_shape,ok", [(["N", 6], (5,), True), ([3, 6], (3, 1), True),
                                                (["N", 6], ("N", 5), False), ([2, 3, 6], (5,), False)])
def test_matmul_add_to_gemm(a_shape, c_shape, ok):
    b = rng.standard_normal((6, 5)).astype(np.float32)
    c = rng.standard_normal([d if isinstance(d, int) else 3 for d in c_shape]).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["p"]), helper.make_node("Add", ["p", "c"], ["y"])]
    out_shape = list(a_shape[:-1]) + [5]
    proto = make_model(nodes, [tensor("a", a_shape)], [tensor("y", out_shape)], [("b", b), ("c", c)])
    m = tvmlite.load(proto)
    r = Pipeline("matmul-add-to-gemm").run(m)[0]
    assert ops(m) == (["Gemm"] if ok else ["MatMul", "Add"])
    if not ok:
        assert r.skipped
    shape = [d if isinstance(d, int) else 3 for d in a_shape]
    same_outputs(proto, m, {"a": rng.standard_normal(shape).astype(np.float32)})


def test_redundant_pairs():
    nodes = [helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 2, 1]),
             helper.make_node("Cast", ["t2"], ["c1"], to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["c1"], ["c2"], to=TensorProto.FLOAT),  # float->double->float: exact
             helper.make_node("Cast", ["c2"], ["i1"], to=TensorProto.INT32),
             helper.make_node("Cast", ["i1"], ["f1"], to=TensorProto.FLOAT),  # truncation: must stay
             helper.make_node("Unsqueeze", ["f1", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["s"]),
             helper.make_node("Reshape", ["s", "s1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "s2"], ["y"])]
    proto = make_model(nodes, [tensor("x", [2, 3, 4])], [tensor("y", [6, 4])],
                       [("ax", np.array([1])), ("s1", np.array([24])), ("s2", np.array([6, -1]))])
    m = tvmlite.load(proto)
    Pipeline("remove-redundant,dce").run(m)
    assert ops(m) == ["Cast", "Cast", "Reshape"]
    same_outputs(proto, m, {"x": (rng.standard_normal((2, 3, 4)) * 10).astype(np.float32)}, tol=0)


def test_cse_merges_duplicates_but_not_random_ops():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Add", ["a", "k1"], ["a2"]), helper.make_node("Add", ["b", "k2"], ["b2"]),
             helper.make_node("RandomNormalLike", ["x"], ["n1"]), helper.make_node("RandomNormalLike", ["x"], ["n2"]),
             helper.make_node("Sub", ["n1", "n2"], ["d"]),
             helper.make_node("Mul", ["a2", "b2"], ["y"])]
    k = rng.standard_normal(3).astype(np.float32)
    proto = make_model(nodes, [tensor("x", [3])], [tensor("y", [3]), tensor("d", [3])], [("k1", k), ("k2", k.copy())])
    m = tvmlite.load(proto)
    r = Pipeline("cse").run(m)[0]
    assert r.stats["initializers_merged"] == 1 and r.stats["nodes_merged"] == 2
    assert sorted(ops(m)) == ["Add", "Mul", "RandomNormalLike", "RandomNormalLike", "Relu", "Sub"]
    x = rng.standard_normal(3).astype(np.float32)
    np.testing.assert_array_equal(ort_run(export_model(m), {"x": x})[0], ort_run(proto, {"x": x})[0])


def test_lift_constants_keeps_graph_output_constants():
    nodes = [helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0]),
             helper.make_node("Constant", [], ["z"], value_int=3),
             helper.make_node("Add", ["x", "k"], ["y"])]
    proto = make_model(nodes, [tensor("x", [2])], [tensor("y", [2]), tensor("z", [], TensorProto.INT64)])
    m = tvmlite.load(proto)
    r = Pipeline("lift-constants").run(m)[0]
    assert r.stats["lifted"] == 1 and "k" in m.graph.initializers
    assert ops(m) == ["Constant", "Add"]
    same_outputs(proto, m, {"x": np.ones(2, np.float32)}, tol=0)


# The node counts onnxsim 0.8.1 / onnxslim 0.1.98 leave (non-Constant nodes, the fewer of the two;
# bench/bench_peers.py measures them): --preset clean must leave no more.
PEERS = {"ch_ppocr_mobile_v2.0_cls_infer.onnx": ((1, 3, 48, 192), 179),
         "ch_PP-OCRv4_rec_infer.onnx": ((1, 3, 48, 320), 383),
         "ch_PP-OCRv4_det_infer.onnx": ((1, 3, 640, 640), 297)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PEERS))
@pytest.mark.parametrize("static", [False, True])
def test_corpus_at_least_as_small_as_peers(name, static):
    shape, peer_nodes = PEERS[name]
    proto = onnx.load(corpus_model(name))
    m = tvmlite.load(proto)
    if static:  # the model with its input declared at the benchmark size
        from tvmlite.export.shapes import fix_input_shapes

        fix_input_shapes(m, {"x": list(shape)})
        proto = export_model(m)
    Pipeline("simplify").run(m)
    nodes = sum(n.op_type != "Constant" for n in m.graph.toposort())
    assert nodes <= peer_nodes
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    out = same_outputs(proto, m, {"x": x})
    if not static:
        assert out.graph.input[0].type == proto.graph.input[0].type  # symbolic dims stay symbolic


def test_digits_example(tmp_path):
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "models" / "digits_cnn.onnx"
    proto = onnx.load(path)
    m = tvmlite.load(proto)
    Pipeline("simplify").run(m)
    assert sum(n.op_type != "Constant" for n in m.graph.toposort()) <= 15  # onnxsim and onnxslim: 15
    x = np.load(path.parent / "digits_test.npz")
    feeds = {proto.graph.input[0].name: x[x.files[0]][:8].astype(np.float32)}
    same_outputs(proto, m, feeds)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_resnet50.onnx", "light_densenet121.onnx", "light_inception_v2.onnx",
                                  "light_shufflenet.onnx", "light_squeezenet.onnx"])
def test_light_models(name):
    from tvmlite.zoo import LIGHT_DIR, randomized_light

    if not (LIGHT_DIR / name).exists():
        pytest.skip(f"{name} not in this onnx wheel")
    proto = randomized_light(name)
    m = tvmlite.load(proto)
    before = len(m.graph)
    Pipeline("simplify").run(m)
    assert len(m.graph) < before
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    same_outputs(proto, m, {inp.name: rng.standard_normal(shape).astype(np.float32)})


def test_conv_bn_fold_is_bit_identical_in_onnxruntime():
    # onnxruntime folds Conv+BN itself at load; fold-bn uses the same float32 arithmetic
    c = 16
    w = rng.standard_normal((c, 8, 3, 3)).astype(np.float32)
    params = [("s", rng.uniform(0.5, 2, c)), ("t", rng.standard_normal(c)), ("mu", rng.standard_normal(c)),
              ("var", rng.uniform(0.01, 2, c))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["p"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["p", "s", "t", "mu", "var"], ["y"], epsilon=1e-3)]
    proto = make_model(nodes, [tensor("x", ["N", 8, 9, 9])], [tensor("y", ["N", c, 9, 9])],
                       [("w", w), ("b", rng.standard_normal(c).astype(np.float32))]
                       + [(n, a.astype(np.float32)) for n, a in params])
    m = tvmlite.load(proto)
    assert Pipeline("fold-bn").run(m)[0].stats["folded"] == 1
    same_outputs(proto, m, {"x": rng.standard_normal((2, 8, 9, 9)).astype(np.float32)}, tol=0)
