"""The TVM build cache (issue 15): a cache entry that fails to load is rebuilt with one line on
stderr saying which entry and why, never a traceback and never silently; entries land whole (a
staging folder renamed into place); a miss for a graph the cache holds under other key parts says
which part changed; keys are the same in two fresh processes; pruning drops the least recently
used entries."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import build_cache, compile_model  # noqa: E402
from tvmlite.frontend import load  # noqa: E402

W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
X = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)


def gemm_model(w=W):
    g = h.make_graph([h.make_node("Gemm", ["x", "W"], ["y"])], "gemm",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, w.shape[0]])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, w.shape[1]])],
                     [onnx.numpy_helper.from_array(w, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, empty (the entries are counted)."""
    monkeypatch.setenv("TVMLITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def build(capsys):
    cm = compile_model(load(gemm_model()))
    np.testing.assert_allclose(cm.run({"x": X})[0], X @ W, rtol=1e-5, atol=1e-5)
    return cm, capsys.readouterr().err


def replace(path, data: bytes):
    """A new file at ``path``: this process has the entry's library and constants mapped, and
    writing into those files in place would change (or cut) the mapped pages under it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def truncate_npz(d):
    npz = d / "model.so.npz"
    replace(npz, npz.read_bytes()[: npz.stat().st_size // 2])


def flip_library_byte(d):
    so = d / "model.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0x01
    replace(so, bytes(data))


def flip_weight_byte(d):
    """One bit of W's packed copy (the largest member) in a new file: its CRC-32 no longer holds."""
    import zipfile

    npz = d / "model.so.npz"
    with zipfile.ZipFile(npz) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(npz.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
    data[info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size - 1] ^= 0x40
    replace(npz, bytes(data))


def older_format(d):
    js = d / "model.so.json"
    plan = json.loads(js.read_text())
    plan["format"] = 1
    replace(js, json.dumps(plan).encode())


@pytest.mark.parametrize("damage, why", [
    (truncate_npz, "model.so.npz: not a"),
    (flip_library_byte, "model.so"),
    (flip_weight_byte, "Bad CRC-32"),
    (older_format, "format"),
    (lambda d: (d / "model.so").unlink(), "missing"),
])
def test_a_broken_entry_is_rebuilt_saying_which_and_why(cache, capsys, damage, why):
    first, err = build(capsys)
    assert not first.cached and err == ""
    (key,) = entries(cache)
    del first
    damage(cache / key)
    again, err = build(capsys)  # right answer (checked in build), no traceback
    assert not again.cached
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"build cache entry {key} cannot be used, rebuilding it" in lines[0], err
    assert why in lines[0] and "Traceback" not in err
    assert entries(cache) == [key]  # replaced whole: no staging or broken folder left
    assert sorted(p.name for p in (cache / key).iterdir()) == ["key.json", "model.so", "model.so.json", "model.so.npz"]
    third, err = build(capsys)
    assert third.cached and err == ""


def test_an_entry_that_cannot_be_written_leaves_nothing(cache, capsys, monkeypatch):
    from tvmlite.backends.tvm import params

    def full(f, arrays):
        f.write(b"PK")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(params, "write", full)
    cm, err = build(capsys)  # built and run without the cache
    assert not cm.cached and entries(cache) == []


def test_a_miss_for_a_cached_graph_says_which_key_part_changed(cache, capsys, monkeypatch):
    build(capsys)
    (key,) = entries(cache)
    monkeypatch.setenv("TVMLITE_MIN_PARALLEL_WORK", "12345")
    cm, err = build(capsys)
    assert not cm.cached
    assert f"no build cache entry for this build (entry {key} holds this graph built with other schedule knobs" in err
    assert "min parallel work 1048576" in err and "min parallel work 12345" in err and "backend sources" not in err
    # another graph: a plain miss, nothing to say
    compile_model(load(gemm_model(W * 2)))
    assert capsys.readouterr().err == ""


_KEY = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np, onnx
from onnx import helper as h, TensorProto as T
from tvmlite.backends.tvm.build_cache import graph_key
from tvmlite.frontend import load
def branch(name, op):
    return h.make_graph([h.make_node(op, ["x"], ["o"])], name, [], [h.make_tensor_value_info("o", T.FLOAT, [2, 3])])
c = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "c")
nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0, noop_with_empty_axes=0),
         h.make_node("Greater", ["s", "z"], ["p"]),
         h.make_node("If", ["p"], ["y"], then_branch=branch("t", "Relu"), else_branch=branch("e", "Neg")),
         h.make_node("Add", ["y", "c"], ["out"]),
         h.make_node("Pad", ["out", "pads"], ["padded"], mode="reflect")]
g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                 [h.make_tensor_value_info("padded", T.FLOAT, [2, 5])],
                 [c, onnx.numpy_helper.from_array(np.float32(0), "z"),
                  onnx.numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)], ir_version=8)
print(graph_key(load(m), {{"x": (2, 3)}}, "llvm"))
"""


def test_the_key_is_the_same_in_two_fresh_processes(tmp_path):
    """Nothing process-local (string hashing, set order, time) reaches the key: two processes with
    different hash seeds, one after the other, agree (a key unstable between processes would make
    every 'cached' build a full one)."""
    import pathlib

    tests = str(pathlib.Path(__file__).parent)
    keys = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, TVMLITE_THREADS="2")
        r = subprocess.run([sys.executable, "-c", _KEY.format(tests=tests)], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        keys.append(r.stdout.strip())
    assert keys[0] == keys[1] and len(keys[0]) == 24


def test_pruning_drops_the_least_recently_used_not_the_oldest_built(cache, capsys):
    build(capsys)
    (key,) = entries(cache)
    for name, age in (("old-unused", 50),):  # built after our entry, used never since
        d = cache / name
        d.mkdir()
        (d / "model.so.npz").write_bytes(b"x" * 1000)
        os.utime(d, (time.time() - age, time.time() - age))
    os.utime(cache / key, (time.time() - 100, time.time() - 100))  # built first...
    assert build(capsys)[0].cached  # ...but used now
    size = sum(f.stat().st_size for f in (cache / key).iterdir())
    build_cache.prune_cache(max_bytes=size + 10)
    assert entries(cache) == [key]


def test_pruning_keeps_a_build_in_progress_and_drops_a_crashed_one(cache):
    cache.mkdir()
    live, stale = cache / ".k1.abc", cache / ".k2.def"
    for d in (live, stale):
        d.mkdir()
        (d / "model.so").write_bytes(b"x" * 100)
    old = time.time() - build_cache.STALE_STAGING_S - 10
    os.utime(stale, (old, old))
    build_cache.prune_cache(max_bytes=0)
    assert entries(cache) == [".k1.abc"]


def test_big_weights_are_hashed_in_pieces_on_threads_to_the_same_key(monkeypatch):
    """An array of HASH_CHUNK bytes or more is hashed piece by piece on a thread pool: the key
    follows its last bit and is the same whatever the thread count."""
    monkeypatch.setattr(build_cache, "HASH_CHUNK", 1000)  # W (512 bytes) x 4: three pieces
    w = np.tile(W, (4, 1))
    keys = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("TVMLITE_HASH_THREADS", threads)
        keys[threads] = build_cache.key_parts(load(gemm_model(w)), {"x": (2, 64)}, "llvm")["graph"]
    assert len(set(keys.values())) == 1
    for i in (0, -1):  # the first and the last piece
        w2 = w.copy()
        w2.reshape(-1)[i] = np.nextafter(w2.reshape(-1)[i], np.float32(9))
        assert build_cache.key_parts(load(gemm_model(w2)), {"x": (2, 64)}, "llvm")["graph"] != keys["3"]
    monkeypatch.setattr(build_cache, "HASH_CHUNK", 1 << 30)  # whole: another stream, another key
    assert build_cache.key_parts(load(gemm_model(w)), {"x": (2, 64)}, "llvm")["graph"] != keys["3"]


def test_an_entry_as_written_skips_the_crc_and_a_rewritten_one_does_not(cache, capsys, monkeypatch):
    """The CRC-32 of the mapped constants read every byte of the weights (a quarter of VGG-19's
    cached build): an entry whose .npz has the size, time and inode key.json recorded is the file
    written; any rewrite is checked in full."""
    from tvmlite.backends.tvm import params

    monkeypatch.setattr(params, "MAP_MIN_BYTES", 64)  # W (512 bytes) is mapped, as big weights are
    build(capsys)
    (key,) = entries(cache)
    assert build_cache.as_written(cache / key)
    crcs = []
    real = params.zlib.crc32
    monkeypatch.setattr(params.zlib, "crc32", lambda *a: crcs.append(len(a[0])) or real(*a))
    assert build(capsys)[0].cached and crcs == []
    npz = cache / key / "model.so.npz"
    replace(npz, npz.read_bytes())  # the same bytes, another file
    assert not build_cache.as_written(cache / key)
    assert build(capsys)[0].cached and crcs


@pytest.mark.slow  # one VAD build: ~25 s on a quiet 2-core host
def test_a_built_library_runs_without_the_model_bit_identical(tmp_path, monkeypatch):
    """`tvmlite build` (fresh, then from the cache) and `tvmlite run NAME.so` in processes of their
    own, the ONNX model gone: the VAD graph (If over two branches, each holding the sunk Loop, whose
    subgraphs the artifact keeps as run plans only) gives the in-process build's bits, both rates."""
    import onnxruntime as ort

    from real_graphs import vad

    proto, shapes = vad()
    src, so = tmp_path / "vad.onnx", tmp_path / "out" / "vad.so"
    onnx.save(proto, src)
    so.parent.mkdir()
    env = dict(os.environ, TVMLITE_CACHE=str(tmp_path / "cache"))
    cli = [sys.executable, "-m", "tvmlite.cli"]
    for fresh in (True, False):
        r = subprocess.run(cli + ["build", str(src), "-o", str(so), "--shape", "audio=1x512", "--shape", "state=2x1x64"],
                           capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
        assert ("(from the build cache)" in r.stdout) != fresh, r.stdout
    rng = np.random.default_rng(7)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    monkeypatch.setenv("TVMLITE_CACHE", env["TVMLITE_CACHE"])
    want = compile_model(load(proto), dict(shapes, sr=()))  # the CLI's cache entry, in this process
    assert want.cached
    src.unlink()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for sr in (16000, 8000):
        feeds["sr"] = np.array(sr, np.int64)
        np.savez(tmp_path / "in.npz", **feeds)
        r = subprocess.run(cli + ["run", str(so), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "got.npz")],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        ref = want.run(feeds)
        with np.load(tmp_path / "got.npz") as got:
            for name, r_ in zip(want.output_names, ref):
                np.testing.assert_array_equal(got[name], r_)
        for r_, o in zip(ref, sess.run(None, feeds)):
            np.testing.assert_allclose(r_, o, rtol=1e-4, atol=1e-5)
