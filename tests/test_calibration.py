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
