"""Whole models on one thread by CPU time: tvmlite's TVM build against onnxruntime, and with
``--before-tiles`` also a build with the register tiles and conv choice this tree had before
the host's vector registers sized them (AVX-512's tiles on every host, strided 1x1 convs by the
strided rule), all interleaved in one process.

    PYTHONPATH=. python bench/tvm_cpu_ab.py detector light_resnet50 --before-tiles

``--before-writes`` instead compares against a build without the direct conv's vectorized NCHW
write (`schedules.vectorize_pixel_run`: the tile leaves by scalar stores) and with RGB 3x3 stems
on im2col + GEMM (no conv of K under 8 vectors on the direct kernel), as before both came.

With one thread both runtimes compute on the calling thread, so its CPU clock leaves out the time
other processes take from it: on a shared, loaded machine medians and best runs agree within a
few percent where wall-clock medians swing by 2x. MODEL is ``detector`` (tests/real_graphs.py at
320x320) or a light_* model of the onnx wheel (seeded random weights, as bench_tvm.py --only light).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def old_use_direct_conv(w_shape, geom, lanes: int) -> bool:
    """`kernels.conv.use_direct_conv` as it was before (1x1 rule for stride 1 only)."""
    from tvmlite.backends.tvm.kernels import conv as KC
    from tvmlite.backends.tvm.kernels.defs import round_up
    from tvmlite.backends.tvm.kernels.gemm import conv_tile

    co, ci, kh, kw = (int(d) for d in w_shape)
    cog = co // geom.group
    if ci * kh * kw < 8 * lanes:
        return False
    oh, ow = geom.out_spatial
    dt, gt = KC.direct_tile(cog, ow, lanes), conv_tile(cog, oh * ow, lanes)
    direct = cog / round_up(cog, dt.nr) * ow / round_up(ow, dt.mr)
    gemm = cog / round_up(cog, gt.mr) * (oh * ow) / round_up(oh * ow, gt.nr)
    if geom.pointwise:
        return geom.group == 1 and 0.9 * direct >= gemm
    return direct >= (0.75 * gemm if max(geom.strides) > 1 else gemm)


def short_k_gemm(rule):
    """``rule`` (`kernels.conv.use_direct_conv`) with no conv of K under 8 vectors direct (as
    before RGB stems were)."""
    def use_direct(w_shape, geom, lanes: int) -> bool:
        co, ci, kh, kw = (int(d) for d in w_shape)
        return ci * kh * kw >= 8 * lanes and rule(w_shape, geom, lanes)
    return use_direct


def load_model(spec: str):
    if spec == "detector":
        from real_graphs import detector

        m, _ = detector(320)
    else:
        from tvmlite.zoo import randomized_light

        m = randomized_light(spec + ".onnx")
    m.ir_version = min(m.ir_version, 10)
    return m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--before-tiles", action="store_true", help="also build with the tiles and conv choice of before")
    p.add_argument("--before-writes", action="store_true",
                   help="also build with the direct conv's scalar NCHW writes and RGB stems on the GEMM")
    a = p.parse_args(argv)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    from tvmlite.zoo import LIGHT_DIR

    bad = [m for m in a.models if m != "detector" and not (LIGHT_DIR / (m + ".onnx")).exists()]
    if bad or a.rounds < 1:
        print(f"tvm_cpu_ab: {'unknown model ' + bad[0] if bad else '--rounds must be at least 1'} "
              f"(detector or a light_* model)", file=sys.stderr)
        return 2
    if a.before_tiles and a.before_writes:
        print("tvm_cpu_ab: --before-tiles and --before-writes are two different befores: give one", file=sys.stderr)
        return 2
    os.environ["TVMLITE_THREADS"] = "1"
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, "tests"))
    import numpy as np
    import onnxruntime as ort

    import tvmlite
    from tvmlite.backends.tvm import compile_model
    from tvmlite.backends.tvm.kernels import conv as KC
    from tvmlite.backends.tvm.kernels import schedules as S

    now = (S.accumulator_vectors, KC.use_direct_conv)
    labels = ["before", "after"] if a.before_tiles or a.before_writes else ["tvmlite"]
    writes = S.vectorize_pixel_run
    if a.before_writes:
        before = (now[0], short_k_gemm(now[1]), lambda sch, epi: None)
    else:
        before = ((lambda lanes: 24), old_use_direct_conv, writes)
    for spec in a.models:
        m = load_model(spec)
        inits = {i.name for i in m.graph.initializer}
        inp = [i for i in m.graph.input if i.name not in inits][0]
        shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
        feeds = {inp.name: np.random.default_rng(0).random(shape).astype(np.float32)}
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        cms = {}
        for label in labels:
            old = label == "before"
            S.accumulator_vectors, KC.use_direct_conv, S.vectorize_pixel_run = before if old else now + (writes,)
            try:
                t0 = time.perf_counter()
                cms[label] = compile_model(tvmlite.load(m), {inp.name: shape}, cache=not old)
                build = time.perf_counter() - t0
            finally:
                S.accumulator_vectors, KC.use_direct_conv = now
                S.vectorize_pixel_run = writes
            out = cms[label].run(feeds)[0]
            err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
            print(f"{spec} {label}: build {build:.1f} s (load {os.getloadavg()[0]:.1f}), max rel err {err:.1e}",
                  flush=True)
        times = {k: [] for k in ["ort"] + labels}
        for _ in range(a.rounds):
            t = time.thread_time()
            sess.run(None, feeds)
            times["ort"].append(time.thread_time() - t)
            for label, cm in cms.items():
                t = time.thread_time()
                cm.run(feeds)
                times[label].append(time.thread_time() - t)
        om, ob = statistics.median(times["ort"]), min(times["ort"])
        print(f"{spec}: load {os.getloadavg()[0]:.1f}, onnxruntime CPU ms median {om * 1e3:.2f}; "
              "tvmlite/onnxruntime median (best): "
              + ", ".join(f"{k} {statistics.median(times[k]) / om:.3f} ({min(times[k]) / ob:.3f})" for k in labels),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
