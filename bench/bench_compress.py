"""Compression benchmark: low-rank factorization, structured pruning and sparse kernels.

    PYTHONPATH=. .venv/bin/python bench/bench_compress.py [--models models/digits_cnn.onnx ...]
        [--budget 0.15] [--repeats 300] [--only lowrank,prune,sparse]

Per model (test accuracy on models/digits_test.npz, no fine-tuning; calibration on
models/digits_calib.npz): onnxruntime latency at batch 1 of the original and each compressed model,
timed interleaved (one run of each in turn), medians and their ratio, with one onnxruntime thread
(``--ort-threads``): on a shared 2-core machine two threads make the ratios swing from run to run.
Compare ratios, not absolute times.
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
from tvmlite.passes import Pipeline  # noqa: E402
from tvmlite.compare import ort_session  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "..")
TEST = os.path.join(HERE, "models", "digits_test.npz")
CALIB = os.path.join(HERE, "models", "digits_calib.npz")


ORT_THREADS = 1


def session(model):
    return ort_session(model, threads=ORT_THREADS)


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
         "fold-bn,lowrank(rank=ratio,ratio=0.34,fc_rank=64,refit=false,min_layer_share=0),dce"),
        ("same ranks, data-aware refit", f"fold-bn,lowrank(rank=ratio,ratio=0.34,fc_rank=64,min_layer_share=0,{c}),dce"),
        ("EVBMF ranks, weights only", "fold-bn,lowrank(rank=vbmf,refit=false),dce"),
    ]
    for b in args.budget:
        configs.append((f"error budget {b}, refit", f"fold-bn,lowrank(rank=budget,budget={b},{c}),dce"))
        configs.append((f"error budget {b}, refit, CP", f"fold-bn,lowrank(rank=budget,budget={b},method=cp,{c}),dce"))
    base = tvmlite.load(path)
    from tvmlite.analysis import summarize

    s_base = summarize(base, {"input": (1, 1, 32, 32)})
    sess0 = session(path)
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
        sess = session(m)
        acc = accuracy(sess, test)
        t0, t1 = interleaved_ms([sess0, sess], feeds, args.repeats)
        ranks = " ".join(f"{d['node']}:{'/'.join(map(str, d['ranks']))}" for d in r.decisions if d.get("kept"))
        print(f"{label:<44} {ranks[:44]:<44} {s_base['macs'] / after['macs']:>6.2f}x "
              f"{s_base['params'] / after['params']:>6.2f}x {acc:>7.2f} {acc - acc0:>+6.2f} {t0 / t1:>5.2f}x "
              f"{secs:>6.1f}")
        if args.verbose:
            for d in r.decisions:
                print("    ", {k: v for k, v in d.items() if k not in ("node",)} | {"node": d["node"]})


def _size(m) -> int:
    from tvmlite.export import export_model

    return len(export_model(m).SerializeToString())


def bench_prune(path: str, args, test) -> None:
    print(f"\n== structured channel pruning on {os.path.basename(path)}")
    base = tvmlite.load(path)
    sess0 = session(path)
    acc0 = accuracy(sess0, test)
    size0 = _size(base)
    feeds = {"input": test["input"][:1]}
    print(f"{'config':<52} {'size':>10} {'MACs':>7} {'acc %':>7} {'d pt':>6} {'ORT x':>6}")
    for label, spec in [
        ("50% channels by L1 norm", "fold-bn,prune(mode=channel,sparsity=0.5),dce"),
        ("50% channels by L1 norm + least-squares reader refit",
         f"fold-bn,prune(mode=channel,sparsity=0.5,calib={CALIB}),dce"),
        ("k-means 4-bit codebook weights", "fold-bn,compress-weights(mode=kmeans,bits=4),dce"),
        ("ternary weights", "fold-bn,compress-weights(mode=ternary),dce"),
        ("binary weights", "fold-bn,compress-weights(mode=binary),dce"),
    ]:
        m, results, _ = compress(path, spec)
        sess = session(m)
        acc = accuracy(sess, test)
        t0, t1 = interleaved_ms([sess0, sess], feeds, args.repeats)
        b, a = results[0].before, results[-1].after
        print(f"{label:<52} {size0 / 1e6:.2f}->{_size(m) / 1e6:.2f}MB {b['macs'] / a['macs']:>6.2f}x {acc:>7.2f} "
              f"{acc - acc0:>+6.2f} {t0 / t1:>5.2f}x")


def bench_sparse(args) -> None:
    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits

    from tvmlite.passes.sparsify import time_interleaved
    from tvmlite.ops.sparse import sparse_matmul, to_bsr

    print("\n== sparse kernel at batch 1, 90% block sparsity (median us, interleaved)")
    rng = np.random.default_rng(0)
    print(f"{'BLAS threads':<12} {'size':>9} {'block':>6} {'dense':>8} {'tvmlite':>8} {'scipy csr':>9} "
          f"{'scipy bsr':>9}  {'tvm x':>6} {'csr x':>6} {'bsr x':>6}")
    for threads in (None, 1):
        with threadpool_limits(threads):
            for k in (1024, 2048):
                for r in (16, 32):
                    w = rng.standard_normal((k, k)).astype(np.float32)
                    mask = rng.random((k // r, k // r)) < 0.1
                    w *= np.kron(mask, np.ones((r, r), np.float32))
                    x = rng.standard_normal((1, k)).astype(np.float32)
                    packed = to_bsr(w, r, r)
                    wt_csr, wt_bsr = sp.csr_matrix(w.T), sp.bsr_matrix(w.T, blocksize=(r, r))
                    fns = [lambda: x @ w, lambda: sparse_matmul(x, *packed),
                           lambda: wt_csr @ x[0], lambda: wt_bsr @ x[0]]
                    us = [t * 1e6 for t in time_interleaved(fns, args.repeats, warmup=5)]
                    print(f"{threads or 'default':<12} {k}x{k:<4} {r}x{r:<3} {us[0]:>8.1f} {us[1]:>8.1f} {us[2]:>9.1f} "
                          f"{us[3]:>9.1f}  {us[0] / us[1]:>5.2f}x {us[0] / us[2]:>5.2f}x {us[0] / us[3]:>5.2f}x")
    print("break-even density of the 16x16 block kernel, 1024x1024, batch 1, default threads:")
    k, r = 1024, 16
    w0 = rng.standard_normal((k, k)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    for dens in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7):
        w = w0 * np.kron(rng.random((k // r, k // r)) < dens, np.ones((r, r), np.float32))
        packed = to_bsr(w, r, r)
        d, s = time_interleaved([lambda: x @ w, lambda: sparse_matmul(x, *packed)], args.repeats, warmup=5)
        print(f"  density {dens:.2f}: dense/sparse {d / s:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--budget", type=float, nargs="*", default=[0.15, 0.2, 0.25])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--only", default="lowrank,prune,sparse")
    ap.add_argument("--cp", action="store_true", help="also run CP under the budget (slow: ALS)")
    ap.add_argument("--ort-threads", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    global ORT_THREADS
    ORT_THREADS = args.ort_threads
    models = args.models or [p for p in (os.path.join(HERE, "models", "digits_cnn.onnx"),
                                         os.path.join(HERE, "models", "digits_vgg.onnx")) if os.path.exists(p)]
    with np.load(TEST) as t:
        test = {k: t[k] for k in t.files}
    only = set(args.only.split(","))
    for path in models:
        if "lowrank" in only:
            bench_lowrank(path, args, test)
        if "prune" in only:
            bench_prune(path, args, test)
    if "sparse" in only:
        bench_sparse(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
