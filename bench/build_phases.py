"""Where a fresh TVM build of light_* models spends its time, phase by phase, by this thread's CPU
clock (lowering is Python, LLVM's codegen and object emission run on the calling thread, so the
figures hold on a loaded machine where wall time doubles): lower (emit + schedule every kernel),
plan module (plan_func.plan_module), TIR pipeline, host finalization, LLVM codegen and export
(machine code). With --no-dedup every kernel compiles its own subroutine, as before
plan_func.same_kernels; give several models or repeat one to interleave the two.

    PYTHONPATH=. python bench/build_phases.py light_densenet121 [--no-dedup] [--both]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time


def phases(name: str, dedup: bool) -> dict:
    from tvmlite.backends.tvm import module as M
    from tvmlite.backends.tvm import plan_func
    from tvmlite.backends.tvm.compile import static_inputs
    from tvmlite.backends.tvm.kernels.target import host_target, import_tvm, vector_lanes
    from tvmlite.backends.tvm.lower import lower
    from tvmlite.frontend import load
    from tvmlite.zoo import randomized_light

    tvm = import_tvm()
    m = randomized_light(name + ".onnx")
    m.ir_version = min(m.ir_version, 10)
    model, shapes = static_inputs(load(m), None)
    same = plan_func.same_kernels
    t = {"start": time.thread_time()}
    low = lower(model, shapes, vector_lanes())
    t["lower"] = time.thread_time()
    plan, _ = M.plan_of(low)
    if not dedup:
        plan_func.same_kernels = lambda kernels: {}
    try:
        mod = plan_func.plan_module(low.kernels + low.body_kernels, plan)
    finally:
        plan_func.same_kernels = same
    t["plan module"] = time.thread_time()
    B = importlib.import_module("tvm.tirx.build")
    target = tvm.target.Target(host_target())
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
    pipeline, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(target)
    mod = plan_func._declare_cpu(pipeline(mod))
    t["pipeline"] = time.thread_time()
    host_mod, _ = B.split_host_device_mods(mod)
    host_mod = finalize_host()(host_mod)
    t["finalize"] = time.thread_time()
    lib = B.tir_to_runtime(host_mod, {}, target)
    t["codegen"] = time.thread_time()
    with tempfile.TemporaryDirectory() as d:
        lib.export_library(os.path.join(d, "m.so"))
    t["export"] = time.thread_time()
    keys = list(t)
    out = {k: t[k] - t[p] for p, k in zip(keys, keys[1:])}
    out["total"] = t["export"] - t["start"]
    out["kernels"] = len(low.kernels)
    out["compiled"] = len(low.kernels) - (len(same(low.kernels)) if dedup else 0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="light_* models of the onnx wheel")
    p.add_argument("--no-dedup", action="store_true", help="every kernel its own subroutine")
    p.add_argument("--both", action="store_true", help="each model without, then with, shared subroutines")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tvmlite.zoo import LIGHT_DIR

    bad = [m for m in a.models if not (LIGHT_DIR / (m + ".onnx")).exists()]
    if bad:
        print(f"build_phases: unknown model {bad[0]} (a light_* model of the onnx wheel)", file=sys.stderr)
        return 2
    runs = [False, True] if a.both else [not a.no_dedup]
    for name in a.models:
        for dedup in runs:
            r = phases(name, dedup)
            print(f"{name} ({'shared' if dedup else 'own'} subroutines, {r.pop('compiled')} of "
                  f"{r.pop('kernels')} kernels compiled), CPU s: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r.items()) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
