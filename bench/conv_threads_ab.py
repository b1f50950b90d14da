"""A conv kernel's parallel-loop variants at 1 and 2 threads, in one process, interleaved: the
kernel `kernels.conv.conv2d` picks (SiLU fused) built each way, best and median wall time of
``ROUNDS`` calls (default 300) per thread count, and 2/1 ratios.

    PYTHONPATH=. python bench/conv_threads_ab.py 64-64-3x3-s1-20x20,48-64-3x3-s2-40x40 [old,new,...]

A shape is CI-CO-KxK-sS-HxW. Variants: ``new`` (the tree as it is), ``old`` (output rows not in
blocks, `tile_order.row_tasks` off: the pad made ahead of the chunked tile loop), ``rowsall`` (new, the rows in blocks whatever the weights' size), ``prev`` (old, the
pad copy's parallel rule before `schedules.PAD_ELEMENT_WEIGHT`), ``padpar`` (old,
the pad copy parallel whatever its size; ``padrows`` alike, its rows too, every loop but the
innermost), ``chunk2``/``chunk16`` (old, the tile loop in 2 or 16
chunks). Their outputs are checked against the first variant's.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import numpy as np

from tvmlite.backends.tvm import plan_func
from tvmlite.backends.tvm.kernels import conv as KC
from tvmlite.backends.tvm.kernels import schedules as S
from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
from tvmlite.backends.tvm.kernels.target import vector_lanes
from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args
from tvmlite.ops.geometry import WindowGeometry


def _no_rows(*a, **k):
    return 0


def _pad_parallel(sch, pad, lanes, *, parallel=True):
    S.parallel_vectorize(sch, pad, lanes, parallel_loops=2, parallel=parallel)


def _rows_whatever_the_weights(geom, weight_size):
    from tvmlite.backends.tvm.kernels.tile_order import row_tasks
    return row_tasks(geom, 0)


def _pad_by_size(sch, pad, lanes, *, parallel=True):  # pad_input before PAD_ELEMENT_WEIGHT
    size = S.block_elements(sch, pad)
    S.parallel_vectorize(sch, pad, lanes, parallel_loops=2,
                         parallel=parallel and (size is None or S.worth_parallel(size)))


def _pad_parallel_rows(sch, pad, lanes, *, parallel=True):
    S.parallel_vectorize(sch, pad, lanes, parallel=parallel)


def _tiles_in(n):
    def tiles(sch, loops):
        loops = [lp for lp in loops if lp is not None]
        return S.parallel_chunks(sch, sch.fuse(*loops) if len(loops) > 1 else loops[0], n)
    return tiles


# (module, attribute) -> replacement
VARIANTS = {
    "new": {},
    "old": {(KC, "row_tasks"): _no_rows},
    "rowsall": {(KC, "row_tasks"): _rows_whatever_the_weights},
    "prev": {(KC, "row_tasks"): _no_rows, (S, "pad_input"): _pad_by_size},
    "padpar": {(KC, "row_tasks"): _no_rows, (S, "pad_input"): _pad_parallel},
    "padrows": {(KC, "row_tasks"): _no_rows, (S, "pad_input"): _pad_parallel_rows},
    "chunk2": {(KC, "row_tasks"): _no_rows, (S, "parallel_tiles"): _tiles_in(2)},
    "chunk16": {(KC, "row_tasks"): _no_rows, (S, "parallel_tiles"): _tiles_in(16)},
}


@contextlib.contextmanager
def patched(changes):
    saved = {key: getattr(*key) for key in changes}
    for (mod, attr), v in changes.items():
        setattr(mod, attr, v)
    try:
        yield
    finally:
        for (mod, attr), v in saved.items():
            setattr(mod, attr, v)


def main(argv) -> int:
    if not argv or any(v not in VARIANTS for v in (argv[1].split(",") if len(argv) > 1 else [])):
        print(__doc__, file=sys.stderr)
        return 2
    names = argv[1].split(",") if len(argv) > 1 else ["old", "new"]
    rounds = int(os.environ.get("ROUNDS", 300))
    lanes, rng = vector_lanes(), np.random.default_rng(0)
    for spec in argv[0].split(","):
        ci, co, k, st, hw = spec.split("-")
        ci, co, kk, st, (h, w) = int(ci), int(co), int(k.split("x")[0]), int(st[1:]), map(int, hw.split("x"))
        x = rng.standard_normal((1, ci, h, w)).astype(np.float32)
        wt = (rng.standard_normal((co, ci, kk, kk)) * 0.1).astype(np.float32)
        bias = rng.standard_normal(co).astype(np.float32)
        geom = WindowGeometry.conv({"kernel_shape": [kk, kk], "strides": [st, st], "pads": [kk // 2] * 4},
                                   x.shape, wt.shape)
        runs = {}
        for v in names:
            with patched(VARIANTS[v]):
                kd = KC.conv2d("k", "x", x.shape, wt, bias, geom, out_value="y", epilogue=Epilogue([EwOp("Silu")]),
                               lanes=lanes)
                fn = build_kernel(kd)["main"]
            args, outs = kernel_args(kd, {"x": x})
            fn(*args)
            runs[v] = (fn, args, outs[0].numpy().copy())
        for v in names:
            np.testing.assert_allclose(runs[v][2], runs[names[0]][2], rtol=1e-5, atol=1e-5)
        t = {(v, th): [] for v in names for th in (1, 2)}
        for r in range(rounds):
            for th in ((1, 2) if r % 2 else (2, 1)):
                plan_func.use_threads(th)
                for v in (names if r % 2 else names[::-1]):
                    fn, args, _ = runs[v]
                    fn(*args)  # settles the pool after a switch
                    t0 = time.perf_counter_ns()
                    fn(*args)
                    t[(v, th)].append(time.perf_counter_ns() - t0)
        print(f"{spec} (load {os.getloadavg()[0]:.1f}) us: best 1t | 2t (2/1), median 1t | 2t (2/1)")
        for v in names:
            a, b = t[(v, 1)], t[(v, 2)]
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"  {v:8s} best {min(a) / 1e3:7.1f} | {min(b) / 1e3:7.1f} ({min(b) / min(a):.2f})   "
                  f"median {ma / 1e3:7.1f} | {mb / 1e3:7.1f} ({mb / ma:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
