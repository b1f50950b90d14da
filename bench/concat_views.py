"""A/B of Concat views (backends/tvm/concat_views.py) on whole models: the same model built with
them off ($TVMLITE_CONCAT_VIEWS=0: every Concat a copying kernel) and on, both run in one process
against onnxruntime, interleaved round by round (medians and best runs).

    PYTHONPATH=$PWD .venv/bin/python bench/concat_views.py [--only densenet,inception,...] [--rounds 12]

At one thread ($TVMLITE_THREADS=1: onnxruntime gets one intra-op thread too) each call's CPU
time on the calling thread is printed too: under load it is the steadier figure. Also prints
each build's time (fresh: the cache is bypassed), the cached load time of the build
with views, the kernel counts and the error against onnxruntime. Models: the light_* models with
Concats (densenet121, inception_v1/v2, squeezenet, shufflenet) and the YOLO-style detector at 320.
"""
from __future__ import annotations

import argparse
import gc
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from bench_tvm import coverage_models, ort_session  # noqa: E402
from plan_overhead import interleaved  # noqa: E402 - wall clock and this thread's CPU time

DEFAULT = ["densenet121", "inception_v1", "inception_v2", "squeezenet", "shufflenet", "detector"]


def build(proto, feeds, views: bool, cache: bool):
    import tvmlite
    from tvmlite.backends.tvm import compile_model

    old = os.environ.get("TVMLITE_CONCAT_VIEWS")
    os.environ["TVMLITE_CONCAT_VIEWS"] = "1" if views else "0"
    try:
        t0 = time.perf_counter()
        cm = compile_model(tvmlite.load(proto), {k: v.shape for k, v in feeds.items()}, cache=cache)
        return cm, time.perf_counter() - t0
    finally:
        if old is None:
            del os.environ["TVMLITE_CONCAT_VIEWS"]
        else:
            os.environ["TVMLITE_CONCAT_VIEWS"] = old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT), help="models whose names contain one of these")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    only = [k for k in args.only.split(",") if k]
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f}; ms are medians of interleaved rounds")
    for name, _, proto, feeds in coverage_models(False, only):
        proto.ir_version = min(proto.ir_version, 10)
        old, t_old = build(proto, feeds, False, cache=False)
        new, t_new = build(proto, feeds, True, cache=True)  # into the cache: the load below is timed
        _, t_cached = build(proto, feeds, True, cache=True)
        sess = ort_session(proto)
        ref = sess.run(None, feeds)
        errs = []
        for cm in (old, new):
            got = cm.run(feeds)
            errs.append(max(float(np.abs(np.asarray(g, np.float64) - r).max() / max(np.abs(r).max(), 1e-30))
                            for g, r in zip(got, ref)))
        t = interleaved({"old": lambda m=old: m.run(feeds), "new": lambda m=new: m.run(feeds),
                         "ort": lambda s=sess: s.run(None, feeds)}, args.rounds, 3)
        print(f"{name:<22} ort {t['ort']:7.2f} ms | no views {t['old']:7.2f} ({t['old'] / t['ort']:.2f}x, best "
              f"{t['old_best'] / t['ort_best']:.2f}x) | views {t['new']:7.2f} ({t['new'] / t['ort']:.2f}x, best "
              f"{t['new_best'] / t['ort_best']:.2f}x) | views/no views {t['new'] / t['old']:.3f} | kernels "
              f"{old.kernel_count} -> {new.kernel_count} | build {t_old:.1f} -> {t_new:.1f} s, cached "
              f"{t_cached:.2f} s | rel err {errs[0]:.1e} {errs[1]:.1e} | load {os.getloadavg()[0]:.1f}",
              flush=True)
        if os.environ.get("TVMLITE_THREADS") == "1":
            print(f"{'':<22} thread CPU ms: ort {t['ort_cpu']:7.2f} | no views {t['old_cpu']:7.2f} "
                  f"({t['old_cpu'] / t['ort_cpu']:.2f}x) | views {t['new_cpu']:7.2f} ({t['new_cpu'] / t['ort_cpu']:.2f}x)"
                  f" | views/no views {t['new_cpu'] / t['old_cpu']:.3f}", flush=True)
        del old, new, sess
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
