"""Compression benchmark: low-rank factorization, structured pruning and sparse kernels.

    PYTHONPATH=. .venv/bin/python bench/bench_compress.py [--models models/digits_cnn.onnx ...]
        [--budget 0.15] [--repeats 300] [--only lowrank,prune,sparse]

Per model (test accuracy on models/digits_test.npz, no fine-tuning; calibration on
models/digits_calib.npz): onnxruntime latency at batch 1 of the original and each compressed model,
timed interleaved (one run of each in turn), medians and their ratio. The machine is shared: compare
ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tvmlite  # noqa: E402
from passes import Pipeline  # noqa: E402
from tvmlite.compare import ort_session  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "..")
TEST = os.path.join(HERE, "models", "digits_test.npz")
CALIB = os.path.join(HERE, "models", "digits_calib.npz")


def accuracy(sess, test) -> float:
    out = sess.run(None, {"input": test["input"]})[0]
    return float((out.argmax(1) == test["label"]).mean() * 100)


def interleaved_ms(sessions: list, feeds: dict, repeats: int) -> list[float]:
    for s in sessions:
        for _ in range(5):
            s.run(None, feeds)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for s, ts in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(None, feeds)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def compress(path: str, spec: str):
    m = tvmlite.load(path)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = Pipeline(spec).run(m, input_shapes={"input": (1, 1, 32, 32)})
    return m, results, time.perf_counter() - t0


def bench_lowrank(path: str, args, test) -> None:
    print(f"\n== lowrank on {os.path.basename(path)}")
    c = f"calib={CALIB}"
    configs = [
        ("plain Tucker-2 C/3 + SVD(64), weights only",
         "fold-bn,lowrank(rank=ratio,ratio=0.34,fc_rank=64,refit=false),dce"),
        ("same ranks, data-aware refit", f"fold-bn,lowrank(rank=ratio,ratio=0.34,fc_rank=64,{c}),dce"),
        ("EVBMF ranks, weights only", "fold-bn,lowrank(rank=vbmf,refit=false),dce"),
    ]
    for b in args.budget:
        configs.append((f"error budget {b}, refit", f"fold-bn,lowrank(rank=budget,budget={b},{c}),dce"))
        configs.append((f"error budget {b}, refit, CP", f"fold-bn,lowrank(rank=budget,budget={b},method=cp,{c}),dce"))
    base = tvmlite.load(path)
    from tvmlite.analysis import summarize

    s_base = summarize(base, {"input": (1, 1, 32, 32)})
    sess0 = ort_session(path)
    acc0 = accuracy(sess0, test)
    print(f"original: accuracy {acc0:.2f}%, MACs {s_base['macs']:,}, params {s_base['params']:,}")
    print(f"{'config':<44} {'ranks (per layer)':<44} {'MACs':>7} {'params':>7} {'acc %':>7} {'d pt':>6} "
          f"{'ORT x':>6} {'pass s':>6}")
    feeds = {"input": test["input"][:1]}
    for label, spec in configs:
        if "method=cp" in spec and not args.cp:
            continue
        m, results, secs = compress(path, spec)
        r = [x for x in results if x.pass_name == "lowrank"][0]
        after = results[-1].after
        sess = ort_session(m)
        acc = accuracy(sess, test)
        t0, t1 = interleaved_ms([sess0, sess], feeds, args.repeats)
        ranks = " ".join(f"{d['node']}:{'/'.join(map(str, d['ranks']))}" for d in r.decisions if d.get("kept"))
        print(f"{label:<44} {ranks[:44]:<44} {s_base['macs'] / after['macs']:>6.2f}x "
              f"{s_base['params'] / after['params']:>6.2f}x {acc:>7.2f} {acc - acc0:>+6.2f} {t0 / t1:>5.2f}x "
              f"{secs:>6.1f}")
        if args.verbose:
            for d in r.decisions:
                print("    ", {k: v for k, v in d.items() if k not in ("node",)} | {"node": d["node"]})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--budget", type=float, nargs="*", default=[0.15])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--only", default="lowrank,prune,sparse")
    ap.add_argument("--cp", action="store_true", help="also run CP under the budget (slow: ALS)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    models = args.models or [p for p in (os.path.join(HERE, "models", "digits_cnn.onnx"),
                                         os.path.join(HERE, "models", "digits_vgg.onnx")) if os.path.exists(p)]
    with np.load(TEST) as t:
        test = {k: t[k] for k in t.files}
    only = set(args.only.split(","))
    for path in models:
        if "lowrank" in only:
            bench_lowrank(path, args, test)
        if "prune" in only and "bench_prune" in globals():
            globals()["bench_prune"](path, args, test)
    if "sparse" in only and "bench_sparse" in globals():
        globals()["bench_sparse"](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
