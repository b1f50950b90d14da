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


def masks():
    return {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}


mine = sorted(os.sched_getaffinity(0))
callers = {threading.get_native_id(): mine}
cm.run(feeds)
if sys.argv[1] == "two-callers":  # a second thread's own pool
    def other():
        callers[threading.get_native_id()] = sorted(os.sched_getaffinity(0))
        cm.run(feeds)
        callers[threading.get_native_id()] = [callers[threading.get_native_id()], sorted(os.sched_getaffinity(0))]
    t = threading.Thread(target=other)
    t.start(); t.join()
after = masks()
print(json.dumps({"callers": {str(k): v for k, v in callers.items()}, "mine_after": sorted(os.sched_getaffinity(0)),
                  "others": {str(k): v for k, v in after.items() if k not in callers},
                  "cpus": mine}))
"""


def _run(tmp_path, case, **env):
    e = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    e.update(TVMLITE_THREADS="2", TVMLITE_PICK_THREADS="0", TVMLITE_CACHE=str(tmp_path / "cache"), **env)
    r = subprocess.run([sys.executable, "-c", SCRIPT, case], env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _pinned(got):
    """The cores of the threads pinned to one (the callers aside)."""
    return sorted(v[0] for v in got["others"].values() if len(v) == 1)


def test_the_pool_worker_is_pinned_and_the_caller_keeps_its_mask(tmp_path):
    got = _run(tmp_path, "one-caller")
    cpus = got["cpus"]
    assert got["mine_after"] == cpus
    # TVM_NUM_THREADS=2: one worker besides the caller, on the second core of the caller's mask
    assert _pinned(got) == [cpus[1]], got


def test_a_second_calling_thread_pins_its_worker_to_another_core(tmp_path):
    got = _run(tmp_path, "two-callers")
    cpus = got["cpus"]
    assert sorted(_pinned(got)) == sorted([cpus[1], cpus[0]]), got
    other = next(v for v in got["callers"].values() if isinstance(v[0], list))
    assert other[0] == other[1]  # the second caller's mask is its own still


def test_tvm_bind_threads_0_from_the_user_leaves_every_thread_free(tmp_path):
    got = _run(tmp_path, "one-caller", TVM_BIND_THREADS="0")
    assert got["others"] and _pinned(got) == [], got
    assert got["mine_after"] == got["cpus"]


def test_a_caller_on_one_core_pins_nothing_and_keeps_its_core(tmp_path):
    got = _run(tmp_path, "one-core")
    assert got["mine_after"] == got["cpus"] and len(got["cpus"]) == 1
    assert _pinned(got) in ([], got["cpus"]), got  # a worker on the caller's only core is no pin


def test_bound_cpus_is_none_where_the_user_turned_binding_off(monkeypatch):
    monkeypatch.setattr(target, "_bind_asked", "0")
    assert target.bound_cpus() is None
    monkeypatch.setattr(target, "_bind_asked", "")
    assert target.bound_cpus() == sorted(os.sched_getaffinity(0))
