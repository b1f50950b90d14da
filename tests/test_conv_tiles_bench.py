"""bench/conv_tiles.py and bench/tvm_cpu_ab.py: a small conv end to end, bad options refused in one line."""
import importlib.util
import pathlib

import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "conv_tiles.py"


@pytest.fixture(autouse=True)
def _threads_env_restored(monkeypatch):
    """Both scripts set $TVMLITE_THREADS for their own process (one thread); run in-process here,
    that leaked into every later test (the schedules then left out T.parallel), so it is undone."""
    monkeypatch.setenv("TVMLITE_THREADS", "1")


def _bench():
    spec = importlib.util.spec_from_file_location("conv_tiles", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv", [["--shapes", "bad"], ["--shapes", "8-8-3x3-s0-9x9"], ["--direct", "4y16"],
                                  ["--gemm", "4x0"], ["--rounds", "0"], ["--threads", "2"]])
def test_bad_options_are_one_line_on_stderr(argv, capsys):
    assert _bench().main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("conv_tiles: ")


def test_one_shape_runs_every_variant(capsys):
    require_tvm()
    rc = _bench().main(["--shapes", "8-16-3x3-s1-9x9", "--direct", "3x8", "--gemm", "4x16", "--rounds", "2",
                        "--silu"])
    out = capsys.readouterr().out
    assert rc == 0 and "max rel err" not in out  # no variant disagreed with onnxruntime
    assert all(v in out for v in ("picked(", "direct 3x8", "gemm 4x16", "ort median"))


@pytest.mark.parametrize("argv", [["light_nope"], ["detector", "--rounds", "0"],
                                  ["detector", "--before-tiles", "--before-writes"]])
def test_cpu_ab_refuses_bad_options_in_one_line(argv, capsys):
    spec = importlib.util.spec_from_file_location("tvm_cpu_ab", SCRIPT.parent / "tvm_cpu_ab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("tvm_cpu_ab: ")
