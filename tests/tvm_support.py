"""What the TVM test modules share: skip the module where the backend is unavailable, and build
into a private cache (stale builds from other runs must not stand in for the code under test)."""
import pytest

# the head of a script run in a fresh process (TVM's pool starts once per process and thread): a
# 32->64 3x3 conv at 56x56 built as ``cm``, whose kernel runs on every thread of the pool, and its
# input ``feeds``; ``sys.argv[1]`` may say "one-core" to put the process on one core first
CONV_SCRIPT_HEAD = r"""
import json, os, sys, threading, time
import numpy as np
from onnx import TensorProto, helper as h, numpy_helper
import tvmlite
from tvmlite.backends.tvm import compile_model

if sys.argv[1:] == ["one-core"]:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
rng = np.random.default_rng(0)
w = numpy_helper.from_array((rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(np.float32), "w")
g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                 [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 56, 56])],
                 [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 56, 56])], [w])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
cm = compile_model(tvmlite.load(m), {"x": (1, 32, 56, 56)})
feeds = {"x": rng.standard_normal((1, 32, 56, 56)).astype(np.float32)}
"""


def require_tvm():
    """The tvm module, or skip the calling test module saying why."""
    try:
        from tvmlite.backends.tvm.target import import_tvm

        return import_tvm()
    except Exception as e:  # noqa: BLE001 - the backend is optional: missing or broken apache-tvm
        pytest.skip(f"TVM backend unavailable: {e}", allow_module_level=True)


@pytest.fixture(autouse=True)
def private_tvm_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TVMLITE_CACHE", str(tmp_path_factory.getbasetemp() / "tvm-cache"))
