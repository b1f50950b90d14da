"""Whole models on the TVM backend with the Winograd choice (backends/tvm/winograd_choice.py) on
against $TVMLITE_WINOGRAD=0, in one process, interleaved; each build's max rel error against
onnxruntime (float target 1e-4).

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/winograd_models.py --rounds 15 [--models resnet50,det_infer]
    TVMLITE_THREADS=2 PYTHONPATH=. python bench/winograd_models.py --clock wall
    PYTHONPATH=. python bench/winograd_models.py --list     # the decisions only (no build)

The models are bench_tvm.py's coverage set (every light_* model, the shipped digits models, the
PP-OCR corpus, the YOLO-style detector at 320); --models keeps those whose names contain one of
the keys. A final Softmax is cut (`logits`). One thread is timed by the calling thread's CPU time, more by wall time. A model where
no conv goes Winograd builds the same either way and is not timed.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench"), os.path.join(ROOT, "tests")]


def _build(model, shapes, on: bool):
    from tvmlite.backends.tvm import compile_model

    os.environ["TVMLITE_WINOGRAD"] = "1" if on else "0"
    try:
        return compile_model(model, shapes)
    finally:
        os.environ.pop("TVMLITE_WINOGRAD")


def logits(proto):
    """``proto`` without a final Softmax (the light models' random weights saturate it, and a
    one-hot output hides any error): the error is then measured on the logits."""
    g = proto.graph
    for i, n in enumerate(g.node):
        if n.op_type == "Softmax" and len(g.output) == 1 and n.output[0] == g.output[0].name:
            g.output[0].name = n.input[0]
            del g.node[i]
            break
    return proto


def _err(got, ref) -> float:
    return max(float(np.abs(np.asarray(g, np.float64) - r).max() / max(np.abs(r).max(), 1e-30))
               for g, r in zip(got, ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated name keys (default: all)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--list", action="store_true", help="print the decisions of `prepare` only")
    a = ap.parse_args()
    import tvmlite
    from bench_tvm import coverage_models, ort_session
    from tvmlite.backends.tvm.prepare import prepare
    from tvmlite.backends.tvm.kernels.target import host_threads
    from tvmlite.runtime.ort import time_interleaved

    only = a.models.split(",") if a.models else None
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    print(f"{host_threads()} thread(s), {a.clock} clock, load {os.getloadavg()[0]:.1f}", flush=True)
    for name, _, proto, feeds in coverage_models(False, only):
        proto = logits(proto)
        proto.ir_version = min(proto.ir_version, 10)
        shapes = {k: v.shape for k, v in feeds.items()}
        if a.list:
            got: list = []
            prepare(tvmlite.load(proto), shapes, got)
            taken = [d for d in got if d["m"]]
            print(f"{name}: {len(taken)} of {len(got)} 3x3 convs", flush=True)
            for d in got:
                print(f"    {'F(%d)' % d['m'] if d['m'] else 'direct'} {d['node']}: {d['reason']}")
            continue
        off, on = _build(tvmlite.load(proto), shapes, False), _build(tvmlite.load(proto), shapes, True)
        ref = ort_session(proto).run(None, feeds)
        e_off, e_on = _err(off.run(feeds), ref), _err(on.run(feeds), ref)
        head = (on.winograd or ["no 3x3 conv"])[0]
        line = f"{name:<30} {head}; rel err off {e_off:.1e} on {e_on:.1e}{' > 1e-4' if e_on > 1e-4 else ''}"
        if [c.get("func") for c in on.plan["calls"]] == [c.get("func") for c in off.plan["calls"]]:
            line += "; the same kernels"
        elif on.plan.get("winograd", {}).get("lowered"):
            t = time_interleaved([lambda cm=off: cm.run(feeds), lambda cm=on: cm.run(feeds)], a.rounds, 3, clock=clock).medians_ms
            line += f"; off {t[0]:.2f} ms, on {t[1]:.2f} ms, on/off {t[1] / t[0]:.3f}"
        print(line, flush=True)
        del off, on, ref, proto
        gc.collect()


if __name__ == "__main__":
    main()
