"""Conv kernel variants of the TVM backend on one shape at a time, against onnxruntime's Conv.

For each conv shape (the YOLO-style detector's at 320x320 and ResNet-50's 3x3 ones by default):
the kernel `kernels.conv.conv2d` picks today, the direct kernel and im2col + GEMM with the
given register tiles, and onnxruntime's Conv (same weights, bias), all timed interleaved (one
call of each per round) in one process; medians and best runs, as ratios to onnxruntime.

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/conv_tiles.py --threads 1 --rounds 30 [--clock cpu]
    PYTHONPATH=. python bench/conv_tiles.py --shapes det --direct 6x16,12x8 --gemm 6x16,8x16

A shape is CI-CO-KxK-sS-HxW (e.g. 48-48-3x3-s1-40x40); ``--shapes det|resnet|all`` names a set.
A tile is MRxNR: for the direct kernel MR output pixels x NR output channels, for the GEMM MR
output channels x NR pixels. ``--layouts NHWC-NHWC,NCHW-NHWC`` adds `conv_nhwc.conv2d_nhwc` with its
input stored and its output written in those layouts (input-output; the input is transposed
before timing, the output back for the error check), with ``:MRxNR`` its register tile forced:

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/conv_tiles.py --shapes resnet --layouts NHWC-NHWC,NHWC-NCHW:12x32

``--orders`` times every direct-kernel variant (the NCHW direct tiles and the layout pairs) twice more,
its tile loops forced into each order (`tile_order.pixel_tiles_outer`: "/px" pixel tiles outside the channel
tiles, "/ch" channel tiles outside):

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/conv_tiles.py --shapes 256-64-1x1-s1-56x56 --layouts NHWC-NHWC --orders

``--cold N`` gives every variant (and onnxruntime, N sessions) N copies of its weights and runs round r on
copy r mod N, so a deep layer's weights arrive from the L3 or memory as inside a whole model (ResNet-50
reads 100 MiB of them per run; alone, a 4 MiB panel of weights stays in the caches between calls):

    TVMLITE_THREADS=1 PYTHONPATH=. python bench/conv_tiles.py --shapes 512-2048-1x1-s1-7x7 --layouts NHWC-NHWC --cold 24
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SETS = {
    "det": ["3-16-3x3-s2-320x320", "16-32-3x3-s2-160x160", "16-16-3x3-s1-80x80", "64-32-1x1-s1-80x80",
            "32-48-3x3-s2-80x80", "48-48-3x3-s1-40x40", "112-48-3x3-s1-40x40", "48-64-3x3-s2-40x40",
            "64-64-3x3-s1-20x20", "112-64-3x3-s1-20x20", "64-48-3x3-s1-20x20", "112-48-1x1-s1-40x40"],
    "resnet": ["64-64-3x3-s1-56x56", "128-128-3x3-s1-28x28", "256-256-3x3-s1-14x14", "512-512-3x3-s1-7x7",
               "64-256-1x1-s1-56x56", "256-64-1x1-s1-56x56", "3-64-7x7-s2-224x224"],
}


def parse_shape(s: str):
    ci, co, k, st, hw = s.split("-")
    kh, kw = (int(v) for v in k.split("x"))
    h, w = (int(v) for v in hw.split("x"))
    if not st.startswith("s"):
        raise ValueError(f"{s}: the stride is written sN")
    dims = (int(ci), int(co), kh, kw, int(st[1:]), h, w)
    if min(dims) < 1 or kh > h + 2 * (kh // 2) or kw > w + 2 * (kw // 2):
        raise ValueError(f"{s}: every size must be positive and the kernel fit the padded image")
    return dims


def parse_tiles(s: str):
    tiles = [tuple(int(v) for v in t.split("x")) for t in s.split(",") if t]
    if any(len(t) != 2 or min(t) < 1 for t in tiles):
        raise ValueError(f"{s}: a tile is MRxNR, both positive")
    return tiles


def parse_layouts(s: str):
    """[(x layout, y layout, tile or None)] of "X-Y[:MRxNR],..." (a tile: the register tile forced)."""
    out = []
    for p in (p for p in s.split(",") if p):
        pair, _, tile = p.partition(":")
        xy = tuple(pair.split("-"))
        if len(xy) != 2 or not set(xy) <= {"NCHW", "NHWC"}:
            raise ValueError(f"{s}: a layout pair is X-Y[:MRxNR], each NCHW or NHWC")
        out.append(xy + ((parse_tiles(tile)[0] if tile else None),))
    return out


def in_order(make, outer: bool):
    """``make()`` with the direct kernels' tile loop order forced (`conv.pixel_tiles_outer`)."""
    from tvmlite.backends.tvm.kernels import conv, conv_nhwc

    saved = conv.pixel_tiles_outer
    conv.pixel_tiles_outer = conv_nhwc.pixel_tiles_outer = lambda *a, **k: outer
    try:
        return make()
    finally:
        conv.pixel_tiles_outer = conv_nhwc.pixel_tiles_outer = saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="all")
    p.add_argument("--direct", default="", help="direct-kernel tiles MRxNR, comma separated")
    p.add_argument("--gemm", default="", help="im2col GEMM tiles MRxNR, comma separated")
    p.add_argument("--layouts", default="", help="conv2d_nhwc input-output layout pairs (NHWC-NCHW,...)")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this thread's CPU time (with --threads 1 both runtimes compute on the calling "
                        "thread, so it leaves out the time other processes take: the stable figure on a "
                        "shared machine); wall: elapsed time")
    p.add_argument("--silu", action="store_true", help="SiLU after the conv (fused by both runtimes)")
    p.add_argument("--orders", action="store_true",
                   help="also each direct-kernel variant with its tile loops forced into either order")
    p.add_argument("--cold", type=int, default=1, metavar="N",
                   help="N copies of each variant's weights, one per round in turn (weights cold in the caches)")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.cold < 1:
        print("conv_tiles: --rounds and --cold must be at least 1", file=sys.stderr)
        return 2
    os.environ.setdefault("TVMLITE_THREADS", str(a.threads))
    names = []
    for s in a.shapes.split(","):
        names += SETS["det"] + SETS["resnet"] if s == "all" else SETS.get(s, [s])
    try:
        shapes = [(s, parse_shape(s)) for s in names]
        direct, gemm, layouts = parse_tiles(a.direct), parse_tiles(a.gemm), parse_layouts(a.layouts)
    except ValueError as e:
        print(f"conv_tiles: bad shape, tile or layout ({e})", file=sys.stderr)
        return 2

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tvmlite.backends.tvm.kernels import conv as KC
    from tvmlite.backends.tvm.kernels import schedules as S
    from tvmlite.backends.tvm.kernels.conv_nhwc import conv2d_nhwc
    from tvmlite.backends.tvm.kernels.defs import Epilogue, EwOp
    from tvmlite.backends.tvm.kernels.target import vector_lanes
    from tvmlite.backends.tvm.single_kernel import build_kernel, kernel_args
    from tvmlite.ops.geometry import WindowGeometry

    if a.clock == "cpu" and a.threads != 1:
        print("conv_tiles: --clock cpu needs --threads 1 (pool workers' time is not this thread's)", file=sys.stderr)
        return 2
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    lanes = vector_lanes()
    rng = np.random.default_rng(0)
    print(f"lanes {lanes}, threads {a.threads}, {a.clock} clock, load {os.getloadavg()[0]:.2f}")
    for label, (ci, co, kh, kw, st, h, w) in shapes:
        x = rng.standard_normal((1, ci, h, w)).astype(np.float32)
        wt = (rng.standard_normal((co, ci, kh, kw)) * 0.1).astype(np.float32)
        bias = rng.standard_normal(co).astype(np.float32)
        pads = [kh // 2, kw // 2, kh // 2, kw // 2]
        attrs = {"kernel_shape": [kh, kw], "strides": [st, st], "pads": pads}
        geom = WindowGeometry.conv(attrs, x.shape, wt.shape)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if a.silu else "y"], **attrs)]
        if a.silu:
            nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
        g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(bias, "b")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sessions = [ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                    for _ in range(a.cold)]  # each session packs its own copy of the weights
        ref = sessions[0].run(None, {"x": x})[0]
        kw_ = dict(out_value="y", epilogue=Epilogue([EwOp("Silu")] if a.silu else []), lanes=lanes)
        variants = {"picked(" + ("direct" if KC.use_direct_conv(wt.shape, geom, lanes) else "gemm") + ")":
                    lambda: KC.conv2d("k", "x", x.shape, wt, bias, geom, **kw_)}
        for mr, nr in direct:
            variants[f"direct {mr}x{nr}"] = (lambda mr=mr, nr=nr: KC.conv2d_direct(
                "k", "x", x.shape, wt, bias, geom, tile=S.GemmTile(mr=mr, nr=nr), **kw_))
        for mr, nr in gemm:
            variants[f"gemm {mr}x{nr}"] = (lambda mr=mr, nr=nr: KC.conv2d_gemm(
                "k", "x", x.shape, wt, bias, geom, tile=S.GemmTile(mr=mr, nr=nr), **kw_))
        xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for xl, yl, t in layouts:
            variants[f"{xl}->{yl}" + (f" {t[0]}x{t[1]}" if t else "")] = (lambda xl=xl, yl=yl, t=t: conv2d_nhwc(
                "k", "x", x.shape, wt, bias, geom, x_layout=xl, y_layout=yl,
                tile=S.GemmTile(mr=t[0], nr=t[1]) if t else None, **kw_))
        if a.orders:
            for vname in [v for v in variants if v.startswith("direct ") or "->" in v]:
                for tag, outer in (("px", True), ("ch", False)):
                    variants[f"{vname}/{tag}"] = (lambda make=variants[vname], outer=outer: in_order(make, outer))
        runs = {}
        for vname, make in variants.items():
            t0 = time.perf_counter()
            kd = make()
            fn = build_kernel(kd)["main"]
            feed = {"x": xt if vname.startswith("NHWC->") else x}
            args, outs = kernel_args(kd, feed)
            copies = [args] + [kernel_args(kd, feed)[0] for _ in range(a.cold - 1)]  # fresh constant tensors
            fn(*args)
            y = outs[0].numpy()
            n_, c_, oh_, ow_ = ref.shape
            nhwc_out = vname.split("/")[0].split(" ")[0].endswith("->NHWC")
            y = y.reshape(n_, oh_, ow_, c_).transpose(0, 3, 1, 2) if nhwc_out else y.reshape(ref.shape)
            err = float(np.max(np.abs(y - ref)) / (np.max(np.abs(ref)) + 1e-30))
            if err > 1e-4:
                print(f"  {label} {vname}: max rel err {err:.2e}")
            runs[vname] = (fn, copies, time.perf_counter() - t0)
        times = {v: [] for v in runs}
        times["ort"] = []
        feeds = {"x": x}
        for r in range(a.rounds):
            c = r % a.cold
            t0 = clock()
            sessions[c].run(None, feeds)
            times["ort"].append(clock() - t0)
            for v, (fn, copies, _) in runs.items():
                t0 = clock()
                fn(*copies[c])
                times[v].append(clock() - t0)
        om, ob = statistics.median(times["ort"]), min(times["ort"])
        print(f"{label}: ort median {om * 1e3:.3f} ms (load {os.getloadavg()[0]:.2f})")
        for v in runs:
            med, best = statistics.median(times[v]) / om, min(times[v]) / ob
            print(f"   {v:16s} {med:5.2f} ({best:5.2f})  build {runs[v][2]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
