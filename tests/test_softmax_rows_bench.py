"""Smoke test of bench/softmax_rows_ab.py: a small ragged row, two rounds; bad input refused."""
import importlib.util
import pathlib

import pytest

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "softmax_rows_ab.py"


def _main():
    spec = importlib.util.spec_from_file_location("softmax_rows_ab", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_small_ragged_rows_run_and_report(capsys, monkeypatch):
    monkeypatch.setenv("TVMLITE_THREADS", "1")
    assert _main()(["--rows", "3", "--red", "37", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "softmax 3 x 37" in out and "generic" in out and "rows" in out and "onnxruntime" in out


@pytest.mark.parametrize("args,threads", [(["--rows", "0"], "1"), (["--rounds", "2"], "2")])
def test_bad_input_is_one_line_and_exit_2(args, threads, capsys, monkeypatch):
    monkeypatch.setenv("TVMLITE_THREADS", threads)
    assert _main()(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softmax_rows_ab:") and "\n" not in err
