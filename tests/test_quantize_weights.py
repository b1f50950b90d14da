"""quantize-weights: block-wise int4/int8 weights, both forms, in onnxruntime and the NumPy backend."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmlite
from tvmlite.backends.numpy import compile_model
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.ops.quant_block import nbits_weight, pack_low_first, unpack_low_first
from tvmlite.passes import Pipeline
from tvmlite.quant.blockwise import quantize_blocks
from tvmlite.quant.gptq import gptq_blocks

from helpers import cli_main, make_model, tensor

RNG = np.random.default_rng(14)
V, H, K, N = 200, 64, 100, 48  # K=100: a ragged last block at every block size


def _expand(p, block, size):
    return np.repeat(p, block, axis=0)[:size]


# ------------------------------------------------------------------------------------- block math
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32, 64])
def test_minmax_round_trip_within_half_a_step(bits, symmetric, block):
    w = (RNG.standard_normal((K, N)) * RNG.uniform(0.01, 3, N)).astype(np.float32)
    w[:block, 0] = 0  # an all-zero block
    w[:, 1] = np.abs(w[:, 1])  # a column without negative weights
    bq = quantize_blocks(w, axis=0, block=block, bits=bits, symmetric=symmetric)
    kb = -(-K // block)
    assert bq.scale.shape == (kb, N) and bq.scale.dtype == np.float32
    err = np.abs(bq.dequantize() - w)
    step = _expand(bq.scale, block, K)
    assert (err <= step / 2 * (1 + 1e-5) + 1e-12).all()
    assert err[:block, 0].max() == 0
    if symmetric:
        assert bq.zero_point is None
        assert -(1 << (bits - 1)) <= bq.q.min() and bq.q.max() <= (1 << (bits - 1)) - 1
        # the largest |w| of each block is represented exactly
        blocks = np.abs(np.pad(w, ((0, kb * block - K), (0, 0)))).reshape(kb, block, N).max(1)
        np.testing.assert_allclose(bq.scale * ((1 << (bits - 1)) - 1), np.where(blocks > 0, blocks, bq.scale * ((1 << (bits - 1)) - 1)), rtol=1e-6)
    else:
        assert bq.zero_point.shape == (kb, N)
        assert 0 <= bq.q.min() and bq.q.max() <= (1 << bits) - 1
        assert 0 <= bq.zero_point.min() and bq.zero_point.max() <= (1 << bits) - 1
        assert bq.q[:, 1].min() >= 0 and (bq.zero_point[:, 1] == 0).all()  # no negatives: zero point 0


def test_asymmetric_beats_symmetric_on_one_sided_weights_and_mse_never_loses():
    w = np.abs(RNG.standard_normal((256, 32))).astype(np.float32)
    sym = quantize_blocks(w, axis=0, block=32, bits=4, symmetric=True)
    asym = quantize_blocks(w, axis=0, block=32, bits=4, symmetric=False)
    err = lambda bq: ((bq.dequantize() - w) ** 2).reshape(8, 32, 32).sum(1)  # noqa: E731 - per block
    assert err(asym).sum() < 0.5 * err(sym).sum()
    w = RNG.standard_t(3, (256, 32)).astype(np.float32)  # heavy tails: clipping pays
    for symmetric in (True, False):
        mm = quantize_blocks(w, axis=0, block=32, bits=4, symmetric=symmetric)
        mse = quantize_blocks(w, axis=0, block=32, bits=4, symmetric=symmetric, method="mse")
        assert (err(mse) <= err(mm) * (1 + 1e-6)).all()  # ratio 1 is in the grid
        assert err(mse).sum() < 0.97 * err(mm).sum()


def test_quantize_along_axis_1_matches_axis_0_of_the_transpose():
    w = RNG.standard_normal((N, K)).astype(np.float32)
    a = quantize_blocks(w, axis=1, block=32, bits=4, symmetric=False)
    b = quantize_blocks(w.T, axis=0, block=32, bits=4, symmetric=False)
    np.testing.assert_array_equal(a.q, b.q.T)
    np.testing.assert_array_equal(a.scale, b.scale.T)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_low_bits_first_round_trip(bits):
    codes = RNG.integers(0, 1 << bits, (3, 37)).astype(np.uint8)
    packed = pack_low_first(codes, bits)
    assert packed.shape == (3, -(-37 * bits // 8))
    np.testing.assert_array_equal(unpack_low_first(packed, bits, 37), codes)
    if bits == 4:
        assert pack_low_first(np.array([1, 2, 15], np.uint8), 4).tolist() == [0x21, 0x0F]


def test_gptq_lowers_the_output_error_on_correlated_activations():
    x = RNG.standard_normal((1024, 128)) @ RNG.standard_normal((128, 128)) * 0.2 + RNG.standard_normal(128)
    w = RNG.standard_normal((128, 64)).astype(np.float32) * 0.05
    y = x @ w
    rtn = quantize_blocks(w, axis=0, block=32, bits=4)
    gq = gptq_blocks(w, x.T @ x, block=32, bits=4)
    assert gq.q.shape == w.shape and gq.scale.shape == (4, 64)
    assert -8 <= gq.q.min() and gq.q.max() <= 7
    e_rtn = np.linalg.norm(x @ rtn.dequantize() - y)
    e_gptq = np.linalg.norm(x @ gq.dequantize() - y)
    assert e_gptq < 0.7 * e_rtn


# ------------------------------------------------------------------------------------ the pass
def _model(const_node=False, hidden=H):
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather"),
             helper.make_node("MatMul", ["e", "w1"], ["h"], name="mm"),
             helper.make_node("Reshape", ["h", "shp"], ["h2"], name="flat"),
             helper.make_node("Gemm", ["h2", "w2", "b2"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)]
    w1 = RNG.standard_normal((hidden, K)).astype(np.float32)
    inits = [("emb", RNG.standard_normal((V, hidden)).astype(np.float32)),
             ("w2", RNG.standard_normal((N, K)).astype(np.float32)),
             ("b2", RNG.standard_normal(N).astype(np.float32)), ("shp", np.array([-1, K], np.int64))]
    if const_node:
        nodes.insert(0, helper.make_node("Constant", [], ["w1"], name="w1_const",
                                         value=numpy_helper.from_array(w1, "w1")))
    else:
        inits.append(("w1", w1))
    return make_model(nodes, [tensor("ids", [3, 5], TensorProto.INT64)], [tensor("y", ["M", N])], inits)


def _ort(model, opt_level=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # onnxruntime turns a blocked DequantizeLinear -> MatMul into MatMulNBits at its top level with
    # accuracy_level 4 (int8 activations): level 0 keeps the float semantics the standard form states
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(export_model(model).SerializeToString(), so, providers=["CPUExecutionProvider"])


IDS = {"ids": np.random.default_rng(0).integers(-V, V, (3, 5)).astype(np.int64)}


@pytest.mark.parametrize("opts", ["form=nbits", "form=dq", "form=nbits,symmetric=false,method=mse",
                                  "form=dq,symmetric=false", "form=nbits,bits=8", "form=dq,bits=8,symmetric=false",
                                  "form=nbits,bits=8,symmetric=false,block=64"])
def test_both_forms_run_in_onnxruntime_and_numpy_alike(opts):
    proto = _model()
    ref = compile_model(tvmlite.load(proto)).run(IDS)[0]
    m = tvmlite.load(proto)
    (r,) = Pipeline(f"quantize-weights({opts})").run(m)
    assert sorted(r.rewritten) == ["gather", "gemm", "mm"], r.skipped
    nbits = "form=nbits" in opts
    ops = [n.op_type for n in m.graph.toposort()]
    if nbits:
        assert ops.count("MatMulNBits") == 2 and "GatherBlockQuantized" in ops and "Gemm" not in ops
    else:
        assert ops.count("DequantizeLinear") == 3 and "Gemm" in ops and m.opset >= 21
    onnx.checker.check_model(export_model(m))
    got_ort = _ort(m).run(None, IDS)[0]
    got_np = compile_model(m).run(IDS)[0]
    np.testing.assert_allclose(got_np, got_ort, rtol=1e-4, atol=1e-3 * np.abs(got_ort).max())
    rel = np.abs(got_np - ref).max() / np.abs(ref).max()
    assert rel < (0.4 if "bits=8" not in opts else 0.03), rel  # quantized, not broken
    assert rel > 1e-5  # and really quantized
    assert r.stats["weight_bytes_after"] < r.stats["weight_bytes_before"] / (3 if "bits=8" in opts else 5)


def test_nbits_and_dq_forms_hold_the_same_weights():
    outs, proto = [], _model()
    for form in ("nbits", "dq"):
        m = tvmlite.load(proto)
        Pipeline(f"quantize-weights(form={form},symmetric=false)").run(m)
        outs.append(_ort(m).run(None, IDS)[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-3 * np.abs(outs[1]).max())


def test_nbits_weight_layout_matches_the_pass():
    w = RNG.standard_normal((K, N)).astype(np.float32)
    m = tvmlite.load(make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                                [tensor("x", [2, K])], [tensor("y", [2, N])], [("w", w)]))
    Pipeline("quantize-weights(symmetric=false)").run(m)
    node = next(n for n in m.graph if n.op_type == "MatMulNBits")
    g = m.graph
    rebuilt = nbits_weight(g.const_value(node.inputs[1]), g.const_value(node.inputs[2]),
                           g.const_value(node.inputs[3]), **{k: node.attrs[k] for k in ("K", "N", "bits", "block_size")})
    expect = quantize_blocks(w, axis=0, block=32, bits=4, symmetric=False).dequantize()
    np.testing.assert_allclose(rebuilt.T, expect, rtol=1e-6, atol=1e-7)


def test_constant_node_weight_and_shared_weight_stored_once():
    m = tvmlite.load(_model(const_node=True))
    (r,) = Pipeline("quantize-weights").run(m)
    assert "mm" in r.rewritten
    assert not [n for n in m.graph if n.op_type == "Constant"]  # the float Constant is gone
    w = RNG.standard_normal((K, N)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="a"), helper.make_node("MatMul", ["x2", "w"], ["b"], name="b")]
    m = tvmlite.load(make_model(nodes, [tensor("x", [2, K]), tensor("x2", [3, K])],
                                [tensor("a", [2, N]), tensor("b", [3, N])], [("w", w)]))
    (r,) = Pipeline("quantize-weights").run(m)
    assert len(r.rewritten) == 2 and [d["shared"] for d in r.decisions] == [False, True]
    assert len(m.graph.initializers) == 2  # one packed weight and one scale tensor for both


def test_integer_matmul_and_shape_arithmetic_are_left_alone():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="imm"),
             helper.make_node("Gather", ["shape_table", "i"], ["s"], name="gshape")]
    proto = make_model(nodes, [tensor("x", [2, 64], TensorProto.INT32), tensor("i", [], TensorProto.INT64)],
                       [tensor("y", [2, 64], TensorProto.INT32), tensor("s", [], TensorProto.INT64)],
                       [("w", RNG.integers(-3, 3, (64, 64)).astype(np.int32)),
                        ("shape_table", np.arange(4096, dtype=np.int64).reshape(64, 64))])
    m = tvmlite.load(proto)
    (r,) = Pipeline("quantize-weights").run(m)
    assert not r.changed and not r.rewritten
    assert dict(r.skipped) == {"imm": "B is int32, not float32 (integer and shape arithmetic is left alone)",
                               "gshape": "table is int64 of rank 2, not a float32 matrix"}
    assert [n.op_type for n in m.graph] == ["MatMul", "Gather"]


def test_embedding_that_does_not_fit_whole_blocks_is_skipped_under_nbits_only():
    m = tvmlite.load(_model(hidden=40))
    (r,) = Pipeline("quantize-weights(block=32)").run(m)
    assert dict(r.skipped)["gather"].startswith("hidden size 40 is not a multiple of block=32")
    assert sorted(r.rewritten) == ["gemm", "mm"]  # K=40 fits a ragged block in MatMulNBits
    np.testing.assert_allclose(compile_model(m).run(IDS)[0], _ort(m).run(None, IDS)[0], rtol=1e-4, atol=1e-2)
    m = tvmlite.load(_model(hidden=40))
    (r,) = Pipeline("quantize-weights(block=32,form=dq)").run(m)
    assert sorted(r.rewritten) == ["gather", "gemm", "mm"]


def test_gptq_pass_uses_calibration_and_beats_round_to_nearest():
    x_cal = (RNG.standard_normal((64, 32)) @ RNG.standard_normal((32, 96)) * 0.3).astype(np.float32)
    w = RNG.standard_normal((96, N)).astype(np.float32)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                       [tensor("x", ["B", 96])], [tensor("y", ["B", N])], [("w", w)])
    ref = x_cal @ w
    errs = {}
    for gptq in (False, True):
        m = tvmlite.load(proto)
        p = Pipeline(f"quantize-weights(gptq={str(gptq).lower()})")
        p.passes[0].options.calibration = [{"x": x_cal[i:i + 16]} for i in range(0, 64, 16)]
        p.run(m)
        errs[gptq] = np.linalg.norm(compile_model(m).run({"x": x_cal})[0] - ref)
    assert errs[True] < 0.8 * errs[False], errs


@pytest.mark.parametrize("opts,needle", [("bits=3", "bits=3"), ("block=0", "block=0"), ("block=48", "power of two"),
                                         ("form=qoperator", "form='qoperator'"), ("method=kmeans", "method='kmeans'"),
                                         ("accuracy_level=9", "accuracy_level=9")])
def test_hostile_options_are_refused(opts, needle):
    with pytest.raises(OptionError, match=needle):
        Pipeline(f"quantize-weights({opts})").run(tvmlite.load(_model()))


def test_cli_passes_spec(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_model(), src)
    rc, _, err = cli_main("optimize", src, "-o", dst, "--passes", "quantize-weights(bits=4,block=32,form=nbits)",
                          "--max-error", "0.5")  # int4 of random weights: ~0.1 rel error
    assert rc == 0, err
    ops = [n.op_type for n in onnx.load(dst).graph.node]
    assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    assert dst.stat().st_size < src.stat().st_size / 4
    rc, _, err = cli_main("optimize", src, "-o", tmp_path / "bad.onnx", "--passes", "quantize-weights(bits=3)")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "bits=3" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "bad.onnx").exists()
