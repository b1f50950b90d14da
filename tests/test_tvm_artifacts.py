"""Saved TVM artifacts are checked before loading (issue 12): a truncated library used to kill the
process with SIGBUS, garbage JSON was an internal error. And a 10,000-op elementwise chain builds
(its fused epilogue used to overflow TVM's C++ stack: SIGSEGV)."""
import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from helpers import cli_main
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model, load_module  # noqa: E402
from tvmlite.backends.tvm.artifact_check import ArtifactError  # noqa: E402
from tvmlite.errors import TvmliteError  # noqa: E402
from tvmlite.frontend import load  # noqa: E402


def chain(n, ops=("Relu", "Neg", "Abs")):
    nodes, prev = [], "x"
    for i in range(n):
        y = f"v{i}" if i < n - 1 else "y"
        nodes.append(h.make_node(ops[i % len(ops)], [prev], [y], name=f"n{i}"))
        prev = y
    g = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("art")
    cm = compile_model(load(chain(7)), {"x": (1, 4)}, cache=False)
    cm.save(str(d / "m.so"))
    return d / "m.so"


_copies = itertools.count()


def copy_of(artifact, tmp_path):
    # a fresh name each time: a library this process loaded stays mapped, and writing over its
    # file in place changes the mapped code (the process then died at exit with SIGSEGV)
    dst = tmp_path / f"c{next(_copies)}.so"
    for suffix in ("", ".json", ".npz"):
        shutil.copyfile(str(artifact) + suffix, str(dst) + suffix)
    return dst


def chain_ref(x, n):
    for i in range(n):
        x = (np.maximum(x, 0), -x, np.abs(x))[i % 3]
    return x


def test_intact_artifact_runs(artifact):
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    np.testing.assert_array_equal(load_module(str(artifact)).run({"x": x})[0], chain_ref(x, 7))


def test_truncated_library_is_refused_in_process(artifact, tmp_path):
    so = copy_of(artifact, tmp_path)
    data = so.read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 1):
        so.write_bytes(data[:size])
        with pytest.raises(ArtifactError, match="not a complete shared library"):
            load_module(str(so))


def test_cli_run_of_truncated_library_exits_2(artifact, tmp_path):
    so = copy_of(artifact, tmp_path)
    so.write_bytes(so.read_bytes()[:3000])
    rc, _, err = cli_main("run", so)
    assert rc == 2, err
    assert err.count("\n") == 1 and "not a complete shared library" in err


def test_cli_run_of_library_refuses_inputs_of_another_dtype(artifact, tmp_path):
    """float64 arrays for a float32 build: cast without a word (onnxruntime and 'run MODEL.onnx'
    refuse them); now one line, as check_feeds says it for a model. Extra arrays stay allowed."""
    x = np.array([[1.0, -2.0, 3.0, -4.0]])
    np.savez(tmp_path / "f64.npz", x=x)
    rc, _, err = cli_main("run", artifact, "--inputs", tmp_path / "f64.npz")
    assert rc == 2 and err.count("\n") == 1 and "dtype float64 does not fit the build's float32" in err, err
    np.savez(tmp_path / "ok.npz", x=x.astype(np.float32), label=np.arange(3))
    rc, out, err = cli_main("run", artifact, "--inputs", tmp_path / "ok.npz")
    assert rc == 0, err


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"\x89garbage\xff" * 50), "not UTF-8"),
    (lambda p: p.write_text(p.read_text()[:40]), "invalid JSON at line 1"),
    (lambda p: p.write_text("[1, 2]"), "a JSON list, not an object"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "format": 99})), "format 99"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "calls": {}})), "'calls' must be"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "buffers": {"x": {"shape": [2**40]}}})),
     "TVMLITE_MAX_TENSOR_ELEMENTS"),
])
def test_damaged_plan_is_refused(artifact, tmp_path, damage, message):
    so = copy_of(artifact, tmp_path)
    damage(so.with_suffix(".so.json"))
    with pytest.raises(TvmliteError, match=message):
        load_module(str(so))


def test_plan_of_another_build_and_bad_constants(artifact, tmp_path):
    so = copy_of(artifact, tmp_path)
    js = so.with_suffix(".so.json")
    plan = json.loads(js.read_text())
    plan["calls"][0]["func"] = "k999_other"
    js.write_text(json.dumps(plan))
    with pytest.raises(ArtifactError, match="no kernel 'k999_other'"):
        load_module(str(so))
    so = copy_of(artifact, tmp_path)
    so.with_suffix(".so.npz").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="not a .npz file"):
        load_module(str(so))


def test_recorded_checksum_is_verified(artifact, tmp_path):
    so = copy_of(artifact, tmp_path)
    js = so.with_suffix(".so.json")
    plan = json.loads(js.read_text())
    import hashlib

    plan["lib_sha256"] = hashlib.sha256(so.read_bytes()).hexdigest()
    plan["lib_bytes"] = so.stat().st_size
    js.write_text(json.dumps(plan))
    load_module(str(so))  # intact: loads
    data = bytearray(so.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte flipped: only the digest sees it
    so = copy_of(so, tmp_path)  # not in place: the intact one is mapped now
    so.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        load_module(str(so))


@pytest.mark.slow
def test_long_elementwise_chain_builds(tmp_path):
    """10,000 ops: the epilogue is capped, so TVM's recursive passes see short expressions."""
    path = tmp_path / "chain.onnx"
    onnx.save(chain(10_000), path)
    so = tmp_path / "chain.so"
    r = subprocess.run([sys.executable, "-m", "tvmlite.cli", "build", str(path), "-o", str(so)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    got = load_module(str(so)).run({"x": x})[0]
    np.testing.assert_array_equal(got, chain_ref(x, 10_000))


def _gemm_model(w, alpha=1.0):
    g = h.make_graph([h.make_node("Gemm", ["x", "W"], ["y"], alpha=alpha)], "gemm",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, w.shape[0]])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, w.shape[1]])],
                     [onnx.numpy_helper.from_array(w, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("rows", [4, 1024])  # a small weight (kept as its proto) and a big one (an array)
def test_cache_key_follows_every_weight_byte_and_attribute(rows):
    from tvmlite.backends.tvm.build_cache import graph_key

    w = np.random.default_rng(0).standard_normal((rows, 300)).astype(np.float32)
    key = graph_key(load(_gemm_model(w)), {"x": (2, rows)}, "llvm")
    assert graph_key(load(_gemm_model(w.copy())), {"x": (2, rows)}, "llvm") == key  # by content
    w2 = w.copy()
    w2[-1, -1] = np.nextafter(w2[-1, -1], np.float32(9))  # the last bit of the last element
    assert graph_key(load(_gemm_model(w2)), {"x": (2, rows)}, "llvm") != key
    assert graph_key(load(_gemm_model(w, alpha=0.5)), {"x": (2, rows)}, "llvm") != key
    assert graph_key(load(_gemm_model(w)), {"x": (3, rows)}, "llvm") != key
    m = load(_gemm_model(w))
    m.graph.values["W"].const = w2  # changed in the IR, as a pass would
    assert graph_key(m, {"x": (2, rows)}, "llvm") != key


def flip_data_byte(npz):
    """Flip one bit in the last byte of the largest array of ``npz`` (past its .npy header)."""
    import zipfile

    with zipfile.ZipFile(npz) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(npz.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
    data[info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size - 1] ^= 0x40
    npz.write_bytes(bytes(data))


def test_a_flipped_constant_byte_is_refused(tmp_path):
    """zip's CRC-32 covers the constants: a flipped byte is one line, never a wrong answer."""
    so = tmp_path / "g.so"
    cm = compile_model(load(_gemm_model(np.ones((16, 8), np.float32))), cache=False)
    cm.save(str(so))
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(load_module(str(so)).run({"x": x})[0], np.full((2, 8), 16, np.float32))
    flip_data_byte(so.with_suffix(".so.npz"))
    so2 = tmp_path / "g2.so"  # a fresh name: the intact library is mapped now
    for suffix in ("", ".json", ".npz"):
        shutil.copyfile(str(so) + suffix, str(so2) + suffix)
    with pytest.raises(ArtifactError, match="Bad CRC-32"):
        load_module(str(so2))


def test_a_fresh_build_runs_its_cached_library_and_saves_by_copy(tmp_path):
    """LLVM makes the machine code once: at the export into the cache, which the build then runs
    and copies when saved (it used to JIT the module and export it twice more)."""
    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    cm = compile_model(load(_gemm_model(w)))
    assert not cm.cached and cm.lib_path and cm.lib_path.endswith("model.so")
    cm.save(str(tmp_path / "g.so"))
    assert (tmp_path / "g.so").read_bytes() == open(cm.lib_path, "rb").read()
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_allclose(load_module(str(tmp_path / "g.so")).run({"x": x})[0], x @ w, rtol=1e-5, atol=1e-5)
    assert compile_model(load(_gemm_model(w))).cached


def test_source_digest_reads_the_sources_again_only_when_one_changed(tmp_path, monkeypatch):
    """The backend sources are part of every cache key; they are read again only when a file's
    size or time changed (reading all of them on every key took ~20 ms)."""
    import pathlib

    from tvmlite.backends.tvm import build_cache

    (tmp_path / "kernels").mkdir()
    src = tmp_path / "kernels" / "a.py"
    src.write_text("x = 1\n")
    monkeypatch.setattr(build_cache, "__file__", str(tmp_path / "build_cache.py"))
    reads = []
    real = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda p: reads.append(p.name) or real(p))
    first = build_cache._source_digest()
    assert reads == ["a.py"]
    assert build_cache._source_digest() == first and reads == ["a.py"]
    src.write_text("x = 22\n")
    assert build_cache._source_digest() != first and reads == ["a.py", "a.py"]


def test_constants_stored_or_compressed_read_the_same(tmp_path):
    """np.savez stores members as they are: those are read from the file straight into the TVM
    tensors, with their CRC-32 checked; a compressed .npz (written by another tool) still loads."""
    w = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    so = tmp_path / "g.so"
    compile_model(load(_gemm_model(w)), cache=False).save(str(so))
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    want = load_module(str(so)).run({"x": x})[0]
    np.testing.assert_allclose(want, x @ w, rtol=1e-5, atol=1e-5)
    with np.load(str(so) + ".npz") as z:
        consts = {k: z[k] for k in z.files}
    so2 = tmp_path / "c.so"
    shutil.copyfile(so, so2)
    shutil.copyfile(str(so) + ".json", str(so2) + ".json")
    np.savez_compressed(str(so2) + ".npz", **consts)
    np.testing.assert_array_equal(load_module(str(so2)).run({"x": x})[0], want)


def _mapped_ranges(path):
    ranges = []
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith(str(path)):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def test_constants_are_mapped_and_a_later_save_leaves_them_as_they_were(tmp_path):
    """Saved constants are aligned in the .npz, so a loaded artifact's kernel constants are the
    file's pages (no copy); saving another build under the same name lands by rename, so the
    loaded one still computes with its own weights."""
    import zipfile

    from tvmlite.backends.tvm import params

    w = np.random.default_rng(5).standard_normal((256, 64)).astype(np.float32)
    so = tmp_path / "g.so"
    compile_model(load(_gemm_model(w)), cache=False).save(str(so))
    npz = so.with_suffix(".so.npz")
    with zipfile.ZipFile(npz) as zf, open(npz, "rb") as raw:
        for info in zf.infolist():
            start = params._data_offset(raw, info, str(npz), info.filename)
            assert (start + 128) % params.ALIGN == 0 or info.file_size < params.MAP_MIN_BYTES
    cm = load_module(str(so))
    ranges = _mapped_ranges(npz.resolve())
    big = [np.from_dlpack(t) for t in cm._tensors.values() if int(np.prod(t.shape)) >= w.size]
    assert ranges and big, "the constants file is not mapped"
    assert all(any(lo <= a.ctypes.data < hi for lo, hi in ranges) for a in big)
    x = np.random.default_rng(6).standard_normal((2, 256)).astype(np.float32)
    want = cm.run({"x": x})[0]
    np.testing.assert_allclose(want, x @ w, rtol=1e-5, atol=1e-4)
    compile_model(load(_gemm_model(-w)), cache=False).save(str(so))  # the same name, other weights
    np.testing.assert_array_equal(cm.run({"x": x})[0], want)
    np.testing.assert_allclose(load_module(str(so)).run({"x": x})[0], -want, rtol=1e-5, atol=1e-4)


def test_a_flipped_byte_of_a_mapped_constant_is_refused(tmp_path):
    """The CRC-32 is checked over the mapped pages too (a constant of 64 KiB or more is mapped)."""
    from tvmlite.backends.tvm import params

    w = np.ones((256, 64), np.float32)
    assert w.nbytes >= params.MAP_MIN_BYTES
    so = tmp_path / "g.so"
    compile_model(load(_gemm_model(w)), cache=False).save(str(so))
    flip_data_byte(so.with_suffix(".so.npz"))
    with pytest.raises(ArtifactError, match="Bad CRC-32"):
        load_module(str(so))
