"""bench/conv_tiles.py, bench/tvm_cpu_ab.py, bench/tree_ab.py and bench/run_path_ab.py: a small conv end to
end, bad options refused in one line."""
import importlib.util
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "conv_tiles.py"


@pytest.fixture(autouse=True)
def _threads_env_restored(monkeypatch):
    """Both scripts set $TVMLITE_THREADS for their own process (one thread); run in-process here,
    that leaked into every later test (the schedules then left out T.parallel), so it is undone."""
    monkeypatch.setenv("TVMLITE_THREADS", "1")


def _bench(name: str = "conv_tiles"):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv", [["--shapes", "bad"], ["--shapes", "8-8-3x3-s0-9x9"], ["--direct", "4y16"],
                                  ["--gemm", "4x0"], ["--rounds", "0"], ["--threads", "2"], ["--layouts", "NHWC"],
                                  ["--layouts", "NHWC-NCWH"], ["--cold", "0"]])
def test_bad_options_are_one_line_on_stderr(argv, capsys):
    assert _bench().main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("conv_tiles: ")


def test_one_shape_runs_every_variant(capsys):
    require_tvm()
    rc = _bench().main(["--shapes", "8-16-3x3-s1-9x9", "--direct", "3x8", "--gemm", "4x16", "--rounds", "2",
                        "--silu", "--layouts", "NHWC-NHWC,NCHW-NHWC,NHWC-NCHW"])
    out = capsys.readouterr().out
    assert rc == 0 and "max rel err" not in out  # no variant disagreed with onnxruntime
    assert all(v in out for v in ("picked(", "direct 3x8", "gemm 4x16", "ort median", "NHWC->NHWC", "NHWC->NCHW"))


def test_cold_weights_give_each_round_its_own_copy(capsys, monkeypatch):
    """--cold 3: three weight copies per variant and three onnxruntime sessions, used in turn."""
    require_tvm()
    import onnxruntime as ort
    from tvmlite.backends.tvm import single_kernel

    made, args_made = [], []
    session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: made.append(1) or session(*a, **k))
    kernel_args = single_kernel.kernel_args
    monkeypatch.setattr(single_kernel, "kernel_args", lambda *a: args_made.append(1) or kernel_args(*a))
    rc = _bench().main(["--shapes", "32-64-1x1-s1-7x7", "--layouts", "NHWC-NHWC", "--rounds", "4", "--cold", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "max rel err" not in out and "NHWC->NHWC" in out
    assert len(made) == 3 and len(args_made) == 2 * 3  # picked and NHWC->NHWC, three copies each


def test_orders_time_each_direct_variant_in_both_loop_orders(capsys):
    require_tvm()
    rc = _bench().main(["--shapes", "8-16-3x3-s2-9x9", "--direct", "3x8", "--rounds", "1", "--layouts", "NHWC-NHWC",
                        "--orders"])
    out = capsys.readouterr().out
    assert rc == 0 and "max rel err" not in out
    assert all(v in out for v in ("direct 3x8/px", "direct 3x8/ch", "NHWC->NHWC/px", "NHWC->NHWC/ch"))


@pytest.mark.parametrize("argv", [["light_nope"], ["detector", "--rounds", "0"],
                                  ["detector", "--before-tiles", "--before-writes"]])
def test_cpu_ab_refuses_bad_options_in_one_line(argv, capsys):
    assert _bench("tvm_cpu_ab").main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("tvm_cpu_ab: ")


@pytest.mark.parametrize("argv", [["build", "/tmp/x", "light_nope"], ["time", "/tmp/a", "/tmp/b", "no.onnx"],
                                  ["time", "/nonexistent-a", "/nonexistent-b", "detector"],
                                  ["time", "/tmp/a", "/tmp/b", "detector", "--rounds", "0"]])
def test_tree_ab_refuses_bad_arguments_in_one_line(argv, capsys):
    assert _bench("tree_ab").main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("tree_ab: ")


def _small_conv(tmp_path):
    """A 4->8 3x3 conv at 9x9 saved as an .onnx file; its path."""
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 9, 9])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "conv.onnx"
    onnx.save(m, path)
    return path


def test_tree_ab_builds_and_times_a_small_conv(tmp_path, capsys):
    require_tvm()
    path = _small_conv(tmp_path)
    bench = _bench("tree_ab")
    assert bench.main(["build", str(tmp_path / "a"), str(path)]) == 0
    assert bench.main(["time", str(tmp_path / "a"), str(tmp_path / "a"), str(path), "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "B/A" in out and "max rel err A" in out
    err = float(out.split("max rel err A ")[1].split(",")[0])
    assert err < 1e-4


def test_run_path_ab_times_one_build_through_two_trees_run_paths(tmp_path, capsys, monkeypatch):
    """bench/run_path_ab.py: a tree_ab build run through this tree's module.py twice (as base and
    as new), per call and in blocks; both agree and both ratios are printed."""
    require_tvm()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    path = _small_conv(tmp_path)
    assert _bench("tree_ab").main(["build", str(tmp_path / "a"), str(path)]) == 0
    capsys.readouterr()
    bench = _bench("run_path_ab")
    root = str(SCRIPT.parents[1])
    assert bench.main([root, str(tmp_path / "a"), str(path), "--rounds", "3"]) == 0
    assert bench.main([root, str(tmp_path / "a"), str(path), "--rounds", "2", "--blocks", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all("new/base" in line and "runs past 2x" in line for line in out)
    assert "CPU time" in out[0] and "wall time" in out[1]


def test_kernel_threads_times_each_kernel_on_one_thread_and_all(tmp_path, capsys, monkeypatch):
    require_tvm()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    bench = _bench("kernel_threads")
    assert bench.main([str(_small_conv(tmp_path)), "--passes", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "1 thread | 2 threads" in out[0] and "best 2/1" in out[1] and out[-1].startswith("  sum of medians")
    assert bench.main(["no.onnx"]) == 2 and capsys.readouterr().err.startswith("kernel_threads: unknown model")
