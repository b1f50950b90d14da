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

import tvmlite
from tvmlite.export import onnx_export, shapes
from tvmlite.runtime.ort import ort_session

ROOT = Path(__file__).resolve().parents[1]
N, K = 3584, 3584  # two float32 weights of 51 MB


def two_matmuls(n: int, k: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((n, k), np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.standard_normal((k, n), np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Identity", ["h"], ["h2"], name="id"),
             helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


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
    assert onnx_export.export_lean(m).arrays == {}  # TensorProtos not decoded stay as read
    for name in ("w1", "w2"):
        m.graph.values[name].const  # decoded (a pass read it): the array goes aside
    lean = onnx_export.export_lean(m)
    assert set(lean.arrays) == {"w1", "w2"}
    assert lean.arrays["w1"] is m.graph.values["w1"].const
    assert lean.proto.ByteSize() < 2000
    full = onnx_export.export_model(m)
    assert abs(lean.nbytes - full.ByteSize()) < 200  # the size the report gives
    assert onnx_export.proto_bytes(lean.embedded()) == full.ByteSize()
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
