"""Smoke test of bench/bench_backends.py: the digits model only, tiny repeats, no ReferenceEvaluator."""
import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_backends.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_backends", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_backends"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop("bench_backends", None)
        raise
    return mod


def test_bench_backends_digits(capsys, tmp_path):
    bench = _load_bench()
    out_json = tmp_path / "bench.json"
    rc = bench.main(["--models", "digits", "--batch", "1", "2", "--repeats", "2", "--warmup", "1",
                     "--min-time", "0", "--block-time", "0", "--settle", "0", "--no-reference",
                     "--rss-runs", "1", "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "latency (median ms per run)" in out
    assert "digits" in out and "numpy/ORT" in out
    assert "peak RSS increase" in out
    assert "targets" in out and "not measured (--no-reference)" in out
    data = json.loads(out_json.read_text())
    rows = data["results"]
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["ort_ms"] > 0 and r["numpy_ms"] > 0
        assert r["numpy_vs_ort"]["ok"], r["numpy_vs_ort"]
    assert data["rss"][0]["by_backend"]["numpy"].get("increase") is not None
