"""quantize-dynamic(gather=true): embedding tables stored int8 (GatherBlockQuantized via
quantize-weights) next to the dynamic int8 MatMuls, checked against onnxruntime and the NumPy backend."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.passes import parse_spec
from tvmlite.passes.quantize_dynamic import QuantizeDynamic

from conftest import MODELS
from helpers import ort_exact, ort_run


def _embed_mlp(vocab=300, hidden=64, blocks=2, seed=0, table_in_constant=False) -> onnx.ModelProto:
    """ids -> Gather(table) -> [MatMul -> Relu] x blocks: MatMul-heavy, with an embedding table."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, hidden)).astype(np.float32)
    nodes, inits = [], []
    if table_in_constant:  # PP-OCR style: weights in Constant nodes, not initializers
        nodes.append(helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(table, "t")))
    else:
        inits.append(numpy_helper.from_array(table, "table"))
    nodes.append(helper.make_node("Gather", ["table", "ids"], ["h0"], name="embed"))
    x = "h0"
    for i in range(blocks):
        w = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"])]
        x = f"h{i + 1}"
    g = helper.make_graph(nodes, "embed_mlp", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "S"])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, "S", hidden])], inits)
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p.ir_version = 8
    return p


@pytest.mark.parametrize("table_in_constant", [False, True])
def test_gather_tables_go_int8_and_match_onnxruntime(tmp_path, table_in_constant):
    src = _embed_mlp(table_in_constant=table_in_constant)
    ids = {"ids": np.random.default_rng(1).integers(0, 300, (1, 40)).astype(np.int64)}
    ref = ort_run(src, ids)[0]
    m = tvmlite.load(src)
    r = parse_spec("quantize-dynamic(min_matmul_share=0.5,gather=true)")[0].run(m)
    assert r.stats["tables"] == 1 and r.stats["rewritten"] == 2 and len(set(r.rewritten)) == 3  # + the table
    ops = [n.op_type for n in m.graph.nx.nodes]
    assert "GatherBlockQuantized" in ops and "Gather" not in ops and ops.count("MatMulInteger") == 2
    out = tmp_path / "q.onnx"
    tvmlite.save(m, str(out))
    got = ort_exact(str(out), ids)[0]  # exact u8u8 where onnxruntime's u8s8 MatMulInteger would saturate
    got_np = compile_model(m).run(ids)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05
    np.testing.assert_allclose(got_np, got, atol=2e-2 * np.abs(ref).max())
    # the file shrinks: the 300x64 table from 4 bytes a weight to ~1
    assert out.stat().st_size < 0.45 * len(src.SerializeToString())


def test_gather_without_option_keeps_the_table_float():
    m = tvmlite.load(_embed_mlp())
    r = parse_spec("quantize-dynamic(min_matmul_share=0.5)")[0].run(m)
    assert "tables" not in r.stats and "Gather" in [n.op_type for n in m.graph.nx.nodes]


def test_gather_leaves_conv_nets_alone():
    """Under the MatMul share gate nothing changes, tables and fc layers included."""
    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx has not been trained")
    m = tvmlite.load(path)
    r = parse_spec("quantize-dynamic(min_matmul_share=0.5,gather=true)")[0].run(m)
    assert not r.changed and "tables" not in r.stats


def test_excluded_matmul_stays_float_with_gather():
    """A MatMul excluded from dynamic int8 is not block-quantized by the table step either."""
    m = tvmlite.load(_embed_mlp())
    r = QuantizeDynamic(gather=True, exclude_names=["fc1"]).run(m)
    ops = [n.op_type for n in m.graph.nx.nodes]
    assert ops.count("MatMulInteger") == 1 and ops.count("MatMul") == 1 and "MatMulNBits" not in ops
    assert r.stats["tables"] == 1


@pytest.mark.parametrize("bad", ["7", "0", "-32", "3000"])
def test_bad_gather_block_is_refused(bad):
    with pytest.raises(OptionError, match="gather_block"):
        parse_spec(f"quantize-dynamic(gather=true,gather_block={bad})")
