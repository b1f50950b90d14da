"""quantize-dynamic (weight-only int8 MatMul/Gemm) and fp16 (float16 weights) against onnxruntime."""
import os

import numpy as np
import onnx
import pytest

import tvmlite
from passes import Pipeline
from tvmlite.backends.numpy import compile_model

from conftest import MODELS
from helpers import ort_run


@pytest.mark.parametrize("form", ["integer", "dq"])
def test_quantize_dynamic_digits(form, tmp_path):
    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    m = tvmlite.load(path)
    r = Pipeline(f"fold-bn,quantize-dynamic(form={form})").run(m)
    assert r[1].stats.get("rewritten", len(r[1].rewritten)) == 2  # both Gemms
    out = tmp_path / "d.onnx"
    tvmlite.save(m, str(out))
    onnx.checker.check_model(str(out))
    data = np.load(MODELS / "digits_test.npz")
    x = data["input"][:200]
    ref = ort_run(str(path), {"input": x})[0]
    got = ort_run(str(out), {"input": x})[0]
    got_np = compile_model(m).run({"input": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02
    # onnxruntime may fuse DQ + MatMul into a dynamically quantized kernel: agree to ~1 activation step
    np.testing.assert_allclose(got_np, got, atol=1e-2 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_fp16_weights_halve_the_file(tmp_path):
    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    m = tvmlite.load(path)
    Pipeline("fp16").run(m)
    out = tmp_path / "h.onnx"
    tvmlite.save(m, str(out))
    assert os.path.getsize(out) < 0.55 * os.path.getsize(path)
    x = np.load(MODELS / "digits_test.npz")["input"][:100]
    ref = ort_run(str(path), {"input": x})[0]
    got = ort_run(str(out), {"input": x})[0]
    np.testing.assert_allclose(got, ref, atol=5e-3 * np.abs(ref).max())
    np.testing.assert_allclose(compile_model(m).run({"input": x})[0], got, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
