"""Concat without copies (backends/tvm/concat_views.py): the kernels making a channel Concat's
inputs write into their slice of its output and the Concat's kernel disappears; inputs that cannot
move (graph inputs, constants, host calls' outputs, an input used twice) are copied into their
slice by a small kernel. Every case against onnxruntime, on the stretches and the per-call path,
and through a saved artifact."""
import json
import shutil

import numpy as np
import pytest
from onnx import helper as h

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from test_tvm_int import _typed_model  # noqa: E402
from test_tvm_plan import _ort, _per_call  # noqa: E402
from tvmlite.backends.tvm import compile_model, load_module  # noqa: E402
from tvmlite.backends.tvm.artifact_check import ArtifactError  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402

RNG = np.random.default_rng(11)


def _w(co, ci, k=1):
    return (RNG.standard_normal((co, ci, k, k)) * 0.3).astype(np.float32)


def _build(nodes, feeds, outputs, inits, tmp_path=None):
    """Built, its outputs equal onnxruntime's on the stretches (twice: buffers are reused), on the
    per-call path and, with ``tmp_path``, through a saved artifact loaded without the model."""
    proto = _typed_model(nodes, feeds, outputs, inits)
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()})
    ref = _ort(proto, feeds)
    runs = [cm]
    if tmp_path is not None:
        cm.save(str(tmp_path / "m.so"))
        runs.append(load_module(str(tmp_path / "m.so")))
    for m in runs:
        for got in (m.run(feeds), m.run(feeds), _per_call(m, feeds)):
            for g, r in zip(got, ref):
                np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    return cm


def _slices(cm):
    return {n: (b["of"], b["offset"]) for n, b in cm.plan["buffers"].items() if b.get("kind") == "slice"}


def _funcs(cm):
    return [c["func"] for c in cm.plan["calls"] if "func" in c]


def _x(c=3, hw=6):
    return {"x": RNG.standard_normal((1, c, hw, hw)).astype(np.float32)}


def test_channel_concat_of_two_convs_makes_no_kernel(tmp_path):
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Relu", ["a"], ["ra"]),
             h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["ra", "b"], ["c"], axis=1), h.make_node("Conv", ["c", "w3"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3), "w2": _w(5, 3), "w3": _w(2, 9)}, tmp_path)
    assert not any("concat" in f for f in _funcs(cm)), _funcs(cm)
    assert _slices(cm) == {"ra": ("c", 0), "b": ("c", 4 * 36)}


def test_without_the_views_the_concat_kernel_stays(monkeypatch):
    monkeypatch.setenv("TVMLITE_CONCAT_VIEWS", "0")
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3), "w2": _w(5, 3)})
    assert any("concat" in f for f in _funcs(cm)) and not _slices(cm)


def test_an_input_used_twice_is_placed_once_and_copied_once():
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b", "a"], ["c"], axis=1), h.make_node("Conv", ["c", "w3"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3), "w2": _w(5, 3), "w3": _w(2, 13)})
    s = _slices(cm)
    assert s["a"] == ("c", 0) and s["b"] == ("c", 4 * 36) and s["c:part2"] == ("c", 9 * 36), s
    assert sum("concat" in f for f in _funcs(cm)) == 1  # the copy of the second "a"


def test_an_input_also_read_elsewhere_and_graph_outputs_read_their_slices(tmp_path):
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["c"], axis=1), h.make_node("Sigmoid", ["a"], ["s"]),
             h.make_node("Conv", ["c", "w3"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4), ("b", 4), ("s", 4), ("c", 4)],
                {"w1": _w(4, 3), "w2": _w(5, 3), "w3": _w(2, 9)}, tmp_path)
    assert set(_slices(cm)) == {"a", "b"}


def test_graph_inputs_and_constants_are_copied_into_their_slices(tmp_path):
    k = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Concat", ["x", "a", "k", "x"], ["c"], axis=1),
             h.make_node("Conv", ["c", "w3"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3), "w3": _w(2, 12), "k": k}, tmp_path)
    s = _slices(cm)
    assert s["a"] == ("c", 3 * 36) and s["c:part0"] == ("c", 0) and s["c:part2"] == ("c", 7 * 36), s


def test_an_empty_input_takes_no_slice():
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "e", "b"], ["c"], axis=1), h.make_node("Conv", ["c", "w3"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3), "w2": _w(5, 3), "w3": _w(2, 9),
                                           "e": np.zeros((1, 0, 6, 6), np.float32)})
    assert _slices(cm) == {"a": ("c", 0), "b": ("c", 4 * 36)} and not any("concat" in f for f in _funcs(cm))


def test_a_concat_with_an_epilogue_keeps_its_kernel():
    """Concat -> Relu where an input (the graph input) has no kernel to take the Relu: the copy
    applies it, views would need a pass for it. (ShuffleNet's, whose inputs are a conv's and a
    pool's, moves the Relu onto them and becomes views: test_tvm_concat_acts.py.)"""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]),
             h.make_node("Concat", ["a", "x"], ["c"], axis=1), h.make_node("Relu", ["c"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3)})
    assert not _slices(cm) and [c["nodes"] for c in cm.plan["calls"] if "concat" in c["func"]] == [["Concat->c", "Relu->y"]]


def test_a_concat_behind_its_inputs_activation_takes_views():
    """ShuffleNet's Concat(conv, AveragePool) -> Relu: the Relu moves into both kernels (concat_acts.py)
    and each writes its slice."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("AveragePool", ["x"], ["p"], kernel_shape=[1, 1]),
             h.make_node("Concat", ["a", "p"], ["c"], axis=1), h.make_node("Relu", ["c"], ["y"])]
    cm = _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3)})
    assert set(_slices(cm)) == {"a_relu", "p_relu"} and not any("concat" in f for f in _funcs(cm))


def test_a_concat_of_graph_inputs_only_keeps_its_kernel_and_epilogue():
    feeds = {"x": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32),
             "z": RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)}
    nodes = [h.make_node("Concat", ["x", "z"], ["c"], axis=1), h.make_node("Relu", ["c"], ["y"])]
    cm = _build(nodes, feeds, [("y", 4)], {})
    assert not _slices(cm) and len(_funcs(cm)) == 1


def test_a_host_calls_output_is_copied_and_its_neighbour_placed_and_read_by_a_host_call():
    ax = np.array(3, np.int64)
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("CumSum", ["a", "ax"], ["cs"]),
             h.make_node("Conv", ["x", "w2"], ["b"]), h.make_node("Concat", ["cs", "b"], ["c"], axis=1),
             h.make_node("Conv", ["c", "w3"], ["y"]), h.make_node("CumSum", ["b", "ax"], ["cb"])]
    cm = _build(nodes, _x(), [("y", 4), ("cb", 4)], {"w1": _w(4, 3), "w2": _w(5, 3), "w3": _w(2, 9), "ax": ax})
    assert cm.host_ops and _slices(cm) == {"b": ("c", 4 * 36), "c:part0": ("c", 0)}


def test_nested_concats_share_one_buffer_like_densenet_blocks(tmp_path):
    nodes = [h.make_node("Conv", ["x", "w0"], ["f0"]), h.make_node("MaxPool", ["f0"], ["p"], kernel_shape=[1, 1])]
    prev, ch, inits = "p", 4, {"w0": _w(4, 3)}
    for i in range(3):
        nodes += [h.make_node("Mul", [prev, f"s{i}"], [f"m{i}"]), h.make_node("Relu", [f"m{i}"], [f"r{i}"]),
                  h.make_node("Conv", [f"r{i}", f"w{i + 1}"], [f"g{i}"], pads=[1, 1, 1, 1]),
                  h.make_node("Concat", [prev, f"g{i}"], [f"c{i}"], axis=1)]
        inits[f"s{i}"] = RNG.uniform(0.5, 1.5, (1, ch, 1, 1)).astype(np.float32)
        inits[f"w{i + 1}"] = _w(2, ch, 3)
        prev, ch = f"c{i}", ch + 2
    nodes += [h.make_node("Relu", [prev], ["y"])]
    cm = _build(nodes, _x(), [("y", 4), ("c0", 4), ("c2", 4)], inits, tmp_path)  # c2: no epilogue
    s = _slices(cm)
    assert s == {"p": ("c2", 0), "g0": ("c2", 4 * 36), "c0": ("c2", 0), "g1": ("c2", 6 * 36),
                 "c1": ("c2", 0), "g2": ("c2", 8 * 36)}, s
    assert not any("concat" in f for f in _funcs(cm))


def test_inputs_behind_views_are_placed_by_their_root():
    """A detector head's Flatten/Reshape before a Concat along the last axis of [1, N]."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Flatten", ["a"], ["fa"]), h.make_node("Flatten", ["b"], ["fb"]),
             h.make_node("Concat", ["fa", "fb"], ["c"], axis=1), h.make_node("Transpose", ["c"], ["y"])]
    cm = _build(nodes, _x(), [("y", 2)], {"w1": _w(4, 3), "w2": _w(5, 3)})
    assert _slices(cm) == {"a": ("c", 0), "b": ("c", 4 * 36)}


def test_a_value_in_two_concats_is_placed_in_the_first_only():
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["c"], axis=1), h.make_node("Concat", ["b", "a"], ["d"], axis=1)]
    cm = _build(nodes, _x(), [("c", 4), ("d", 4)], {"w1": _w(4, 3), "w2": _w(4, 3)})
    assert _slices(cm) == {"a": ("c", 0), "b": ("c", 4 * 36)}


@pytest.mark.parametrize("shape,axis", [((2, 3, 4, 4), 1), ((1, 3, 4, 4), 2)])
def test_concats_that_are_not_contiguous_blocks_keep_their_kernel(shape, axis):
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["c"], axis=axis), h.make_node("Relu", ["c"], ["y"])]
    cm = _build(nodes, feeds, [("y", 4)], {"w1": _w(3, 3), "w2": _w(3, 3)})
    assert not _slices(cm) and sum("concat" in f for f in _funcs(cm)) == 1


def test_integer_concat_of_kernel_outputs():
    feeds = {"x": RNG.integers(-5, 5, (1, 3, 4)).astype(np.int64), "z": RNG.integers(-5, 5, (1, 2, 4)).astype(np.int64)}
    nodes = [h.make_node("Neg", ["x"], ["a"]), h.make_node("Abs", ["z"], ["b"]),
             h.make_node("Concat", ["a", "b", "z"], ["y"], axis=1)]
    proto = _typed_model(nodes, feeds, [("y", 3)])
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()})
    np.testing.assert_array_equal(cm.run(feeds)[0], _ort(proto, feeds)[0])
    np.testing.assert_array_equal(_per_call(cm, feeds)[0], _ort(proto, feeds)[0])


def _saved(tmp_path):
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    _build(nodes, _x(), [("y", 4)], {"w1": _w(4, 3), "w2": _w(5, 3)}, tmp_path)
    return tmp_path / "m.so"


@pytest.mark.parametrize("edit,message", [
    (lambda b: b["a"].update(offset=10 ** 6), "reach past the end"),
    (lambda b: b["a"].update(of="nowhere"), "no allocated buffer"),
    (lambda b: b["a"].update(offset=-1), "not a non-negative integer"),
    (lambda b: b["a"].update(of="b"), "no allocated buffer"),
    (lambda b: b["a"].update(dtype="int64"), "the buffer 'y' it lies in is float32"),
])
def test_tampered_slices_are_refused_in_one_line(tmp_path, edit, message):
    so = _saved(tmp_path)
    plan = json.loads((tmp_path / "m.so.json").read_text())
    edit(plan["buffers"])
    d = tmp_path / "bad"
    d.mkdir()
    for ext in ("", ".npz"):
        shutil.copy(str(so) + ext, d / ("m.so" + ext))
    (d / "m.so.json").write_text(json.dumps(plan))
    with pytest.raises(ArtifactError, match=message) as e:
        load_module(str(d / "m.so"))
    assert "\n" not in str(e.value)


def test_tvmlite_build_writes_slices_that_run_without_the_model(tmp_path):
    from tvmlite.cli import main

    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]), h.make_node("Conv", ["x", "w2"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["c"], axis=1), h.make_node("Conv", ["c", "w3"], ["y"])]
    feeds = _x()
    proto = _typed_model(nodes, feeds, [("y", 4)], {"w1": _w(4, 3), "w2": _w(5, 3), "w3": _w(2, 9)})
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    assert main(["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.so"), "--shape", "x=1x3x6x6"]) == 0
    ref = _ort(proto, feeds)
    (tmp_path / "m.onnx").unlink()
    cm = load_module(str(tmp_path / "m.so"))
    assert _slices(cm) == {"a": ("c", 0), "b": ("c", 4 * 36)}
    np.testing.assert_allclose(cm.run(feeds)[0], ref[0], rtol=1e-5, atol=1e-5)


def test_slices_at_offsets_of_no_vector_alignment():
    """Vectorized producers (16 lanes) writing at offsets that are no multiple of 16 floats."""
    feeds = _x(3, 7)
    nodes = [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["a"], ["ra"]), h.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1, 1]),
             h.make_node("Concat", ["s", "ra", "p"], ["c"], axis=1), h.make_node("Conv", ["c", "w3"], ["y"])]
    cm = _build(nodes, feeds, [("y", 4)], {"w1": _w(5, 3, 3), "w3": _w(2, 11)})
    assert _slices(cm) == {"s": ("c", 0), "ra": ("c", 3 * 49), "p": ("c", 8 * 49)}
