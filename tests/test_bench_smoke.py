"""Smoke test of bench/bench_backends.py: the digits model only, tiny repeats, no ReferenceEvaluator."""
import importlib.util
import json
import pathlib
import sys

import pytest

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


def test_bench_tvm_zoo_quick(capsys, tmp_path):
    """bench_tvm.py's issue-15 section on the two small models (detector, tvmlite int8 digits):
    every row is built, matches onnxruntime, and prints its ratio, build times and host-run count."""
    import pytest

    pytest.importorskip("tvm")
    spec = importlib.util.spec_from_file_location("bench_tvm", ROOT / "bench" / "bench_tvm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "tvm.json"
    assert bench.main(["--only", "zoo", "--quick", "--zoo", "detector,digits", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "cached build" in out and "host-run" in out and "float geometric mean" in out
    rows = json.loads(out_json.read_text())["zoo"]
    assert {r["model"] for r in rows} >= {"detector 320", "digits_cnn int8 (tvmlite)"}
    for r in rows:
        assert "error" not in r, r
        assert r["tvm_ms"] > 0 and r["ort_ms"] > 0 and r["cached_build_s"] < r["build_s"] + 1
        assert r["rel_err"] < (1e-4 if r["kind"] == "float" else 0.1), r


def test_text_boxes_are_the_8_connected_components_of_the_thresholded_map():
    """bench_vs_ort_quant's det check: the boxes of DBNet's map above 0.3, compared between float
    and optimized models; components touching diagonally are one box, small ones are dropped."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("bench_vs_ort_quant", ROOT / "bench" / "bench_vs_ort_quant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text_boxes = mod.text_boxes
    prob = np.zeros((1, 40, 50), np.float32)
    prob[0, 2:6, 3:20] = 0.9  # a line
    prob[0, 6:9, 20:24] = 0.5  # touches the line at a corner: the same component
    prob[0, 20:30, 10:12] = 0.31  # 2 pixels wide: dropped (min_side 3)
    prob[0, 30:35, 30:49] = 0.8
    prob[0, 12:16, 30:40] = 0.29  # under the threshold
    assert text_boxes(prob) == [(2, 3, 9, 24), (30, 30, 35, 49)]
    assert text_boxes(prob, thresh=0.25)[1] == (12, 30, 16, 40)


def test_rec_reads_the_block_letter_lines():
    """bench_vs_ort_quant --rec-lines letters: PP-OCRv4 rec reads the block-letter lines (greedy CTC
    decode through the model's own character list), so its argmax agreement compares characters,
    not mostly blanks as on the random-stroke glyphs."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import pytest

    src = ROOT.parent / "shared" / "corpus" / "ch_PP-OCRv4_rec_infer.onnx"
    if not src.exists():
        pytest.skip(f"{src} not found")
    sys.path.insert(0, str(ROOT / "bench"))
    from text_render import GLYPHS, text_line

    # the character list, then the space class PaddleOCR appends (use_space_char)
    chars = onnx.load(str(src), load_external_data=False).metadata_props[0].value.split("\n") + [" "]
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    texts = ["".join(rng.choice(sorted(GLYPHS), 8)) for _ in range(4)]
    x = np.stack([((np.repeat(text_line(t, 48, 320, rng)[None], 3, 0) / 255.0 - 0.5) / 0.5).astype(np.float32)
                  for t in texts])
    steps = sess.run(None, {"x": x})[0].argmax(-1)
    read = []
    for seq in steps:
        keep = [k for i, k in enumerate(seq) if k != 0 and (i == 0 or k != seq[i - 1])]
        read.append("".join(chars[k - 1] for k in keep))
    same = [sum(a == b for a, b in zip(t, r)) for t, r in zip(texts, read)]
    assert sum(same) >= 0.8 * 8 * len(texts), list(zip(texts, read))


@pytest.mark.slow
def test_bench_vs_ort_quant_variants_in_any_order(tmp_path):
    """bench_vs_ort_quant.run_model with float listed last: every variant still gets its metric
    against float and its ratio (the reference outputs are compared after all variants ran)."""
    import argparse

    spec = importlib.util.spec_from_file_location("bench_vs_ort_quant", ROOT / "bench" / "bench_vs_ort_quant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = argparse.Namespace(variants="ort-quant,float", reuse=False, out=tmp_path, repeats=2, blocks=1,
                              make_timeout=60)
    rows = mod.run_model("digits", args)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"ort-quant", "float"} and not any("error" in r for r in rows), rows
    assert by["float"]["ratio"] == 1.0 and by["ort-quant"]["ratio"] > 0
    assert all(r["metric"].startswith("acc ") for r in rows)


def test_ort_op_profile_sums_onnxruntime_node_times_by_op_kind(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setattr(sys, "argv", ["ort_op_profile.py", str(ROOT / "models" / "digits_cnn.onnx"),
                                      "--threads", "1", "--runs", "3", "--top", "2"])
    spec = importlib.util.spec_from_file_location("ort_op_profile", ROOT / "bench" / "ort_op_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main()
    out = capsys.readouterr().out
    assert "1 thread(s)" in out and "Conv" in out and "%" in out
    assert len([line for line in out.splitlines() if line.startswith("    ")]) == 2  # --top 2


def test_ort_op_profile_lists_where_onnxruntime_reorders_the_blocked_layout(monkeypatch):
    """Conv -> Mul by a per-channel tensor -> Conv: onnxruntime's NCHWc transformer takes the Convs, not
    a broadcast Mul, so it reorders out before the Mul and back in after it."""
    import numpy as np
    from onnx import helper, numpy_helper

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("ort_op_profile", ROOT / "bench" / "ort_op_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = np.random.default_rng(0).standard_normal((16, 16, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.copy(), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Conv", ["m", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 16, 8, 8]),
                                           helper.make_tensor_value_info("s", 1, [1, 16, 1, 1])],
                              [helper.make_tensor_value_info("y", 1, [1, 16, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    lines = mod.reorders(model)
    assert any(line.startswith("ReorderOutput") and "-> Mul" in line for line in lines), lines
    assert any(line.startswith("ReorderInput") and "Mul" in line.split("->")[0] for line in lines), lines


def test_det_files_ab_refuses_bad_arguments_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("det_files_ab", ROOT / "bench" / "det_files_ab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = tmp_path / "a.onnx"
    a.write_bytes(b"")
    for argv in (["3", str(a)], ["x", str(a), str(a)], ["3", "--threads", "0", str(a), str(a)],
                 ["3", str(a), str(tmp_path / "missing.onnx")]):
        assert mod.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("det_files_ab.py: "), (argv, err)
    assert mod.parse(["5", "--threads", "2", str(a), str(a)]) == (5, 2, [str(a), str(a)])
