#!/usr/bin/env python
"""Benchmark tvmlite's NumPy backend against onnxruntime and onnx's ReferenceEvaluator.

In one process and on the same inputs: onnxruntime (CPU, 2 intra-op threads), the NumPy backend
(``tvmlite.backends.numpy``) and ``onnx.reference.ReferenceEvaluator``, on the corpus models (PP-OCR
cls / rec / det) and the example model (models/digits_cnn.onnx), at batch 1 and one larger batch.

Timing: onnxruntime and the NumPy backend are interleaved round robin (ORT, numpy, ORT, numpy, ...) so
host noise hits both alike. Each turn is a short block (>= --block-time s, at least one run) after a
--settle pause: both onnxruntime's thread pool and OpenBLAS's threads busy-wait for ~50-100 ms after
a run, which would otherwise steal the cores from the other backend's next run (``--block-time 0
--settle 0`` gives strict run-by-run alternation). The ReferenceEvaluator, which is orders of magnitude slower, is timed
afterwards with a few runs under a per-(model, batch) time budget. Reported: median ms per backend,
numpy/ORT and Reference/numpy ratios, the geometric mean of numpy/ORT over the conv nets per batch
size, and the error of each backend against onnxruntime (onnxruntime is the oracle: the
ReferenceEvaluator mis-handles BatchNormalization with ``momentum`` on the PP-OCR models).

Peak memory: each (model, backend) runs in its own subprocess (``--rss-child``) that imports
everything, notes its RSS, loads/compiles the model, runs it a few times and reports the peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) minus that baseline.

Usage:
    python bench/bench_backends.py                      # corpus + digits, batch 1 and 8
    python bench/bench_backends.py --models cls digits --batch 1 4 --no-reference
    python bench/bench_backends.py --models all light --json bench.json

Targets (printed as PASS/MISS at the end): NumPy backend <= 1.5x onnxruntime latency (geometric mean
over the conv nets, per batch size), >= 30x faster than ReferenceEvaluator (the smallest speedup over
all measured model/batch pairs), peak-RSS increase of the NumPy backend on the largest model (det)
<= 2x onnxruntime's.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from backends_cases import CASE_BY_KEY, Case, resolve_models  # noqa: E402
from backends_report import BACKEND_LABEL, fmt_ms, print_report, summarize  # noqa: E402

BACKENDS = ("ort", "numpy", "reference")


def make_runner(backend: str, source, threads: int = 2):
    """(run(feeds) -> list of outputs, output names) for one backend."""
    if backend == "ort":
        from tvmlite.compare import ort_session

        sess = ort_session(source, threads=threads)
        names = [o.name for o in sess.get_outputs()]
        return (lambda feeds: sess.run(None, feeds)), names
    if backend == "numpy":
        import tvmlite
        from tvmlite.backends.numpy import compile_model

        plan = compile_model(tvmlite.load(source))

        def run(feeds):
            with np.errstate(all="ignore"):
                return plan.run(feeds)
        return run, list(plan.output_names)
    if backend == "reference":
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(source)
        names = list(ev.output_names)

        def run(feeds):
            with np.errstate(all="ignore"):
                return ev.run(None, feeds)
        return run, names
    raise ValueError(f"unknown backend {backend!r}")


def is_conv_net(source) -> bool:
    import onnx

    proto = source if isinstance(source, onnx.ModelProto) else onnx.load(source)
    return any(n.op_type in ("Conv", "ConvTranspose") for n in proto.graph.node)


def errors_vs(ref_outs, cand_outs, names, rtol: float) -> dict:
    """Largest abs error over the outputs and whether all are within rtol * max|ref| (atol=0)."""
    from tvmlite.compare import output_report

    if len(ref_outs) != len(cand_outs):
        return {"max_abs": float("inf"), "ok": False, "error": "number of outputs differs"}
    worst, ok = 0.0, True
    try:
        for name, r, c in zip(names, ref_outs, cand_outs):
            rep = output_report(name, r, c, rtol=rtol, atol=0.0)
            worst = max(worst, rep.max_abs)
            ok = ok and rep.ok
    except Exception as e:  # noqa: BLE001 - shape mismatch etc.
        return {"max_abs": float("inf"), "ok": False, "error": str(e).splitlines()[0]}
    return {"max_abs": worst, "ok": ok}


# ---------------------------------------------------------------------------------------------
# peak RSS in a child process


def rss_child(key: str, backend: str, batch: int, runs: int, threads: int) -> int:
    """Entry point of ``--rss-child``: print one JSON line with the peak RSS increase."""
    import psutil

    # import every backend so that the baseline is the same whichever backend is measured
    import onnx.reference  # noqa: F401
    import onnxruntime  # noqa: F401
    import tvmlite  # noqa: F401
    import tvmlite.backends.numpy  # noqa: F401
    import tvmlite.compare  # noqa: F401

    case = CASE_BY_KEY[key]
    source = case.source()
    feeds = case.feeds(batch)
    gc.collect()
    # reset the kernel's high-water mark (VmHWM) so that peaks during the imports do not count;
    # where that is not allowed, fall back to getrusage's lifetime peak
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss"
    baseline = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    run, _ = make_runner(backend, source, threads)
    for _ in range(max(runs, 1)):
        run(feeds)
    elapsed = time.perf_counter() - t0
    peak = _vm_hwm() if method != "ru_maxrss" else None
    if peak is None:
        method = "ru_maxrss"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print("RSS " + json.dumps({"model": key, "backend": backend, "batch": batch, "runs": runs,
                               "baseline": baseline, "peak": peak, "increase": max(peak - baseline, 0),
                               "method": method, "seconds": elapsed}))
    return 0


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_rss(case: Case, backend: str, batch: int, runs: int, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--rss-child", case.key, backend,
           str(batch), "--rss-runs", str(runs), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RSS "):
            return json.loads(line[4:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


# ---------------------------------------------------------------------------------------------
# timing


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_case(case: Case, batch: int, args, ref_state: dict) -> dict:
    """Time one (model, batch): ORT and numpy interleaved, then the ReferenceEvaluator."""
    source = case.source()
    feeds = case.feeds(batch)
    res: dict = {"model": case.key, "file": case.file, "batch": batch,
                 "input": {case.input_name: list(feeds[case.input_name].shape)}}
    runners = {}
    for b in ("ort", "numpy"):
        t0 = time.perf_counter()
        try:
            runners[b] = make_runner(b, source, args.threads)
        except Exception as e:  # noqa: BLE001 - report and go on with the other backends
            res[f"{b}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"  {case.key} b{batch}: {BACKEND_LABEL[b]} cannot load the model: {res[f'{b}_error']}")
            continue
        res[f"{b}_setup_s"] = time.perf_counter() - t0
    if "ort" not in runners:
        return res

    outs = {}
    for b, (run, _) in list(runners.items()):
        try:
            outs[b] = run(feeds)
            for _ in range(max(args.warmup - 1, 0)):
                run(feeds)
        except Exception as e:  # noqa: BLE001
            res[f"{b}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"  {case.key} b{batch}: {BACKEND_LABEL[b]} failed: {res[f'{b}_error']}")
            del runners[b]
    names = runners["ort"][1] if "ort" in runners else []
    if "numpy" in outs and "ort" in outs:
        res["numpy_vs_ort"] = errors_vs(outs["ort"], outs["numpy"], names, args.rtol)

    # interleaved rounds: ORT, numpy, ORT, numpy, ... Each turn waits --settle seconds first and then
    # runs its backend for at least --block-time seconds (at least once): both onnxruntime's and
    # OpenBLAS's worker threads busy-wait for ~50-100 ms after a run, and would otherwise steal the
    # cores from the other backend's next run. --settle 0 --block-time 0 is strict run-by-run.
    order = [b for b in ("ort", "numpy") if b in runners]
    times: dict[str, list] = {b: [] for b in order}
    perf = time.perf_counter
    start = perf()
    rounds = 0
    while True:
        for b in order:
            run = runners[b][0]
            if args.settle > 0:
                time.sleep(args.settle)
            t_block = perf()
            while True:
                t0 = perf()
                run(feeds)
                t1 = perf()
                times[b].append((t1 - t0) * 1e3)
                if t1 - t_block >= args.block_time:
                    break
        rounds += 1
        elapsed = perf() - start
        if rounds >= args.max_rounds:
            break
        if rounds >= args.repeats and elapsed >= args.min_time:
            break
        if elapsed >= args.max_time and rounds >= min(3, args.repeats):
            break
    res["rounds"] = rounds
    for b in order:
        res[f"{b}_ms"] = float(np.median(times[b]))
        res[f"{b}_runs"] = len(times[b])
        res[f"{b}_times_ms"] = [round(t, 4) for t in times[b]]
    if "numpy_ms" in res and "ort_ms" in res:
        res["numpy_over_ort"] = res["numpy_ms"] / res["ort_ms"]
    del runners
    outs.pop("numpy", None)  # keep only the ORT outputs (the reference check needs them)
    gc.collect()

    # the ReferenceEvaluator: a few runs under a time budget, no warmup
    if not args.no_reference:
        res.update(time_reference(case, batch, source, feeds, args, ref_state, outs.get("ort"), names))
        if res.get("reference_ms") and res.get("numpy_ms"):
            res["reference_over_numpy"] = res["reference_ms"] / res["numpy_ms"]
    return res


def time_reference(case: Case, batch: int, source, feeds, args, ref_state: dict, ort_outs, names) -> dict:
    out: dict = {}
    per_sample = ref_state.get(case.key)
    if per_sample is not None:
        estimate = per_sample * batch
        if estimate > args.ref_budget * 1.5:
            out["reference_skipped"] = f"estimated {estimate:.0f} s per run > budget {args.ref_budget:.0f} s"
            log(f"  {case.key} b{batch}: ReferenceEvaluator skipped ({out['reference_skipped']})")
            return out
    try:
        run, _ = make_runner("reference", source)
    except Exception as e:  # noqa: BLE001
        out["reference_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return out
    times = []
    spent = 0.0
    first = None
    try:
        while len(times) < args.ref_repeats:
            t0 = time.perf_counter()
            o = run(feeds)
            dt = time.perf_counter() - t0
            if first is None:
                first = o
            times.append(dt * 1e3)
            spent += dt
            if spent + dt > args.ref_budget:  # the next run would go over the budget
                break
    except Exception as e:  # noqa: BLE001
        out["reference_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log(f"  {case.key} b{batch}: ReferenceEvaluator failed: {out['reference_error']}")
        return out
    ref_state[case.key] = float(np.median(times)) / 1e3 / batch
    out["reference_ms"] = float(np.median(times))
    out["reference_runs"] = len(times)
    out["reference_times_ms"] = [round(t, 3) for t in times]
    if ort_outs is not None and first is not None:
        out["reference_vs_ort"] = errors_vs(ort_outs, first, names, args.rtol)
    return out


# ---------------------------------------------------------------------------------------------
# report


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["all"],
                   help="model keys (cls rec det digits resnet50 vgg19), file names, or groups: "
                        "all (= cls rec det digits, the default), corpus, light, everything")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8],
                   help="batch sizes (default 1 8; det is clamped to 2, light models run batch 1 only)")
    p.add_argument("--repeats", type=int, default=10, help="minimum interleaved ORT/numpy rounds (default 10)")
    p.add_argument("--block-time", type=float, default=0.2,
                   help="each backend's turn in a round lasts at least this many seconds, at least one run "
                        "(default 0.2; 0 = one run per turn)")
    p.add_argument("--settle", type=float, default=0.1,
                   help="pause before each turn so the other backend's spinning threads go idle (default 0.1)")
    p.add_argument("--warmup", type=int, default=1, help="warmup runs per backend (default 1)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="keep running rounds until this many seconds have passed (default 1)")
    p.add_argument("--max-time", type=float, default=20.0,
                   help="stop after this many seconds per model/batch once 3 rounds are done (default 20)")
    p.add_argument("--max-rounds", type=int, default=2000, help="at most this many rounds (default 2000)")
    p.add_argument("--no-reference", action="store_true", help="skip onnx's ReferenceEvaluator (very slow)")
    p.add_argument("--ref-repeats", type=int, default=3, help="ReferenceEvaluator runs (default 3)")
    p.add_argument("--ref-budget", type=float, default=30.0,
                   help="seconds of ReferenceEvaluator runs per model/batch (default 30): no further run "
                        "starts once the next would exceed it; a batch estimated at > 1.5x it is skipped")
    p.add_argument("--det-max-batch", type=int, default=2, help="largest batch for det (default 2)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--rss-batch", type=int, default=1, help="batch of the peak-RSS runs (default 1)")
    p.add_argument("--rss-runs", type=int, default=3, help="runs per peak-RSS subprocess (default 3; "
                                                           "ReferenceEvaluator: 1)")
    p.add_argument("--rss-timeout", type=float, default=300.0, help="seconds per peak-RSS subprocess")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    p.add_argument("--rtol", type=float, default=1e-4, help="tolerance vs onnxruntime, relative to max|out|")
    p.add_argument("--json", metavar="OUT", help="write all measurements to this JSON file")
    p.add_argument("--rss-child", nargs=3, metavar=("MODEL", "BACKEND", "BATCH"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_console():
    from rich.console import Console

    width = None if sys.stdout.isatty() else 150
    return Console(file=sys.stdout, width=width, highlight=False, soft_wrap=False)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.rss_child:
        key, backend, batch = args.rss_child
        return rss_child(key, backend, int(batch), args.rss_runs, args.threads)

    import onnx
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    CASE_BY_KEY["det"].max_batch = args.det_max_batch
    cases = resolve_models(args.models)
    requested = sorted(dict.fromkeys(args.batch))
    console = make_console()
    started = time.perf_counter()

    console.print(f"tvmlite backend benchmark: onnxruntime {onnxruntime.__version__} ({args.threads} intra-op "
                  f"threads), numpy {np.__version__}, onnx {onnx.__version__}, python {platform.python_version()}, "
                  f"{os.cpu_count()} cpus", highlight=False)
    available = []
    for c in cases:
        if c.available():
            available.append(c)
        else:
            console.print(f"  skipping {c.key}: {c.path} not found"
                          + (" (set TVMLITE_CORPUS)" if c.where == "corpus" else ""), highlight=False)
    plan_lines = []
    for c in available:
        used = sorted(dict.fromkeys(c.effective_batch(b) for b in requested))
        extra = f"  [{c.note}]" if c.note else ""
        plan_lines.append(f"  {c.key:<9} {c.file:<38} {c.input_name}={tuple(c.shape[1:])} batches {used}{extra}"
                          .rstrip())
    console.print("models:", highlight=False)
    for line in plan_lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    results: list[dict] = []
    ref_state: dict = {}
    for c in available:
        conv = is_conv_net(c.source())
        done: dict[int, dict] = {}
        for b in requested:
            eb = c.effective_batch(b)
            if eb in done:  # clamped onto a batch already measured: reuse, do not rerun
                r = dict(done[eb])
            else:
                log(f"[{time.perf_counter() - started:6.1f}s] {c.key} batch {eb} ...")
                r = bench_case(c, eb, args, ref_state)
                r["conv"] = conv
                done[eb] = r
                log(f"         onnxruntime {fmt_ms(r.get('ort_ms'))} ms, numpy {fmt_ms(r.get('numpy_ms'))} ms, "
                    f"reference {fmt_ms(r.get('reference_ms'))} ms ({r.get('rounds', 0)} rounds)")
            r["requested_batch"] = b
            results.append(r)

    rss: list[dict] = []
    if not args.no_rss:
        backends = ["ort", "numpy"] + ([] if args.no_reference else ["reference"])
        for c in available:
            eb = c.effective_batch(args.rss_batch)
            row = {"model": c.key, "batch": eb, "runs": args.rss_runs, "by_backend": {}}
            for b in backends:
                if b == "reference":
                    est = (ref_state.get(c.key) or 0) * eb
                    if est > args.ref_budget * 1.5 or c.key not in ref_state:
                        continue
                log(f"[{time.perf_counter() - started:6.1f}s] peak RSS {c.key} batch {eb} {BACKEND_LABEL[b]}")
                runs = 1 if b == "reference" else args.rss_runs
                d = measure_rss(c, b, eb, runs, args.threads, args.rss_timeout)
                row["by_backend"][b] = d
            o, n = row["by_backend"].get("ort", {}), row["by_backend"].get("numpy", {})
            row["ort"] = o.get("increase")
            row["numpy"] = n.get("increase")
            if o.get("increase") and n.get("increase") is not None:
                row["ratio"] = n["increase"] / o["increase"]
            rss.append(row)

    summary = summarize(results, rss, args, requested, available)
    console.print()
    print_report(console, results, rss, summary, args, requested)
    total = time.perf_counter() - started
    console.print(f"\ntotal time {total:.0f} s", highlight=False)

    if args.json:
        payload = {"versions": {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                                "onnx": onnx.__version__, "python": platform.python_version()},
                   "cpus": os.cpu_count(), "args": {k: v for k, v in vars(args).items() if k != "rss_child"},
                   "skipped": [c.key for c in cases if c not in available],
                   "results": results, "rss": rss, "summary": summary, "total_s": total}
        pathlib.Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
        console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
