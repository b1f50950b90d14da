"""Low-rank factorization of Gemm/MatMul (truncated SVD) and Conv (Tucker-2 or CP) layers.

    fold-bn,lowrank(rank=budget,budget=0.05,calib=models/digits_calib.npz),dce

Every factorization is written as plain ONNX ops (two Gemm/MatMul, or three/four Convs), so the
result runs anywhere. Per layer:

* **rank choice** (``rank=``): ``ratio`` (each rank = ratio x its channel count), ``energy``
  (smallest ranks keeping that share of the squared singular values of the weight unfoldings),
  ``vbmf`` (empirical variational Bayes matrix factorization, Nakajima et al. 2013, on the
  unfoldings) or ``budget`` (the cheapest ranks whose layer-output error on held-out calibration
  images stays within ``budget``).
* **data-aware refit** (``refit=true`` with calibration data): the factors are fitted to the layer's
  *outputs* on calibration data (inputs from the model compressed so far, so each layer corrects the
  drift before it; targets the original layer's outputs): a closed-form reduced-rank ridge regression
  pulled towards the weight-only factors, the mean residual folded into the bias.
* **keep rule**: a factorization is kept only when it divides the layer's MACs by at least
  ``min_mac_ratio`` and, with ``measure=true``, makes the layer faster in onnxruntime by
  ``min_speedup``; with data, the model's outputs must then also stay within ``budget`` (relative
  error on all calibration examples), else every factorization is undone.

Layer errors are relative Frobenius errors of the layer output over its spread around its mean:
``||Y - Y_hat|| / ||Y - mean(Y)||`` on the calibration images held out from the fit.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.capabilities import Calibrated, LayerwisePass
from tvmlite.passes.cleanup import is_onnx
from tvmlite.passes.lowrank_conv import ConvFactorPlans
from tvmlite.passes.lowrank_fc import FcFactorPlans
# the numerics live in lowrank_math; their names stay importable from here
from tvmlite.passes.lowrank_math import (Layer, LinearStats, capture_groups, capture_values,  # noqa: F401
                                 energy_rank, evbmf_rank, gram_svd, principal_fit, reduced_rank_fit,
                                 split_singular_values, truncate_fit, tucker2, output_error)
from tvmlite.passes.lowrank_nodes import FactorNodes
from tvmlite.errors import OptionError, TvmliteError
from tvmlite.ir.graph import Model, Node
from tvmlite.export.shapes import static_shapes
from tvmlite.ops.conv import im2col
from tvmlite.ops.geometry import WindowGeometry
from tvmlite.passes.counts import node_macs
from tvmlite.calibration import load_calibration

RANK_RULES = ("ratio", "energy", "vbmf", "budget")
#: layer inputs captured per NumPy-backend run while no layer was rewritten: one run instead of one
#: per layer (107 whole-model prefix runs on PP-OCR rec), with at most this many inputs held
CAPTURE_AHEAD = 16
CAPTURE_BYTES = 256 * 2**20
#: calibration examples are capped at this many input elements in all (two at least)
CAPTURE_ELEMENTS = 3 * 2**20
CONV_METHODS = ("tucker", "cp")


@register_pass
class LowRank(ConvFactorPlans, FcFactorPlans, FactorNodes, LayerwisePass, Calibrated, Pass):
    """Gemm/MatMul -> two thinner products (truncated SVD); Conv -> Tucker-2 or CP as plain Convs."""

    name = "lowrank"
    exclude_option = "exclude"
    calibration_option = "calib"

    @dataclass
    class Options:
        #: conv decomposition: tucker (1x1, kxk core, 1x1) or cp (1x1, kx1 and 1xk depthwise, 1x1)
        method: str = "tucker"
        #: rank choice: ratio, energy, vbmf or budget (needs calibration data)
        rank: str = "budget"
        ratio: float = 0.33
        energy: float = 0.95
        #: largest relative layer-output error allowed per layer (rank=budget)
        budget: float = 0.1
        #: fixed rank for Gemm/MatMul layers (0: by the rank rule)
        fc_rank: int = 0
        #: calibration inputs: .npz, directory of .npy, iterable of feed dicts, or CalibrationData
        calib: Any = None
        calib_count: int = 64
        #: fit the factors to the layer outputs on calibration data instead of to the weights
        refit: bool = True
        #: pull of the refit towards the weight-only factors, relative to the mean feature variance
        ridge: float = 0.01
        #: keep a factorization only when it divides the layer's MACs by at least this
        min_mac_ratio: float = 1.25
        #: leave layers with less than this share of the model's MACs alone: factorizing them saves
        #: nothing that matters and spends accuracy (typically the classifier and the first conv)
        min_layer_share: float = 0.01
        #: also time each layer in onnxruntime and keep it only when faster by min_speedup
        measure: bool = False
        min_speedup: float = 1.1
        #: only these nodes (names or labels, "|"-separated in spec strings); empty: every eligible layer
        layers: list[str] = ()
        #: node names to leave alone (checked pipelines undo single layers through it)
        exclude: list[str] = ()
        #: largest number of conv output positions per image batch used for the statistics
        max_rows: int = 8192
        #: seconds for planning layers (captures, fits, rank searches, timing), in graph order; the
        #: layers not reached by then are left alone with that reason (0: no limit). Planning every
        #: eligible layer of PP-OCR det at 640x640 took 190-320 s
        time_budget: float = 0.0
        seed: int = 0

    def __init__(self, _planned: dict | None = None, /, **options):
        super().__init__(**options)
        #: a replay's factors as an earlier run planned them ({"plans": {label: plan}, "shapes": ...}):
        #: run() then writes those, with no captures, fits, rank searches or timing
        self.planned = _planned

    def replay(self, result: PassResult, exclude: list[str]) -> Pass:
        """The layers that run factorized, without timing them again, minus ``exclude``."""
        kept = self.layers(result)
        if not kept:
            return super().replay(result, exclude)
        # the factors as planned (result.replay): no captures, fits or rank searches again (each undo
        # trial on PP-OCR det redid them all); later layers keep factors fitted to the earlier ones'
        # outputs
        return type(self)(result.replay, **{**self.option_values(), "layers": kept, "measure": False,
                                            "exclude": list(self.options.exclude) + list(exclude)})

    def validate(self) -> None:
        o = self.options
        if o.method not in CONV_METHODS:
            raise OptionError(f"lowrank: method={o.method!r} (choose {', '.join(CONV_METHODS)})")
        if o.rank not in RANK_RULES:
            raise OptionError(f"lowrank: rank={o.rank!r} (choose {', '.join(RANK_RULES)})")
        if not 0 < o.ratio <= 1:
            raise OptionError(f"lowrank: ratio={o.ratio} must be in (0, 1]")
        if not 0 < o.energy <= 1:
            raise OptionError(f"lowrank: energy={o.energy} must be in (0, 1]")
        if o.budget <= 0:
            raise OptionError(f"lowrank: budget={o.budget} must be positive")
        if o.min_mac_ratio <= 0:
            raise OptionError(f"lowrank: min_mac_ratio={o.min_mac_ratio} must be positive")
        if not o.time_budget >= 0:
            raise OptionError(f"lowrank: time_budget={o.time_budget} must be >= 0 (seconds; 0: no limit)")
        if o.fc_rank < 0 or o.calib_count < 2 or o.ridge < 0 or not 0 <= o.min_layer_share < 1:
            raise OptionError("lowrank: fc_rank, ridge must be >= 0, calib_count >= 2, "
                              "0 <= min_layer_share < 1")

    def run(self, model: Model) -> PassResult:
        if self.planned and self.planned.get("plans"):
            return self._run_fixed(model, self.planned)
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        # refits need real data: on random inputs (budget without calib) the factors stay weight-only
        need_data = o.rank == "budget" or o.calib is not None
        calib = data = None
        if need_data:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                calib = load_calibration(o.calib, model, random_count=4, seed=o.seed)
            one = calib.take(calib.first(1), 1)
            per_example = sum(int(np.prod(np.shape(v))) for v in one.values())
            # large inputs give enough rows per example: fewer examples, each a NumPy-backend run
            # (8 of PP-OCR det at 640x640 per capture); 2 at least, one is held out
            count = min(o.calib_count, max(2, CAPTURE_ELEMENTS // max(per_example, 1)))
            data = calib.groups(count)  # several when shared inputs (a gain) differ
        # shapes at batch 1 as the data has them: symbolic H/W set to 1 would time and count
        # layers on 1x1 images (an unpadded 3x3 conv has no output there)
        shapes = static_shapes(model, None if data is None else
                               {k: np.shape(v) for k, v in calib.take(data[0], 1).items()})
        # what replay() needs: the factors planned per layer label and the shapes they were planned at
        result.replay = {"plans": {}, "shapes": shapes}
        layers = []
        for node in g.toposort():
            if node.subgraphs:
                result.skip(node, f"{node.op_type} subgraph not looked into: left intact")
            if not is_onnx(node, "Gemm", "MatMul", "Conv"):
                continue
            if o.layers and node.name not in o.layers and node.label not in o.layers:
                continue
            if node.name in o.exclude or node.label in o.exclude:
                result.skip(node, "excluded by option")
                continue
            layer = self._layer(model, node, shapes, result)
            if layer is not None:
                layers.append(layer)

        total = sum(node_macs(model, n, shapes) for n in g.nx.nodes) or 1
        small = [l for l in layers if l.macs < o.min_layer_share * total]
        for l in small:
            why = (f"{l.macs:,} MACs are {l.macs / total:.2%} of the model's, below min_layer_share "
                   f"{o.min_layer_share:g}")
            result.skip(l.node, why)
            result.decisions.append({"node": l.node.label, "kept": False, "reason": why})
        layers = [l for l in layers if l.macs >= o.min_layer_share * total]
        if not layers:
            return result

        if data is not None:
            n_img = sum(calib.count(d) for d in data)
            if n_img < 2:
                raise OptionError("lowrank: need at least 2 calibration examples (to hold one out)")
            # targets: every layer's output in the original model
            # and the graph outputs: _check_model holds the factored model to the budget too
            names = [l.node.outputs[0] for l in layers] + list(g.outputs)
            targets, backup = capture_groups(model, list(dict.fromkeys(names)), data), model.copy()
            n_fit = max(1, int(round(n_img * 0.75)))
        rng = np.random.default_rng(o.seed)

        # layer inputs come from the model compressed so far; until the next rewrite they are
        # those of one run, so the next CAPTURE_AHEAD layers' inputs are captured together
        inputs: dict = {}
        start = time.perf_counter()
        for i, layer in enumerate(layers):
            node = layer.node
            if o.time_budget and time.perf_counter() - start > o.time_budget:
                why = f"not planned: time_budget {o.time_budget:g} s spent on the layers before it"
                for later in layers[i:]:
                    result.skip(later.node, why)
                    result.decisions.append({"node": later.node.label, "kept": False, "reason": why})
                break
            stats = None
            if data is not None:
                if node.inputs[0] not in inputs:
                    ahead, size = [], 0
                    for later in layers[i:]:
                        size += n_img * 4 * int(np.prod(later.in_shape or (1,)))
                        if ahead and (len(ahead) >= CAPTURE_AHEAD or size > CAPTURE_BYTES):
                            break
                        ahead.append(later.node.inputs[0])
                    inputs = capture_groups(model, list(dict.fromkeys(ahead)), data)
                stats = self._stats(layer, inputs[node.inputs[0]], targets[node.outputs[0]], rng, n_img, n_fit)
            try:
                plan = self._plan(model, layer, stats)
            except np.linalg.LinAlgError as e:
                result.skip(node, f"factorization failed: {e}")
                continue
            if isinstance(plan, str):
                result.skip(node, plan)
                result.decisions.append({"node": node.label, "kept": False, "reason": plan})
                continue
            if o.measure:
                try:
                    speed = self._measure(model, layer, plan)
                except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
                    why = f"cannot time the layer in onnxruntime at shape {layer.in_shape}: " + \
                          (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    result.skip(node, why)
                    result.decisions.append({"node": node.label, "kept": False, "reason": why})
                    continue
                plan["speedup"] = round(speed, 3)
                if speed < o.min_speedup:
                    why = (f"onnxruntime speedup {speed:.2f}x < min_speedup {o.min_speedup} "
                           f"(ranks {plan['ranks']})")
                    result.skip(node, why)
                    result.decisions.append({"node": node.label, "kept": False, "reason": why,
                                             **self._summary(plan, layer)})
                    continue
            self._rewrite(g, layer, plan, model.opset)
            result.replay["plans"][node.label] = plan
            inputs = {}  # what follows now reads the factorized layer's outputs
            result.rewrote(node, kept=True, **self._summary(plan, layer))
        if result.changed and data is not None:
            self._check_model(model, backup, targets, data, result)
        if result.changed:
            model.graph.remove_unused_values()
        result.stats["factorized"] = len(result.rewritten)
        return result

    def _check_model(self, model: Model, backup: Model, targets: dict, data, result: PassResult) -> None:
        """Layers meet the budget one by one but their errors compound (MiniLM at 0.25: 7 kept, embedding
        cosine 0.46): the model's outputs must meet it too, or every factorization is undone."""
        err = result.stats["model_error"] = round(output_error(model, targets, data), 5)
        if err > self.options.budget:
            why = (f"model-output relative error {err:.3g} > budget {self.options.budget:g}: all "
                   f"{len(result.rewritten)} factored layers undone")
            model.restore(backup)
            for d in (d for d in result.decisions if d.get("kept")):
                d.update(kept=False, reason=why)
            result.skipped += [(label, why) for label in result.rewritten]
            result.rewritten.clear()
            result.changed, result.replay["plans"] = False, {}

    @staticmethod
    def _summary(plan: dict, layer: Layer) -> dict:
        keys = ("method", "ranks", "params_before", "params_after", "macs_before", "macs_after",
                "error", "error_weights_only", "weight_error", "speedup")
        return {k: plan[k] for k in keys if k in plan}

    # ------------------------------------------------------------------------ layer discovery
    def _layer(self, model: Model, node: Node, shapes: dict, result: PassResult) -> Layer | None:
        g = model.graph
        if node.op_type == "Conv":
            w = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if w is None:
                result.skip(node, "weight is not constant")
                return None
            if w.dtype.kind != "f":
                result.skip(node, f"weight dtype {w.dtype} is not floating point")
                return None
            if int(node.attrs.get("group", 1)) != 1:
                result.skip(node, f"grouped conv (group={node.attrs.get('group')}): the factors would "
                                  "have to respect the groups")
                return None
            b_name = node.inputs[2] if len(node.inputs) > 2 else ""
            b = g.const_value(b_name) if b_name else None
            xs, ys = shapes.get(node.inputs[0]), shapes.get(node.outputs[0])
            if xs is None or ys is None or len(xs) != w.ndim:
                result.skip(node, "input/output shapes unknown")
                return None
            try:
                geo = WindowGeometry.conv(node.attrs, xs, w.shape)
            except TvmliteError as e:
                result.skip(node, f"at the input sizes known here: {e}")  # e.g. symbolic H/W sized 1
                return None
            return Layer(node, "conv", w, b, not (b_name and b is None), tuple(xs), tuple(ys), geometry=geo)
        # Gemm / MatMul
        w = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None:
            why = ("weight (second input) is not constant" if g.const_value(node.inputs[0]) is None
                   else "constant on the left of the product is not supported")
            result.skip(node, why)
            return None
        if w.ndim != 2:
            result.skip(node, f"weight has rank {w.ndim}, not 2")
            return None
        if w.dtype.kind != "f":
            result.skip(node, f"weight dtype {w.dtype} is not floating point")
            return None
        xs = shapes.get(node.inputs[0])
        if node.op_type == "Gemm":
            if model.opset < 7:
                result.skip(node, "Gemm before opset 7 (broadcast attribute)")
                return None
            wt = w.T if node.attrs.get("transB", 0) else w
            wt = wt * np.asarray(node.attrs.get("alpha", 1.0), wt.dtype)
            c_name = node.inputs[2] if len(node.inputs) > 2 else ""
            c = g.const_value(c_name) if c_name else None
            beta = float(node.attrs.get("beta", 1.0))
            if c is not None:
                c = c.astype(np.float64) * beta
                if c.ndim > 1 and c.shape[0] != 1:  # a per-row C passes through unchanged, no refit
                    return Layer(node, "fc", wt, None, False, xs, shapes.get(node.outputs[0]),
                                 rows=int(xs[0]) if xs else 1)
                c = np.broadcast_to(c.reshape(-1), (wt.shape[1],)).copy()
            rows = (xs[1] if node.attrs.get("transA", 0) else xs[0]) if xs else 1
            return Layer(node, "fc", wt, c, not (c_name and c is None), xs, shapes.get(node.outputs[0]),
                         rows=int(rows))
        rows = int(np.prod(xs[:-1])) if xs and len(xs) > 1 else 1
        return Layer(node, "fc", w, None, True, xs, shapes.get(node.outputs[0]), rows=rows)

    # ---------------------------------------------------------------------------- statistics
    def _features(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """Rows of the layer's input as its weight sees them: [rows, in] or im2col patches."""
        if layer.kind == "fc":
            if layer.node.op_type == "Gemm" and layer.node.attrs.get("transA", 0):
                x = x.T
            return x.reshape(-1, layer.weight.shape[0])
        geo = layer.geometry
        cols = im2col(x, geo.kernel, geo.strides, geo.dilations, geo.pads)
        return cols.transpose(0, 2, 1)  # [N, P, S*K]

    def _stats(self, layer: Layer, x: np.ndarray, y: np.ndarray, rng, n_img: int,
               n_fit: int) -> tuple[LinearStats, LinearStats]:
        """(fit, held-out) statistics of ``n_img`` examples; those after the first ``n_fit`` (75%)
        are held out."""
        if layer.kind == "fc":
            out = layer.weight.shape[1]
            f = self._features(layer, x)
            t = y.reshape(-1, out)
            if f.shape[0] % n_img == 0:  # rows of the first 75% of the examples
                split = n_fit * (f.shape[0] // n_img)
            else:
                split = int(f.shape[0] * 0.75)
            fit, held = LinearStats(f.shape[1], out), LinearStats(f.shape[1], out)
            fit.add(f[:split], t[:split])
            if split < f.shape[0]:
                held.add(f[split:], t[split:])
            return fit, held
        T = layer.weight.shape[0]
        f = self._features(layer, x)  # [N, P, D]
        t = y.reshape(y.shape[0], T, -1).transpose(0, 2, 1)  # [N, P, T]
        P = f.shape[1]
        take = None
        per_image = max(1, self.options.max_rows // max(x.shape[0], 1))
        if P > per_image:
            take = np.sort(rng.choice(P, per_image, replace=False))
        stats = []
        for part in (slice(0, n_fit), slice(n_fit, None)):
            fp, tp = f[part], t[part]
            if take is not None:
                fp, tp = fp[:, take], tp[:, take]
            s = LinearStats(f.shape[2], T)
            if fp.shape[0]:
                s.add(fp.reshape(-1, f.shape[2]), tp.reshape(-1, T))
            stats.append(s)
        return stats[0], stats[1]

    # ----------------------------------------------------------------------------- planning
    def _plan(self, model: Model, layer: Layer, stats) -> dict | str:
        if layer.kind == "fc":
            return self._plan_fc(layer, stats)
        k = layer.weight.shape[2:]
        if all(d == 1 for d in k):
            return self._plan_fc_conv1x1(layer, stats)
        if self.options.method == "cp":
            if layer.weight.ndim != 4:
                return f"CP needs a 2-D conv (this one has {layer.weight.ndim - 2} spatial dims); use method=tucker"
            declared = model.graph.value(layer.node.inputs[0]).shape
            if layer.node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") and (
                    declared is None or not all(isinstance(d, int) for d in declared[2:])):
                return "CP splits the padding per axis: auto_pad SAME needs static spatial dims"
            return self._plan_cp(layer, stats)
        return self._plan_tucker(layer, stats)

    def _fits_refit(self, layer: Layer, stats) -> bool:
        # refits need real data: on random inputs (budget without calib) the factors stay weight-only
        return bool(self.options.refit and stats is not None and layer.bias_const and self.options.calib is not None)
