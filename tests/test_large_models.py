"""Models over protobuf's 2 GiB limit: written with external data, inferred and run in onnxruntime
through files. The limit is lowered here so the test stays small; the code paths are the same."""
import os

import numpy as np
import pytest
import onnx

import tvmlite
from tvmlite.compare import ort_session
from tvmlite.export import onnx_export
from tvmlite.export.shapes import inferred_types
from tvmlite.ir.graph import type_shape

from helpers import conv_bn_relu_model

TESTS = os.path.dirname(os.path.abspath(__file__))


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


#: issue 13's target for the model below through `optimize --preset exact`: the child's peak RSS.
#: Before the weights were held once (1e70b62, measured this way): 17.95 GB and 439 s; earlier runs
#: inside pytest read 12-15 GB (15.35 GB when the OOM killer stopped it). Now 2.35 GB and 14-33 s, the
#: floor being the 2.23 GB of weights and ~0.1 GB of interpreter with onnxruntime.
PEAK_RSS_TARGET = 3 * 10**9


MAKE_2GB_MODEL = """
import sys
from onnx.external_data_helper import convert_model_to_external_data
import onnx
sys.path.insert(0, sys.argv[2])
from helpers import two_matmuls

proto = two_matmuls(16384, 17000, scale=0.01)  # 2 x 16384 x 17000 float32 = 2.07 GiB
convert_model_to_external_data(proto, location="big.onnx.data", size_threshold=1024)
onnx.save(proto, sys.argv[1] + "/big.onnx")
"""


def _own_peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


@pytest.mark.skipif(not os.environ.get("TVMLITE_TEST_2GB"), reason="set TVMLITE_TEST_2GB=1: writes ~4.5 GB, ~2 min")
def test_real_model_over_2gb_through_optimize(tmp_path):
    """A real 2.1 GiB model (two MatMuls with external data): tvmlite optimize --preset exact reads
    it, checks it in onnxruntime, writes it with external data, and the outputs are bit-identical.
    The optimize process's peak RSS (from wait4, so nothing is missed between samples) and wall time
    are printed (pytest -s) and the RSS must meet PEAK_RSS_TARGET."""
    import subprocess
    import sys
    import time

    n = 16384
    # made in a child of its own: wait4's figure is the optimize child's peak or this process's,
    # whichever is higher (exec records the peak of the address space it replaces, and
    # subprocess's vfork child has this process's), and making the model here peaked at 7.9 GB
    subprocess.run([sys.executable, "-c", MAKE_2GB_MODEL, str(tmp_path), str(TESTS)], check=True)
    src = tmp_path / "big.onnx"
    assert os.path.getsize(tmp_path / "big.onnx.data") > 2 ** 31
    out = tmp_path / "out" / "opt.onnx"
    out.parent.mkdir()
    log = tmp_path / "optimize.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        child = subprocess.Popen([sys.executable, "-m", "tvmlite.cli", "optimize", str(src), "-o", str(out),
                                  "--preset", "exact", "--shape", "x=1x16384"], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds, peak = time.perf_counter() - t0, usage.ru_maxrss * 1024  # Linux: kilobytes
    figures = (f"optimize --preset exact: {seconds:.0f} s, peak RSS {peak / 1e9:.2f} GB (the floor, this "
               f"process's own peak: {_own_peak() / 1e9:.2f} GB)")
    print(figures)
    assert child.returncode == 0, f"{figures}; exit {child.returncode}: {log.read_text()[-2000:]}"
    assert peak <= PEAK_RSS_TARGET, figures
    written = onnx.load(str(out), load_external_data=False)
    assert all(onnx.external_data_helper.uses_external_data(t) for t in written.graph.initializer)
    assert [nd.op_type for nd in written.graph.node] == ["MatMul", "MatMul"]  # Identity removed
    x = np.random.default_rng(1).standard_normal((1, n), np.float32)
    ref = ort_session(str(src)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ort_session(str(out)).run(None, {"x": x})[0], ref)
