"""Models over protobuf's 2 GiB limit: written with external data, inferred and run in onnxruntime
through files. The limit is lowered here so the test stays small; the code paths are the same."""
import numpy as np
import onnx

import tvmlite
from tvmlite.compare import ort_session
from tvmlite.export import onnx_export
from tvmlite.ir.shapes import inferred_types
from tvmlite.ir.graph import type_shape

from helpers import conv_bn_relu_model


def test_big_model_goes_external(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_THRESHOLD", 1024)
    m = tvmlite.load(conv_bn_relu_model())
    assert not m.external_data
    out = tmp_path / "big.onnx"
    tvmlite.save(m, out)
    written = onnx.load(out, load_external_data=False)
    assert any(onnx.external_data_helper.uses_external_data(t) for t in written.graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    back = tvmlite.load(out)
    assert "fc" in back.external_data  # tensors over 1 KiB go to the data file
    types = inferred_types(back, {"x": (2, 3, 4, 4)})
    assert type_shape(types["y"]) == (2, 5)
    sess = ort_session(back)  # via a temporary file with external data
    x = np.ones((2, 3, 4, 4), np.float32)
    ref = ort_session(str(out)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ref)
