"""PP-OCRv4 det files (640x640, batch 1, one synthetic page of bench_vs_ort_quant.py) timed side by
side in onnxruntime in one process, interleaved (every other round reversed; with 3 files or more
each timed run right after an untimed run of the same session), medians ± half the interquartile
range. One thread
(default): CPU time of the calling thread, the figure optimize's speed check decides on and the one
that holds on a loaded host; --threads 2: wall clock, as the bench's target is timed. The first file
is the reference (1.000x). Usage:
    PYTHONPATH=. python bench/det_files_ab.py ROUNDS [--threads N] A.onnx B.onnx [...]
(the float model is /work/shared/corpus/ch_PP-OCRv4_det_infer.onnx; the presets' files are those of
bench/bench_vs_ort_quant.py --models det --out DIR)."""
import os
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from bench_vs_ort_quant import det_inputs  # noqa: E402
from tvmlite.runtime.ort import ort_session, time_interleaved  # noqa: E402

USAGE = "usage: det_files_ab.py ROUNDS [--threads N] A.onnx B.onnx [...]"


def parse(argv) -> tuple[int, int, list[str]] | str:
    args, threads = list(argv), 1
    if "--threads" in args:
        i = args.index("--threads")
        if i + 1 >= len(args) or not args[i + 1].isdigit() or int(args[i + 1]) < 1:
            return "--threads needs a positive integer"
        threads = int(args[i + 1])
        del args[i:i + 2]
    if len(args) < 3 or not args[0].isdigit() or int(args[0]) < 1:
        return USAGE
    missing = [p for p in args[1:] if not os.path.isfile(p)]
    if missing:
        return f"no such file: {missing[0]}"
    return int(args[0]), threads, args[1:]


def main(argv) -> int:
    got = parse(argv)
    if isinstance(got, str):
        print(f"det_files_ab.py: {got}", file=sys.stderr)
        return 2
    rounds, threads, paths = got
    feeds = {"x": det_inputs(1, 0)}
    sessions = [ort_session(p, threads=threads) for p in paths]
    fns = [lambda s=s: s.run(None, feeds) for s in sessions]
    clock = time.thread_time if threads == 1 else time.perf_counter
    t = time_interleaved(fns, rounds, warmup=2, clock=clock, settle=1 if len(fns) > 2 else 0)
    what = "CPU time" if threads == 1 else "wall clock"
    print(f"{threads} thread(s), {what}, medians of {rounds}, load average {os.getloadavg()[0]:.1f}")
    for p, m, spread in zip(paths, t.medians_ms, t.spreads_ms):
        print(f"  {p:56s} {m:8.2f} ms ±{spread:.1f}  {m / t.medians_ms[0]:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
