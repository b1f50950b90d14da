"""The report of `tvmlite optimize`: a row per pass, the final model's per-output figures, the
held-out accuracy and warnings; printed as aligned tables with rounded figures (full precision in
``to_dict``, which the CLI's --json writes)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: row status: "kept" means the pass changed something and the change stayed
KEPT, PARTIAL, UNDONE, NO_CHANGE, UNCHECKED = "kept", "partly kept", "undone", "no change", "unchecked"


@dataclass
class PassReport:
    name: str
    spec: str
    kept: bool  # the pass changed something and (some of) it stayed
    status: str
    note: str
    nodes: int
    params: int
    macs: int
    file_bytes: int
    max_error: float | None  # worst checked output's error on its metric (None: unchecked)
    worst_output: str | None
    accuracy: float | None
    latency_ms: float | None
    latency_spread_ms: float | None  # half the interquartile range of the timed runs
    seconds: float
    budget: dict = field(default_factory=dict)  # per checked output, the budget this pass was held to
    outputs: list = field(default_factory=list)  # per output: rel, rms, cosine, argmax, topk, ...
    decisions: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    excluded: list = field(default_factory=list)


@dataclass
class OptimizeReport:
    model: str
    rows: list[PassReport] = field(default_factory=list)
    check_inputs: str = "unchecked (--no-check)"
    check_notes: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # checked output -> metric
    held_out: dict | None = None  # {"examples", "reference", "optimized", "drop_pt"}
    warnings: list = field(default_factory=list)
    latency: str = "rows"  # which rows were timed: none, ends (input and result side by side), rows

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self, verbosity: int = 1) -> str:
        lines = []
        if verbosity >= 1:
            lines.append(f"check inputs: {self.check_inputs}")
            lines += [f"  {n}" for n in self.check_notes]
            if self.metrics:
                lines.append("metric per checked output: " + ", ".join(f"{k} {v}" for k, v in self.metrics.items())
                             + " (rel: max|opt - orig| / (max - min of orig); cosine, argmax, topk: 1 - agreement)")
            timed = {"none": "ORT ms: not timed (--latency ends or rows times it)",
                     "ends": "ORT ms: the input and the result, timed side by side: median onnxruntime latency at "
                             "batch 1 (2 threads) ± half the interquartile range",
                     "rows": "ORT ms: median onnxruntime latency at batch 1 (2 threads) ± half the interquartile "
                             "range, per row that changed the model"}
            lines.append(timed.get(self.latency, timed["rows"])
                         + ("; acc: top-1 on the check inputs" if any(r.accuracy is not None for r in self.rows)
                            else ""))
        hdr = (f"{'pass':<22} {'status':<11} {'nodes':>6} {'params':>11} {'MACs':>14} {'size':>10} "
               f"{'error':>9} {'acc':>7} {'ORT ms':>14} {'time':>7}")
        lines += [hdr, "-" * len(hdr)]
        for r in self.rows:
            lines += _row_lines(r, verbosity)
        final = self.rows[-1] if self.rows else None
        if final is not None and final.outputs and verbosity >= 1:
            lines.append("")
            lines.append("outputs of the result against the original:")
            lines += _table([{"output": o["name"], "metric": self.metrics.get(o["name"], "-"),
                              "error": o["error"], "budget": final.budget.get(o["name"]), "rel": o["rel"],
                              "rms": o["rms"], "cosine": o["cosine"], "argmax": o["argmax"],
                              "masked": o["masked"] or None} for o in final.outputs], indent="  ")
        if self.held_out:
            h = self.held_out
            lines.append("")
            lines.append(f"held-out accuracy ({h['examples']} examples no check or per-layer choice saw): "
                         f"original {100 * h['reference']:.2f}%, optimized {100 * h['optimized']:.2f}% "
                         f"({-h['drop_pt']:+.2f} pt)")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)


def _row_lines(r: PassReport, verbosity: int) -> list[str]:
    acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}"
    lat = "-" if r.latency_ms is None else _ms(r.latency_ms, r.latency_spread_ms)
    err = "unchecked" if r.max_error is None else _num(r.max_error)
    lines = [f"{r.name[:22]:<22} {r.status or '-':<11} {r.nodes:>6} {r.params:>11,} {r.macs:>14,} "
             f"{_size(r.file_bytes):>10} {err:>9} {acc:>7} {lat:>14} {r.seconds:>6.2f}s"]
    if verbosity < 1:
        return lines
    if r.note:
        lines.append(f"    {r.note}")
    limit = None if verbosity >= 2 else 12
    if r.decisions:
        shown = r.decisions if limit is None else r.decisions[:limit]
        lines += _table(shown, indent="    ")
        if len(shown) < len(r.decisions):
            lines.append(f"    ... {len(r.decisions) - len(shown)} more layer decisions (-v shows all)")
    skipped = r.skipped if limit is None else r.skipped[:limit]
    for node, why in skipped:
        lines.append(f"    skipped {node}: {why}")
    if len(skipped) < len(r.skipped):
        lines.append(f"    ... {len(r.skipped) - len(skipped)} more skipped (-v shows all)")
    return lines


def _table(rows: list[dict], indent: str = "") -> list[str]:
    keys = list(dict.fromkeys(k for d in rows for k in d))
    cells = [[_cell(d.get(k)) for k in keys] for d in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    out = [indent + "  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip()]
    for c in cells:
        out.append(indent + "  ".join(x.rjust(w) if _numeric(x) else x.ljust(w)
                                      for x, w in zip(c, widths)).rstrip())
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, (list, tuple)):
        return "x".join(_cell(x) for x in v) if all(isinstance(x, int) for x in v) else str(v)
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(".", "", 1).replace("e", "", 1).replace("-", "").replace("+", "").replace(",", "").isdigit()


def _num(x: float) -> str:
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.2e}"


def _ms(med: float, spread: float | None) -> str:
    return f"{med:.3f}" if spread is None else f"{med:.3f}±{spread:.3f}"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"
