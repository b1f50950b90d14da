"""Bucketed builds for ranged dims (`tvmlite build --shape x=1x1..64x8`): any in-range length runs,
padded to the next bucket only where the attention mask makes it safe (checked against
onnxruntime), and every bad range, bucket list or tampered table is one line, exit 2."""
import json
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import load_module  # noqa: E402
from tvmlite.backends.tvm import buckets as bk  # noqa: E402

from helpers import cli_main  # noqa: E402
from tvmlite.errors import InputError  # noqa: E402
from test_tvm_artifacts import flip_data_byte  # noqa: E402

RANGE = ["--shape", "x=1x1..64x8", "--shape", "mask=1x1..64"]


def pooled_model(use_mask=True):
    """Masked mean pooling over a sequence plus a per-token output: padding with mask 0 changes
    nothing when the sum is masked; without the mask it changes the mean."""
    w = nh.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    b = nh.from_array(np.full(4, 0.5, np.float32), "b")  # padded zero tokens still get the bias
    ax = nh.from_array(np.array([1], np.int64), "ax")
    ax2 = nh.from_array(np.array([2], np.int64), "ax2")
    nodes = [h.make_node("MatMul", ["x", "W"], ["xw"]), h.make_node("Add", ["xw", "b"], ["y"]),
             h.make_node("Unsqueeze", ["mask", "ax2"], ["m3"]),
             h.make_node("Mul", ["y", "m3"], ["ym"]),
             h.make_node("ReduceSum", ["ym" if use_mask else "y", "ax"], ["s"], keepdims=0),
             h.make_node("ReduceSum", ["mask", "ax"], ["n"], keepdims=1), h.make_node("Div", ["s", "n"], ["pooled"])]
    g = h.make_graph(nodes, "pooled", [h.make_tensor_value_info("x", T.FLOAT, [1, "seq", 8]),
                                       h.make_tensor_value_info("mask", T.FLOAT, [1, "seq"])],
                     [h.make_tensor_value_info("pooled", T.FLOAT, [1, 4]),
                      h.make_tensor_value_info("y", T.FLOAT, [1, "seq", 4])], [w, b, ax, ax2])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def cli(*args):
    """The CLI in this process (helpers.cli_main), as a CompletedProcess."""
    rc, out, err = cli_main(*args)
    return subprocess.CompletedProcess(args, rc, out, err)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    for name, m in (("good", pooled_model()), ("nomask", pooled_model(False))):
        onnx.save(m, d / f"{name}.onnx")
        r = cli("build", d / f"{name}.onnx", "-o", d / f"{name}.so", *RANGE, "--buckets", "8,32")
        assert r.returncode == 0, r.stderr
    return d


def feeds(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((1, n, 8)).astype(np.float32), "mask": np.ones((1, n), np.float32)}


@pytest.mark.parametrize("n", [1, 5, 8, 20, 64])
def test_any_in_range_length_matches_onnxruntime(built, n):
    m = bk.BucketedModel(str(built / "good.so"), bk.read_manifest(str(built / "good.so")), load_module)
    assert m.m["symbols"]["seq"]["pad"] is True
    assert [b["values"]["seq"] for b in m.m["buckets"]] == [8, 32, 64]
    f = feeds(n)
    ref = ort.InferenceSession(str(built / "good.onnx")).run(None, f)
    got = m.run(f)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_unsafe_padding_runs_bucket_values_only(built):
    m = bk.BucketedModel(str(built / "nomask.so"), bk.read_manifest(str(built / "nomask.so")), load_module)
    assert m.m["symbols"]["seq"]["pad"] is False
    assert "differ" in m.m["symbols"]["seq"]["why_not_padded"]
    f = feeds(32)
    np.testing.assert_allclose(m.run(f)[0], ort.InferenceSession(str(built / "nomask.onnx")).run(None, f)[0],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="no bucket runs seq=20"):
        m.run(feeds(20))


def test_run_cli_and_out_of_range(built):
    np.savez(built / "in20.npz", **feeds(20))
    r = cli("run", built / "good.so", "--inputs", built / "in20.npz")
    assert r.returncode == 0, r.stderr
    assert "y: float32 [1, 20, 4]" in r.stdout
    np.savez(built / "in65.npz", **feeds(65))
    r = cli("run", built / "good.so", "--inputs", built / "in65.npz")
    assert r.returncode == 2 and "outside the built range 1..64" in r.stderr and "Traceback" not in r.stderr
    f = feeds(20)
    f["mask"] = np.ones((1, 21), np.float32)
    np.savez(built / "tied.npz", **f)
    r = cli("run", built / "good.so", "--inputs", built / "tied.npz")
    assert r.returncode == 2 and "the same symbol takes one value" in r.stderr


def test_the_largest_bucket_runs_as_a_plain_artifact(built):
    m = load_module(str(built / "good.so"))
    assert m.input_shapes["x"] == (1, 64, 8)


@pytest.mark.parametrize("args,msg", [
    (["--shape", "x=1x5..2x8", "--shape", "mask=1x5..2"], "needs 1 <= LO <= HI"),
    (["--shape", "x=1x0..4x8", "--shape", "mask=1x0..4"], "needs 1 <= LO <= HI"),
    (["--shape", "x=1xa..bx8"], "must be LO..HI with integers"),
    # digits int() does not read ('²' passed str.isdigit: an internal error) or ASCII only spells
    (["--shape", "x=\u00b2x1..4x8"], "is not a positive dimension"),
    (["--shape", "x=1x\u0661..4x8"], "must be LO..HI with integers"),
    (["--shape", "x=1x1..4x8", "--shape", "mask=1x\u00b2"], "dimensions must be integers or names"),
    (["--shape", "x=1x1..4x1..8"], "fixed to 8 by the model"),
    (["--shape", "x=1x1..64x8", "--shape", "mask=1x1..32"], "has range 1..32 here"),
    (["--shape", "x=1x1..64x8", "--buckets", ",".join(map(str, range(1, 40)))], "more than 16"),
    (["--shape", "x=1x1..64x8", "--buckets", "8,x"], "comma-separated integers"),
    (["--shape", "x=1x4x8", "--buckets", "8"], "--buckets needs a ranged --shape"),
])
def test_hostile_ranges(built, args, msg):
    out = built / "hostile.so"
    r = cli("build", built / "good.onnx", "-o", out, *args)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() and not (built / "hostile.so.buckets.json").exists()


@pytest.mark.parametrize("edit", [
    lambda t: t["buckets"][0].update(lib="../evil.so"),
    lambda t: t["symbols"]["seq"].update(range=[9, 2]),
    lambda t: t["buckets"][0]["values"].update(seq=1000),
    lambda t: t.update(format="other"),
    lambda t: t.update(buckets=t["buckets"] * 6),
])
def test_tampered_bucket_table_is_refused(built, tmp_path, edit):
    for p in built.glob("good.so*"):
        shutil.copy(p, tmp_path / p.name)
    t = json.loads((tmp_path / "good.so.buckets.json").read_text())
    edit(t)
    (tmp_path / "good.so.buckets.json").write_text(json.dumps(t))
    r = cli("run", tmp_path / "good.so")
    assert r.returncode == 2 and "bucket table is malformed" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ constants shared by the buckets
def test_buckets_share_one_constants_file(built, tmp_path):
    """One .npz for all buckets, each weight once: no larger than an exact build's own."""
    table = json.loads((built / "good.so.buckets.json").read_text())
    assert not list(built.glob("good.so.b*.so.npz"))
    for b in table["buckets"]:
        plan = json.loads((built / (b["lib"] + ".json")).read_text())
        assert plan["const_file"] == "good.so.npz" and plan["const_keys"]
    c = table["constants"]
    assert c["file"] == "good.so.npz" and c["unshared_bytes"] == 3 * c["bytes"] > 0  # nothing depends on seq
    from tvmlite.backends.tvm import compile_model
    from tvmlite.frontend import load

    compile_model(load(str(built / "good.onnx")), {"x": (1, 64, 8), "mask": (1, 64)}).save(str(tmp_path / "ex.so"))
    assert (built / "good.so.npz").stat().st_size <= (tmp_path / "ex.so.npz").stat().st_size + 64


def test_loaded_buckets_hold_each_constant_once(built):
    m = load_module(str(built / "good.so"))
    for n in (5, 20, 64):  # three buckets
        m.run(feeds(n))
    assert len(m._loaded) == 3 and len(m._pool) == 2
    plans = list(m._loaded.values())
    for p in plans[1:]:
        assert p._tensors and all(p._tensors[k] is plans[0]._tensors[k] for k in p._tensors)


def test_artifact_runs_without_the_onnx_model(built, tmp_path):
    for p in built.glob("good.so*"):
        shutil.copy(p, tmp_path / p.name)
    np.savez(tmp_path / "in.npz", **feeds(20, seed=4))
    r = cli("run", tmp_path / "good.so", "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    ref = ort.InferenceSession(str(built / "good.onnx")).run(None, feeds(20, seed=4))
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_allclose(z["pooled"], ref[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(z["y"], ref[1], rtol=1e-4, atol=1e-5)


def _rewrite_plan(path, **changes):
    plan = json.loads(path.read_text())
    for k, v in changes.items():
        plan[k] = v(plan[k]) if callable(v) else v
    path.write_text(json.dumps(plan))


def _huge_member(npz):
    import zipfile

    with zipfile.ZipFile(npz) as zf:
        names = zf.namelist()
    arrays = dict(np.load(npz))
    hdr = np.lib.format  # a header that claims 2**40 floats, over a few real bytes
    with zipfile.ZipFile(npz, "w") as zf:
        for n in names:
            with zf.open(n, "w") as f:
                if n == names[0]:
                    hdr.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
                    f.write(b"\0" * 64)
                else:
                    hdr.write_array(f, arrays[n[:-4]])


def _view_too_big(path):
    """The first kernel argument that is a buffer read as a view of another size."""
    plan = json.loads(path.read_text())
    name, shape = next(a for c in plan["calls"] if "args" in c for a in c["args"] if a[0] in plan["buffers"])
    for c in plan["calls"]:
        for a in c.get("args", ()):
            if a[0] == name:
                a[1] = [int(np.prod(shape)) + 1]
                break
        else:
            continue
        break
    path.write_text(json.dumps(plan))


@pytest.mark.parametrize("damage, message", [
    (lambda d: _view_too_big(d / "good.so.json"), "has another size"),
    (lambda d: _rewrite_plan(d / "good.so.json", outputs=lambda os: [{**os[0], "const": True, "buffer": "nowhere"}]
                             + os[1:]), "constant output"),
    (lambda d: (d / "good.so.npz").write_bytes((d / "good.so.npz").read_bytes()[:300]), "not a .npz file of constants"),
    (lambda d: flip_data_byte(d / "good.so.npz"), "Bad CRC-32"),
    (lambda d: (d / "good.so.npz").unlink(), "missing"),
    (lambda d: _huge_member(d / "good.so.npz"), "TVMLITE_MAX_TENSOR_ELEMENTS"),
    (lambda d: _rewrite_plan(d / "good.so.json", const_file="../good.so.npz"), "must name a .npz file beside"),
    (lambda d: _rewrite_plan(d / "good.so.json", const_keys=lambda k: {n: "c0" for n in k}), "is missing (member 'c0')"),
    (lambda d: _rewrite_plan(d / "good.so.json", const_keys=[1, 2]), "'const_keys' must map"),
    (lambda d: (d / "good.so.buckets.json").write_text((d / "good.so.buckets.json").read_text()[:50]),
     "cannot read the bucket table"),
])
def test_damaged_constants_or_table_is_one_line(built, tmp_path, damage, message):
    for p in built.glob("good.so*"):
        shutil.copy(p, tmp_path / p.name)
    damage(tmp_path)
    np.savez(tmp_path / "in.npz", **feeds(64))
    r = cli("run", tmp_path / "good.so", "--inputs", tmp_path / "in.npz")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_scalar_constant_and_a_one_element_one_stay_apart_in_the_shared_file(tmp_path):
    """The buckets' shared constants are keyed by content: the key read a 0-d array as 1-d, so a
    scalar constant output (1) took the stored [1] of another constant and a bucket returned
    array([1]) where the model gives array(1) (found by bucket-fuzzing, test_fuzz_builds)."""
    shared = bk.SharedConsts("m.npz")
    keys = shared.add({"one": np.array(1, np.int64), "st": np.array([1], np.int64)})
    assert keys["one"] != keys["st"] and [a.shape for a in shared.arrays.values()] == [(), (1,)]
    nodes = [h.make_node("Add", ["x", "st"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.INT64, [3, "n"])],
                     [h.make_tensor_value_info("one", T.INT64, []), h.make_tensor_value_info("y", T.INT64, [3, "n"])],
                     [nh.from_array(np.array(1, np.int64), "one"), nh.from_array(np.array([1], np.int64), "st")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    r = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--shape", "x=3x2..7", "--buckets", "4")
    assert r.returncode == 0, r.stderr
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    one, y = load_module(str(tmp_path / "m.so")).run({"x": x})
    assert np.shape(one) == () and one == 1
    np.testing.assert_array_equal(y, x + 1)


# ------------------------------------------------------- sizes the model cannot take (shape inference)
def fixed_width_model():
    """x [1, n] @ W [8, 3]: only n = 8 fits MatMul's inner dims."""
    w = nh.from_array(np.ones((8, 3), np.float32), "W")
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "fixed",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, "n"])], [h.make_tensor_value_info("y", T.FLOAT, [1, 3])],
                     [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_a_range_the_model_takes_only_in_part_is_narrowed_and_says_why(tmp_path):
    """Range 6..10 (buckets 6, 8, 10): the build used to compile 6 and 10 with the MatMul as a host
    call ('an input shape is not static') that refused them at run time; now shape inference drops
    those buckets at build, the report says so, and each refused size is one line at run time."""
    onnx.save(fixed_width_model(), tmp_path / "m.onnx")
    r = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--shape", "x=1x6..10")
    assert r.returncode == 0, r.stderr
    assert "n: 8..8" in r.stdout and "narrowed from 6..10: the model does not take n=6 (node 'mm' (MatMul)" in r.stdout
    assert "host-run" not in r.stdout, r.stdout
    table = json.loads((tmp_path / "m.so.buckets.json").read_text())
    assert [b["values"] for b in table["buckets"]] == [{"n": 8}]
    art = load_module(str(tmp_path / "m.so"))
    np.testing.assert_allclose(art.run({"x": np.ones((1, 8), np.float32)})[0], np.full((1, 3), 8.0))
    for n, words in ((10, "x': dim 1 (n) is 10, a size the model does not take (found at build: node 'mm' (MatMul)"),
                     (7, "x': dim 1 (n) is 7, outside the built range 8..8 (the build narrowed 6..10"),
                     (11, "outside the built range 8..8")):
        with pytest.raises(InputError) as e:
            art.run({"x": np.ones((1, n), np.float32)})
        assert words in str(e.value), str(e.value)


def test_a_range_the_model_takes_nowhere_is_refused_at_build(tmp_path):
    onnx.save(fixed_width_model(), tmp_path / "m.onnx")
    r = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--shape", "x=1x9..12")
    assert r.returncode == 2 and r.stderr.strip() == (
        "tvmlite: error: --shape: the model takes none of the bucket sizes; at input 'x' dim 1 (n) = 9: node 'mm' "
        "(MatMul): Incompatible dimensions for matrix multiplication"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_narrowing_fields_of_a_tampered_table_are_refused(tmp_path):
    onnx.save(fixed_width_model(), tmp_path / "m.onnx")
    assert cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--shape", "x=1x6..10").returncode == 0
    t = json.loads((tmp_path / "m.so.buckets.json").read_text())
    t["symbols"]["n"]["refused"] = {"6": 3}
    (tmp_path / "m.so.buckets.json").write_text(json.dumps(t))
    r = cli("run", tmp_path / "m.so")
    assert r.returncode == 2 and "bucket table is malformed" in r.stderr and "Traceback" not in r.stderr


def test_an_exact_shape_the_model_cannot_take_is_refused_at_build(tmp_path):
    """The same for a plain build: --shape x=1x9 used to build the MatMul as a host call that
    refused every run; one line now, nothing written. The shape it takes builds."""
    onnx.save(fixed_width_model(), tmp_path / "m.onnx")
    r = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--shape", "x=1x9")
    assert r.returncode == 2 and r.stderr.strip() == (
        "tvmlite: error: --shape x=1x9: the model does not take these shapes: node 'mm' (MatMul): "
        "Incompatible dimensions for matrix multiplication"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    r = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--shape", "x=1x8")
    assert r.returncode == 0 and "host-run" not in r.stdout, r.stdout + r.stderr
