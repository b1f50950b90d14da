"""A built plan runs each stretch of kernels between host calls as one compiled function
(plan_func.py): the same outputs as the kernels called one by one from Python, on float, int8,
integer-tensor and host-call plans, through a saved artifact too; profile stays per kernel; old
and tampered plans are refused with one line."""
import itertools
import json
import shutil
import types

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from tvm_support import private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from helpers import ort_qdq  # noqa: E402
from test_tvm_int import _typed_model  # noqa: E402
from test_tvm_int8 import _conv_qdq  # noqa: E402
from tvmlite.backends.tvm import compile_model, load_module  # noqa: E402
from tvmlite.backends.tvm.artifact_check import ArtifactError  # noqa: E402
from tvmlite.backends.tvm.module import FORMAT  # noqa: E402
from tvmlite.backends.tvm import plan_func, thread_choice  # noqa: E402
from tvmlite.backends.tvm.plan_func import MAX_STRETCH, stretch_spans  # noqa: E402
from tvmlite.frontend.onnx_import import import_model  # noqa: E402

RNG = np.random.default_rng(5)


def _ort(proto, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _per_call(cm, feeds):
    """The outputs of the old path: every kernel and host call from Python, one at a time."""
    cm.set_inputs(feeds)
    cm.execute_per_call()
    return [cm._env[o["name"]] if o.get("host") else t.numpy() for t, o in cm._outputs if not o.get("const")]


def _same_both_ways(cm, feeds):
    """Stretch outputs equal the per-call outputs bit for bit (run twice: buffers are reused)."""
    fast = cm.run(feeds)
    fast = cm.run(feeds)
    slow = _per_call(cm, feeds)
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow):
        assert f.dtype == s.dtype and f.shape == s.shape
        np.testing.assert_array_equal(f, s)
    return fast


def _conv_chain():
    """Conv -> Relu -> Conv (+ residual Add) -> Sigmoid: several float kernels, one stretch."""
    w1 = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), h.make_node("Add", ["c2", "r1"], ["s"]),
             h.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Sigmoid", ["p"], ["y"])]
    return _typed_model(nodes, {"x": np.zeros((1, 3, 12, 12), np.float32)}, [("y", 4)], {"w1": w1, "w2": w2, "b": b})


def test_float_plan_is_one_stretch_and_matches_the_per_call_path_and_onnxruntime():
    proto = _conv_chain()
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    cm = compile_model(import_model(proto), {"x": x.shape})
    assert cm.kernel_count >= 2
    n = len(cm.plan["calls"])
    assert [s["calls"] for s in cm.plan["stretches"]] == [[a, min(a + MAX_STRETCH, n)] for a in range(0, n, MAX_STRETCH)]
    assert len(cm._run) == -(-n // MAX_STRETCH)  # one Python call per stretch
    got = _same_both_ways(cm, {"x": x})
    np.testing.assert_allclose(got[0], _ort(proto, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_int8_plan_matches_the_per_call_path():
    proto = _conv_qdq((1, 8, 9, 9), (16, 8, 3, 3), pads=[1, 1, 1, 1])
    x = (RNG.standard_normal((1, 8, 9, 9)) * 2).astype(np.float32)
    cm = compile_model(import_model(proto), {"x": x.shape})
    assert any("qdqconv" in c.get("func", "") for c in cm.plan["calls"])
    got = _same_both_ways(cm, {"x": x})
    assert np.abs(got[0] - ort_qdq(proto, {"x": x})[0]).max() <= 0.05 + 1e-6  # one quantization step


def test_integer_tensor_plan_matches_the_per_call_path():
    a = RNG.integers(-9, 10, (2, 5)).astype(np.int64)
    b = RNG.integers(-9, 10, (1, 5)).astype(np.int64)
    nodes = [h.make_node("Less", ["a", "b"], ["lt"]), h.make_node("Where", ["lt", "a", "b"], ["w"]),
             h.make_node("Mul", ["w", "a"], ["m"]), h.make_node("Cast", ["m"], ["f"], to=T.FLOAT),
             h.make_node("Not", ["lt"], ["nl"])]
    proto = _typed_model(nodes, {"a": a, "b": b}, [("m", 2), ("f", 2), ("nl", 2)])
    feeds = {"a": a, "b": b}
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()})
    assert cm.host_ops == [] and len(cm._run) == -(-cm.kernel_count // MAX_STRETCH)
    for g, r in zip(_same_both_ways(cm, feeds), _ort(proto, feeds)):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)


def _host_split_model():
    """Kernels, a host call (CumSum has no kernel) on a kernel's output, kernels again; and an
    integer CumSum whose ids a Gather kernel reads."""
    ids = np.array([[1, 0, 2, 1]], np.int64)
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Neg", ["r"], ["n"]),
             h.make_node("CumSum", ["n", "axis"], ["cs"]), h.make_node("Abs", ["cs"], ["a"]),
             h.make_node("Add", ["a", "r"], ["y"]),
             h.make_node("CumSum", ["ids", "axis"], ["ci"]), h.make_node("Gather", ["table", "ci"], ["g"])]
    feeds = {"x": RNG.standard_normal((1, 4, 3)).astype(np.float32), "ids": ids}
    proto = _typed_model(nodes, feeds, [("y", 3), ("g", 3), ("ci", 2)],
                         {"axis": np.array(1, np.int64), "table": RNG.standard_normal((5, 3)).astype(np.float32)})
    return proto, feeds


def test_host_calls_split_the_plan_into_stretches():
    proto, feeds = _host_split_model()
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()})
    assert [line.split(":")[0] for line in cm.host_ops] == ["CumSum", "CumSum"], cm.host_ops
    calls = cm.plan["calls"]
    spans = [tuple(s["calls"]) for s in cm.plan["stretches"]]
    assert spans == stretch_spans(calls) and len(spans) >= 2, calls
    assert all("func" in c for a, b in spans for c in calls[a:b])
    assert len(cm._run) == len(spans) + sum("host" in c for c in calls)  # one call per stretch
    got = _same_both_ways(cm, feeds)
    for g, r in zip(got, _ort(proto, feeds)):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_profile_still_times_each_kernel_and_host_call():
    proto, feeds = _host_split_model()
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()})
    rows = cm.profile(feeds, repeats=2)
    assert sorted(r[0] for r in rows) == sorted(c.get("func") or f"host{c['host']}" for c in cm.plan["calls"])
    assert all(r[2] >= 0 for r in rows)


_copies = itertools.count()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    proto, feeds = _host_split_model()
    cm = compile_model(import_model(proto), {k: v.shape for k, v in feeds.items()}, cache=False)
    d = tmp_path_factory.mktemp("plan")
    cm.save(str(d / "m.so"))
    return d / "m.so", feeds, cm.run(feeds)


def _copy(src, tmp_path, edit=None):
    dst = tmp_path / f"c{next(_copies)}.so"  # a fresh name: a loaded library stays mapped
    for suffix in ("", ".json", ".npz"):
        shutil.copyfile(str(src) + suffix, str(dst) + suffix)
    if edit:
        plan = json.loads((tmp_path / f"{dst.name}.json").read_text())
        edit(plan)
        (tmp_path / f"{dst.name}.json").write_text(json.dumps(plan))
    return dst


def test_saved_artifact_round_trips_through_the_stretches(saved, tmp_path):
    path, feeds, ref = saved
    cm = load_module(str(_copy(path, tmp_path)))
    assert len(cm._run) < len(cm._calls)
    for g, r in zip(cm.run(feeds), ref):
        np.testing.assert_array_equal(g, r)
    _same_both_ways(cm, feeds)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(format=4), f"has format 4, expected {FORMAT}: rebuild it"),
    (lambda p: p.pop("stretches"), "'stretches' must be a list"),
    (lambda p: p["stretches"].pop(), "do not match the kernel calls"),
    (lambda p: p["stretches"][0].update(calls=[0, 99]), "does not name the arguments"),
    (lambda p: p["stretches"][0]["args"].pop(), "does not name the arguments"),
    (lambda p: p["stretches"][0].update(args=["nope"]), "is malformed"),
    (lambda p: p["stretches"][0].update(func="plan__stretch7"), "has no kernel 'plan__stretch7'"),
])
def test_old_or_tampered_stretches_are_refused_in_one_line(saved, tmp_path, edit, message):
    path, _, _ = saved
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[")) as e:
        load_module(str(_copy(path, tmp_path, edit)))
    assert "\n" not in str(e.value)


def test_a_small_plan_picks_its_thread_count_and_computes_the_same_on_any(monkeypatch):
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    proto = _conv_chain()
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    cm = compile_model(import_model(proto), {"x": x.shape})
    first = cm.run({"x": x})[0]
    for _ in range(41):  # the runs after the second of a small plan measure 1 thread against 2
        np.testing.assert_array_equal(cm.run({"x": x})[0], first)
        if cm.thread_times:
            break
    assert cm.threads in (1, 2) and set(cm.thread_times) == {1, 2} and cm._choice.trial is None
    assert cm.thread_times[cm.threads] == min(cm.thread_times.values())
    for n in (1, 2, 1):
        cm.threads = n
        np.testing.assert_array_equal(cm.run({"x": x})[0], first)
        np.testing.assert_array_equal(_per_call(cm, {"x": x})[0], first)


def test_a_pick_spreads_over_the_plans_own_runs(monkeypatch):
    """Every run() runs the plan once, picking or not (the pick's runs used to be 16-40 extra runs
    inside the second run() and each later picking one)."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    passes, go = [], cm._go
    cm._go = lambda: (passes.append(1), go())
    seen_trial = False
    for i in range(1, 61):
        cm.run({"x": x})
        seen_trial |= getattr(getattr(cm, "_choice", None), "trial", None) is not None
        assert len(passes) == i
    assert seen_trial and cm.thread_times


def test_warm_up_runs_until_two_picks_agree(monkeypatch):
    """warm_up runs a small plan until two picks in a row choose alike (run 2 starts the first, its
    trial takes 16-40 runs, the next starts REPICK_FIRST runs later), then stops; one run where
    there is nothing to pick."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    x = {"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)}
    n = cm.warm_up(x)
    assert 2 + 16 + thread_choice.REPICK_FIRST + 16 <= n <= 128 and set(cm.thread_times) == {1, 2}
    assert cm._choice.steady or n == 128
    monkeypatch.setenv("TVMLITE_PICK_THREADS", "0")
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    assert cm.warm_up(x) == 1 and cm.thread_times == {}


def test_warm_up_stops_at_the_second_agreeing_pick_or_at_most(monkeypatch):
    """One-run trials: picks at runs 2 and 2 + 1 + REPICK_FIRST agree, so warm_up makes 12 runs and
    then one; picks that keep disagreeing run it to ``most``."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setattr(thread_choice, "REPICK_FIRST", 8)
    x = {"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)}
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    _one_run_trials(monkeypatch, lambda most: (2, {1: 2.0, 2: 1.0}))
    assert cm.warm_up(x) == 12 and cm._choice.steady and cm.warm_up(x) == 1
    picks = []
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    _one_run_trials(monkeypatch, lambda most: (1 + len(picks) % 2, {1: 1.0, 2: 1.0}), picks, lambda: cm._choice.runs)
    assert cm.warm_up(x, most=50) == 50 and not cm._choice.steady


class _OneRunTrial:
    """A stand-in for thread_choice.ThreadTrial that is over after one run, choosing ``choose(most)``."""

    def __init__(self, most, choose):
        self.most, self.threads, self.choose = most, most, choose

    def record(self, seconds):
        return True

    def choice(self):
        return self.choose(self.most)


def _one_run_trials(monkeypatch, choose, starts=None, runs_of=None):
    """thread_choice.ThreadTrial replaced by `_OneRunTrial`s; ``starts`` gets ``runs_of()`` as each
    begins (the run that started it)."""
    def trial(most):
        assert most == 2  # every pick weighs 1 against all threads, whatever the last one chose
        if starts is not None:
            starts.append(runs_of())
        return _OneRunTrial(most, choose)
    monkeypatch.setattr(thread_choice, "ThreadTrial", trial)


def test_a_small_plan_picks_again_at_growing_gaps_and_a_large_one_never(monkeypatch):
    """A pick starts at run 2, its trial runs next (one run here), the next starts REPICK_FIRST
    runs after it ends; a pick that chose as the one before waits REPICK_GROWTH x longer for the
    next, up to REPICK_MAX, one that chose otherwise REPICK_FIRST again; each pick's choice is the
    one runs take until the next (outputs identical either way). A plan whose second run takes
    PICK_BELOW_S or more never picks."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setattr(thread_choice, "REPICK_FIRST", 2)
    monkeypatch.setattr(thread_choice, "REPICK_MAX", 32)
    proto = _conv_chain()
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    cm = compile_model(import_model(proto), {"x": x.shape})
    picks = []
    _one_run_trials(monkeypatch, lambda most: (1 + len(picks) % 2, {1: 1.0, 2: 2.0}), picks, lambda: cm._choice.runs)
    first = cm.run({"x": x})[0]
    for i in range(2, 40):
        np.testing.assert_array_equal(cm.run({"x": x})[0], first)
        if cm._choice.trial is None and picks and cm._choice.runs > picks[-1]:
            assert cm.threads == 1 + len(picks) % 2
    assert picks == list(range(2, 40, 3))  # every pick chose otherwise: each trial ends a run later, gap 2

    cm = compile_model(import_model(proto), {"x": x.shape})
    picks.clear()
    _one_run_trials(monkeypatch, lambda most: (2, {1: 2.0, 2: 1.0}), picks, lambda: cm._choice.runs)
    for i in range(100):
        cm.run({"x": x})
    assert picks == [2, 5, 14, 47, 80]  # gaps 2 (after the first pick), 8, 32, then 32 (the cap)

    monkeypatch.setattr(thread_choice, "PICK_BELOW_S", 0.0)
    cm = compile_model(import_model(proto), {"x": x.shape})
    picks.clear()
    for i in range(20):
        cm.run({"x": x})
    assert picks == [] and cm.threads == 2


def test_only_the_picking_runs_read_the_cpu_clock(monkeypatch):
    """A run that does not start a pick reads no CPU clock (time.thread_time is a system call, a
    fifth of a trivial plan's run() before): runs 2, 2 + 1 + REPICK_FIRST, ... only (both picks
    choose 2 threads: the third is REPICK_GROWTH x REPICK_FIRST runs after the second, past run 20)."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setattr(thread_choice, "REPICK_FIRST", 4)
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    reads = []

    class Clock:
        @staticmethod
        def thread_time():
            reads.append(cm._choice.runs)
            return 0.0

        perf_counter = staticmethod(lambda: 0.0)  # the trial's and the watched runs' wall clock
    monkeypatch.setattr(thread_choice, "time", Clock)
    _one_run_trials(monkeypatch, lambda most: (2, {1: 2.0, 2: 1.0}))
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    for _ in range(20):
        cm.run({"x": x})
    assert reads == [1, 2, 6]  # before runs 2 and 7, and after run 2 (a large plan stops there)


def test_stalled_runs_on_all_threads_fall_back_to_one_until_the_next_pick(monkeypatch):
    """After a pick of 2 threads, STALLS runs in a row slower than STALL_RATIO x the pick's
    one-thread mean put the plan on 1 thread; a stall followed by a normal run does not; the next
    pick, at most REPICK_FIRST runs later, may choose 2 again, and a pick of 1 thread times nothing."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setattr(thread_choice, "REPICK_FIRST", 8)
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    choice = [2]
    _one_run_trials(monkeypatch, lambda most: (choice[0], {1: 1.0, 2: 0.6}))  # ms
    durations, calls, now = [], [0], [0.0]

    def perf_counter():  # a timed run's start and end: each run lasts the next of ``durations``
        calls[0] += 1
        if calls[0] % 2 == 0:
            now[0] += durations.pop(0) if durations else 0.0
        return now[0]

    def run(seconds):
        durations.append(seconds)
        cm.run({"x": x})
    monkeypatch.setattr(thread_choice, "time", types.SimpleNamespace(thread_time=lambda: 0.0, perf_counter=perf_counter))
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    for _ in range(3):  # run 2 starts a pick, run 3 ends it on 2 threads: runs now stall past 2 x 1.0 ms
        cm.run({"x": x})
    assert cm.threads == 2 and cm._choice.stall_s == pytest.approx(thread_choice.STALL_RATIO * 1e-3) and cm._choice.next_pick == 11
    run(0.0105)  # 10.5 ms: stalled
    run(0.0005)  # normal again: the count starts over
    run(0.0105)
    assert cm.threads == 2
    run(0.0105)  # the second stall in a row (run 7)
    assert cm.threads == 1 and cm._choice.stall_s is None and cm._choice.next_pick == 11
    while cm._choice.runs < 11:  # run 11 starts a pick, run 12 ends it
        cm.run({"x": x})
    assert cm.threads == 1
    cm.run({"x": x})
    # the stall set the gap back to REPICK_FIRST; this pick chose as the last: the gap grows
    assert cm.threads == 2 and cm._choice.gap == 8 * thread_choice.REPICK_GROWTH and cm._choice.next_pick == 12 + 32
    run(0.0105)
    run(0.0105)  # runs 13 and 14 stall: the next pick moves from run 44 to 22 (14 + REPICK_FIRST)
    assert cm.threads == 1 and cm._choice.next_pick == 22 and cm._choice.gap == 8
    choice[0] = 1
    while cm._choice.runs < 23:
        cm.run({"x": x})
    # a pick of 1 thread times nothing; it chose otherwise than the last: the gap stays REPICK_FIRST
    assert cm._choice.next_pick == 23 + 8 and cm.threads == 1 and cm._choice.stall_s is None and cm._choice.gap == 8


def test_slow_runs_after_an_idle_gap_are_not_stalls(monkeypatch):
    """A run starting more than IDLE_GAP_S after the last watched run ended wakes sleeping workers:
    slow as it is, it neither counts as a stall nor resets the count; two slow runs back to back do."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setattr(thread_choice, "REPICK_FIRST", 100)  # no pick in the way
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    _one_run_trials(monkeypatch, lambda most: (2, {1: 1.0, 2: 0.6}))  # ms: stalled past 2 ms
    now, plan = [0.0], []  # plan: (idle before the run, its duration) per timed run, in seconds

    def perf_counter():
        if plan and plan[0][0] is not None:  # a run's start: the idle before it passes first
            now[0] += plan[0][0]
            plan[0] = (None, plan[0][1])
        elif plan:
            now[0] += plan.pop(0)[1]
        return now[0]
    monkeypatch.setattr(thread_choice, "time", types.SimpleNamespace(thread_time=lambda: 0.0, perf_counter=perf_counter))
    x = {"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)}

    def run(idle, ms):
        plan.append((idle, ms / 1e3))
        cm.run(x)
        assert not plan

    for _ in range(3):  # run 2 starts a pick, run 3 ends it on 2 threads
        cm.run(x)
    assert cm.threads == 2 and cm._choice.stall_s == pytest.approx(2e-3)
    run(0.0, 0.5)  # the first watched run
    for _ in range(4):  # slow, each after a pause: wake-ups, not stalls
        run(0.05, 5.0)
    assert cm.threads == 2 and cm._choice.stalls == 0
    run(0.0, 5.0)
    run(0.05, 5.0)  # a pause between two slow runs: the count stands
    assert cm.threads == 2 and cm._choice.stalls == 1
    run(0.001, 5.0)  # under IDLE_GAP_S after the last: the second stall in a row
    assert cm.threads == 1


def test_a_large_plan_goes_to_one_thread_when_its_runs_stall_and_probes_its_way_back(monkeypatch):
    """A plan too large to pick makes its third run on one thread for a reference; then STALLS runs
    in a row on 2 threads past LARGE_STALL x the reference put it on 1 thread, whose runs keep the
    reference current; REPICK_FIRST runs later one run probes 2 threads, a stalled probe doubles the
    wait, a normal one keeps 2 threads. warm_up stops once the reference is taken."""
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setattr(thread_choice, "REPICK_FIRST", 8)
    monkeypatch.setattr(thread_choice, "PICK_BELOW_S", 0.0)
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    durations, calls, now, sides = [], [0], [0.0], []

    def perf_counter():  # each timed run lasts the next of ``durations``
        calls[0] += 1
        if calls[0] % 2 == 0:
            now[0] += durations.pop(0) if durations else 0.0
            sides.append(cm._choice.threads)
        else:
            sides.append(None)
        return now[0]

    monkeypatch.setattr(thread_choice, "time", types.SimpleNamespace(thread_time=lambda: 0.0, perf_counter=perf_counter))

    def run(ms, on, after):
        durations.append(ms / 1e3)
        sides.clear()
        cm.run({"x": x})
        assert not durations and sides == [None, on] and cm.threads == after

    assert cm.warm_up({"x": x}) == 3  # runs 1 and 2 untimed (thread_time only), run 3: the reference
    assert cm._choice.large == [3, pytest.approx(0.0), None]
    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    for _ in range(2):  # run 2 finds the plan large: no pick, no trial
        cm.run({"x": x})
    assert cm._choice.large == [2, None, None] and cm._choice.trial is None and cm.threads == 2
    run(20, 1, 2)  # run 3: the one-thread reference, 20 ms
    for ms in (10, 10, 25, 10, 25):  # runs 4-8: one stall at a time changes nothing (25 > 1.1 x 20)
        run(ms, 2, 2)
    run(25, 2, 1)  # run 9: the second in a row
    assert cm._choice.large[2] == 9 + 8
    for _ in range(7):  # runs 10-16 on one thread: the reference follows them
        run(40, 1, 1)
    run(50, 2, 1)  # run 17 probes 2 threads and stalls (50 > 1.1 x 40): the next probe 16 runs later
    assert cm._choice.large[2] == 17 + 16 and cm._choice.gap == 16
    for _ in range(15):
        run(30, 1, 1)
    run(12, 2, 2)  # run 33 probes and runs normally: 2 threads from now on, the gap back to 8
    assert cm._choice.gap == 8 and cm._choice.large[1] == pytest.approx(0.030)
    run(11, 2, 2)


def test_inputs_of_any_float_dtype_layout_or_container_give_the_same_outputs():
    """run() copies a float input straight into its buffer, converting as np.asarray(x, float32)
    does: float64, a strided view, a Fortran-ordered array and nested lists give the float32
    array's outputs; a wrong shape and a missing input are refused in one line."""
    from tvmlite.errors import InputError

    cm = compile_model(import_model(_conv_chain()), {"x": (1, 3, 12, 12)})
    x64 = RNG.standard_normal((1, 3, 12, 12))
    want = cm.run({"x": x64.astype(np.float32)})[0]
    wide = np.zeros((1, 3, 12, 24))
    wide[..., ::2] = x64
    for x in (x64, wide[..., ::2], np.asfortranarray(x64), np.asfortranarray(x64.astype(np.float32)), x64.tolist()):
        np.testing.assert_array_equal(cm.run({"x": x})[0], want)
    with pytest.raises(InputError, match="has shape"):
        cm.run({"x": x64[..., :6]})
    with pytest.raises(InputError, match="missing input 'x'"):
        cm.run({"y": x64})


def test_thread_picking_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TVMLITE_THREADS", "2")
    monkeypatch.setenv("TVMLITE_PICK_THREADS", "0")
    proto = _conv_chain()
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    cm = compile_model(import_model(proto), {"x": x.shape})
    for _ in range(3):
        cm.run({"x": x})
    assert cm.threads == 2 and cm.thread_times == {}


@pytest.mark.parametrize("ms_on_two, runs, counted", [(1.1, 40, 15), (2.0, 16, 6), (5.0, 16, 6)])  # counted: per side
def test_a_thread_trial_takes_the_faster_side(ms_on_two, runs, counted):
    """Blocks of 1 uncounted + 3 counted runs per side, 5 rounds, every other one reversed; over
    after round 2 when one side is CLEAR_RATIO slower in every block (or 3x slower). Here a run
    takes 1 ms on one thread."""
    trial = thread_choice.ThreadTrial(2)
    sides = []
    while True:
        sides.append(trial.threads)
        if trial.record((ms_on_two if trial.threads == 2 else 1.0) / 1e3):
            break
    assert len(sides) == runs and sides[:8] == [1] * 4 + [2] * 4 and sides[8:12] == [2] * 4
    assert [len(v) for v in trial.times.values()] == [counted, counted]  # per side
    best, means = trial.choice()
    assert best == 1 and means == pytest.approx({1: 1.0, 2: ms_on_two})


def test_a_thread_trial_whose_blocks_overlap_goes_on():
    """Means 1.25x apart after round 2 do not end a trial while a block of the faster side is
    slower than one of the other's: 2 threads take 0.5 ms in their first block, 1.1 ms after."""
    trial = thread_choice.ThreadTrial(2)
    seen = 0
    while True:
        ms = 1.0
        if trial.threads == 2:
            ms = 0.5 if seen < 4 else 1.1
            seen += 1
        if trial.record(ms / 1e3):
            break
    assert trial.i > 16


def test_long_runs_of_kernels_are_cut_into_short_stretches():
    """LLVM's time on one stretch grows faster than its length (densenet's 242-kernel stretch took
    its build from 27 to 163 s), so runs longer than MAX_STRETCH are cut; host calls still cut too."""
    k, hst = {"func": "k"}, {"host": 0}
    calls = [k] * (2 * MAX_STRETCH + 1) + [hst] + [k] * 2 + [hst]
    m = 2 * MAX_STRETCH + 1
    assert stretch_spans(calls) == [(0, MAX_STRETCH), (MAX_STRETCH, 2 * MAX_STRETCH), (2 * MAX_STRETCH, m),
                                    (m + 1, m + 3)]
    assert stretch_spans([hst, hst]) == []


def _repeated_block():
    """Two Conv+Relu of one shape (own weights) whose outputs are concatenated (written at two
    offsets of one buffer), then a conv of another shape."""
    w1, w2 = ((RNG.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32) for _ in range(2))
    w3 = (RNG.standard_normal((4, 16, 1, 1)) * 0.2).astype(np.float32)
    b1, b2 = (RNG.standard_normal(8).astype(np.float32) for _ in range(2))
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("Concat", ["r1", "r2"], ["cat"], axis=1), h.make_node("Conv", ["cat", "w3"], ["y"])]
    return _typed_model(nodes, {"x": np.zeros((1, 8, 12, 12), np.float32)}, [("y", 4)],
                        {"w1": w1, "w2": w2, "w3": w3, "b1": b1, "b2": b2})


def test_repeated_kernels_share_one_compiled_subroutine():
    """A kernel structurally equal to an earlier one (same shapes and schedule, other weights) calls
    that one's subroutine: one impl compiled for both, each still with its own public function and
    weights, outputs equal to onnxruntime's; kernels of other shapes keep their own."""
    from tvmlite.backends.tvm.lower import lower
    from tvmlite.backends.tvm.module import plan_of

    proto = _repeated_block()
    x = RNG.standard_normal((1, 8, 12, 12)).astype(np.float32)
    low = lower(import_model(proto), {"x": x.shape}, 8)
    convs = [kd.name for kd in low.kernels]
    assert len(convs) == 3
    assert plan_func.same_kernels(low.kernels) == {convs[1]: convs[0]}
    plan, _ = plan_of(low)
    names = {gv.name_hint for gv in plan_func.plan_module(low.kernels, plan).functions}
    assert {n for n in names if n.endswith(plan_func.IMPL)} == {convs[0] + plan_func.IMPL, convs[2] + plan_func.IMPL}
    assert set(convs) <= names  # every kernel keeps its public function (profile, single runs)
    cm = compile_model(import_model(proto), {"x": x.shape})
    got = _same_both_ways(cm, {"x": x})
    np.testing.assert_allclose(got[0], _ort(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)
