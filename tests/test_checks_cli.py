"""`tvmlite optimize` / `compare` on the command line: warnings, --strict, progress, options."""
import json

import numpy as np
import onnx
import pytest

from test_checks import detector, symbolic_convnet
from test_cli import assert_clean_error, run

LOWRANK_BAD = "lowrank(rank=ratio,ratio=0.25,min_layer_share=0,min_mac_ratio=1.0)"


@pytest.fixture
def det_path(tmp_path):
    p = tmp_path / "det.onnx"
    onnx.save(detector(), p)
    return p


def test_undone_everywhere_warns_and_strict_exits_1(det_path, tmp_path):
    out = tmp_path / "o.onnx"
    rc, so, se = run("optimize", det_path, "-o", out, "--passes", LOWRANK_BAD)
    assert rc == 0, se
    assert "warning: pass lowrank was undone on every layer: output 'boxes'" in so
    rc, so, se = run("optimize", det_path, "-o", out, "--passes", LOWRANK_BAD, "--strict", "-q")
    assert rc == 1 and "warning: pass lowrank" in so and out.exists()
    assert "tvmlite: [" not in se  # -q: no progress lines


def test_progress_lines_without_a_terminal(det_path, tmp_path):
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--preset", "clean")
    assert rc == 0, se
    # progress goes to stdout (stderr is kept for the one line of an error), terminal or not
    assert "tvmlite: [1/2] simplify" in so and "tvmlite: [2/2] fuse-conv-affine:" in so
    assert se == ""


def test_no_check_shows_unchecked(det_path, tmp_path):
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--passes", "fold-constants,fp16",
                     "--no-check", "--json", tmp_path / "r.json")
    assert rc == 0, se
    row = next(ln for ln in so.splitlines() if ln.startswith("fp16"))
    assert "unchecked" in row and "0.00e+00" not in so
    assert json.loads((tmp_path / "r.json").read_text())["rows"][-1]["max_error"] is None


def test_metric_budget_and_output_options(det_path, tmp_path):
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--passes", "fp16",
                     "--check-output", "scores", "--metric", "cosine", "--max-error", "scores=1e-4",
                     "--json", tmp_path / "r.json")
    assert rc == 0, se
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["metrics"] == {"scores": "cosine"} and data["rows"][-1]["budget"] == {"scores": 1e-4}
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--passes", "fp16", "--check-output", "nope")
    assert_clean_error(rc, so, se, "no output 'nope'")
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--passes", "fp16", "--metric", "argmax",
                     "--check-output", "boxes")
    assert rc == 0, se  # boxes [1, N, 4] are scores-shaped: argmax is allowed
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--passes", "fp16", "--metric", "median")
    assert_clean_error(rc, so, se, "unknown metric")


def test_symbolic_model_and_peer_shape_spelling(tmp_path):
    p = tmp_path / "conv.onnx"
    onnx.save(symbolic_convnet(), p)
    rc, so, se = run("optimize", p, "-o", tmp_path / "o.onnx", "--preset", "exact")
    assert rc == 0, se
    assert "set to 32" in so
    rc, so, se = run("optimize", p, "-o", tmp_path / "o.onnx", "--preset", "clean", "--shape", "x:2,3,8,8")
    assert rc == 0, se


def test_compare_nan_candidate_exits_1(det_path, tmp_path):
    m = detector()
    for t in m.graph.initializer:
        if t.name == "px":
            t.CopyFrom(onnx.numpy_helper.from_array(np.float32(np.nan), "px"))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    rc, so, se = run("compare", det_path, bad, "--repeats", "0")
    assert rc == 1 and "OUTSIDE" in so
    boxes = next(ln for ln in so.splitlines() if ln.startswith("boxes"))
    assert "inf" in boxes and "nan" in boxes and "1.000000" not in boxes


def test_custom_ops_library_that_does_not_load(det_path, tmp_path):
    lib = tmp_path / "libnothing.so"
    lib.write_bytes(b"not a library")
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--passes", "dce", "--custom-ops", lib)
    assert_clean_error(rc, so, se, "--custom-ops")


def test_latency_option(det_path, tmp_path):
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--preset", "clean")
    assert rc == 0 and "ORT ms: not timed" in so, se
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--preset", "clean", "--latency", "ends")
    assert rc == 0 and "timed side by side" in so, se
    first = next(line for line in so.splitlines() if line.startswith("(input)"))
    assert "±" in first
    rc, so, se = run("optimize", det_path, "-o", tmp_path / "o.onnx", "--latency", "often")
    assert_clean_error(rc, so, se, "--latency")
