"""Control flow with TVM-compiled bodies (issue 15 item 1, backends/tvm/control.py): a Loop whose
state keeps its shape runs its body as kernels, step by step from the host; an If with static
branches compiles both and picks one at run time; a growing state, nested control flow or a body
that needs host calls stays on the NumPy plan with the reason in the build report. Each case
matches onnxruntime; a saved artifact runs its compiled bodies without the ONNX model."""
import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from real_graphs import vad, vad_without_if
from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm import compile_model, emit_tvmscript, load_module  # noqa: E402
from tvmlite.backends.tvm.artifact_check import ArtifactError  # noqa: E402
from tvmlite.errors import TvmliteError, UnsupportedError  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402

COMPILED = "control flow, body compiled to"
vi = h.make_tensor_value_info


def _ort(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _close(got, ref, tol=1e-5):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol)


def _bodies(cm):
    return [seg["body"] for seg in cm.plan.get("host", []) if "body" in seg]


# ------------------------------------------------------------------------------------------- VAD
def test_vad_without_if_runs_its_lstm_loop_as_kernels(tmp_path):
    proto, shapes = vad_without_if()
    cm = compile_model(import_model(proto), shapes)
    assert len(cm.host_ops) == 1 and cm.host_ops[0].startswith("Loop: " + COMPILED), cm.host_ops
    (body,) = _bodies(cm)
    assert body["kind"] == "loop" and len(body["plans"][0]["calls"]) >= 3
    # the body's kernels run as stretches (one compiled call each, up to 4 kernels)
    assert len(body["plans"][0]["stretches"]) < len(body["plans"][0]["calls"])
    assert not any("host" in c for c in body["plans"][0]["calls"])
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    ref = _ort(proto, feeds)
    _close(cm.run(feeds), ref)
    _close(cm.run(feeds), ref)  # a second run starts from the given state again
    cm.save(str(tmp_path / "vad.so"))
    _close(load_module(str(tmp_path / "vad.so")).run(feeds), ref)


def test_vad_with_if_compiles_both_branches_and_picks_at_run_time(tmp_path):
    """The branches make 31 and 63 frames: what follows the If has a static shape in each, so it
    is moved into both branches (control.sink_into_branches) and each branch is compiled whole,
    its Loop a compiled body nested in the branch's plan; only the If is left on the host."""
    proto, shapes = vad()
    shapes = dict(shapes, sr=())
    cm = compile_model(import_model(proto), shapes)
    assert len(cm.host_ops) == 1 and cm.host_ops[0].startswith("If: " + COMPILED), cm.host_ops
    (body,) = _bodies(cm)
    assert body["kind"] == "if"
    for plan in body["plans"]:  # each branch: kernels, and its Loop driven over a compiled body
        nested = [seg["body"]["kind"] for seg in plan.get("host", [])]
        assert nested == ["loop"] and sum("func" in c for c in plan["calls"]) >= 5, plan["calls"]
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items() if n != "sr"}
    cm.save(str(tmp_path / "vad.so"))
    # both branches hold the same LSTM weights (in their Loop's body and its stored node): each
    # distinct array is stored once, and read into one tensor
    saved = json.load(open(tmp_path / "vad.so.json"))
    keys = saved["const_keys"]
    assert len(set(keys.values())) < len(keys)
    # the If keeps its branches as their run plans only: stored as ONNX too, each branch (and the
    # Loop inside it) held the LSTM weights again, and the .npz was 4x the weights
    (seg,) = [s for s in saved["host"] if "body" in s]
    assert {k: a for k, a in seg["nodes"][0]["attrs"].items()} == {
        "then_branch": {"type": "graph", "compiled": True}, "else_branch": {"type": "graph", "compiled": True}}
    weights = sum(t.nbytes for t in (nh.to_array(i) for i in _initializers(proto.graph)))
    assert (tmp_path / "vad.so.npz").stat().st_size < 2 * weights  # packed, aligned: 1.5x; 3.7x before
    loaded = load_module(str(tmp_path / "vad.so"))
    for sr in (16000, 8000, 16000):
        feeds["sr"] = np.array(sr, np.int64)
        ref = _ort(proto, feeds)
        _close(cm.run(feeds), ref)
        _close(loaded.run(feeds), ref)


def test_emit_tvm_writes_the_kernels_of_compiled_bodies(tmp_path):
    proto, shapes = vad_without_if()
    written = emit_tvmscript(import_model(proto), str(tmp_path / "tir"), shapes)
    body = [p for p in written if p.split("/")[-1].startswith("c0_")]
    assert body and len(body) < len(written), written  # the Loop body's, beside the graph's
    index = (tmp_path / "tir" / "index.txt").read_text()
    assert all(p.split("/")[-1] in index for p in body)


# ------------------------------------------------------------------------------------- small loops
def _loop(body_nodes, cond_out, *, trips="trips", cond="yes", inputs=(("x", [1, 4]),), n_scan=1,
          inits=None, extra_inputs=(), body_inits=(), scan_rank=3):
    """A Loop over states ``inputs`` (their body names s_in/s_out, t_in/t_out), scan outputs
    scan0.., its outputs each read by a Neg (so kernels follow when their shapes are static)."""
    names = [n for n, _ in inputs]
    b_in = [vi("i", T.INT64, []), vi("cond", T.BOOL, [])] + [vi(f"{p}_in", T.FLOAT, None) for p in "st"[:len(names)]]
    b_out = [vi("cond_out", T.BOOL, [])] + [vi(f"{p}_out", T.FLOAT, None) for p in "st"[:len(names)]]
    b_out += [vi(f"scan{k}", T.FLOAT, None) for k in range(n_scan)]
    body = h.make_graph(body_nodes + [cond_out], "body", b_in, b_out,
                        [nh.from_array(np.array(0.5, np.float32), "half"), nh.from_array(np.array(3, np.int64), "three")]
                        + list(body_inits))
    outs = [f"o{k}" for k in range(len(names) + n_scan)]
    nodes = [h.make_node("Loop", [trips, cond] + names, outs, body=body)]
    nodes += [h.make_node("Neg", [o], [f"n{o}"]) for o in outs]
    g_inputs = [vi(n, T.FLOAT, s) for n, s in inputs] + list(extra_inputs)
    g_inits = [nh.from_array(np.array(True), "yes")] + [nh.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    ranks = [2] * len(names) + [scan_rank] * n_scan
    g = h.make_graph(nodes, "loop", g_inputs, [vi(f"n{o}", T.FLOAT, [f"d{o}{j}" for j in range(r)])
                                               for o, r in zip(outs, ranks)], g_inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _check(proto, feeds, shapes=None, compiled=True, reason=None):
    cm = compile_model(import_model(proto), shapes or {k: v.shape for k, v in feeds.items()})
    loop_lines = [line for line in cm.host_ops if line.startswith("Loop")]
    if compiled:
        assert loop_lines and loop_lines[0].startswith("Loop: " + COMPILED), cm.host_ops
    else:
        assert loop_lines == [f"Loop: control flow (body not compiled: {reason})"], cm.host_ops
    _close(cm.run(feeds), _ort(proto, feeds))
    return cm


_X = {"x": np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)}
_STEP = [h.make_node("Mul", ["s_in", "half"], ["m"]), h.make_node("Add", ["m", "s_in"], ["s_out"]),
         h.make_node("Sigmoid", ["m"], ["scan0"])]


def test_a_fixed_count_loop_with_scan_outputs_builds_its_readers_as_kernels():
    cm = _check(_loop(_STEP, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(4)}), _X)
    assert len(cm.host_ops) == 1, cm.host_ops  # the Negs after the Loop are kernels


def test_a_computed_condition_and_a_run_time_trip_count_are_honoured():
    # the body stops when i reaches 3 (of 5): the per-step outputs have 3 rows
    _check(_loop(_STEP, h.make_node("Less", ["i", "three"], ["cond_out"]), inits={"trips": np.int64(5)}), _X)
    # the trip count is a graph input: the body is static, the number of rows is not; zero steps too
    m = vi("m_trips", T.INT64, [])
    proto = _loop(_STEP, h.make_node("Identity", ["cond"], ["cond_out"]), trips="m_trips", extra_inputs=[m])
    for n in (0, 1, 6):  # zero steps: the state as given, rows of shape (0,) (onnxruntime's and NumPy's)
        _check(proto, {**_X, "m_trips": np.array(n, np.int64)})


def test_states_that_swap_every_step_are_read_before_either_is_written():
    nodes = [h.make_node("Identity", ["t_in"], ["s_out"]), h.make_node("Mul", ["s_in", "half"], ["t_out"]),
             h.make_node("Add", ["s_in", "t_in"], ["scan0"])]
    feeds = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "y": np.array([[5.0, 6.0, 7.0, 8.0]], np.float32)}
    _check(_loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), inputs=(("x", [1, 4]), ("y", [1, 4])),
                 inits={"trips": np.int64(3)}), feeds)


@pytest.mark.parametrize("int_state", ["counted", "passed through"])
def test_a_condition_the_body_reads_and_an_int_state(int_state):
    """cond_out = cond and i < 3 (the body reads the condition the step before computed); an int64
    state counted by a kernel; passed through unchanged, no kernel reads it, so the body plan has
    no buffer to return it from: not compiled, saying why."""
    vi_ = vi
    body = h.make_graph([h.make_node("Mul", ["s_in", "half"], ["s_out"]), h.make_node("Neg", ["s_out"], ["scan0"]),
                         h.make_node("Identity", ["k_in"], ["k_out"]) if int_state == "passed through" else
                         h.make_node("Add", ["k_in", "three"], ["k_out"]), h.make_node("Less", ["i", "three"], ["lt"]),
                         h.make_node("And", ["cond", "lt"], ["cond_out"])], "body",
                        [vi_("i", T.INT64, []), vi_("cond", T.BOOL, []), vi_("s_in", T.FLOAT, None), vi_("k_in", T.INT64, None)],
                        [vi_("cond_out", T.BOOL, []), vi_("s_out", T.FLOAT, None), vi_("k_out", T.INT64, None),
                         vi_("scan0", T.FLOAT, None)],
                        [nh.from_array(np.array(0.5, np.float32), "half"), nh.from_array(np.array(3, np.int64), "three")])
    g = h.make_graph([h.make_node("Loop", ["trips", "go", "x", "k"], ["s", "kk", "ys"], body=body)], "loop",
                     [vi_("x", T.FLOAT, [1, 4]), vi_("k", T.INT64, [2]), vi_("go", T.BOOL, [])],
                     [vi_("s", T.FLOAT, [1, 4]), vi_("kk", T.INT64, [2]), vi_("ys", T.FLOAT, ["n", 1, 4])],
                     [nh.from_array(np.array(6, np.int64), "trips")])
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    for go in (True, False):
        if int_state == "counted":
            _check(proto, {**_X, "k": np.array([7, -2], np.int64), "go": np.array(go)})
        else:
            _check(proto, {**_X, "k": np.array([7, -2], np.int64), "go": np.array(go)}, compiled=False,
                   reason="body output 'k_out' passes the non-float input 'k_in' through")


def test_a_sequence_of_run_time_length_read_one_row_per_step():
    """seq [n, 1, 4] (the rows of ``full`` a mask picks: n is known at run time only): the body
    reads Gather(seq, i), so it is compiled with one row as its input; more steps than rows fail
    as the Gather would."""
    nodes = [h.make_node("Gather", ["seq", "i"], ["row"], axis=0), h.make_node("Add", ["s_in", "row"], ["s_out"]),
             h.make_node("Tanh", ["s_out"], ["scan0"])]
    proto = _loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), trips="m_trips",
                  extra_inputs=[vi("m_trips", T.INT64, []), vi("full", T.FLOAT, [6, 1, 4]), vi("mask", T.BOOL, [6])])
    g = proto.graph
    g.node.insert(0, h.make_node("Gather", ["full", "picked"], ["seq"], axis=0))
    g.node.insert(0, h.make_node("Squeeze", ["nz", "zero"], ["picked"]))
    g.node.insert(0, h.make_node("NonZero", ["mask"], ["nz"]))
    g.initializer.append(nh.from_array(np.array([0], np.int64), "zero"))
    full = np.random.default_rng(3).standard_normal((6, 1, 4)).astype(np.float32)

    def feeds(n, trips):
        return {**_X, "full": full, "mask": np.arange(6) % 2 == 0 if n == 3 else np.arange(6) < n,
                "m_trips": np.array(trips, np.int64)}
    for n, trips in ((4, 4), (3, 3), (6, 2)):  # rows 0, 2, 4 when n is 3
        cm = _check(proto, feeds(n, trips))
    with pytest.raises(TvmliteError, match="reads row 2 of 'seq', which has 2"):
        cm.run(feeds(2, 3))


def test_a_body_reading_outer_values_and_the_step_number():
    # outer float value w (a graph input, bound once per run) and the step number as a float
    nodes = [h.make_node("Cast", ["i"], ["fi"], to=T.FLOAT), h.make_node("Mul", ["w", "fi"], ["wi"]),
             h.make_node("Add", ["s_in", "wi"], ["s_out"]), h.make_node("Gather", ["tab", "i"], ["scan0"], axis=0)]
    feeds = {**_X, "w": np.array([[0.5, 1.0, -1.0, 2.0]], np.float32),
             "tab": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}
    _check(_loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(3)},
                 extra_inputs=[vi("w", T.FLOAT, [1, 4]), vi("tab", T.FLOAT, [3, 4])], scan_rank=2), feeds)


def test_a_state_that_changes_shape_stays_on_the_host_saying_why():
    nodes = [h.make_node("Concat", ["s_in", "s_in"], ["s_out"], axis=1),
             h.make_node("ReduceMax", ["s_in"], ["scan0"], keepdims=0)]  # a scalar per step
    _check(_loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(2)},
                 scan_rank=1), _X, compiled=False, reason="loop-carried 'x' changes shape from step to step")


def test_nested_control_flow_stays_on_the_host_saying_why():
    then = h.make_graph([h.make_node("Neg", ["s_in"], ["a"])], "then", [], [vi("a", T.FLOAT, None)])
    other = h.make_graph([h.make_node("Relu", ["s_in"], ["b"])], "else", [], [vi("b", T.FLOAT, None)])
    nodes = [h.make_node("Less", ["i", "three"], ["small"]),
             h.make_node("If", ["small"], ["s_out"], then_branch=then, else_branch=other),
             h.make_node("Mul", ["s_out", "half"], ["scan0"])]
    _check(_loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(5)}), _X,
           compiled=False, reason="nested control flow")


def test_a_body_that_needs_host_calls_is_not_compiled():
    nodes = [h.make_node("CumSum", ["s_in", "one"], ["s_out"]), h.make_node("Neg", ["s_in"], ["scan0"])]
    proto = _loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(2)},
                  body_inits=[nh.from_array(np.array(1, np.int64), "one")])
    cm = compile_model(import_model(proto), {"x": (1, 4)})
    line = [x for x in cm.host_ops if x.startswith("Loop")][0]
    assert line.startswith("Loop: control flow (body not compiled: CumSum"), cm.host_ops
    _close(cm.run(_X), _ort(proto, _X))


def test_strict_still_refuses_a_compiled_loop():
    proto = _loop(_STEP, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(2)})
    with pytest.raises(UnsupportedError, match="Loop"):
        compile_model(import_model(proto), {"x": (1, 4)}, strict=True)


# ------------------------------------------------------------------------------------- artifacts
def _initializers(g):
    """Every initializer of GraphProto ``g`` and of its subgraphs (an If's branches, a Loop's body)."""
    yield from g.initializer
    for n in g.node:
        for a in n.attribute:
            if a.type == a.GRAPH:
                yield from _initializers(a.g)


def test_a_saved_loop_runs_without_the_model_and_a_corrupt_body_plan_is_refused(tmp_path):
    proto = _loop(_STEP, h.make_node("Identity", ["cond"], ["cond_out"]), inits={"trips": np.int64(4)})
    cm = compile_model(import_model(proto), {"x": (1, 4)})
    path = str(tmp_path / "loop.so")
    cm.save(path)
    ref = _ort(proto, _X)
    _close(load_module(path).run(_X), ref)
    plan = json.load(open(path + ".json"))
    (seg,) = [s for s in plan["host"] if "body" in s]
    body = seg["body"]["plans"][0]
    assert body["stretches"] and all(s["func"].startswith("c") for s in body["stretches"])
    assert seg["nodes"][0]["attrs"]["body"] == {"type": "graph", "compiled": True}  # its plan only
    for case in ("no such kernel", "no buffers", "missing constant", "stretch off its calls", "no such stretch",
                 "compiled subgraph without bodies"):
        bad = json.loads(json.dumps(plan))
        bp = [s for s in bad["host"] if "body" in s][0]["body"]["plans"][0]
        if case == "no such kernel":
            bp["calls"][0]["func"] = "nope"
        elif case == "stretch off its calls":
            bp["stretches"][0]["args"] = bp["stretches"][0]["args"][:-1]
        elif case == "no such stretch":
            bp["stretches"][0]["func"] = "c9b9_plan__stretch0"
        elif case == "no buffers":
            bp["buffers"] = []
        elif case == "compiled subgraph without bodies":
            del [s for s in bad["host"] if "body" in s][0]["body"]
        else:
            bad["host"][plan["host"].index(seg)]["body"]["consts"] = []
            if not any(a[0] not in body["buffers"] for c in body["calls"] for a in c["args"]):
                continue  # no kernel constant to lose
        with open(path + ".json", "w") as f:
            json.dump(bad, f)
        with pytest.raises(ArtifactError) as e:
            load_module(path).run(_X)
        assert "\n" not in str(e.value)
        assert case != "compiled subgraph without bodies" or "stored as compiled bodies" in str(e.value), e.value


# ------------------------------------------------------------------------------------------- Scan
def _scan(in_axis=0, in_dir=0, out_axis=0, out_dir=0):
    """Scan over xs [5, 2, 4] (its scan axis ``in_axis``): state s [2, 4] <- tanh(s * w + x_t), w
    an outer graph input, per-step output s + x_t, then a Neg of each output."""
    body = h.make_graph([h.make_node("Mul", ["s_in", "w"], ["m"]), h.make_node("Add", ["m", "x_t"], ["a"]),
                         h.make_node("Tanh", ["a"], ["s_out"]), h.make_node("Add", ["s_out", "x_t"], ["y_t"])],
                        "body", [vi("s_in", T.FLOAT, None), vi("x_t", T.FLOAT, None)],
                        [vi("s_out", T.FLOAT, None), vi("y_t", T.FLOAT, None)])
    nodes = [h.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1, scan_input_axes=[in_axis],
                         scan_input_directions=[in_dir], scan_output_axes=[out_axis], scan_output_directions=[out_dir]),
             h.make_node("Neg", ["s"], ["ns"]), h.make_node("Neg", ["ys"], ["nys"])]
    xs_shape = [2, 4]
    xs_shape.insert(in_axis, 5)
    g = h.make_graph(nodes, "scan", [vi("s0", T.FLOAT, [2, 4]), vi("xs", T.FLOAT, xs_shape), vi("w", T.FLOAT, [4])],
                     [vi("ns", T.FLOAT, ["a", "b"]), vi("nys", T.FLOAT, ["c", "d", "e"])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), xs_shape


@pytest.mark.parametrize("axes", [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 1)])
def test_a_scan_runs_its_body_as_kernels(axes):
    proto, xs_shape = _scan(*axes)
    rng = np.random.default_rng(2)
    feeds = {"s0": rng.standard_normal((2, 4)).astype(np.float32),
             "xs": rng.standard_normal(xs_shape).astype(np.float32), "w": rng.standard_normal(4).astype(np.float32)}
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()})
    assert cm.host_ops[0].startswith("Scan: " + COMPILED), cm.host_ops
    assert [b["kind"] for b in _bodies(cm)] == ["scan"]
    _close(cm.run(feeds), _ort(proto, feeds))


def test_states_whose_buffers_swap_and_a_per_step_output_of_the_state_input():
    """Both new states are kernel outputs of their own buffers, so the runner swaps buffers
    instead of copying; the per-step output reads the state *input* (the value before the step),
    and the trip counts are odd and even so the final state ends in either buffer."""
    nodes = [h.make_node("Mul", ["s_in", "half"], ["s_out"]), h.make_node("Add", ["t_in", "s_in"], ["t_out"]),
             h.make_node("Identity", ["s_in"], ["scan0"]), h.make_node("Sub", ["t_in", "s_out"], ["scan1"])]
    feeds = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "y": np.array([[5.0, 6.0, 7.0, 8.0]], np.float32)}
    for trips in (3, 4):
        cm = _check(_loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]), inputs=(("x", [1, 4]), ("y", [1, 4])),
                          inits={"trips": np.int64(trips)}, n_scan=2), feeds)
        _close(cm.run(feeds), _ort(_loop(nodes, h.make_node("Identity", ["cond"], ["cond_out"]),
                                         inputs=(("x", [1, 4]), ("y", [1, 4])), inits={"trips": np.int64(trips)},
                                         n_scan=2), feeds))  # a second run starts from its inputs again
