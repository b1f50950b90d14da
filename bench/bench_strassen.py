"""Strassen vs BLAS for square float32 products: where (if anywhere) does Strassen win here?

    PYTHONPATH=. python bench/bench_strassen.py [--sizes 512,1024,2048,4096] [--threads 1]

Interleaved rounds, median thread CPU time (threads=1). Result on this machine (2 shared cores,
OpenBLAS AVX-512, threads=1): Strassen with a 512 leaf was slower than BLAS at every size tried
(n=1024: 0.89x, n=2048: 0.94x of BLAS speed, leaf 512; smaller leaves worse), so
STRASSEN_MIN_DIM stays 0 (off).
"""
import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("--sizes", default="1024,2048,4096")
p.add_argument("--leaves", default="256,512,1024")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=1)
args = p.parse_args()
os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)

import time  # noqa: E402

import numpy as np  # noqa: E402

from tvmlite.ops.strassen import strassen_matmul  # noqa: E402

clock = time.thread_time if args.threads == 1 else time.perf_counter
for n in (int(s) for s in args.sizes.split(",")):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    fns = {"blas": lambda: a @ b}
    for leaf in (int(v) for v in args.leaves.split(",")):
        if leaf < n:
            fns[f"strassen(leaf={leaf})"] = lambda leaf=leaf: strassen_matmul(a, b, leaf)
    times = {k: [] for k in fns}
    ref = (a.astype(np.float64) @ b.astype(np.float64))
    errs = {k: float(np.abs(f() - ref).max() / np.abs(ref).max()) for k, f in fns.items()}
    for _ in range(args.repeats):
        for k, f in fns.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    blas = np.median(times["blas"])
    print(f"n={n}: " + "  ".join(f"{k} {np.median(v) * 1e3:.1f} ms ({blas / np.median(v):.2f}x, err {errs[k]:.1e})"
                                 for k, v in times.items()))
