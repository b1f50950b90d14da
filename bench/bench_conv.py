"""Conv algorithms on the 3×3 layers of ResNet-50 and VGG-19, per layer and per model.

For every layer shape and batch: onnxruntime's Conv, the NumPy backend's own Conv kernel ("direct"),
and the lowered graphs im2col, MEC and Winograd F(2×2)/F(4×4)/F(6×6) on the NumPy backend, all
timed interleaved (one run of each per round) so a noisy machine slows them alike; medians are
reported. Beside the times: the theoretical multiplication saving of each Winograd tile size (with
ragged edge tiles counted) and the measured speed-up over im2col, plus the algorithm the
``choose-conv`` cost rule picks. Per model, each method's time is the sum over the model's 3×3
layers (times their count), and the per-layer choice is compared with the best single algorithm.

    PYTHONPATH=. python bench/bench_conv.py                 # default: both models, batch 1 and 8
    PYTHONPATH=. python bench/bench_conv.py --batches 1 --repeats 9 --models resnet50

Threads: BLAS and onnxruntime get ``--threads`` (default 1: on a shared 2-core machine one thread
per process is what stays reproducible).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,vgg19")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per layer (at most)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds per layer and batch (soft)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", default="", help="methods to leave out, e.g. mec,winograd6")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this thread's CPU time (with --threads 1 it is the latency minus the time "
                        "other processes steal, the stable figure on a shared machine); wall: elapsed time")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # BLAS reads its thread count when numpy is imported
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tvmlite  # noqa: E402
from tvmlite.passes.conv_choice import apply_choice, estimate_seconds  # noqa: E402
from tvmlite.passes.lowering import conv_info  # noqa: E402
from tvmlite.passes.winograd import winograd_macs  # noqa: E402
from tvmlite.backends.numpy import compile_model  # noqa: E402
from tvmlite.compare import ort_session  # noqa: E402

# (name, C, F, H=W, count in the model). ResNet-50 v1: the 3×3 conv of every bottleneck is stride 1
# (v1 strides in the 1×1). VGG-19: the 3×3 layers from 56×56 down (C, F >= 128 there); its 224×224
# and 112×112 stages are left out to keep the default run short.
MODELS = {
    "resnet50": [("res2", 64, 64, 56, 3), ("res3", 128, 128, 28, 4), ("res4", 256, 256, 14, 6),
                 ("res5", 512, 512, 7, 3)],
    "vgg19": [("conv3_1", 128, 256, 56, 1), ("conv3_x", 256, 256, 56, 3), ("conv4_1", 256, 512, 28, 1),
              ("conv4_x", 512, 512, 28, 3), ("conv5_x", 512, 512, 14, 4)],
}
METHODS = ["ort", "direct", "im2col", "mec", "winograd2", "winograd4", "winograd6"]


def layer_model(C, F, H, batch, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((F, C, 3, 3)) * np.sqrt(2.0 / (9 * C))).astype(np.float32)
    b = (rng.standard_normal(F) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", 1, [batch, C, H, H])],
                          [helper.make_tensor_value_info("y", 1, [batch, F, H, H])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    return proto


def bench_layer(C, F, H, batch, methods, repeats, budget, threads, clock=time.perf_counter):
    proto = layer_model(C, F, H, batch)
    x = np.abs(np.random.default_rng(1).standard_normal((batch, C, H, H))).astype(np.float32)
    runners = {}
    for meth in methods:
        if meth == "ort":
            sess = ort_session(proto, threads=threads)
            runners[meth] = lambda s=sess: s.run(None, {"x": x})[0]
            continue
        m = tvmlite.load(proto)
        info = conv_info(m, next(iter(m.graph.nx.nodes)))
        apply_choice(m, info, meth)
        plan = compile_model(m)
        runners[meth] = lambda p=plan: p.run({"x": x})[0]
    ref = runners["ort"]() if "ort" in runners else None
    errors = {}
    times = {k: [] for k in runners}
    start = time.perf_counter()
    for r in range(repeats + 1):
        for meth, fn in runners.items():
            t0 = clock()
            y = fn()
            dt = clock() - t0
            if r == 0 and ref is not None:
                errors[meth] = float(np.abs(y - ref).max() / np.abs(ref).max())
            else:
                times[meth].append(dt)
        if r >= 3 and time.perf_counter() - start > budget:
            break
    m = tvmlite.load(proto)
    info = conv_info(m, next(iter(m.graph.nx.nodes)))
    est = {a: estimate_seconds(info, a, batch) for a in methods if a != "ort"}
    choice = min(est, key=est.get)
    saved = {f"winograd{k}": info.macs(batch) / winograd_macs(info, k, batch) for k in (2, 4, 6)}
    return ({k: float(np.median(v)) * 1e3 for k, v in times.items()},
            {k: float(np.min(v)) * 1e3 for k, v in times.items()}, errors, choice, saved, len(times["direct"]))


def main(args):
    methods = [m for m in METHODS if m not in args.skip.split(",")]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and args.threads != 1:
        sys.exit("--clock cpu needs --threads 1 (other threads' work would not be counted)")
    batches = [int(b) for b in args.batches.split(",")]
    print(f"threads={args.threads}  clock={args.clock}  load average {os.getloadavg()[0]:.1f}  "
          "(times: median ms over interleaved rounds)")
    per_model = {}
    t_start = time.perf_counter()
    for model_name in args.models.split(","):
        for batch in batches:
            print(f"\n== {model_name}, batch {batch}")
            head = f"{'layer':<9}{'C':>4}{'F':>4}{'HW':>4} " + "".join(f"{m:>10}" for m in methods)
            print(head + "   F4/im2col  mults saved F2/F4/F6 (measured vs im2col)   choice  rounds")
            totals = {m: 0.0 for m in methods + ["choice"]}
            for name, C, F, H, count in MODELS[model_name]:
                med, mins, errs, choice, saved, rounds = bench_layer(C, F, H, batch, methods, args.repeats,
                                                                     args.budget, args.threads, clock)
                for m in methods:
                    totals[m] += count * med[m]
                totals["choice"] += count * med[choice]
                speed = {k: med["im2col"] / med[k] for k in saved if k in med} if "im2col" in med else {}
                f4 = f"{speed['winograd4']:.2f}x" if "winograd4" in speed else "-"
                sv = "/".join(f"{saved[k]:.2f}" for k in saved)
                ms = "/".join(f"{speed[k]:.2f}" for k in saved if k in speed)
                print(f"{name:<9}{C:>4}{F:>4}{H:>4} " + "".join(f"{med[m]:>10.2f}" for m in methods)
                      + f"   {f4:>9}  {sv} ({ms})   {choice:<10} {rounds}")
                bad = {k: v for k, v in errs.items() if v > (1e-3 if k == "winograd6" else 1e-4)}
                if bad:
                    print(f"    WARNING errors vs onnxruntime: {bad}")
            per_model[(model_name, batch)] = totals
            nump = {m: v for m, v in totals.items() if m not in ("ort", "choice")}
            best = min(nump, key=nump.get)
            print(f"{'model':<21} " + "".join(f"{totals[m]:>10.1f}" for m in methods)
                  + f"   per-layer choice {totals['choice']:.1f} ms vs best single ({best}) {nump[best]:.1f} ms: "
                  f"{totals['choice'] / nump[best]:.3f}x")
    print(f"\ntotal bench time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main(ARGS)
