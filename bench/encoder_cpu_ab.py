"""all-MiniLM-L6 files (seq 128, batch 1, one real sentence) timed side by side in onnxruntime at one
intra-op thread, in CPU time of the calling thread (where a one-thread session runs), interleaved
(every other round reversed), medians and quartiles. On a loaded 2-core host this is the A/B that
holds still where 2-thread wall-clock time does not (a descheduled pool worker stalls each kernel).
The first file is the reference (1.000x). Usage:
    PYTHONPATH=. python bench/encoder_cpu_ab.py ROUNDS A.onnx B.onnx [...]
(the files of bench/bench_vs_ort_quant.py --models encoder --out DIR are in DIR)."""
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from bench_vs_ort_quant import EVAL_SENTENCES  # noqa: E402
from tvmlite.runtime.ort import ort_session  # noqa: E402
from tvmlite.zoo_encoder import minilm_encoder  # noqa: E402


def main(argv) -> int:
    if len(argv) < 3 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: encoder_cpu_ab.py ROUNDS A.onnx B.onnx [...]", file=sys.stderr)
        return 2
    rounds, paths = int(argv[0]), argv[1:]
    _, tok = minilm_encoder()
    feeds = tok.encode(EVAL_SENTENCES[:1], 128)
    sessions = [ort_session(p, threads=1) for p in paths]
    for s in sessions:
        for _ in range(3):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(rounds):
        for i in (range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))):
            t0 = time.thread_time()
            sessions[i].run(None, feeds)
            times[i].append((time.thread_time() - t0) * 1e3)
    med = [float(np.median(t)) for t in times]
    print(f"1 thread, CPU time, medians of {rounds}, load average {os.getloadavg()[0]:.1f}")
    for p, m, t in zip(paths, med, times):
        q1, q3 = np.percentile(t, [25, 75])
        print(f"  {p:48s} {m:8.2f} ms  {m / med[0]:.3f}x  (quartiles {q1:.1f}-{q3:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
