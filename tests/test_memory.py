"""Memory: a model's weights are held once. Import reads external data straight into the arrays,
exports leave the big arrays out (`onnx_export.Exported`), onnxruntime sessions use the IR's arrays
where they are, and sessions are freed as soon as nobody holds them. The RSS figures come from a
child process (its own peak, reset between phases), on a ~100 MB model."""
import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxruntime
import tvmlite
from tvmlite.backends.numpy import compile_model as numpy_backend
from tvmlite.export import onnx_export, shapes
from tvmlite.runtime.ort import ort_session

from helpers import two_matmuls

ROOT = Path(__file__).resolve().parents[1]
N, K = 3584, 3584  # two float32 weights of 51 MB


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    proto = two_matmuls(N, K)
    onnx.save_model(proto, str(d / "big.onnx"), save_as_external_data=True, location="big.onnx.data")
    return d / "big.onnx"


CHILD = r"""
import json, sys
import numpy as np
import onnxruntime
import tvmlite
from tvmlite.export import onnx_export
from tvmlite.runtime import ort

def rss():
    d = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(d["VmRSS"].split()[0]) * 1024, int(d["VmHWM"].split()[0]) * 1024

def phase():  # (RSS now, growth of the peak since the last phase began); starts the next phase
    now, peak = rss()
    open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from RSS now
    grown = peak - phase.start
    phase.start = rss()[0]
    return grown

phase.start = rss()[0]
phase()
figures = {}
"""


def child_figures(body: str, **env) -> dict:
    """Run CHILD + ``body`` (which fills ``figures``) in a fresh interpreter; its figures."""
    code = CHILD + body + "\nprint(json.dumps(figures))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lean_export_shares_arrays_and_full_export_holds_them(tmp_path):
    m = tvmlite.load(two_matmuls(512, 600))  # 1.2 MB each: over ASIDE_MIN_BYTES
    # big raw tensors are decoded at import (their bytes are read once for the length check, and
    # the array is a view of those bytes): the arrays go aside, as they are
    lean = onnx_export.export_lean(m)
    assert set(lean.arrays) == {"w1", "w2"}
    assert lean.arrays["w1"] is m.graph.values["w1"].const
    assert lean.proto.ByteSize() < 2000
    full = onnx_export.export_model(m)
    assert abs(lean.nbytes - full.ByteSize()) < 200  # the size the report gives
    onnx_export.save(lean, tmp_path / "inline.onnx")  # written in from the arrays, in protobuf's wire format
    assert onnx.load(str(tmp_path / "inline.onnx")) == full
    x = np.ones((1, 512), np.float32)
    np.testing.assert_array_equal(ort_session(m).run(None, {"x": x})[0],
                                  ort_session(full).run(None, {"x": x})[0])


def test_inferred_types_export_leaves_weights_out(monkeypatch):
    seen = []
    real = shapes._infer
    monkeypatch.setattr(shapes, "_infer", lambda proto: seen.append(proto.ByteSize()) or real(proto))
    m = tvmlite.load(two_matmuls(512, 600))
    for name in ("w1", "w2"):
        m.graph.values[name].const
    types = shapes.inferred_types(m, {"x": (3, 512)})
    assert tuple(d.dim_value for d in types["y"].tensor_type.shape.dim) == (3, 512)
    assert seen and seen[0] < 2000


def test_inferred_types_leave_big_constant_node_values_out(monkeypatch):
    """Weights kept in Constant nodes (PP-OCR's, the frozen light models') reach onnx's inference as
    placeholders of their dtype and dims: light_vgg19's 548 MB in Constants cost 9-12 s per
    inference. A Shape of such a Constant still propagates its dims; a small Constant (a Reshape's
    target) keeps its data."""
    seen = []
    real = shapes._infer
    monkeypatch.setattr(shapes, "_infer", lambda proto: seen.append(proto.ByteSize()) or real(proto))
    w = np.random.default_rng(0).standard_normal((512, 600)).astype(np.float32)  # 1.2 MB
    nodes = [helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(w, "w")),
             helper.make_node("Constant", [], ["s"], value=onnx.numpy_helper.from_array(np.array([-1], np.int64), "s")),
             helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "s"], ["z"]),
             helper.make_node("Shape", ["w"], ["ws"]), helper.make_node("Reshape", ["y", "ws"], ["q"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 512])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a"]),
                           helper.make_tensor_value_info("q", TensorProto.FLOAT, ["b", "c"])])
    m = tvmlite.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    types = shapes.inferred_types(m)
    dims = {k: tuple(d.dim_value for d in types[k].tensor_type.shape.dim) for k in ("y", "z", "q")}
    assert dims == {"y": (3, 600), "z": (1800,), "q": (512, 600)}
    assert seen and seen[0] < 4000
    full = onnx_export.export_model(m, infer=False)
    assert full.ByteSize() > w.nbytes  # the model itself keeps the weights
    assert np.array_equal(onnx.numpy_helper.to_array(full.graph.node[0].attribute[0].t), w)


def test_import_reads_external_data_once(big_model):
    """onnx's loader put each external tensor in a bytes object and then in the proto, and the
    array was decoded from that: three copies at the peak. Now the file's bytes land in the array."""
    f = child_figures(f"""
m = tvmlite.load({str(big_model)!r})
figures["load"] = phase()
figures["weights"] = sum(m.graph.values[n].const.nbytes for n in m.graph.initializers)
figures["decoded"] = phase()
""")
    w = f["weights"]
    assert f["load"] < 1.15 * w, f
    assert f["decoded"] < 0.05 * w, f  # .const is the array read at import, not a second decode


def test_save_and_inference_copy_no_weights(big_model, tmp_path):
    """Saving with external data writes each array from its own buffer; shape inference and the
    lean export never hold the weights (before: two copies each, a trip through a file over 2 GiB)."""
    out = tmp_path / "out.onnx"
    f = child_figures(f"""
from tvmlite.export.shapes import inferred_types
m = tvmlite.load({str(big_model)!r})
w = sum(m.graph.values[n].const.nbytes for n in m.graph.initializers)
phase()
types = inferred_types(m, {{"x": (1, {N})}})
figures["infer"] = phase()
tvmlite.save(m, {str(out)!r})
figures["save"] = phase()
figures["weights"] = w
""")
    w = f["weights"]
    assert f["infer"] < 0.05 * w, f
    assert f["save"] < 0.1 * w, f
    back = tvmlite.load(out)
    ref = tvmlite.load(big_model)
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(back.graph.values[name].const, ref.graph.values[name].const)
    written = onnx.load(str(out), load_external_data=False)
    offsets = [int(dict((e.key, e.value) for e in t.external_data)["offset"]) for t in written.graph.initializer]
    assert all(o % onnx_export.DATA_ALIGNMENT == 0 for o in offsets)  # onnxruntime can map them


@pytest.fixture(scope="module")
def embedded_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedded") / "big.onnx"
    onnx.save_model(two_matmuls(N, K), str(path))
    return path


def test_embedded_weights_are_decoded_once_and_the_file_bytes_let_go(embedded_model, tmp_path):
    """A model read from one file kept the file's bytes (protobuf's arena, alive while any part of
    the message is) and decoded a second copy on first use; now each big weight is an array and the
    parsed message is let go. Written inline, the arrays go into the file from their buffers."""
    out = tmp_path / "inline.onnx"
    f = child_figures(f"""
m = tvmlite.load({str(embedded_model)!r})
figures["held"] = rss()[0] - phase.start
figures["load"] = phase()
figures["weights"] = sum(m.graph.values[n].const.nbytes for n in m.graph.initializers)
figures["decoded"] = phase()
onnx_export.save(m, {str(out)!r})
figures["save"] = phase()
""")
    w = f["weights"]
    assert f["held"] < 1.15 * w, f  # was 2x (file bytes + decoded arrays)
    assert f["decoded"] < 0.05 * w, f
    assert f["save"] < 0.1 * w, f  # was +2x (a proto with the arrays in it, then its serialization)
    assert onnx.load(str(out)) == onnx.load(str(embedded_model))


def _as_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its initializers moved into Constant nodes at the front (PP-OCR's way)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def test_weights_in_constants_are_decoded_once_and_the_file_bytes_let_go(tmp_path):
    """Weights kept in Constant nodes were held twice: the decoded array and the parsed file (the
    node kept its attribute, and with it protobuf's arena). Now as initializers are; the saved
    model is the one read, and a Constant beside external-data weights loads too."""
    src, out = tmp_path / "c.onnx", tmp_path / "out.onnx"
    ref = _as_constants(two_matmuls(N, K))
    onnx.save_model(ref, str(src))
    f = child_figures(f"""
m = tvmlite.load({str(src)!r})
figures["held"] = rss()[0] - phase.start
figures["load"] = phase()
nodes = [n for n in m.graph.toposort() if n.op_type == "Constant"]
figures["weights"] = sum(n.attrs["value"].nbytes for n in nodes)
figures["kept_bytes"] = sum(n.attr_protos["value"][1].ByteSize() for n in nodes)
onnx_export.save(m, {str(out)!r})
figures["save"] = phase()
""")
    w = f["weights"]
    assert w >= 2 * N * K * 4 and f["kept_bytes"] < 1000, f
    assert f["held"] < 1.15 * w, f  # was 2x
    assert onnx.load(str(out)) == ref
    x = np.random.default_rng(1).standard_normal((2, N)).astype(np.float32)
    want = onnxruntime.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    scale = np.abs(want).max()  # sums of 3584 products: float32 order noise against the largest output
    assert np.abs(numpy_backend(tvmlite.load(str(src))).run({"x": x})[0] - want).max() < 1e-5 * scale
    mixed = two_matmuls(N, K)  # w1 external, w2 a Constant
    mixed.graph.node.insert(0, helper.make_node("Constant", [], ["w2"], value=mixed.graph.initializer[1]))
    del mixed.graph.initializer[1]
    onnx.save_model(mixed, str(tmp_path / "mixed.onnx"), save_as_external_data=True, location="mixed.data",
                    size_threshold=0, convert_attribute=False)
    got = numpy_backend(tvmlite.load(str(tmp_path / "mixed.onnx"))).run({"x": x})[0]
    assert np.abs(got - want).max() < 1e-5 * scale


def test_external_tensors_export_whole_from_their_arrays(tmp_path):
    """A tensor read from external data keeps a placeholder proto (no data) beside its array; the
    whole export writes it from the array."""
    ref = two_matmuls(512, 600)
    onnx.save_model(ref, str(tmp_path / "e.onnx"), save_as_external_data=True, location="e.onnx.data")
    e = tvmlite.load(tmp_path / "e.onnx")
    assert e.graph.values["w1"]._proto.data_location == TensorProto.EXTERNAL
    whole = onnx_export.export_model(e)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(whole.graph.initializer[0]),
                                  onnx.numpy_helper.to_array(two_matmuls(512, 600).graph.initializer[0]))


def test_session_shares_the_models_arrays(big_model, tmp_path):
    """A session of a Model uses the IR's arrays (shared initializers), prepacking off as it is for
    big weights: it adds little to RSS, where one from serialized bytes added the weights twice at
    its peak (the bytes, onnxruntime's copy) and kept one."""
    f = child_figures(f"""
ort.PREPACK_MAX_BYTES = 0
m = tvmlite.load({str(big_model)!r})
w = sum(m.graph.values[n].const.nbytes for n in m.graph.initializers)
phase()
s = ort.ort_session(m)
x = np.random.default_rng(0).standard_normal((2, {N}), np.float32)
y = s.run(None, {{"x": x}})[0]
figures["session"] = phase()
figures["weights"] = w
ref = ort.ort_session({str(big_model)!r}).run(None, {{"x": x}})[0]  # prepacked: the last bits differ
figures["close"] = bool(np.allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max())))
""")
    assert f["session"] < 0.15 * f["weights"], f
    assert f["close"], f


def test_sessions_are_freed_without_the_garbage_collector():
    """A session held its own run method in a closure (a cycle): it lived, with its weights, until
    a collection. Now the last reference frees it."""
    m = tvmlite.load(two_matmuls(64, 80))
    enabled = gc.isenabled()
    gc.disable()
    try:
        sess = ort_session(m)
        sess.run(None, {"x": np.ones((1, 64), np.float32)})
        ref = weakref.ref(sess)
        del sess
        assert ref() is None
    finally:
        if enabled:
            gc.enable()


def test_optimize_reports_the_size_of_a_model_past_the_limit(monkeypatch):
    """Over the external-data threshold the size column said 0.3 KiB: the session's trip through a
    file moved the measured proto's tensors out of it before its size was read."""
    from tvmlite.optimize import optimize

    monkeypatch.setattr(onnx_export, "EXTERNAL_THRESHOLD", 2**20)
    m = tvmlite.load(two_matmuls(512, 600))
    m, report = optimize(m, preset="exact", shapes={"x": (1, 512)})
    weights = 2 * 512 * 600 * 4
    assert all(weights <= r.file_bytes < weights + 4096 for r in report.rows), [r.file_bytes for r in report.rows]
    assert [n.op_type for n in m.graph.toposort()] == ["MatMul", "MatMul"]


@pytest.mark.parametrize("latency, held", [("none", 0), ("ends", 1)])
def test_optimize_holds_only_sessions_it_will_time(monkeypatch, latency, held):
    """Each onnxruntime session holds its prepacked copy of the weights: optimize kept the original's
    and the last measured model's even where nothing would time them (no speed check, no latency),
    so each check made a third. Now, when nothing will, a check's session is the only one alive."""
    from tvmlite.optimize import optimize
    from tvmlite.runtime import ort

    alive, before = [], []
    real = ort._load

    def load(src, so):
        before.append(sum(r() is not None for r in alive))
        sess = real(src, so)
        alive.append(weakref.ref(sess))
        return sess

    monkeypatch.setattr(ort, "_load", load)
    m = tvmlite.load(two_matmuls(64, 80))
    optimize(m, preset="exact", shapes={"x": (1, 64)}, latency=latency)
    assert len(before) >= 2 and max(before) == held, before


def test_calibration_sessions_share_the_weights(monkeypatch):
    """Calibration's onnxruntime runner (and quantize's layer choice) made sessions from whole
    exported protos: a serialized copy of every weight and onnxruntime's own. They get lean
    exports now: the model onnxruntime reads holds placeholders only."""
    from tvmlite.quant import calibrate
    from tvmlite.runtime import ort

    sizes = []
    real = ort._load

    def load(src, so):
        sizes.append(os.path.getsize(src) if isinstance(src, str) else len(src))
        return real(src, so)

    monkeypatch.setattr(ort, "_load", load)
    m = tvmlite.load(two_matmuls(512, 600))
    for name in ("w1", "w2"):
        m.graph.values[name].const
    run = calibrate._runner(m, ["h", "y"], "ort", 1)
    h, y = run({"x": np.ones((2, 512), np.float32)})
    np.testing.assert_allclose(h, np.ones((2, 512), np.float32) @ m.graph.values["w1"].const, rtol=1e-4)
    assert sizes and max(sizes) < 10_000, sizes


def test_external_save_moves_out_what_onnx_would(tmp_path):
    """The streaming writer moves out the same tensors as onnx's save_as_external_data: every
    initializer of 1 KiB or more (arrays and raw data alike), not a Constant's tensor."""
    from onnx import numpy_helper

    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((64, 64), np.float32), "cv"))
    nodes = [const, helper.make_node("MatMul", ["x", "c"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"]),
             helper.make_node("Add", ["y", "b"], ["z"])]
    inits = [numpy_helper.from_array(np.ones((64, 64), np.float32), "w"),
             numpy_helper.from_array(np.ones((64,), np.float32), "b")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 64])],
                          [helper.make_tensor_value_info("z", 1, [1, 64])], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save_model(proto, str(tmp_path / "a.onnx"), save_as_external_data=True, location="a.onnx.data",
                    size_threshold=1024)
    tvmlite.save(tvmlite.load(tmp_path / "a.onnx"), tmp_path / "b.onnx")
    a, b = (onnx.load(str(tmp_path / f), load_external_data=False) for f in ("a.onnx", "b.onnx"))
    assert [t.data_location for t in b.graph.initializer] == [t.data_location for t in a.graph.initializer] == [1, 0]
    assert b.graph.node[0].attribute[0].t.data_location == 0
