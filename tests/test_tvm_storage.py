"""Intermediate buffers whose lives do not overlap share storage (storage.py: one block per dtype,
each tenant at an offset): the placement on hand-made plans (chains, a value read late, a
diamond, dtypes apart, alignment, what never shares), and built plans that share blocks computing what onnxruntime and the unshared plan
compute: float chains with a late reader, Concat slices, host calls between stretches, uint8
buffers beside float ones, a saved artifact; tampered blocks are refused in one line."""
import json

import numpy as np
import pytest
from onnx import helper as h

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from helpers import ort_qdq  # noqa: E402
from test_tvm_int import _typed_model  # noqa: E402
from test_tvm_int8 import _chain_model  # noqa: E402
from test_tvm_plan import _copy, _host_split_model, _ort, _per_call  # noqa: E402
from tvmlite.backends.tvm import compile_model, load_module, plan_func, storage  # noqa: E402
from tvmlite.backends.tvm.artifact_check import ArtifactError  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402

RNG = np.random.default_rng(16)


# ------------------------------------------------------------------------ assignment on plans
@pytest.fixture
def call_units(monkeypatch):
    """Every kernel call its own stretch: the interval rules alone (stretches: test below)."""
    monkeypatch.setattr(plan_func, "MAX_STRETCH", 1)


def _plan(calls, temps, *, outputs=(), slices=None, host=None, dtypes=None):
    """A plan of kernel calls given as (reads, writes) lists of buffer names (None: a host call)."""
    bufs = {"x": {"shape": [4], "kind": "input"}}
    for n, size in temps.items():
        bufs[n] = {"shape": [size], "kind": "temp"}
        if dtypes and n in dtypes:
            bufs[n]["dtype"] = dtypes[n]
    for n, (of, off) in (slices or {}).items():
        bufs[n] = {"shape": [1], "kind": "slice", "of": of, "offset": off}
    plan_calls = []
    for c in calls:
        if c is None:
            plan_calls.append({"host": 0, "nodes": []})
        else:
            reads, writes = c
            plan_calls.append({"func": "k", "args": [[n, bufs[n]["shape"]] for n in reads + writes]})
    plan = {"inputs": [], "buffers": bufs, "calls": plan_calls,
            "outputs": [{"name": o, "buffer": o, "shape": bufs[o]["shape"]} for o in outputs]}
    if host is not None:
        plan["host"] = host
    storage.assign(plan)
    assert storage.check(plan) is None
    return plan


def _block(plan, n):
    return plan["buffers"][n].get("block")


def _range(plan, n):
    """(block, first element, end) of tenant ``n``."""
    b = plan["buffers"][n]
    off = b.get("offset", 0)
    return b["block"], off, off + int(np.prod(b["shape"]))


def _overlap(plan, m, n):
    """Whether tenants ``m`` and ``n`` use some of the same memory."""
    (bm, m0, m1), (bn, n0, n1) = _range(plan, m), _range(plan, n)
    return bm == bn and m0 < n1 and n0 < m1


def test_a_chain_reuses_memory_and_never_shares_a_calls_input_and_output(call_units):
    p = _plan([(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["d"]), (["d"], ["y"])],
              {"a": 128, "b": 64, "c": 96, "d": 128, "y": 32}, outputs=["y"])
    assert _block(p, "y") is None  # an output keeps its own buffer
    assert len(p["blocks"]) == 1  # one block per dtype
    for m, n in ["ab", "bc", "cd"]:  # a call's input and output
        assert not _overlap(p, m, n)
    assert _overlap(p, "a", "d")  # the largest first: d takes the memory a left
    # b could not go where a was (a is b's input): 128 + 96 + 64, the most alive in any call is 224
    assert p["blocks"] == [{"size": 288, "dtype": "float32"}]
    alone, shared = storage.intermediate_bytes(p)
    assert (alone, shared) == (4 * (128 + 64 + 96 + 128 + 32), 4 * (288 + 32))


def test_tenants_start_on_a_cache_line(call_units):
    p = _plan([(["x"], ["a"]), (["a"], ["b"]), (["b", "a"], ["c"]), (["c"], ["y"])],
              {"a": 5, "b": 7, "c": 3, "y": 2}, dtypes={"b": "uint8"}, outputs=["y"])
    assert [_range(p, n)[1:] for n in "ac"] == [(0, 5), (16, 19)] and p["blocks"][_block(p, "a")]["size"] == 19
    assert _range(p, "b")[1:] == (0, 7)  # a uint8 block of its own
    bad = json.loads(json.dumps(p))
    bad["buffers"]["c"]["offset"] = 8  # clear of a's memory, but not 64-byte aligned
    assert "not an aligned offset" in storage.check(bad)


def test_a_value_read_late_keeps_its_memory_until_its_last_reader(call_units):
    # a is read by the last call: nothing made in between may use its memory
    p = _plan([(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["d"]), (["d", "a"], ["y"])],
              {"a": 16, "b": 16, "c": 16, "d": 16, "y": 16}, outputs=["y"])
    assert not any(_overlap(p, "a", n) for n in "bcd")
    assert _overlap(p, "b", "d") and not _overlap(p, "b", "c")
    assert p["blocks"][0]["size"] == 3 * 16


def test_a_diamond_keeps_both_arms_apart(call_units):
    p = _plan([(["x"], ["a"]), (["a"], ["l"]), (["a"], ["r"]), (["l", "r"], ["j"]), (["j"], ["y"])],
              {"a": 16, "l": 16, "r": 16, "j": 16, "y": 16}, outputs=["y"])
    assert not any(_overlap(p, m, n) for m, n in ["al", "ar", "lr", "jl", "jr"])
    assert _overlap(p, "j", "a")


def test_dtypes_never_share_a_block(call_units):
    p = _plan([(["x"], ["a"]), (["a"], ["q"]), (["q"], ["b"]), (["b"], ["r"]), (["r"], ["y"])],
              {"a": 64, "q": 64, "b": 64, "r": 64, "y": 64}, outputs=["y"], dtypes={"q": "uint8", "r": "uint8"})
    assert _overlap(p, "q", "r") and _overlap(p, "a", "b") and _block(p, "q") != _block(p, "a")
    assert p["blocks"][_block(p, "q")]["dtype"] == "uint8"


def test_slices_their_parents_host_named_and_host_crossing_buffers(call_units):
    calls = [(["x"], ["a"]), (["a"], ["s1"]), (["a"], ["s2"]), (["cat"], ["b"]), None, (["b"], ["c"]),
             (["c"], ["d"]), (["d"], ["y"])]
    p = _plan(calls, {"a": 16, "cat": 2, "b": 16, "c": 16, "d": 16, "y": 16}, outputs=["y"],
              slices={"s1": ("cat", 0), "s2": ("cat", 1)}, host=[{"reads": {"v": ["b", [16]]}, "writes": {}}])
    assert _block(p, "s1") is None  # a view of its Concat's output, which takes its place whole ...
    assert storage.lives(p)["cat"] == (1, 3)  # ... alive from the first write into a slice
    assert _block(p, "cat") is not None and not _overlap(p, "cat", "a")
    assert _block(p, "b") is None  # a host call reads it by name
    assert _overlap(p, "a", "c") and _overlap(p, "d", "cat")  # across the host call


def test_a_concat_whose_slice_is_an_output_or_read_by_a_host_call_keeps_its_buffer(call_units):
    calls = [(["x"], ["s1"]), (["x"], ["s2"]), (["cat"], ["a"]), (["a"], ["b"]), (["b"], ["y"])]
    slices = {"s1": ("cat", 0), "s2": ("cat", 1)}
    p = _plan(calls, {"cat": 2, "a": 8, "b": 8, "y": 8}, outputs=["y", "s2"], slices=slices)
    assert _block(p, "cat") is None
    p = _plan(calls + [None], {"cat": 2, "a": 8, "b": 8, "y": 8}, outputs=["y"], slices=slices,
              host=[{"reads": {"v": ["s1", [1]]}, "writes": {}}])
    assert _block(p, "cat") is None


def test_no_stretch_touches_two_tenants_of_a_block(monkeypatch):
    """Kernels inlined into one stretch may be reordered across different buffers (TVM's alias
    types): a block changes tenants only between stretches (or at a host call)."""
    monkeypatch.setattr(plan_func, "MAX_STRETCH", 3)
    chain = [(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["d"]), (["d"], ["e"]), (["e"], ["f"]),
             (["f"], ["y"])]
    p = _plan(chain, {n: 16 for n in "abcdefy"}, outputs=["y"])
    assert storage.units(p["calls"]) == [0, 0, 0, 1, 1, 1, 2]
    assert not any(_overlap(p, m, n) for m, n in ["ab", "ac", "bc"])  # a and c would share with one call per stretch
    assert _overlap(p, "d", "a") and _overlap(p, "e", "b")
    assert not any(_overlap(p, "c", n) for n in "def")  # c lives into stretch 1
    p = _plan(chain[:3] + [None] + chain[3:], {n: 16 for n in "abcdefy"}, outputs=["y"])
    assert storage.units(p["calls"]) == [0, 0, 0, 1, 2, 2, 2, 3]


def test_check_refuses_overlapping_or_oversized_tenants(call_units):
    p = _plan([(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["d"]), (["d"], ["y"])],
              {"a": 16, "b": 16, "c": 16, "d": 16, "y": 16}, outputs=["y"])
    bad = json.loads(json.dumps(p))
    bad["buffers"]["b"]["offset"] = bad["buffers"]["a"].get("offset", 0)
    assert "overlapping tenants alive in the same call or stretch" in storage.check(bad)
    bad = json.loads(json.dumps(p))
    bad["blocks"][0]["size"] = 4
    assert "does not fit" in storage.check(bad)
    bad = json.loads(json.dumps(p))
    bad["buffers"]["b"]["offset"] = -16
    assert "not an aligned offset" in storage.check(bad)
    bad = json.loads(json.dumps(p))
    bad["buffers"]["y"]["block"] = 0
    assert "not a private intermediate" in storage.check(bad)
    bad = json.loads(json.dumps(p))
    bad["blocks"][0]["size"] = 1 << 40
    assert "exactly as large" in storage.check(bad)


# ------------------------------------------------------------------------------ built plans
def _shared(cm):
    """{block: tenants} of blocks holding more than one buffer."""
    by = {}
    for n, b in cm.plan["buffers"].items():
        if "block" in b:
            by.setdefault(b["block"], []).append(n)
    return {k: v for k, v in by.items() if len(v) > 1}


def _address(cm, n):
    return np.from_dlpack(cm._store[n]).__array_interface__["data"][0]


def _same_with_and_without(proto, feeds, monkeypatch, tmp_path=None):
    """Built plans share blocks, and compute on the stretches, per call, through a saved
    artifact and with $TVMLITE_REUSE_BUFFERS=0 exactly what the unshared buffers compute."""
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()}, cache=False)
    assert _shared(cm), cm.plan["buffers"]
    assert cm.plan["blocks"] and storage.check(cm.plan) is None
    got = cm.run(feeds)
    got = cm.run(feeds)  # a second run: blocks hold the last run's values
    runs = [cm.run(feeds), _per_call(cm, feeds)]
    if tmp_path is not None:
        cm.save(str(tmp_path / "m.so"))
        runs.append(load_module(str(tmp_path / "m.so")).run(feeds))
    monkeypatch.setenv("TVMLITE_REUSE_BUFFERS", "0")
    alone = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()}, cache=False)
    tenants = [n for n, b in alone.plan["buffers"].items() if "block" in b]
    assert len({_address(alone, n) for n in tenants}) == len(tenants)  # each its own allocation
    runs.append(alone.run(feeds))
    monkeypatch.delenv("TVMLITE_REUSE_BUFFERS")
    for other in runs:
        for g, o in zip(got, other):
            np.testing.assert_array_equal(g, o)
    return cm, got


def _conv_ladder():
    """Six 1x1 convs in a chain with a value (the first conv's) read again by the last Add."""
    ws = {f"w{i}": (RNG.standard_normal((6, 6 if i else 3, 1, 1)) * 0.4).astype(np.float32) for i in range(6)}
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"])]
    for i in range(1, 6):
        nodes += [h.make_node("Conv", [f"c{i - 1}", f"w{i}"], [f"c{i}"])]
    nodes += [h.make_node("Sigmoid", ["c0"], ["s0"]), h.make_node("Mul", ["c5", "s0"], ["y"])]
    feeds = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    return _typed_model(nodes, feeds, [("y", 4)], ws), feeds


def test_float_chain_with_a_late_reader_shares_blocks_and_matches_onnxruntime(monkeypatch, tmp_path):
    proto, feeds = _conv_ladder()
    cm, got = _same_with_and_without(proto, feeds, monkeypatch, tmp_path)
    assert len(cm.plan["stretches"]) >= 2  # blocks cross stretches
    np.testing.assert_allclose(got[0], _ort(proto, feeds)[0], rtol=1e-4, atol=1e-5)
    alone, shared = storage.intermediate_bytes(cm.plan)
    assert shared < alone
    # the views really lie in the block's memory at their offsets: tenants reuse addresses
    (k, tenants), *_ = _shared(cm).items()
    base = min(_address(cm, n) - 4 * cm.plan["buffers"][n].get("offset", 0) for n in tenants)
    assert all(_address(cm, n) == base + 4 * cm.plan["buffers"][n].get("offset", 0) for n in tenants)
    assert len({_address(cm, n) for n in tenants}) < len(tenants)


def test_concat_slices_beside_shared_blocks(monkeypatch, tmp_path):
    w = {f"w{i}": (RNG.standard_normal((4, 3 if i < 2 else 8 if i < 4 else 4, 1, 1)) * 0.4).astype(np.float32)
         for i in range(6)}
    nodes = [h.make_node("Conv", ["x", "w0"], ["a"]), h.make_node("Conv", ["x", "w1"], ["b"]),
             h.make_node("Concat", ["a", "b"], ["cat"], axis=1), h.make_node("Conv", ["cat", "w2"], ["d"]),
             h.make_node("Sigmoid", ["d"], ["e"]), h.make_node("Concat", ["e", "d"], ["cat2"], axis=1),
             h.make_node("Conv", ["cat2", "w3"], ["f"]), h.make_node("Conv", ["f", "w4"], ["g"]),
             h.make_node("Conv", ["g", "w5"], ["k"]), h.make_node("Conv", ["k", "w4"], ["y"])]
    feeds = {"x": RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    proto = _typed_model(nodes, feeds, [("y", 4)], w)
    cm, got = _same_with_and_without(proto, feeds, monkeypatch, tmp_path)
    np.testing.assert_allclose(got[0], _ort(proto, feeds)[0], rtol=1e-4, atol=1e-5)
    slices = {n: b for n, b in cm.plan["buffers"].items() if b.get("kind") == "slice"}
    assert slices and not any("block" in b for b in slices.values())
    assert any("block" in cm.plan["buffers"][b["of"]] for b in slices.values())  # a Concat's output shares


def test_host_calls_between_stretches(monkeypatch, tmp_path):
    proto, feeds = _host_split_model()
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()}, cache=False)
    named = storage._strings(cm.plan.get("host", []), set())
    assert not any("block" in cm.plan["buffers"][n] for n in named if n in cm.plan["buffers"])
    ref = _ort(proto, feeds)
    for g, r in zip(cm.run(feeds), ref):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_a_block_crosses_a_host_call(monkeypatch, tmp_path):
    """c1 dies before the host call (CumSum), d0 and d1 are made after it: they may share c1's
    block; what the host call reads (c2) and makes (cs) keep their own buffers."""
    ws = {f"w{i}": (RNG.standard_normal((3, 3, 1, 1)) * 0.5).astype(np.float32) for i in range(6)}
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"]), h.make_node("Conv", ["c0", "w1"], ["c1"]),
             h.make_node("Conv", ["c1", "w2"], ["c2"]), h.make_node("CumSum", ["c2", "axis"], ["cs"]),
             h.make_node("Conv", ["cs", "w3"], ["d0"]), h.make_node("Conv", ["d0", "w4"], ["d1"]),
             h.make_node("Conv", ["d1", "w5"], ["d2"]), h.make_node("Add", ["d2", "c0"], ["y"])]
    feeds = {"x": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)}
    proto = _typed_model(nodes, feeds, [("y", 4)], {"axis": np.array(2, np.int64), **ws})
    cm, got = _same_with_and_without(proto, feeds, monkeypatch, tmp_path)
    calls = cm.plan["calls"]
    host_at = next(i for i, c in enumerate(calls) if "host" in c)
    lives = storage.lives(cm.plan)
    assert any(lives[a][1] < host_at < lives[b][0] and _overlap(cm.plan, a, b)
               for t in _shared(cm).values() for a in t for b in t), lives
    assert "block" not in cm.plan["buffers"]["c2"] and "block" not in cm.plan["buffers"]["cs"]
    np.testing.assert_allclose(got[0], _ort(proto, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("signed", [False, True])
def test_int8_buffers_share_blocks_of_their_own_dtype(signed, monkeypatch, tmp_path):
    monkeypatch.setattr(plan_func, "MAX_STRETCH", 2)  # 6 kernels: stretches of 2 let blocks change tenants
    x_shape = (1, 5, 13, 11)
    proto = _chain_model(x_shape, signed)
    feeds = {"x": (RNG.standard_normal(x_shape) * 2).astype(np.float32)}
    cm, got = _same_with_and_without(proto, feeds, monkeypatch, tmp_path)
    qdt = "int8" if signed else "uint8"
    assert any(b["dtype"] == qdt for b in cm.plan["blocks"])
    for b in cm.plan["buffers"].values():
        if "block" in b:
            assert b.get("dtype", "float32") == cm.plan["blocks"][b["block"]]["dtype"]
    np.testing.assert_array_less(np.abs(got[0] - ort_qdq(proto, feeds)[0]), 0.04 + 1e-6)


def test_tampered_blocks_are_refused_in_one_line(monkeypatch, tmp_path):
    proto, feeds = _conv_ladder()
    cm = compile_model(import_model(proto), {"x": feeds["x"].shape}, cache=False)
    cm.save(str(tmp_path / "m.so"))
    (k, tenants), *_ = _shared(cm).items()
    for edit, message in [(lambda p: p["blocks"][k].update(size=1), "does not fit"),
                          (lambda p: p.update(blocks=[1]), "'blocks' must be a list"),
                          (lambda p: p["buffers"][tenants[0]].update(block=99), "names no block")]:
        with pytest.raises(ArtifactError, match=message) as e:
            load_module(str(_copy(tmp_path / "m.so", tmp_path, edit)))
        assert "\n" not in str(e.value)


def test_a_bad_switch_is_refused_before_any_build(monkeypatch):
    from tvmlite.limits import LimitError

    proto, feeds = _conv_ladder()
    monkeypatch.setenv("TVMLITE_REUSE_BUFFERS", "yes")
    monkeypatch.setattr("tvmlite.backends.tvm.lower.lower", lambda *a, **k: pytest.fail("lowered"))
    with pytest.raises(LimitError, match="TVMLITE_REUSE_BUFFERS='yes' must be 0 or 1"):
        compile_model(import_model(proto), {"x": feeds["x"].shape})
