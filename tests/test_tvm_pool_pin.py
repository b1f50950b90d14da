"""TVM's pool workers are pinned one core each when a plan first runs on more than one thread
(kernels/target.bound_cpus, plan_func.use_threads); the calling thread keeps its own mask. Unpinned,
a worker woken after the process idles often lands on the caller's core, and every parallel loop
then runs both halves on one core (README: runs after a pause). Checked in fresh processes: a
thread's pool starts, and is pinned, once."""
import json
import os
import subprocess
import sys

import pytest

from tvm_support import CONV_SCRIPT_HEAD, private_tvm_cache, require_tvm  # noqa: F401 - the fixture is autouse

require_tvm()

from tvmlite.backends.tvm.kernels import target  # noqa: E402

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2 or not os.path.exists("/proc/self/task"),
    reason="pinning needs two cores this process may use and Linux's per-thread masks")

SCRIPT = CONV_SCRIPT_HEAD + r"""
from tvmlite.backends.tvm import plan_func


def masks():
    return {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}


def pinned(callers):  # {thread: core} of the threads pinned to one core, the callers aside
    return {t: m[0] for t, m in masks().items() if t not in callers and len(m) == 1}


mine = sorted(os.sched_getaffinity(0))
me = threading.get_native_id()
callers = {me}
cm.run(feeds)
got = {"cpus": mine, "mine_after": sorted(os.sched_getaffinity(0)), "off": getattr(plan_func._pool, "pinned_off", None),
       "pinned": sorted(pinned(callers).values())}
if sys.argv[1] == "two-callers":  # a second thread's own pool, its workers off its own core
    def other():
        callers.add(threading.get_native_id())
        before = sorted(os.sched_getaffinity(0))
        cm.run(feeds)
        got["other"] = {"off": plan_func._pool.pinned_off, "mask": [before, sorted(os.sched_getaffinity(0))]}
        got["pinned_both"] = sorted(pinned(callers).values())
    t = threading.Thread(target=other)
    t.start(); t.join()
if sys.argv[1] == "moved":  # the caller put on its worker's core: the worker moves off it
    core = got["pinned"][0]
    os.sched_setaffinity(0, {core})
    cm.run(feeds)
    got["moved"] = {"core": core, "off": plan_func._pool.pinned_off, "pinned": sorted(pinned(callers).values()),
                    "mask": sorted(os.sched_getaffinity(0))}
print(json.dumps(got))
"""


def _run(tmp_path, case, **env):
    e = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    e.update(TVMLITE_THREADS="2", TVMLITE_PICK_THREADS="0", TVMLITE_CACHE=str(tmp_path / "cache"), **env)
    r = subprocess.run([sys.executable, "-c", SCRIPT, case], env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_pool_worker_is_pinned_off_the_callers_core_and_the_caller_keeps_its_mask(tmp_path):
    got = _run(tmp_path, "one-caller")
    assert got["mine_after"] == got["cpus"]
    # TVM_NUM_THREADS=2: one worker besides the caller, on a core of the caller's mask, not the
    # one the caller ran on
    assert len(got["pinned"]) == 1 and got["pinned"][0] in got["cpus"] and got["pinned"][0] != got["off"], got


def test_a_caller_that_moves_onto_its_workers_core_moves_the_worker(tmp_path):
    got = _run(tmp_path, "moved")
    m = got["moved"]
    assert m["off"] == m["core"] and m["mask"] == [m["core"]], got  # the caller's own mask left as set
    assert len(m["pinned"]) == 1 and m["pinned"][0] != m["core"], got


def test_a_second_calling_thread_pins_its_worker_off_its_own_core(tmp_path):
    got = _run(tmp_path, "two-callers")
    other = got["other"]
    assert other["mask"][0] == other["mask"][1]  # the second caller's mask is its own still
    assert len(got["pinned_both"]) == 2 and other["off"] in got["cpus"], got


def test_tvm_bind_threads_0_from_the_user_leaves_every_thread_free(tmp_path):
    got = _run(tmp_path, "one-caller", TVM_BIND_THREADS="0")
    assert got["pinned"] == [] and got["off"] is None, got
    assert got["mine_after"] == got["cpus"]


def test_a_caller_on_one_core_pins_nothing_and_keeps_its_core(tmp_path):
    got = _run(tmp_path, "one-core")
    assert got["mine_after"] == got["cpus"] and len(got["cpus"]) == 1
    assert got["pinned"] in ([], got["cpus"]), got  # a worker on the caller's only core is no pin


def test_bound_cpus_is_none_where_the_user_turned_binding_off(monkeypatch):
    monkeypatch.setattr(target, "_bind_asked", "0")
    assert target.bound_cpus() is None
    monkeypatch.setattr(target, "_bind_asked", "")
    assert target.bound_cpus() == sorted(os.sched_getaffinity(0))
