"""Two builds of the int8 QDQ models (say main's and a branch's) against each other and onnxruntime,
interleaved in one process: each build is saved as a `NAME.so` artifact by the tvmlite on
PYTHONPATH, then one process loads both and times them with onnxruntime on the same QDQ file.

    PYTHONPATH=$PWD python bench/bench_tvm_int8_ab.py models DIR [--models digits,cls-ort,...]
    PYTHONPATH=/path/to/main python bench/bench_tvm_int8_ab.py build DIR main
    PYTHONPATH=$PWD python bench/bench_tvm_int8_ab.py build DIR new
    TVMLITE_THREADS=1 PYTHONPATH=$PWD python bench/bench_tvm_int8_ab.py time DIR main new [--cpu]

`time` runs the three in every slot order equally often (the slot alone moved medians by ~5%) and
prints medians and best runs; ``--cpu`` times the calling thread's CPU time instead of wall time,
which on a loaded machine leaves out the time other jobs take the core (meaningful at
TVMLITE_THREADS=1 only: onnxruntime then runs on the calling thread too).
"""
from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_models(d: pathlib.Path, names) -> None:
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
    import tempfile

    import onnx
    from bench_tvm_int8 import qdq_models

    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, path, feed in qdq_models(names, tmp):
            onnx.save(onnx.load(path), str(d / f"{label}.onnx"))
            np.savez(d / f"{label}_feed.npz", **feed)
    (d / "models.json").write_text(json.dumps(list(names)))


def build(d: pathlib.Path, tag: str) -> None:
    import tvmlite
    from tvmlite.backends.tvm import compile_model

    for m in json.loads((d / "models.json").read_text()):
        feed = dict(np.load(d / f"{m}_feed.npz"))
        cm = compile_model(tvmlite.load(str(d / f"{m}.onnx")), {k: v.shape for k, v in feed.items()})
        cm.save(str(d / f"{tag}_{m}.so"))
        print(f"{tag} {m}: {cm.kernel_count} kernels")


def time_them(d: pathlib.Path, a: str, b: str, rounds: int, cpu: bool) -> None:
    import onnxruntime as ort

    from tvmlite.backends.tvm.kernels.target import host_threads
    from tvmlite.backends.tvm.module import load_module

    threads = host_threads()
    clock = time.thread_time if cpu else time.perf_counter
    for m in json.loads((d / "models.json").read_text()):
        feed = dict(np.load(d / f"{m}_feed.npz"))
        ma, mb = load_module(str(d / f"{a}_{m}.so")), load_module(str(d / f"{b}_{m}.so"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(d / f"{m}.onnx"), so, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feed)[0]
        fns = [lambda: ma.run(feed), lambda: mb.run(feed), lambda: sess.run(None, feed)]
        for f in fns * 2:
            f()
        ts: list[list[float]] = [[], [], []]
        orders = list(itertools.permutations(range(3)))
        for r in range(rounds):
            for i in orders[r % len(orders)]:
                t0 = clock()
                fns[i]()
                ts[i].append((clock() - t0) * 1e3)
        med, best = [float(np.median(t)) for t in ts], [min(t) for t in ts]
        diff = [float(np.abs(x.run(feed)[0] - ref).max()) for x in (ma, mb)]
        print(f"{m:13s} {threads} thread(s){' cpu' if cpu else ''}: {a} {med[0]:.3f}, {b} {med[1]:.3f}, onnxruntime "
              f"{med[2]:.3f} ms; vs onnxruntime {a} {med[0] / med[2]:.2f}x, {b} {med[1] / med[2]:.2f}x (best runs "
              f"{best[0] / best[2]:.2f}x, {best[1] / best[2]:.2f}x); max abs difference {diff[0]:.2e}, {diff[1]:.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["models", "build", "time"])
    ap.add_argument("dir")
    ap.add_argument("tags", nargs="*")
    ap.add_argument("--models", default="digits,digits-ort,cls,cls-ort,detector-ort")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args(argv)
    d = pathlib.Path(args.dir)
    if args.step == "models":
        make_models(d, [m for m in args.models.split(",") if m])
    elif args.step == "build":
        if len(args.tags) != 1:
            raise SystemExit("build DIR TAG")
        build(d, args.tags[0])
    else:
        if len(args.tags) != 2:
            raise SystemExit("time DIR TAG_A TAG_B")
        time_them(d, *args.tags, args.rounds, args.cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
