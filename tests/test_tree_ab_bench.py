"""bench/tree_ab.py: bad arguments refused in one line, a tiny build timed against itself."""
import importlib.util
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "tree_ab.py"


@pytest.fixture(autouse=True)
def _threads_env_restored(monkeypatch):
    """`time` sets $TVMLITE_THREADS for its own process; in-process here it is undone after."""
    monkeypatch.setenv("TVMLITE_THREADS", "1")


def _bench():
    spec = importlib.util.spec_from_file_location("tree_ab", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv", [["build", "/tmp/x", "light_nope"], ["time", "/tmp/a", "/tmp/b", "no.onnx"],
                                  ["time", "/nonexistent-a", "/nonexistent-b", "detector"],
                                  ["time", "/tmp/a", "/tmp/b", "detector", "--rounds", "0"]])
def test_bad_arguments_are_one_line_on_stderr(argv, capsys):
    assert _bench().main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("tree_ab: ")


def test_a_small_conv_builds_and_times(tmp_path, capsys):
    require_tvm()
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 9, 9])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "conv.onnx"
    onnx.save(m, path)
    bench = _bench()
    assert bench.main(["build", str(tmp_path / "a"), str(path)]) == 0
    assert bench.main(["time", str(tmp_path / "a"), str(tmp_path / "a"), str(path), "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "B/A" in out and "max rel err A" in out
    err = float(out.split("max rel err A ")[1].split(",")[0])
    assert err < 1e-4
