import numpy as np
import pytest

import tvmlite
from tvmlite.calibration import load_calibration
from tvmlite.errors import InputError

from helpers import conv_bn_relu_model


@pytest.fixture
def model():
    return tvmlite.load(conv_bn_relu_model())


def test_sources_agree(model, tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(6):
        np.save(d / f"s{i}.npy", x[i])
    for src in (tmp_path / "c.npz", d, [{"x": x[:3]}, {"x": x[3:]}], {"x": x}):
        calib = load_calibration(src, model)
        assert len(calib) == 6
        got = np.concatenate([b["x"] for b in calib.batches(4)])
        np.testing.assert_array_equal(got, x)


def test_random_warns(model):
    with pytest.warns(UserWarning, match="random"):
        calib = load_calibration(None, model, random_count=3)
    assert len(calib) == 3


@pytest.mark.parametrize("bad,msg", [("missing.npz", "not found"), ("wrong.npz", "no array 'x'"),
                                     ("shape.npz", "does not fit")])
def test_bad_sources(model, tmp_path, bad, msg):
    np.savez(tmp_path / "wrong.npz", y=np.zeros((1, 3, 4, 4), np.float32))
    np.savez(tmp_path / "shape.npz", x=np.zeros((1, 3, 5, 4), np.float32))
    with pytest.raises(InputError, match=msg):
        load_calibration(tmp_path / bad, model)


def _batch_one(model_proto):
    model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model_proto


def test_batch_one_model_takes_a_stack_of_examples(tmp_path):
    """A model whose input fixes batch 1 is calibrated from N examples stacked along the batch axis
    (an .npz of 6 images), re-batched into ones; the other dims still must fit."""
    model = tvmlite.load(_batch_one(conv_bn_relu_model()))
    x = np.random.default_rng(1).standard_normal((6, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    for src in (tmp_path / "c.npz", {"x": x}, [{"x": x[:2]}, {"x": x[2:]}]):
        calib = load_calibration(src, model)
        assert len(calib) == 6
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in calib.batches(1)]), x)
    np.savez(tmp_path / "bad.npz", x=np.zeros((6, 3, 5, 4), np.float32))
    with pytest.raises(InputError, match="does not fit"):
        load_calibration(tmp_path / "bad.npz", model)
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3, 4, 4), np.float32))
    with pytest.raises(InputError, match="does not fit"):
        load_calibration(tmp_path / "empty.npz", model)


def test_quantize_batch_one_model_from_a_stack(tmp_path):
    """quantize on a batch-1 model with 8 stacked calibration images: the pass is applied (it was
    undone with 'shape (8, 3, 4, 4) does not fit the model's [1, 3, 4, 4]')."""
    from tvmlite.optimize import optimize

    src = tmp_path / "m.onnx"
    import onnx

    onnx.save(_batch_one(conv_bn_relu_model()), src)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(2).standard_normal((8, 3, 4, 4)).astype(np.float32))
    model, report = optimize(str(src), passes="fold-bn,quantize(mode=all)", calib=str(tmp_path / "c.npz"), check=False)
    q = report.rows[-1]
    assert q.name == "quantize" and "undone" not in q.status, q.note
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.nodes)
