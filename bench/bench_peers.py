"""tvmlite `optimize --preset clean` against the ONNX clean-up tools, in one table.

Per model and tool: nodes other than Constant left, file size, max abs error against the original
model in onnxruntime on the same seeded inputs, and the tool's wall time (the whole command, start-up
included, as a user runs it; median of --runs, the tools interleaved round by round and every other
round in reverse order, so machine load hits all alike), the CPU seconds it used (user + system,
its threads and children included: what a loaded machine does not inflate as it does wall time),
and its wall time over onnxslim's. tvmlite is timed twice: as users run it (each pass checked in
onnxruntime) and with --no-check; ``--before DIR`` adds the same command run from another tvmlite
checkout (``git archive COMMIT | tar -x -C DIR``), interleaved with the rest, for before/after.

The peers come from the `bench` extra (a venv of their own keeps the project's venv untouched):

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e ".[test,bench]"
    .venv-bench/bin/python bench/bench_peers.py [--models cls rec det digits] [--runs 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = pathlib.Path(os.environ.get("TVMLITE_CORPUS", ROOT.parent / "shared" / "corpus"))
MODELS = {
    "cls": (CORPUS / "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "rec": (CORPUS / "ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "det": (CORPUS / "ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640)),
    "det-own": (CORPUS / "ch_PP-OCRv4_det_infer.onnx", None),  # its symbolic H/W as they are
    "digits": (ROOT / "models" / "digits_cnn.onnx", None),
}
PY = sys.executable


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def tools(src: str, dst: str, shape_arg: str | None, before: str | None = None) -> dict[str, list[str]]:
    """The command each tool runs to clean ``src`` into ``dst``."""
    tvm = [PY, "-m", "tvmlite.cli", "optimize", src, "-o", dst, "--preset", "clean"]
    if shape_arg:
        tvm += ["--shape", shape_arg]
    # `python -m` would put the working directory (this checkout) first on sys.path: the other
    # checkout goes in front explicitly
    old = {"tvmlite clean (before)": _py(f"import sys; sys.path.insert(0, {before!r}); sys.argv[0] = 'tvmlite'; "
                                         "from tvmlite.cli import main; sys.exit(main())") + tvm[3:]} if before else {}
    return {
        "tvmlite clean": tvm,
        **old,
        "tvmlite clean --no-check": tvm + ["--no-check"],
        "onnxslim": _py(f"import onnxslim, onnx; onnx.save(onnxslim.slim({src!r}), {dst!r})"),
        "onnxsim": _py(f"import onnxsim, onnx; m, ok = onnxsim.simplify(onnx.load({src!r})); "
                       f"assert ok; onnx.save(m, {dst!r})"),
        "onnxscript": _py(f"import onnx, onnxscript.optimizer as o; onnx.save(o.optimize(onnx.load({src!r})), {dst!r})"),
        "onnxoptimizer": _py(f"import onnx, onnxoptimizer; onnx.save(onnxoptimizer.optimize(onnx.load({src!r})), {dst!r})"),
    }


def nodes(model: onnx.ModelProto) -> int:
    return sum(n.op_type != "Constant" for n in model.graph.node)


def feeds_for(model: onnx.ModelProto, shape) -> dict:
    rng = np.random.default_rng(0)
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = shape or [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.uniform(-1, 1, dims).astype(np.float32)
    return out


def run_ort(path: str, feeds: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def bench_model(key: str, runs: int, workdir: pathlib.Path, before: str | None = None,
                only: list[str] | None = None) -> list[dict]:
    src, shape = MODELS[key]
    if not src.exists():
        print(f"{key}: {src} not found, skipped", file=sys.stderr)
        return []
    original = onnx.load(src)
    inp = next(i.name for i in original.graph.input if i.name not in {t.name for t in original.graph.initializer})
    shape_arg = f"{inp}={'x'.join(map(str, shape))}" if shape else None
    feeds = feeds_for(original, shape or _own_shape(original))
    ref = run_ort(str(src), feeds)
    cmds = {name: (cmd, str(workdir / f"{key}.{i}.onnx"))
            for i, (name, cmd) in enumerate(tools(str(src), "{dst}", shape_arg, before).items())
            if only is None or name in only}
    times = collections.defaultdict(list)
    cpu = collections.defaultdict(list)
    failed: dict[str, str] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    names = list(cmds)
    for r in range(runs):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in failed:
                continue
            cmd, dst = cmds[name]
            cmd = [c.replace("{dst}", dst) for c in cmd]
            t0, c0 = time.perf_counter(), _children_cpu()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if p.returncode:
                failed[name] = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:100]
                continue
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_children_cpu() - c0)
    rows = []
    for name in names:
        row = {"model": key, "tool": name, "nodes": None, "bytes": None, "max_abs_error": None,
               "seconds": None, "cpu_seconds": None, "vs_onnxslim": None, "note": failed.get(name, "")}
        if name not in failed:
            dst = cmds[name][1]
            out = onnx.load(dst)
            got = run_ort(dst, feeds)
            err = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(ref, got))
            row.update(nodes=nodes(out), bytes=os.path.getsize(dst), max_abs_error=err,
                       seconds=float(np.median(times[name])), cpu_seconds=float(np.median(cpu[name])))
        rows.append(row)
    slim = next((r["seconds"] for r in rows if r["tool"] == "onnxslim" and r["seconds"]), None)
    for r in rows:
        if slim and r["seconds"]:
            r["vs_onnxslim"] = r["seconds"] / slim
    rows.insert(0, {"model": key, "tool": "(original)", "nodes": nodes(original), "bytes": src.stat().st_size,
                    "max_abs_error": 0.0, "seconds": None, "cpu_seconds": None, "vs_onnxslim": None, "note": ""})
    return rows


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _own_shape(model: onnx.ModelProto):
    """Seeded feeds for a model run at its own shape: symbolic batch 1, other symbolic dims 320."""
    vi = model.graph.input[0]
    return [d.dim_value if d.dim_value > 0 else (1 if i == 0 else 320)
            for i, d in enumerate(vi.type.tensor_type.shape.dim)]


def table(rows: list[dict]) -> str:
    hdr = (f"{'model':<7} {'tool':<26} {'nodes':>6} {'size':>10} {'max abs err':>12} {'time s':>8} {'cpu s':>7} "
           f"{'/slim':>6}  note")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        size = "-" if r["bytes"] is None else f"{r['bytes'] / 2**20:.2f} MiB"
        err = "-" if r["max_abs_error"] is None else f"{r['max_abs_error']:.2e}"
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        cpu = "-" if r.get("cpu_seconds") is None else f"{r['cpu_seconds']:.2f}"
        ratio = "-" if r.get("vs_onnxslim") is None else f"{r['vs_onnxslim']:.2f}x"
        n = "-" if r["nodes"] is None else str(r["nodes"])
        lines.append(f"{r['model']:<7} {r['tool']:<26} {n:>6} {size:>10} {err:>12} {sec:>8} {cpu:>7} {ratio:>6}  "
                     f"{r['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool (median)")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--tools", nargs="+", default=None, help="only these tools (names as in the table)")
    ap.add_argument("--before", metavar="DIR", help="also time `tvmlite clean` from this tvmlite checkout")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as d:
        for key in args.models:
            rows += bench_model(key, args.runs, pathlib.Path(d), args.before, args.tools)
    print("nodes: other than Constant; error: max abs vs the original in onnxruntime on seeded "
          "uniform(-1,1) inputs; time: whole command, median of %d interleaved runs; cpu: its user + system "
          "seconds (median); /slim: time over onnxslim's" % args.runs)
    print(table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
