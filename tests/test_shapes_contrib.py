"""Static shapes through onnxruntime's contrib ops onnx has no rule for: com.microsoft
GatherBlockQuantized (quantize-dynamic's int8 embedding tables) is typed by its registered rule,
and onnx infers what follows it (it used to stop there, leaving everything after it unknown)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
from tvmlite.backends.numpy.capture import capture_values
from tvmlite.export.shapes import static_shapes
from tvmlite.ops.quant_block import pack_low_first

from helpers import ort_run


def _gbq_model(bits, vocab=20, hidden=64, block=32, gather_axis=0, ids_shape=(1, "S")):
    """ids -> GatherBlockQuantized(table) -> MatMul -> Relu, the table quantized in blocks."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, (vocab, hidden))
    data = pack_low_first(codes, bits)
    scales = (rng.random((vocab, hidden // block)) * 0.1 + 0.01).astype(np.float32)
    w = (rng.standard_normal((hidden, 8)) / 8).astype(np.float32)
    nodes = [helper.make_node("GatherBlockQuantized", ["table", "ids", "scales"], ["e"], name="embed",
                              domain="com.microsoft", gather_axis=gather_axis, quantize_axis=1,
                              block_size=block, bits=bits),
             helper.make_node("MatMul", ["e", "w"], ["m"], name="fc"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "gbq", [helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c"])],
                          [numpy_helper.from_array(data, "table"), numpy_helper.from_array(scales, "scales"),
                           numpy_helper.from_array(w, "w")])
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    p.ir_version = 8
    return p


@pytest.mark.parametrize("bits", [4, 8])
def test_values_after_gather_block_quantized_get_their_shapes(bits):
    proto = _gbq_model(bits)
    m = tvmlite.load(proto)
    ids = np.array([[3, 1, 4, 1, 5]], np.int64)
    shapes = static_shapes(m, {"ids": ids.shape}, default_dim=-1)
    seen = capture_values(m, ["e", "m", "y"], {"ids": ids})
    ref = ort_run(proto, {"ids": ids})[0]  # onnxruntime runs the model: the rule is its shape
    assert ref.shape == seen["y"].shape == (1, 5, 8)
    for name in ("e", "m", "y"):
        assert shapes[name] == seen[name].shape, name
    # symbolic dims stay symbolic: -1 only where the input's dim is unknown
    assert static_shapes(m, default_dim=-1)["y"] == (1, -1, 8)
