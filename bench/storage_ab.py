"""One built artifact loaded twice in one process, its intermediates in shared blocks (storage.py)
and each in its own buffer ($TVMLITE_REUSE_BUFFERS=0 at load), timed interleaved with
onnxruntime: the same kernels, only where their buffers live differs. (bench/tree_ab.py cannot
time a base tree's build here: this tree refuses its older plan format.)

    TVMLITE_THREADS=1 PYTHONPATH=.:tests python bench/tree_ab.py build /tmp/ab light_squeezenet
    TVMLITE_THREADS=1 PYTHONPATH=.:tests python bench/storage_ab.py /tmp/ab light_squeezenet

CPU time of this thread at one thread (the figure that holds on a shared machine), medians over
``--rounds`` rounds of alone, shared, onnxruntime.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort

from tree_ab import library, load_model

from tvmlite.backends.tvm import load_module, storage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    for spec in args.models:
        m, name, shape = load_model(spec)
        feeds = {name: np.random.default_rng(0).random(shape).astype(np.float32)}
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        os.environ["TVMLITE_REUSE_BUFFERS"] = "0"
        alone = load_module(library(args.folder, spec))
        os.environ["TVMLITE_REUSE_BUFFERS"] = "1"
        shared = load_module(library(args.folder, spec))
        before, after = storage.intermediate_bytes(shared.plan)
        runs = {"alone": alone.run, "shared": shared.run, "ort": lambda f: sess.run(None, f)}
        err = {k: float(np.max(np.abs(runs[k](feeds)[0] - ref)) / np.max(np.abs(ref))) for k in ("alone", "shared")}
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, run in runs.items():
                t0 = time.thread_time()
                run(feeds)
                times[k].append(time.thread_time() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{spec} (CPU time, 1 thread, load {os.getloadavg()[0]:.1f}, {args.rounds} rounds): intermediates "
              f"{before / 2**20:.2f} -> {after / 2**20:.2f} MiB; onnxruntime median {med['ort'] * 1e3:.2f} ms; "
              f"alone/ort {med['alone'] / med['ort']:.3f}, shared/ort {med['shared'] / med['ort']:.3f}, "
              f"shared/alone {med['shared'] / med['alone']:.3f}; max rel err alone {err['alone']:.1e}, "
              f"shared {err['shared']:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
