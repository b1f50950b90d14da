"""Per-layer speed choice for ``quantize-dynamic(measure=true)``: keep int8 only where onnxruntime
runs that layer faster than in float, on this host.

Each layer the pass would rewrite (a MatMul/Gemm with a constant weight, or a fused com.microsoft
Attention that would become QAttention) is cut out of the model as a fragment at the static shapes
of one calibration example (batch 1), timed as it is and rewritten by the pass itself (no SmoothQuant
Mul, no min_matmul_share gate), side by side in onnxruntime (``timed_ratio``, one thread, CPU time: see
THREADS). Layers of one shape and kind are timed once.

Why: whether dynamic int8 pays depends on the host, not the model. onnxruntime multiplies uint8 by
int8 with VNNI where the CPU has it and with vpmaddubsw + vpmaddwd on AVX2. On an AVX-512 VNNI Xeon
all-MiniLM-L6 ran 0.49-0.52x of float in int8 (see quantize_dynamic.py). On an AVX2-only AMD EPYC (Zen 1, znver1) the int8
GEMM is no faster than MLAS's float GEMM at all: MiniLM's three GEMM shapes alone, one thread,
interleaved medians of 30 at load ~10 (float = 1): 128x384x384 1.01x, 128x384x1536 0.98x,
128x1536x384 1.01x (MatMulNBits: bits 8 1.17-1.77x, bits 4 1.01-1.05x with float compute and
1.11-1.63x with accuracy_level 4; bench/minilm_int8_forms.py). The whole model, one thread at load
~5, ran 1.01-1.05x of float's time in int8 (QAttention form 1.01-1.03x) and onnxruntime's own
quantize_dynamic file 1.01-1.04x; the profile of float: 89% MatMul. Zen 1 splits
each 256-bit operation in two 128-bit halves and issues integer multiplies (vpmaddubsw, vpmaddwd)
on one FP pipe only, while float FMAs use two: both reach about 8 multiply-accumulates per cycle.
Layers that are not faster keep float weights and lose no accuracy for nothing. That is the quiet
host; with other work on the machine float's time swings and int8's barely moves (whole model, one
thread, CPU time, medians of 40 at load 3.7: float 130 ms with quartiles 98-141, int8 0.85x with
104-112), so a layer's verdict depends on the load when it is timed, and the pipeline's speed check
of the whole model decides after it.
"""
from __future__ import annotations

import time

import numpy as np

from tvmlite.calibration import load_calibration
from tvmlite.errors import TvmliteError, UnsupportedError
from tvmlite.export.shapes import static_shapes
from tvmlite.ir.graph import Model
from tvmlite.runtime.ort import fragment, ort_session, random_feeds, timed_ratio

#: one onnxruntime thread, timed in CPU time of the calling thread (where one-thread sessions run):
#: int8 and float GEMMs split over threads alike, and a 2-thread wall-clock time on a loaded host is
#: noise (a descheduled pool worker stalls the kernel: MiniLM's 128x384x384 float MatMul read 9.0 ms
#: against 1.1 ms in int8 at load 6, where one thread's CPU time says 1.0x)
THREADS = 1
#: CPU time is not immune either: the two vCPUs may share a core, so a busy neighbour slows whichever
#: session runs beside it. Timing the encoder's layers 4 times at load 4, one run in four read the
#: FFN up projection 1.59x faster in int8 (float 7.5 ms against 4.4-4.9 ms in the other runs, int8
#: 4.4-4.7), and timed again in the same two sessions it read so again: a session itself can be
#: slow. So a layer found faster is timed a second time in new sessions, kept if faster again.


def example_shapes(model: Model, calibration) -> dict[str, tuple]:
    """Static value shapes at one calibration example (random inputs when there is none); {} when
    there is no example to take them from (then no layer can be timed: all stay float)."""
    try:
        feeds = load_calibration(calibration, model).first(1)
    except TvmliteError:
        return {}
    return static_shapes(model, {n: tuple(np.shape(a)) for n, a in feeds.items()})


def time_layer(model: Model, node, shapes: dict, rewrite, repeats: int = 30,
               threshold: float = 1.0) -> tuple[float, float] | str:
    """(float ms, int8 ms) of ``node`` alone, or why it cannot be timed. ``rewrite(fragment)``
    rewrites the fragment's node in place (the pass itself, run on the fragment)."""
    g = model.graph
    cut = {n: tuple(shapes[n]) for n in node.inputs if n and g.const_value(n) is None and n in shapes}
    out = node.outputs[0]
    cut[out] = tuple(shapes.get(out, ()))
    try:
        # the activation is float32 (the pass rewrites nothing else), also where no type was inferred
        kw = dict(outputs=[out], dtypes={node.inputs[0]: np.float32})
        orig, new = fragment(model, [node], cut, **kw), fragment(model, [node], cut, **kw)
        rewrite(new)
        feeds = random_feeds(orig)
        runs = []
        for _ in range(2):  # int8 faster: timed again in new sessions, the slower verdict counts (THREADS)
            s0, s1 = ort_session(orig, threads=THREADS), ort_session(new, threads=THREADS)
            t0, t1, _ = timed_ratio(lambda: s0.run(None, feeds), lambda: s1.run(None, feeds), threshold,
                                    max_rounds=repeats, min_rounds=8, warmup=3, clock=time.thread_time)
            runs.append((float(t0), float(t1)))
            if t0 < threshold * t1:
                break
    except (UnsupportedError, TvmliteError) as e:
        return f"cannot be timed alone: {str(e).splitlines()[0]}"
    return min(runs, key=lambda r: r[0] / max(r[1], 1e-12))
