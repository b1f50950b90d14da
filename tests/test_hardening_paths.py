"""Outputs never destroy inputs and land together or not at all; temporaries go away on success,
error and signals (tvmlite.outputs, the CLI's use of it, real `python -m tvmlite.cli` processes)."""
from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from helpers import conv_bn_relu_model

from tvmlite.errors import TvmliteError
from tvmlite.outputs import OutputError, Outputs, model_files

TVMLITE = [sys.executable, "-m", "tvmlite.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "digits_cnn.onnx")


def cli(*args, cwd=None, tmpdir=None, preexec=None, timeout=300):
    env = dict(os.environ)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    p = subprocess.run(TVMLITE + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=timeout, preexec_fn=preexec)
    return p.returncode, p.stdout, p.stderr


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


# ------------------------------------------------------------------------------- Outputs itself
def test_outputs_land_together_with_umask_modes(tmp_path):
    old = os.umask(0o027)
    try:
        with Outputs() as txn:
            a = txn.file(tmp_path / "a.bin", "-o")
            b = txn.file(tmp_path / "b.json", "--json")
            for p in (a, b):
                with open(p, "w") as f:
                    f.write(os.path.basename(p))
            assert listing(tmp_path)[0].startswith(".tvmlite-") and len(listing(tmp_path)) == 1
    finally:
        os.umask(old)
    assert listing(tmp_path) == ["a.bin", "b.json"]
    assert (tmp_path / "b.json").read_text() == "b.json"
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o640


def test_outputs_failure_leaves_nothing(tmp_path):
    (tmp_path / "old.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with Outputs() as txn:
            with open(txn.file(tmp_path / "old.bin", "-o"), "w") as f:
                f.write("new")
            raise RuntimeError("the command failed after writing")
    assert listing(tmp_path) == ["old.bin"] and (tmp_path / "old.bin").read_text() == "old"


def test_commit_puts_back_what_it_replaced_when_a_rename_fails(tmp_path):
    (tmp_path / "a.bin").write_text("old a")
    txn = Outputs()
    for name in ("a.bin", "b.bin"):
        with open(txn.file(tmp_path / name, "-o"), "w") as f:
            f.write("new " + name)
    (tmp_path / "b.bin").mkdir()  # appears between the check and the commit: its rename fails
    with pytest.raises(OutputError, match="b.bin"):
        txn.commit()
    assert (tmp_path / "a.bin").read_text() == "old a"
    assert listing(tmp_path) == ["a.bin", "b.bin"] and (tmp_path / "b.bin").is_dir()


@pytest.mark.parametrize("make,needle", [
    (lambda p, src: os.symlink(src, p), "refusing to overwrite"),
    (lambda p, src: os.link(src, p), "refusing to overwrite"),
    (lambda p, src: os.mkfifo(p), "FIFO"),
    (lambda p, src: os.mkdir(p), "directory"),
])
def test_refused_destinations(tmp_path, make, needle):
    src = tmp_path / "model.onnx"
    onnx.save(conv_bn_relu_model(), src)
    dst = tmp_path / "out.onnx"
    make(dst, src)
    with pytest.raises(OutputError, match=needle):
        Outputs(lambda: model_files(str(src))).file(dst, "-o")
    assert listing(tmp_path) == ["model.onnx", "out.onnx"]


def test_same_output_twice_and_bad_names(tmp_path):
    txn = Outputs()
    txn.file(tmp_path / "x.onnx", "-o")
    with pytest.raises(OutputError, match="same file as -o"):
        txn.file(tmp_path / "." / "x.onnx", "--json")
    with pytest.raises(OutputError, match="longer than"):
        txn.file(tmp_path / ("n" * 300), "-o")
    with pytest.raises(OutputError, match="not a directory"):
        txn.file(str(tmp_path / "sub") + "/", "-o")
    txn.discard()
    assert listing(tmp_path) == []


def test_external_data_of_the_input_is_an_input(tmp_path):
    src = tmp_path / "model.onnx"
    onnx.save_model(conv_bn_relu_model(), src, save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    before = (tmp_path / "weights.bin").read_bytes()
    with pytest.raises(OutputError, match="external data of the input model"):
        Outputs(lambda: model_files(str(src))).file(tmp_path / "weights.bin", "-o")
    assert (tmp_path / "weights.bin").read_bytes() == before


def test_save_keeps_someone_elses_data_file(tmp_path):
    """A model whose tensors stay external writes NAME.data: over another file of that name it
    refuses; over the data file of the model it replaces, it proceeds."""
    from tvmlite.export import save
    from tvmlite.frontend import load

    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(conv_bn_relu_model(), src, save_as_external_data=True, location="w.bin", size_threshold=0)
    m = load(str(src))
    assert m.external_data
    (tmp_path / "out.onnx.data").write_text("someone else's")
    with pytest.raises(OutputError, match="not the data file"):
        save(m, tmp_path / "out.onnx", source_path=str(src))
    assert listing(tmp_path) == ["out.onnx.data", "src"]
    os.remove(tmp_path / "out.onnx.data")
    save(m, tmp_path / "out.onnx", source_path=str(src))
    save(m, tmp_path / "out.onnx", source_path=str(src))  # again: its own data file is replaced
    assert listing(tmp_path) == ["out.onnx", "out.onnx.data", "src"]
    back = load(str(tmp_path / "out.onnx"))
    np.testing.assert_array_equal(back.graph.values["w"].const, m.graph.values["w"].const)


# ------------------------------------------------------------------------------- real processes
def test_no_temporaries_left_in_tmpdir(tmp_path):
    """onnxruntime writes $TMPDIR/.ses on import; shape inference and sessions make directories."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    rc, out, err = cli("run", DIGITS, "--backend", "ort", tmpdir=tmpdir)
    assert rc == 0, err
    rc, out, err = cli("optimize", DIGITS, "-o", tmp_path / "o.onnx", "--preset", "clean", tmpdir=tmpdir)
    assert rc == 0, err
    rc, out, err = cli("run", tmp_path / "missing.onnx", tmpdir=tmpdir)
    assert rc == 2
    assert listing(tmpdir) == []


def test_onnxruntime_runtime_failure_is_one_line(tmp_path):
    from helpers import make_model, tensor
    from onnx import TensorProto, helper

    m = make_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
                   [tensor("x", [4]), tensor("s", [2], TensorProto.INT64)], [tensor("y", ["a", "b"])])
    onnx.save(m, tmp_path / "rt.onnx")
    np.savez(tmp_path / "rt.npz", x=np.ones(4, np.float32), s=np.array([3, 3], np.int64))
    rc, out, err = cli("run", tmp_path / "rt.onnx", "--backend", "ort", "--inputs", tmp_path / "rt.npz")
    assert rc == 2
    line = one_line(err)
    assert line.startswith("tvmlite: error: onnxruntime failed to run the model") and "reshape" in line


POOL_MASKS = r"""
import json, os, signal, threading
from tvmlite.ops import conv_paths

def blocked(tid):  # the signals a thread blocks, from /proc
    line = next(l for l in open(f"/proc/self/task/{tid}/status") if l.startswith("SigBlk:"))
    bits = int(line.split()[1], 16)
    return [s for s in (signal.SIGINT, signal.SIGTERM) if bits >> (s - 1) & 1]

conv_paths.CONV_THREADS = 2
pool = conv_paths._conv_pool()
helpers = [t.native_id for t in threading.enumerate() if t.name.startswith("tvmlite-conv")]
print(json.dumps({"helpers": [blocked(t) for t in helpers], "main": blocked(threading.get_native_id()),
                  "same": conv_paths._conv_pool() is pool}))
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask") or not os.path.exists("/proc/self/task"),
                    reason="per-thread signal masks are read from Linux's /proc")
def test_the_numpy_convs_helper_threads_start_with_signals_blocked():
    """The NumPy backend's conv helper thread starts with SIGINT and SIGTERM blocked, so a Ctrl-C
    cannot land between its start and its registration for the exit-time stop (an unregistered
    one kept the interpreter waiting at exit); the caller's mask is given back."""
    import json

    r = subprocess.run([sys.executable, "-c", POOL_MASKS], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["helpers"] == [[signal.SIGINT, signal.SIGTERM]] and got["main"] == [] and got["same"], got


@pytest.mark.parametrize("sig,rc,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_leaves_nothing(tmp_path, sig, rc, word):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    p = subprocess.Popen(TVMLITE + ["run", DIGITS, "-o", str(work / "out.npz"), "--repeats", "100000000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not any(n.startswith(".tvmlite-") for n in listing(work)):  # staged: the command is under way
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == rc, err
    assert word in one_line(err)
    assert listing(work) == [] and listing(tmpdir) == []


SWALLOWED = """
import os, signal, time
from tvmlite import outputs
outputs.signals_as_interrupts()
class Finalized:
    def __del__(self):  # a signal arriving here is only reported by Python (as in an import lock's callback)
        os.kill(os.getpid(), signal.{sig})
        time.sleep(5)
try:
    Finalized()
    while True:  # the resend thread raises it again
        time.sleep(0.05)
except KeyboardInterrupt as e:
    print(type(e).__name__)
class Broken:
    def __del__(self):
        raise ValueError("still reported")
outputs.received_signal = None
Broken()
"""


@pytest.mark.parametrize("sig,name", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_signal_swallowed_in_a_finalizer_is_raised_again_without_a_report(sig, name):
    p = subprocess.run([sys.executable, "-c", SWALLOWED.replace("{sig}", sig)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.stdout.split() == [name], p.stderr
    # the swallowed interrupt is not reported; any other exception in a finalizer still is
    assert "Terminated" not in p.stderr and "KeyboardInterrupt" not in p.stderr, p.stderr
    assert "ValueError: still reported" in p.stderr


def _file_size_limit(nbytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def test_full_disk_leaves_no_partial_outputs(tmp_path):
    rc, out, err = cli("optimize", DIGITS, "-o", tmp_path / "o.onnx", "--json", tmp_path / "r.json",
                       "--preset", "clean", "--no-check", preexec=_file_size_limit(20_000))
    assert rc == 2
    line = one_line(err)
    assert "cannot write" in line and "o.onnx" in line and "internal error" not in line
    assert listing(tmp_path) == []


@pytest.mark.slow
def test_emit_tvm_full_disk_leaves_no_kernels(tmp_path):
    rc, out, err = cli("emit-tvm", DIGITS, "-o", tmp_path / "k", "--shape", "input=1x1x32x32",
                       preexec=_file_size_limit(3_700))  # the first kernel fits, the second not
    assert rc == 2 and "cannot write" in one_line(err)
    assert listing(tmp_path) == []
    rc, out, err = cli("emit-tvm", DIGITS, "-o", tmp_path / "k", "--shape", "input=1x1x32x32")
    assert rc == 0, err
    names = listing(tmp_path / "k")
    assert "index.txt" in names and len(names) > 3 and not any(n.startswith(".tvmlite") for n in names)


def test_failed_json_leaves_no_model(tmp_path):
    (tmp_path / "ro").write_text("a file, so ro/r.json cannot be made")
    rc, out, err = cli("optimize", DIGITS, "-o", tmp_path / "o.onnx", "--json", tmp_path / "ro" / "r.json",
                       "--preset", "clean")
    assert rc == 2 and "not a directory" in one_line(err)
    assert listing(tmp_path) == ["ro"]


def test_debug_anywhere_shows_the_traceback(tmp_path):
    rc, out, err = cli("inspect", tmp_path / "missing.onnx", "--debug")
    assert rc != 0 and "Traceback" in err and "ModelLoadError" in err
    rc, out, err = cli("inspect", DIGITS, "--debug")
    assert rc == 0 and "Conv" in out, err


def test_errors_are_tvmlite_errors():
    assert issubclass(OutputError, TvmliteError)
