"""Where onnxruntime spends a model's time, by op kind: its own profiler, per node the median of the
timed runs (the first is left out), summed per op type (onnxruntime's NCHWc Conv, ReorderInput and
ReorderOutput included), with each kind's share; --top lists the slowest nodes; --reorders lists
the layout reorders onnxruntime's NCHWc transformer put in its optimized graph, each with the node
that makes its input and those that read its output (where the blocked layout breaks).

    PYTHONPATH=. python bench/ort_op_profile.py MODEL [MODEL ...] [--threads 2,1] [--runs 8] [--top 12]
        [--shape x=1x3x640x640] [--reorders]

MODEL as bench/tvm_profile.py takes it (an .onnx path, detector[:SIZE], minilm, light_*). The
profiler's times are wall clock: on a loaded host compare shares, not milliseconds.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tvm_profile import model_and_feeds, ort_profile_events  # noqa: E402


def node_times(model, feeds: dict, threads: int, runs: int) -> tuple[dict, dict]:
    """({node: median ms over the runs after the first}, {node: op type}) from onnxruntime's profiler."""
    per, kind = collections.defaultdict(list), {}
    for e in ort_profile_events(model, feeds, threads, max(runs, 2)):
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per[name].append(e["dur"] / 1e3)
            kind[name] = e.get("args", {}).get("op_name", "?")
    return {n: float(np.median(d[1:] if len(d) > 1 else d)) for n, d in per.items()}, kind


def reorders(model) -> list[str]:
    """One line per ReorderInput/ReorderOutput in onnxruntime's optimized graph of ``model``:
    producer op -> reorder -> reader ops (NCHWc ops in their domain's short name)."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath).graph
    made = {o: n for n in g.node for o in n.output}
    readers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)

    def label(n) -> str:
        return ("nchwc." if n.domain.endswith("nchwc") else "") + f"{n.op_type} {n.name}"
    lines = []
    for n in g.node:
        if n.op_type in ("ReorderInput", "ReorderOutput"):
            src = made.get(n.input[0])
            lines.append(f"{n.op_type:13s} {label(src) if src else 'graph input'} -> "
                         + ", ".join(label(r) for r in readers[n.output[0]]))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", default="2,1", help="comma-separated intra-op thread counts")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--top", type=int, default=0, help="also list the N slowest nodes")
    ap.add_argument("--shape", action="append", default=[], help="NAME=1x3x640x640")
    ap.add_argument("--reorders", action="store_true", help="list onnxruntime's NCHWc layout reorders")
    a = ap.parse_args()
    shapes = {k: [int(d) for d in v.split("x")] for k, _, v in (s.partition("=") for s in a.shape)}
    for spec in a.models:
        model, feeds = model_and_feeds(spec, shapes)
        if a.reorders:
            lines = reorders(model)
            print(f"{spec}: {len(lines)} reorders in onnxruntime's optimized graph")
            print("\n".join("  " + line for line in lines))
        for threads in (int(t) for t in a.threads.split(",")):
            ms, kind = node_times(model, feeds, threads, a.runs)
            by_kind, count = collections.Counter(), collections.Counter()
            for n, t in ms.items():
                by_kind[kind[n]] += t
                count[kind[n]] += 1
            total = sum(by_kind.values())
            print(f"{spec}: {threads} thread(s), {total:.1f} ms in nodes (sum of per-node medians)")
            for k, t in by_kind.most_common():
                print(f"  {k:24s} {count[k]:4d} nodes {t:9.2f} ms {100 * t / total:5.1f}%")
            for n, t in sorted(ms.items(), key=lambda kv: -kv[1])[:a.top]:
                print(f"    {t:8.2f} ms  {kind[n]:20s} {n}")


if __name__ == "__main__":
    main()
