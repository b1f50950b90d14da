"""bench_backends.py's summary (geometric means, targets) and its tables."""
from __future__ import annotations

import math

TARGET_GEOMEAN = 1.5
TARGET_REF_SPEEDUP = 30.0
TARGET_RSS_RATIO = 2.0

BACKEND_LABEL = {"ort": "onnxruntime", "numpy": "numpy", "reference": "ReferenceEvaluator"}


def geomean(xs) -> float | None:
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return float(math.exp(sum(math.log(x) for x in xs) / len(xs))) if xs else None


def fmt_ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else (f"{x:.1f}" if x < 1000 else f"{x:.0f}")


def fmt_ratio(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}x"


def fmt_err(e: dict | None) -> str:
    if not e:
        return "-"
    if "error" in e:
        return "ERR"
    return f"{e['max_abs']:.2e}"


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def summarize(results: list[dict], rss: list[dict], args, requested: list[int], cases) -> dict:
    summary: dict = {"geomean_numpy_over_ort": {}, "targets": []}
    for b in requested:
        rows = [r for r in results if r["requested_batch"] == b and r.get("conv")]
        g = geomean([r.get("numpy_over_ort") for r in rows])
        used = ", ".join(f"{r['model']}@{r['batch']}" for r in rows if r.get("numpy_over_ort"))
        summary["geomean_numpy_over_ort"][str(b)] = {"value": g, "models": used}
        summary["targets"].append({
            "name": f"numpy/ORT latency, geo-mean over conv nets, batch {b}",
            "value": g, "target": f"<= {TARGET_GEOMEAN}", "pass": None if g is None else g <= TARGET_GEOMEAN,
            "detail": used})
    speedups = [(r["reference_over_numpy"], f"{r['model']}@{r['batch']}") for r in results
                if r.get("reference_over_numpy")]
    if args.no_reference or not speedups:
        summary["targets"].append({"name": "ReferenceEvaluator/numpy speedup, minimum", "value": None,
                                   "target": f">= {TARGET_REF_SPEEDUP:g}", "pass": None,
                                   "detail": "not measured (--no-reference)" if args.no_reference else "no data"})
    else:
        v, where = min(speedups)
        summary["targets"].append({"name": "ReferenceEvaluator/numpy speedup, minimum", "value": v,
                                   "target": f">= {TARGET_REF_SPEEDUP:g}", "pass": v >= TARGET_REF_SPEEDUP,
                                   "detail": where})
    # peak RSS on the largest model: det when measured, else the model with the largest ORT increase
    ratios = {r["model"]: r for r in rss if r.get("ratio")}
    big = "det" if "det" in ratios else (max(ratios, key=lambda k: ratios[k]["ort"]) if ratios else None)
    if big is None:
        summary["targets"].append({"name": "peak RSS increase numpy/ORT, largest model", "value": None,
                                   "target": f"<= {TARGET_RSS_RATIO:g}", "pass": None,
                                   "detail": "not measured" if args.no_rss else "no data"})
    else:
        v = ratios[big]["ratio"]
        summary["targets"].append({"name": "peak RSS increase numpy/ORT, largest model", "value": v,
                                   "target": f"<= {TARGET_RSS_RATIO:g}", "pass": v <= TARGET_RSS_RATIO,
                                   "detail": f"{big}@{ratios[big]['batch']}"})
    return summary


def print_report(console, results, rss, summary, args, requested) -> None:
    from rich import box
    from rich.table import Table

    t = Table(title="latency (median ms per run)", box=box.SIMPLE_HEAVY, title_justify="left")
    for col, just in [("model", "left"), ("batch", "right"), ("runs", "right"), ("onnxruntime", "right"),
                      ("numpy", "right"), ("numpy/ORT", "right"), ("Reference (runs)", "right"),
                      ("Ref/numpy", "right"), ("max|numpy-ORT|", "right"), ("tol", "center"),
                      ("max|Ref-ORT|", "right")]:
        t.add_column(col, justify=just, no_wrap=True)
    for r in results:
        if r.get("reference_ms") is not None:
            ref = f"{fmt_ms(r['reference_ms'])} ({r['reference_runs']})"
        elif r.get("reference_skipped"):
            ref = "skipped"
        elif r.get("reference_error"):
            ref = "ERROR"
        else:
            ref = "-"
        nv = r.get("numpy_vs_ort")
        tol = "-" if not nv else ("ok" if nv.get("ok") else "[red]NO[/red]")
        numpy_ms = fmt_ms(r.get("numpy_ms")) if "numpy_error" not in r else "[red]ERROR[/red]"
        runs = f"{r.get('ort_runs', '-')}/{r.get('numpy_runs', '-')}"
        t.add_row(r["model"], str(r["batch"]), runs, fmt_ms(r.get("ort_ms")), numpy_ms,
                  fmt_ratio(r.get("numpy_over_ort")), ref, fmt_ratio(r.get("reference_over_numpy"), 1),
                  fmt_err(nv), tol, fmt_err(r.get("reference_vs_ort")))
    console.print(t)
    notes = [f"tolerance: max|numpy-ORT| <= {args.rtol:g} * max|ORT output| (atol 0); onnxruntime is the oracle.",
             "ReferenceEvaluator is timed, not used as an oracle: it treats BatchNormalization with",
             "  `momentum` as training mode on the PP-OCR models (errors up to ~2e-2, batch-dependent).",
             f"onnxruntime and numpy interleaved round robin: turns of >= {args.block_time:g} s (>= 1 run) after a "
             f"{args.settle:g} s settle pause; runs column = timed runs ORT/numpy.",
             "ReferenceEvaluator not run (--no-reference)." if args.no_reference else
             f"ReferenceEvaluator runs afterwards: no warmup, <= {args.ref_repeats} runs, budget "
             f"{args.ref_budget:g} s per model/batch."]
    for r in results:
        if r["batch"] != r["requested_batch"]:
            notes.append(f"{r['model']}: batch {r['requested_batch']} requested, batch {r['batch']} used "
                         "(row repeated; counted once per requested batch in the geo-mean)")
            continue
        for b in ("ort", "numpy", "reference"):
            if r.get(f"{b}_error"):
                notes.append(f"{r['model']}@{r['batch']}: {BACKEND_LABEL[b]} error: {r[f'{b}_error']}")
        if r.get("reference_skipped"):
            notes.append(f"{r['model']}@{r['batch']}: ReferenceEvaluator skipped, {r['reference_skipped']}")
        e = r.get("numpy_vs_ort") or {}
        if e.get("error"):
            notes.append(f"{r['model']}@{r['batch']}: numpy vs ORT: {e['error']}")
    for n in notes:
        console.print(f"  {n}", highlight=False, markup=False, soft_wrap=True)

    console.print()
    for b in requested:
        g = summary["geomean_numpy_over_ort"][str(b)]
        console.print(f"geo-mean numpy/ORT over conv nets, batch {b}: {fmt_ratio(g['value'])}  "
                      f"({g['models'] or 'none'})", highlight=False)

    if rss:
        console.print()
        rt = Table(title="peak RSS increase (MiB)",
                   box=box.SIMPLE_HEAVY, title_justify="left")
        for col in ("model", "batch", "runs", "onnxruntime", "numpy", "Reference", "numpy/ORT"):
            rt.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
        for r in rss:
            def cell(b):
                d = r["by_backend"].get(b)
                if d is None:
                    return "-"
                return "ERROR" if "error" in d else fmt_mb(d["increase"])
            rt.add_row(r["model"], str(r["batch"]), str(r["runs"]), cell("ort"), cell("numpy"), cell("reference"),
                       fmt_ratio(r.get("ratio")))
        console.print(rt)
        console.print(f"  one subprocess per (model, backend): load/compile + {args.rss_runs} runs "
                      "(ReferenceEvaluator: 1); peak RSS (VmHWM) minus the RSS after imports.", highlight=False)
        for r in rss:
            for b, d in r["by_backend"].items():
                if "error" in d:
                    console.print(f"  {r['model']} {BACKEND_LABEL[b]}: {d['error']}", highlight=False, markup=False)

    console.print()
    console.print("targets", style="bold")
    for tg in summary["targets"]:
        v = tg["value"]
        vs = "n/a" if v is None else (f"{v:.1f}x" if "speedup" in tg["name"] else f"{v:.2f}x")
        verdict = "n/a" if tg["pass"] is None else ("[green]PASS[/green]" if tg["pass"] else "[red]MISS[/red]")
        console.print(f"  {tg['name']:<52} {vs:>9}  target {tg['target']:<7} {verdict}  ({tg['detail']})",
                      highlight=False)


# ---------------------------------------------------------------------------------------------
# main
