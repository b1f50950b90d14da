"""Where a compiled plan's time goes besides its kernels (issue 15, per-call overhead).

    PYTHONPATH=$PWD .venv/bin/python bench/plan_overhead.py MODEL [--rounds 7] [--threads N]

MODEL: shufflenet, squeezenet (or any light_* name), digits, digits-int8 (tvmlite's quantize of the
digits CNN), detector, or a path to an .onnx file with static input shapes.

Prints, all interleaved round by round (medians; the machine is shared):
- the whole run before (one Python call per kernel, every thread of the pool), through the plan's
  stretches (one compiled call per run of kernels between host calls), and after (stretches on
  the thread count the plan picked by measurement, what `run` does now), against onnxruntime on
  the same model, all with their ratios;
- the sum of the kernels' medians, each timed alone in a loop (hot caches, as `profile` does);
- the dispatch cost of one packed call from Python (a kernel that copies one float, called as
  many times as the plan has kernels), and of the same number of subroutine calls made inside one
  compiled function;
- the thread pool's launch cost: a parallel kernel over 2 one-float chunks against the same kernel
  serial, times the plan's parallel kernels (counted in the lowered TIR).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402


def load_case(name: str, tmp: str):
    """(onnx proto, feeds)."""
    if name.endswith(".onnx"):
        proto = onnx.load(name)
        rng = np.random.default_rng(0)
        feeds = {}
        for i in proto.graph.input:
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            if not all(d > 0 for d in dims):
                raise SystemExit(f"{name}: input {i.name} has dims {dims}: give a model with static shapes")
            feeds[i.name] = rng.random(dims, dtype=np.float32)
        return proto, feeds
    digits_x = {"input": np.load(ROOT / "models" / "digits_test.npz")["input"][:1].astype(np.float32)}
    if name == "digits":
        return onnx.load(ROOT / "models" / "digits_cnn.onnx"), digits_x
    if name == "digits-int8":
        from bench_tvm_int8 import _tvmlite_qdq

        path = os.path.join(tmp, "digits_int8.onnx")
        _tvmlite_qdq(str(ROOT / "models" / "digits_cnn.onnx"), str(ROOT / "models" / "digits_calib.npz"), path)
        return onnx.load(path), digits_x
    from bench_tvm import coverage_models

    for label, _, proto, feeds in coverage_models(quick=True, only=[name]):
        return proto, feeds
    raise SystemExit(f"unknown model {name!r} (shufflenet, squeezenet, light_*, digits, digits-int8, detector, "
                     f"or an .onnx path)")


def _copy_kernel(parallel: bool, lanes: int = 2):
    """out[i] = in[i] for i < lanes: the cheapest kernel there is, serial or split over the pool."""
    from tvm import te

    from tvmlite.backends.tvm.kernels.target import import_tvm

    tvm = import_tvm()
    a = te.placeholder((lanes,), "float32", name="a")
    b = te.compute((lanes,), lambda i: a[i], name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    if parallel:
        sch.parallel(sch.get_loops(sch.get_sblock("b"))[0])
    return sch.mod["main"]


def dispatch_costs(n_calls: int, rounds: int) -> dict:
    """Microseconds per packed call from Python, per subroutine call in compiled code, and per
    parallel launch (parallel kernel minus serial kernel)."""
    from tvmlite.backends.tvm import plan_func
    from tvmlite.backends.tvm.kernels.target import host_target, import_tvm
    from tvmlite.backends.tvm.single_kernel import build_kernel

    tvm = import_tvm()
    serial, par = _copy_kernel(False), _copy_kernel(True)

    class K:  # the two fields plan_module reads
        def __init__(self, name, func):
            self.name, self.func, self.params = name, func, []

    a = tvm.runtime.tensor(np.ones(2, np.float32))
    b = tvm.runtime.empty((2,), "float32", tvm.cpu())
    plan = {"buffers": {"a": {"shape": [2]}, "b": {"shape": [2]}},
            "calls": [{"func": "copy", "args": [["a", [2]], ["b", [2]]]}] * n_calls}
    lib = plan_func.compile_plan(plan_func.plan_module([K("copy", serial)], plan), host_target())
    one, many = lib["copy"], lib[plan["stretches"][0]["func"]]
    lib_par = build_kernel(K("pcopy", par))

    def python_calls():
        for _ in range(n_calls):
            one(a, b)

    def par_calls():
        for _ in range(n_calls):
            lib_par(a, b)

    t = interleaved({"python": python_calls, "compiled": lambda: many(a, b), "parallel": par_calls}, rounds, 20)
    return {"python_us": t["python"] * 1e3 / n_calls, "compiled_us": t["compiled"] * 1e3 / n_calls,
            "launch_us": (t["parallel"] - t["python"]) * 1e3 / n_calls}


def interleaved(fns: dict, rounds: int, per_round: int) -> dict:
    """Medians (and best runs) of each contender in ms over alternating blocks (as bench_tvm's), by
    the wall clock and by this thread's CPU time (``name_cpu``): under load the wall clock mostly
    measures the scheduler, while the calling thread's CPU time leaves out the time it sat
    descheduled (it still counts a barrier spun on and caches other jobs evicted)."""
    for f in fns.values():
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(rounds):
        for k, f in (items if r % 2 == 0 else items[::-1]):
            time.sleep(0.05)
            for i in range(per_round + 1):
                t0, c0 = time.perf_counter(), time.thread_time()
                f()
                t1, c1 = time.perf_counter(), time.thread_time()
                if i:
                    wall[k].append((t1 - t0) * 1e3)
                    cpu[k].append((c1 - c0) * 1e3)
    out = {k: float(np.median(v)) for k, v in wall.items()}
    out.update({f"{k}_best": float(np.min(v)) for k, v in wall.items()})
    out.update({f"{k}_cpu": float(np.median(v)) for k, v in cpu.items()})
    return out


def kernel_sums(cm, feeds, repeats: int) -> tuple[float, float]:
    """Sum over the plan's calls of each one's median ms, each timed alone in a loop (wall, CPU)."""
    cm.set_inputs(feeds)
    cm.execute()
    wall = cpu = 0.0
    for fn, args in cm._calls:
        ws, cs = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(*args)
            ws.append(time.perf_counter() - t0)
            cs.append(time.thread_time() - c0)
        wall += float(np.median(ws)) * 1e3
        cpu += float(np.median(cs)) * 1e3
    return wall, cpu


def parallel_kernels(model, shapes) -> tuple[int, int]:
    """(kernels, kernels with a parallel loop) of the lowered plan."""
    from tvmlite.backends.tvm.kernels.target import vector_lanes
    from tvmlite.backends.tvm.lower import lower
    from tvmlite.backends.tvm.compile import static_inputs

    m, s = static_inputs(model, shapes)
    low = lower(m, s, vector_lanes())
    return len(low.kernels), sum("T.parallel" in kd.func.script() for kd in low.kernels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="TVM and onnxruntime threads (default: cores)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["TVMLITE_THREADS"] = str(args.threads)
    import tvmlite
    from bench_tvm import ort_session
    from tvmlite.backends.tvm import compile_model
    from tvmlite.backends.tvm.kernels.target import host_threads, import_tvm

    import_tvm()
    with tempfile.TemporaryDirectory() as tmp:
        proto, feeds = load_case(args.model, tmp)
        path = os.path.join(tmp, "m.onnx")
        onnx.save(proto, path)
        model = tvmlite.load(path)
    shapes = {k: v.shape for k, v in feeds.items()}
    t0 = time.perf_counter()
    cm = compile_model(model, shapes)
    print(f"{args.model}: {cm.summary}, {len(cm._run)} calls per run, built in {time.perf_counter() - t0:.1f} s "
          f"({'cached' if cm.cached else 'fresh'}), {host_threads()} threads")
    n_kernels, n_par = parallel_kernels(model, shapes)
    sess = ort_session(proto)
    ref = sess.run(None, feeds)
    got = cm.run(feeds)
    cm.warm_up(feeds)  # the runs after the second pick the thread count of a small plan
    picked, every = cm.threads, host_threads()
    err = max(float(np.abs(np.asarray(r, np.float64) - g).max()) for r, g in zip(ref, got))
    print(f"threads picked by the plan: {picked} of {every} "
          + (f"(means 1: {cm.thread_times[1]:.3f} ms, {every}: {cm.thread_times[every]:.3f} ms)"
             if cm.thread_times else "(not measured: a large plan, one thread, or TVMLITE_PICK_THREADS=0)")
          + f"; max abs difference to onnxruntime {err:.2e}")

    def outputs():
        return [t.numpy() for t, o in cm._outputs if t is not None]

    def path(per_call: bool, threads: int):
        def go():
            cm.threads = threads
            cm.set_inputs(feeds)
            cm.execute_per_call() if per_call else cm.execute()
            out = outputs()
            cm.threads = picked
            return out
        return go

    runs = {"before": path(True, every), "stretches": path(False, every), "after": path(False, picked),
            "ort": lambda: sess.run(None, feeds)}
    same = all(np.array_equal(x, y) for x, y in zip(runs["before"](), runs["after"]()))
    print(f"outputs: the per-call path at {every} threads == stretches at {picked}: {same}")
    t = interleaved(runs, args.rounds, 10)
    cm.threads = every
    kern, kern_cpu = kernel_sums(cm, feeds, 20)
    cm.threads = picked
    d = dispatch_costs(max(n_kernels, 1), args.rounds)
    print("before: per-call path, all threads; stretches: one compiled call per stretch, all threads; "
          "after: stretches on the picked threads (what run() does now)")
    for clock, sfx, k in (("wall clock", "", kern), ("main thread's CPU time", "_cpu", kern_cpu)):
        o = t["ort" + sfx]
        print(f"[{clock}] onnxruntime {o:.3f} ms; " + ", ".join(
            f"{n} {t[n + sfx]:.3f} ms ({t[n + sfx] / o:.2f}x" + (f", best runs {t[n + '_best'] / t['ort_best']:.2f}x)"
                                                                 if not sfx else ")")
            for n in ("before", "stretches", "after")))
        print(f"[{clock}] sum of the {n_kernels} kernels timed alone at {every} threads (hot caches): {k:.3f} ms; "
              f"gap: before {t['before' + sfx] - k:+.3f} ms, stretches {t['stretches' + sfx] - k:+.3f} ms")
    print(f"dispatch: {d['python_us']:.2f} us per packed call from Python (x{n_kernels} = "
          f"{d['python_us'] * n_kernels / 1e3:.3f} ms), {d['compiled_us']:.3f} us per subroutine call in a stretch")
    print(f"parallel launch (pool wake + join): {d['launch_us']:.2f} us per parallel kernel "
          f"(x{n_par} parallel kernels = {d['launch_us'] * n_par / 1e3:.3f} ms)")
    rest = t["stretches_cpu"] - kern_cpu - d["compiled_us"] * n_kernels / 1e3 - d["launch_us"] * n_par / 1e3
    print(f"rest of the stretches' CPU-time gap (caches cold between kernels, input/output copies): {rest:+.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
