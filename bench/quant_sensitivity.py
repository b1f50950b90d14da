"""Which layers carry a model's int8 error: per quantizable layer, the model's relative L2 output
error against float (what quantize's error_budget measures) with

  int8 alone     that layer in int8 (QDQ: its inputs' Q, its weights, its output), the rest float;
  float alone    every other layer in int8, that one float (Conv/Gemm/MatMul only: an element-wise
                 layer left float between int8 neighbours still has its tensors quantized by them);
  weights alone  only that layer's weights rounded to int8 (per channel), compute float;

and the references: the whole model in int8 per range method, weights-only int8 everywhere,
and input noise. Errors of independent layers add roughly in quadrature (on PP-OCR rec the 47
weight-only errors' root sum of squares was 0.142, the measured weights-only model 0.140).

    PYTHONPATH=. python bench/quant_sensitivity.py rec [--examples 2] [--json out.json]

Models: rec, cls (bench_vs_ort_quant's inputs), digits. Whole-model runs: 3 per layer.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import tvmlite
from tvmlite.calibration import load_calibration
from tvmlite.export.shapes import fix_input_shapes
from tvmlite.passes.quantize import candidate_units, int8_weight_storage, prepare
from tvmlite.quant import qdq
from tvmlite.quant.calibrate import METHODS, collect_stats
from tvmlite.quant.select import build_variant, relative_error
from tvmlite.runtime.ort import ort_session

import bench_vs_ort_quant as vs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["rec", "cls", "digits"])
    ap.add_argument("--examples", type=int, default=2, help="evaluation examples per run")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)
    spec_ = vs.setup(args.model, args)
    m = tvmlite.load(spec_["src"])
    if spec_["opt"].get("shapes"):
        fix_input_shapes(m, spec_["opt"]["shapes"])
    prepare(m)
    g = m.graph
    units = candidate_units(g, {"Conv", "Gemm", "MatMul", "Add", "Mul"}, set(), set(), None)
    spec = qdq.QuantSpec("uint8", True)
    tensors = qdq.activation_tensors(g, qdq.plan_qdq(g, set(units), spec))
    stats = collect_stats(m, load_calibration(spec_["calib"], m), tensors, histogram=True, batch_size=16)
    feeds = {k: v[:args.examples] for k, v in spec_["eval"].items()}
    float_sess = ort_session(m, 2)
    ref = float_sess.run(None, feeds)

    def error(out):
        return relative_error(ref, out), float(np.mean(out[0].argmax(-1) == ref[0].argmax(-1)))

    def int8(chosen):
        return error(ort_session(build_variant(m, set(chosen), spec), 2).run(None, feeds))

    def weights_only(keep):
        q = m.copy()
        stored = int8_weight_storage(q.graph, keep, True)
        return error(ort_session(q, 2).run(None, feeds)), len(stored)

    refs = {}
    for meth in METHODS:
        spec.ranges = {k: s.range(meth, percentile=99.999, levels=256) for k, s in stats.items()}
        refs[f"all int8, {meth}"] = int8(units)
    spec.ranges = {k: s.range("minmax", levels=256) for k, s in stats.items()}
    refs["weights only int8, all layers"] = weights_only(set())[0]
    rng = np.random.default_rng(0)
    for sigma in (1e-3, 1e-2):
        noisy = {k: (v + rng.normal(0, sigma, v.shape)).astype(v.dtype) for k, v in feeds.items()}
        refs[f"input noise sigma {sigma:g}"] = error(float_sess.run(None, noisy))
    for k, (e, a) in refs.items():
        print(f"{k:32s} rel L2 {e:.4f}  argmax {a:.4f}", flush=True)
    nodes = {qdq.node_key(n): n for n in g.nx.nodes}
    all_keys = set(nodes)
    rows = []
    print(f"{'layer':16s} {'op':7s} {'int8 alone':>10s} {'float alone':>11s} {'weights alone':>13s}")
    for u in units:
        n = nodes[u]
        row = dict(layer=n.label, op=n.op_type, int8_alone=int8([u])[0])
        if n.op_type in qdq.COMPUTE:
            row["float_alone"] = int8([v for v in units if v != u])[0]
            (e, _), stored = weights_only(all_keys - {u})
            row["weights_alone"] = e if stored else None
        rows.append(row)
        cells = [f"{row[k]:.4f}" if row.get(k) is not None else "-" for k in ("int8_alone", "float_alone",
                                                                              "weights_alone")]
        print(f"{n.label:16s} {n.op_type:7s} {cells[0]:>10s} {cells[1]:>11s} {cells[2]:>13s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(references={k: list(v) for k, v in refs.items()}, layers=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
