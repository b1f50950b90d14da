"""Everything builds with TVM (issue 15 item 1): a node the backend has no kernel for (no emitter,
another dtype than float32, control flow, strings, sequences) runs as a host call, by its NumPy
kernel, inside the compiled plan; `tvmlite build` lists each such op and why, `--strict` refuses
instead; a saved NAME.so runs without the ONNX model, its host nodes stored as data in the plan
and checked before they are rebuilt."""
import itertools
import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from real_graphs import vad
from helpers import cli_main
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.numpy import run_model  # noqa: E402
from tvmlite.backends.tvm import compile_model, load_module, unsupported_ops  # noqa: E402
from tvmlite.backends.tvm.artifact_check import ArtifactError  # noqa: E402
from tvmlite.cli import main  # noqa: E402
from tvmlite.errors import UnsupportedError  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.inputs import random_inputs  # noqa: E402

MODELS = __import__("pathlib").Path(__file__).resolve().parent.parent / "models"


def _model(nodes, inputs, outputs, inits=()):
    g = h.make_graph(nodes, "m", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def mixed_model():
    """Gather of int64 ids, LayerNormalization, Split, Equal/Where/Cast kernels around a host
    segment (Cast to float64, CumSum, Cast back)."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((10, 8)).astype(np.float32), "emb"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "gamma"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "beta"),
             nh.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
             nh.from_array(np.array([4, 4], np.int64), "split"),
             nh.from_array(np.array(3, np.int64), "three"),
             nh.from_array(np.array(1, np.int64), "axis1"),
             nh.from_array(np.zeros((2, 3), np.float32), "zeros")]
    nodes = [h.make_node("Gather", ["emb", "ids"], ["g"], axis=0),
             h.make_node("Add", ["g", "x"], ["gx"]),
             h.make_node("LayerNormalization", ["gx", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
             h.make_node("MatMul", ["ln", "W"], ["mm"]),
             h.make_node("Relu", ["mm"], ["r"]),
             h.make_node("Split", ["r", "split"], ["a", "b"], axis=2),
             h.make_node("Mul", ["a", "b"], ["y"]),
             # host-run, one segment: a float64 round trip and CumSum (no float64 kernels)
             h.make_node("Cast", ["ids"], ["idsd"], to=T.DOUBLE),
             h.make_node("CumSum", ["idsd", "axis1"], ["csd"]),
             h.make_node("Cast", ["csd"], ["csf"], to=T.FLOAT),
             # kernels around it: a bool buffer, a host-made float read by Where, an int64 output
             h.make_node("Equal", ["ids", "three"], ["eq"]),
             h.make_node("Where", ["eq", "csf", "zeros"], ["w"]),
             h.make_node("Cast", ["eq"], ["eqi"], to=T.INT64)]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [2, 3, 8]),
                          h.make_tensor_value_info("ids", T.INT64, [2, 3])],
                  [h.make_tensor_value_info("y", T.FLOAT, [2, 3, 4]), h.make_tensor_value_info("w", T.FLOAT, [2, 3]),
                   h.make_tensor_value_info("eqi", T.INT64, [2, 3])], inits)


def if_model():
    """y = If(flag, relu(x @ W) * 2, x @ W - 1) + x: the branches read the outer MatMul's value."""
    w = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    then_g = h.make_graph([h.make_node("Relu", ["mm"], ["t0"]), h.make_node("Mul", ["t0", "two"], ["t"])], "then",
                          [], [h.make_tensor_value_info("t", T.FLOAT, [1, 4])],
                          [nh.from_array(np.array(2, np.float32), "two")])
    else_g = h.make_graph([h.make_node("Sub", ["mm", "one"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [1, 4])], [nh.from_array(np.array(1, np.float32), "one")])
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"]),
             h.make_node("If", ["flag"], ["branch"], then_branch=then_g, else_branch=else_g),
             h.make_node("Add", ["branch", "x"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 4]), h.make_tensor_value_info("flag", T.BOOL, [])],
                  [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], [nh.from_array(w, "W")])


def host_if_model():
    """if_model with a CumSum (no TVM emitter) in its then branch: the If stays on the NumPy plan,
    its branches stored as ONNX (a compiled If stores them as run plans only)."""
    m = if_model()
    then = next(a.g for a in m.graph.node[1].attribute if a.name == "then_branch")
    then.node.append(h.make_node("CumSum", ["t", "axis"], ["tc"]))
    then.initializer.append(nh.from_array(np.array(1, np.int64), "axis"))
    then.output[0].name = "tc"
    return m


@pytest.fixture(scope="module")
def qdq_path(tmp_path_factory):
    """models/digits_cnn.onnx through tvmlite's quantize pass (QuantizeLinear/DequantizeLinear)."""
    from tvmlite.export import save
    from tvmlite.passes import Pipeline

    m = load(str(MODELS / "digits_cnn.onnx"))
    Pipeline(f"quantize(calibration={MODELS / 'digits_calib.npz'},progress=false)").run(m)
    path = tmp_path_factory.mktemp("qdq") / "digits_qdq.onnx"
    save(m, str(path))
    return path


def _case(name, tmp_path, qdq_path):
    """(model path, feeds, build options, host ops the report must list)."""
    if name == "mixed":
        path = tmp_path / "mixed.onnx"
        onnx.save(mixed_model(), path)
        feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32),
                 "ids": np.array([[1, 3, 5], [3, 0, 9]], np.int64)}
        return path, [feeds], [], ["Cast: Cast to ONNX type 11", "CumSum: dtype float64",
                                   "Cast: Cast input of dtype float64"]
    if name == "if":
        path = tmp_path / "if.onnx"
        onnx.save(if_model(), path)
        x = np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)
        return path, [{"x": x, "flag": np.array(f)} for f in (True, False)], [], ["If: control flow"]
    x = np.load(MODELS / "digits_test.npz")["input"][:2]
    # its QDQ patterns are int8 kernels now (qdq_fusion.py): nothing is host-run, --strict builds
    return qdq_path, [{"input": x}], ["--shape", "input=2x1x32x32"], None


def _check_close(got: dict, ref: dict):
    assert sorted(got) == sorted(ref)
    for name, r in ref.items():
        g = got[name]
        assert g.dtype == r.dtype and g.shape == r.shape, name
        if r.dtype.kind == "f":
            assert np.max(np.abs(g - r)) <= 1e-4 * max(float(np.max(np.abs(r))), 1e-30), name
        else:
            np.testing.assert_array_equal(g, r, err_msg=name)


@pytest.mark.parametrize("name", ["mixed", "if", "qdq"])
def test_runs_builds_and_refuses_when_strict(name, tmp_path, qdq_path, capsys):
    src, feed_sets, build_opts, report = _case(name, tmp_path, qdq_path)
    so = tmp_path / "m.so"
    assert main(["build", str(src), "-o", str(so)] + build_opts) == 0
    out = capsys.readouterr().out
    bad = tmp_path / "strict" / "s.so"
    bad.parent.mkdir()
    rc, _, err = cli_main("build", src, "-o", bad, "--strict", *build_opts)
    if report is None:
        assert "host-run" not in out and rc == 0 and bad.exists(), (out, err)
    else:
        assert "host-run nodes" in out
        for line in report:
            assert any(ln.strip().startswith(f"host-run: {line}") for ln in out.splitlines()), (line, out)
        # --strict: one line on stderr, exit 2, no traceback, nothing written
        assert rc == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("tvmlite: error: the TVM backend cannot emit"), err
        assert list(bad.parent.iterdir()) == []
    model = load(str(src))
    for i, feeds in enumerate(feed_sets):
        ref = run_model(model, feeds)
        inp, out_tvm, out_so = (tmp_path / f"{k}{i}.npz" for k in ("in", "tvm", "so"))
        np.savez(inp, **feeds)
        assert main(["run", str(src), "--backend", "tvm", "--inputs", str(inp), "-o", str(out_tvm)]) == 0
        with np.load(out_tvm) as z:
            _check_close(dict(z), ref)
        if i == len(feed_sets) - 1:
            src.unlink()  # the library runs on its own
        assert main(["run", str(so), "--inputs", str(inp), "-o", str(out_so)]) == 0
        with np.load(out_so) as z:
            _check_close(dict(z), ref)


def test_python_api_reports_and_strict(tmp_path):
    m = load(mixed_model())
    problems = unsupported_ops(m)
    with pytest.raises(UnsupportedError, match="cannot emit 3 op kind"):
        compile_model(m, strict=True)
    cm = compile_model(m)
    assert cm.unsupported == problems and len(cm.host_ops) == 3
    # consecutive host nodes share one host call: Cast, CumSum, Cast run as one segment
    assert any(len(seg["nodes"]) == 3 for seg in cm.plan["host"])
    assert cm.kernel_count == 10
    with pytest.raises(UnsupportedError, match="cannot emit 3 op kind"):  # from the build cache too
        compile_model(m, strict=True)


def test_sequences_and_strings_run_on_the_host(tmp_path):
    nodes = [h.make_node("Cast", ["s"], ["f"], to=T.FLOAT),
             h.make_node("SplitToSequence", ["x"], ["seq"], axis=0, keepdims=1),
             h.make_node("ConcatFromSequence", ["seq"], ["c"], axis=0),
             h.make_node("Add", ["f", "c"], ["y"]),
             h.make_node("Identity", ["s"], ["s_out"])]
    model = load(_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [3]), h.make_tensor_value_info("s", T.STRING, [3])],
                        [h.make_tensor_value_info("y", T.FLOAT, [3]), h.make_tensor_value_info("s_out", T.STRING, [3])]))
    feeds = {"x": np.array([1, 2, 3], np.float32), "s": np.array(["0.5", "-1", "2e3"], dtype=object)}
    cm = compile_model(model)
    cm.save(str(tmp_path / "s.so"))
    for built in (cm, load_module(str(tmp_path / "s.so"))):
        y, s = built.run(feeds)
        np.testing.assert_array_equal(y, np.array([1.5, 1, 2003], np.float32))
        assert list(s) == ["0.5", "-1", "2e3"]


def test_an_op_without_any_kernel_is_refused():
    node = h.make_node("Frobnicate", ["x"], ["y"], domain="example.org")
    m = onnx.helper.make_model(h.make_graph([node], "m", [h.make_tensor_value_info("x", T.FLOAT, [2])],
                                            [h.make_tensor_value_info("y", T.FLOAT, [2])]),
                               opset_imports=[h.make_opsetid("", 17), h.make_opsetid("example.org", 1)], ir_version=8)
    with pytest.raises(UnsupportedError, match=r"neither a TVM emitter nor a NumPy kernel: example.org::Frobnicate"):
        compile_model(load(m, check=False))


# ------------------------------------------------------------------------------ hostile artifacts
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostart")
    for name, proto in (("mixed", mixed_model()), ("if", if_model()), ("host_if", host_if_model())):
        compile_model(load(proto), cache=False).save(str(d / f"{name}.so"))
    return d


_copies = itertools.count()


def _copy(artifacts, name, tmp_path):
    dst = tmp_path / f"c{next(_copies)}.so"  # a fresh name: a loaded library stays mapped
    for suffix in ("", ".json", ".npz"):
        shutil.copyfile(str(artifacts / f"{name}.so") + suffix, str(dst) + suffix)
    return dst


def _tamper(plan, what):
    node = next(n for n in plan["host"][0]["nodes"] if n["op_type"] == "Cast")
    if what == "unknown op":
        node["op_type"] = "NoSuchOp"
    elif what == "input count":
        node["inputs"] += ["x", "x"]
    elif what == "huge attribute":
        node["attrs"]["to"] = {"type": "ints", "value": [0] * 100_000}
    elif what == "long string":
        node["attrs"]["to"] = {"type": "string", "value": "a" * 100_000}
    elif what == "foreign attribute":
        node["attrs"]["mode"] = {"type": "string", "value": "x"}
    elif what == "unmade value":
        plan["host"][0]["inputs"].append("nowhere")
    elif what == "bad host index":
        plan["calls"][0]["host"] = 99
    elif what == "attribute type":
        node["attrs"]["to"] = {"type": "int", "value": "zero"}


@pytest.mark.parametrize("what, message", [
    ("unknown op", "no kernel for NoSuchOp at opset 17"),
    ("input count", "has 3 inputs, the op takes 1 to 1"),
    ("huge attribute", "has 100,000 items (at most 65,536)"),
    ("long string", "a string of 100,000 characters"),
    ("foreign attribute", "the kernel takes no attribute 'mode'"),
    ("unmade value", "reads 'nowhere', which nothing made before it"),
    ("bad host index", "host call 99 names no host segment"),
    ("attribute type", "'zero' does not fit its type 'int'"),
])
def test_tampered_host_nodes_are_refused(artifacts, tmp_path, what, message):
    so = _copy(artifacts, "mixed", tmp_path)
    js = so.with_suffix(".so.json")
    plan = json.loads(js.read_text())
    _tamper(plan, what)
    js.write_text(json.dumps(plan))
    with pytest.raises(ArtifactError, match=re.escape(message)) as e:
        load_module(str(so))
    assert "\n" not in str(e.value) and str(so) in str(e.value)


def test_damaged_subgraph_is_refused(artifacts, tmp_path):
    so = _copy(artifacts, "host_if", tmp_path)
    npz = so.with_suffix(".so.npz")
    with np.load(npz) as z:
        arrays = dict(z)
    plan = json.loads(so.with_suffix(".so.json").read_text())
    (seg,) = [s for s in plan["host"] if s["nodes"][0]["op_type"] == "If"]
    name = seg["nodes"][0]["attrs"]["then_branch"]["npz"]  # the stored branch (by content key
    key = plan.get("const_keys", {}).get(name, name)    # when the plan has compiled bodies)
    assert arrays[key].dtype == np.uint8
    arrays[key] = np.frombuffer(b"\xff\xff\xff\xff", np.uint8)
    with open(npz, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ArtifactError, match="GraphProto does not parse") as e:
        load_module(str(so))
    assert "\n" not in str(e.value)


def test_cli_run_of_tampered_host_node_exits_2(artifacts, tmp_path):
    so = _copy(artifacts, "mixed", tmp_path)
    js = so.with_suffix(".so.json")
    plan = json.loads(js.read_text())
    _tamper(plan, "unknown op")
    js.write_text(json.dumps(plan))
    rc, _, err = cli_main("run", so)
    assert rc == 2 and err.count("\n") == 1 and "NoSuchOp" in err, err


def test_scalar_inputs_and_a_scalar_constant_first():
    """0-d inputs (a float gain for a kernel, an int64 rate for a Cast kernel) and Sub(1, x): the 0-d
    arrays used to become 1-d on the way to TVM (MiniLM's mask, 1 - mask, failed to build)."""
    nodes = [h.make_node("Sub", ["one", "x"], ["a"]), h.make_node("Mul", ["a", "gain"], ["b"]),
             h.make_node("Cast", ["rate"], ["ratef"], to=T.FLOAT), h.make_node("Mul", ["b", "ratef"], ["y"])]
    model = load(_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [2, 1, 16]),
                                h.make_tensor_value_info("gain", T.FLOAT, []), h.make_tensor_value_info("rate", T.INT64, [])],
                        [h.make_tensor_value_info("y", T.FLOAT, [2, 1, 16])], [nh.from_array(np.array(1, np.float32), "one")]))
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 1, 16)).astype(np.float32),
             "gain": np.array(0.5, np.float32), "rate": np.array(3, np.int64)}
    cm = compile_model(model)
    assert cm.host_ops == []
    _check_close(dict(zip(cm.output_names, cm.run(feeds))), run_model(model, feeds))


def test_loop_and_if_bodies_run_from_the_library(tmp_path):
    """Silero-VAD-like graph (tests/real_graphs.py): If on the sample rate, a Loop over frames whose
    trip count is int64 shape arithmetic (the Loop moved into both branches of the If, nested
    there); the bodies travel as GraphProto bytes in the .npz."""
    proto, shapes = vad()
    model = load(proto)
    feeds = random_inputs(model, shapes, seed=0)
    cm = compile_model(model, {k: v.shape for k, v in feeds.items()})
    assert {line.split(":")[0] for line in cm.host_ops if ": control flow" in line} == {"If"}
    cm.save(str(tmp_path / "vad.so"))
    ref = run_model(model, feeds)
    _check_close(dict(zip(cm.output_names, load_module(str(tmp_path / "vad.so")).run(feeds))), ref)


def test_host_calls_read_and_write_integer_and_bool_buffers(tmp_path):
    """A bool made by a kernel (Equal) is read by a host call (Cast to float64) from its buffer; an
    int64 made on the host (CumSum) is written to the buffer the Where kernel reads."""
    nodes = [h.make_node("Equal", ["ids", "three"], ["eq"]),
             h.make_node("Cast", ["eq"], ["eqd"], to=T.DOUBLE),            # host: float64
             h.make_node("CumSum", ["ids", "axis1"], ["cs"]),             # host: no int64 kernel
             h.make_node("Where", ["eq", "cs", "ids"], ["w"])]
    model = load(_model(nodes, [h.make_tensor_value_info("ids", T.INT64, [2, 3])],
                        [h.make_tensor_value_info("eqd", T.DOUBLE, [2, 3]), h.make_tensor_value_info("w", T.INT64, [2, 3])],
                        [nh.from_array(np.array(3, np.int64), "three"), nh.from_array(np.array(1, np.int64), "axis1")]))
    cm = compile_model(model)
    assert [line.split(":")[0] for line in cm.host_ops] == ["Cast", "CumSum"], cm.host_ops
    assert cm.plan["buffers"]["eq"]["dtype"] == "bool" and cm.plan["buffers"]["cs"]["dtype"] == "int64"
    feeds = {"ids": np.array([[3, 1, 3], [0, 3, -2]], np.int64)}
    cm.save(str(tmp_path / "b.so"))
    for built in (cm, load_module(str(tmp_path / "b.so"))):
        _check_close(dict(zip(built.output_names, built.run(feeds))), run_model(model, feeds))
