"""Structured channel pruning (``prune(mode=channel)``, tvmlite/passes/prune.py): tracing the readers
of each layer's output channels, removing channels from the layer and every reader, and the
least-squares refit of the readers on calibration data."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from tvmlite.passes.base import PassResult
from tvmlite.passes.cleanup import is_onnx
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Model, Node
from tvmlite.export.shapes import infer_shapes, static_shapes
from tvmlite.passes.lowrank import LinearStats, capture_values
from tvmlite.passes.lowrank_math import output_error
from tvmlite.ops.conv import im2col, resolve_pads
from tvmlite.calibration import load_calibration
from tvmlite.runtime.ort import ort_session, timed_ratio

#: ops that act on each channel alone and keep the channel axis (axis 1) where it is
_PER_CHANNEL = {"Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip",
                "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Identity",
                "Dropout", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                "GlobalLpPool", "Cast", "Floor", "Ceil", "Round", "Reciprocal", "ThresholdedRelu", "Celu"}
_JOIN = {"Add", "Sub", "Mul", "Max", "Min", "Sum"}


def _scalar_operand(g, node: Node) -> int | None:
    """Which input of a binary Add/Sub/Mul/Div is a one-element constant (Div: only the divisor),
    or None: such a node is per-channel in its other input."""
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2:
        return None
    for j in ((1,) if node.op_type == "Div" else (0, 1)):
        c = g.const_value(node.inputs[j])
        if c is not None and c.size == 1:
            return j
    return None


# ------------------------------------------------------------------------------------ channels
@dataclass
class _Group:
    """Producers whose output channels must be removed together (joined by Add/Mul...)."""

    producers: list
    params: list = field(default_factory=list)  # (node, input index): per-channel tensors to slice
    depthwise: list = field(default_factory=list)  # depthwise convs to shrink
    terminals: list = field(default_factory=list)  # (node, offset, spatial) readers to fix
    values: set = field(default_factory=set)  # values whose channel count changes


class ChannelPruner:
    """One run (Prune keeps nothing); with calib, readers are refitted to ``original``'s outputs."""

    def __init__(self, model: Model, options, result: PassResult, *, only: str | None = None, data=None,
                 original: Model | None = None):
        """``only``: prune just the group of the producer with this first output; ``data``: the
        calibration feeds already loaded (else ``options.calib`` is loaded); ``original``: a copy
        of ``model`` as it is now, when the caller holds one already (read only, for the refit)."""
        self.model, self.g, self.o, self.result = model, model.graph, options, result
        self.only = only
        self.data = self.original = None
        if data is not None or options.calib is not None:
            self.data = data if data is not None else load_calibration(options.calib, model).first(options.calib_count)
            self.original = original if original is not None else model.copy()
        self.b = Builder(model)  # one name authority for the pruner's run

    def _producers(self, *, joinable: bool = False) -> list[Node]:
        """The layers whose channels can be pruned. ``joinable``: all of them, ignoring ``only``
        (a group started at ``only`` may pull in layers joined with it by Add/Mul)."""
        g = self.g
        out = []
        for node in g.toposort():
            if self.o.layers and node.name not in self.o.layers:
                continue
            if self.only is not None and not joinable and node.outputs[0] != self.only:
                continue
            if not is_onnx(node, "Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
                continue
            w = g.const_value(node.inputs[1])
            if w is None or w.dtype.kind != "f":
                continue
            if node.op_type == "Conv" and int(node.attrs.get("group", 1)) != 1:
                continue  # depthwise convs follow their producer's channels instead
            if node.op_type == "MatMul" and w.ndim != 2:
                continue
            out.append(node)
        return out

    def run(self) -> None:
        done: set = set()
        for prod in self._producers():
            if prod in done or prod.graph is None:
                continue
            shapes = static_shapes(self.model)
            group = self._trace(prod, shapes)
            if isinstance(group, str):
                self.result.skip(prod, group)
                continue
            done.update(group.producers)
            self._apply(group, shapes)
        if self.result.changed:
            infer_shapes(self.model)

    # ......................................................................... tracing
    def _channels(self, node: Node) -> int:
        w = self.g.const_value(node.inputs[1])
        if node.op_type == "Conv":
            return w.shape[0]
        if node.op_type == "Gemm" and node.attrs.get("transB", 0):
            return w.shape[0]
        return w.shape[1]

    def _trace(self, start: Node, shapes: dict) -> _Group | str:
        g = self.g
        group = _Group([start])
        # (value, offset of the group's channels inside it)
        todo = [(start.outputs[0], 0)]
        seen: set = set()
        candidates = set(self._producers(joinable=True))
        while todo:
            name, offset = todo.pop()
            if (name, offset) in seen:
                continue
            seen.add((name, offset))
            group.values.add(name)
            if name in g.outputs:
                return f"its channels reach the graph output {name!r}"
            shape = shapes.get(name)
            for c in g.consumers(name):
                idx = [i for i, n in enumerate(c.inputs) if n == name]
                op = c.op_type if c.domain in ("", "ai.onnx") else None
                if op in _PER_CHANNEL:
                    if idx != [0]:
                        return f"{c.label!r} reads its channels as a parameter"
                    if op in ("Clip",) and any(n and g.const_value(n) is None for n in c.inputs[1:]):
                        return f"{c.label!r} has non-constant bounds"
                    todo.append((c.outputs[0], offset))
                elif op == "PRelu":
                    slope = g.const_value(c.inputs[1])
                    if idx != [0] or slope is None:
                        return f"{c.label!r}: slope is not constant"
                    if slope.size > 1:
                        group.params.append((c, 1))
                    todo.append((c.outputs[0], offset))
                elif op == "BatchNormalization":
                    if idx != [0] or any(g.const_value(n) is None for n in c.inputs[1:5]):
                        return f"{c.label!r}: parameters are not constant"
                    if len([o for o in c.outputs if o]) > 1:
                        return f"{c.label!r} is in training mode"
                    group.params.extend((c, i) for i in range(1, 5))
                    todo.append((c.outputs[0], offset))
                elif op == "Conv" and idx == [0] and int(c.attrs.get("group", 1)) > 1:
                    w = g.const_value(c.inputs[1])
                    grp = int(c.attrs["group"])
                    if w is None or w.shape[1] != 1 or w.shape[0] != grp or offset != 0 \
                            or shape is None or shape[1] != grp:
                        return f"{c.label!r} is a grouped (not depthwise) conv"
                    group.depthwise.append(c)
                    if len(c.inputs) > 2 and c.inputs[2]:
                        if g.const_value(c.inputs[2]) is None:
                            return f"{c.label!r}: bias is not constant"
                    todo.append((c.outputs[0], 0))
                elif op in ("Conv", "Gemm", "MatMul") and idx == [0]:
                    if g.const_value(c.inputs[1]) is None:
                        return f"reader {c.label!r} has a non-constant weight"
                    if op == "Gemm" and c.attrs.get("transA", 0):
                        return f"reader {c.label!r} uses transA"
                    if op in ("Gemm", "MatMul") and (shape is None or len(shape) != 2):
                        return f"reader {c.label!r} reads a tensor of rank != 2"
                    group.terminals.append((c, offset, 1))
                elif op == "Flatten" and int(c.attrs.get("axis", 1)) == 1 and shape is not None and len(shape) >= 2:
                    spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
                    for cc in g.consumers(c.outputs[0]):
                        if not is_onnx(cc, "Gemm", "MatMul") or cc.inputs[0] != c.outputs[0] \
                                or g.const_value(cc.inputs[1]) is None or cc.attrs.get("transA", 0):
                            return f"Flatten {c.label!r} feeds {cc.label!r}, which cannot be fixed"
                        group.terminals.append((cc, offset * spatial, spatial))
                    if c.outputs[0] in g.outputs:
                        return f"Flatten {c.label!r} is a graph output"
                    group.values.add(c.outputs[0])
                elif op == "Concat" and shape is not None and int(c.attrs.get("axis", 0)) in (1, 1 - len(shape)):
                    pos = 0
                    for n in c.inputs[:idx[0]]:
                        s = shapes.get(n)
                        if s is None:
                            return f"Concat {c.label!r}: input shapes unknown"
                        pos += s[1]
                    todo.append((c.outputs[0], pos + offset))
                elif op == "Div" and idx == [0] and g.const_value(c.inputs[1]) is not None:
                    if g.const_value(c.inputs[1]).size > 1:
                        group.params.append((c, 1))
                    todo.append((c.outputs[0], offset))
                elif op in _JOIN:
                    # every other operand must carry the same channels from prunable producers, or
                    # be a per-channel constant (sliced) or a scalar
                    for j, other in enumerate(c.inputs):
                        if other == name:
                            continue
                        cv = g.const_value(other)
                        if cv is not None:
                            if cv.size > 1:
                                group.params.append((c, j))
                            continue
                        p = g.producer(other)
                        while p is not None and p not in candidates and p.domain in ("", "ai.onnx") \
                                and (p.op_type in _PER_CHANNEL or p.op_type in ("BatchNormalization", "PRelu")
                                     or _scalar_operand(g, p) is not None):
                            # back through per-channel ops to the layer (HardSwish's x + 3, / 6 too)
                            p = g.producer(p.inputs[0 if p.op_type not in _JOIN else 1 - _scalar_operand(g, p)])
                        if p is None or p not in candidates or offset != 0:
                            return f"{c.label!r} joins it with {other!r}, which cannot lose the same channels"
                        if p not in group.producers:
                            group.producers.append(p)
                            todo.append((p.outputs[0], 0))
                    todo.append((c.outputs[0], offset))
                else:
                    return f"its channels reach {c.op_type} {c.label!r}"
        counts = {self._channels(p) for p in group.producers}
        if len(counts) != 1:
            return "joined layers have different channel counts"
        return group

    # ......................................................................... applying
    def _apply(self, group: _Group, shapes: dict) -> None:
        g = self.g
        o = self.o
        C = self._channels(group.producers[0])
        keep_n = max(o.min_channels, int(math.ceil(C * (1 - o.sparsity))))
        if keep_n >= C:
            self.result.skip(group.producers[0], f"{C} channels: nothing to remove at sparsity {o.sparsity}")
            return
        score = np.zeros(C)
        for p in group.producers:
            w = g.const_value(p.inputs[1]).astype(np.float64)
            rows = w.reshape(C, -1) if (p.op_type == "Conv" or p.attrs.get("transB", 0)) else w.T
            s = np.abs(rows).sum(1) if o.norm == "l1" else np.sqrt((rows ** 2).sum(1))
            score += s / max(s.mean(), 1e-30)
        keep = np.sort(np.argsort(-score, kind="stable")[:keep_n])
        drop = np.setdiff1d(np.arange(C), keep)

        def replace(node, index, array, base):
            g.set_input(node, index, self.b.const(array, base).name)

        for p in group.producers:
            w = g.const_value(p.inputs[1])
            axis = 0 if (p.op_type == "Conv" or p.attrs.get("transB", 0)) else 1
            replace(p, 1, np.take(w, keep, axis=axis), f"{p.inputs[1]}_pruned")
            if len(p.inputs) > 2 and p.inputs[2]:
                b = g.const_value(p.inputs[2])
                if b is None:
                    continue
                if b.ndim >= 1 and b.shape[-1] == C:
                    replace(p, 2, np.take(b, keep, axis=-1), f"{p.inputs[2]}_pruned")
        for node, i in group.params:
            v = g.const_value(node.inputs[i])
            if node.op_type in _JOIN or node.op_type == "PRelu":
                # a broadcast constant: its channel axis sits at -(rank of the data - 1)
                data_rank = len(shapes.get(node.outputs[0]) or ())
                axis = v.ndim - (data_rank - 1) if data_rank else 0
                if v.shape[axis] != C:
                    continue
                replace(node, i, np.take(v, keep, axis=axis), f"{node.inputs[i]}_pruned")
            else:
                replace(node, i, v[keep], f"{node.inputs[i]}_pruned")
        for dw in group.depthwise:
            w = g.const_value(dw.inputs[1])
            replace(dw, 1, w[keep], f"{dw.inputs[1]}_pruned")
            if len(dw.inputs) > 2 and dw.inputs[2]:
                replace(dw, 2, g.const_value(dw.inputs[2])[keep], f"{dw.inputs[2]}_pruned")
            dw.attrs["group"] = int(keep_n)
            dw.attr_protos.pop("group", None)
        for node, offset, spatial in group.terminals:
            w = g.const_value(node.inputs[1])
            rows = (offset + drop[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
            if node.op_type == "Conv":
                new = np.delete(w, offset + drop, axis=1)
            elif node.op_type == "Gemm" and node.attrs.get("transB", 0):
                new = np.delete(w, rows, axis=1)
            else:
                new = np.delete(w, rows, axis=0)
            replace(node, 1, new, f"{node.inputs[1]}_pruned")
        for name in group.values:  # shapes along the channel axis changed: infer them again
            v = g.values.get(name)
            if v is not None and name not in g.outputs and not v.is_initializer:
                v.type = None
        refits = {}
        if self.data is not None:
            infer_shapes(self.model)
            for node, _, _ in group.terminals:
                refits[node.label] = self._refit(node)
        for p in group.producers:
            self.result.rewrote(p, channels_before=int(C), channels_after=int(keep_n),
                                joined=[q.label for q in group.producers if q is not p],
                                readers_fixed=[t[0].label for t in group.terminals],
                                **({"reader_refit": refits} if refits else {}))

    def _refit(self, node: Node) -> str:
        """Least-squares refit of a reader to its original outputs; returns what it did."""
        g = self.g
        w = g.const_value(node.inputs[1])
        if node.op_type == "Conv" and int(node.attrs.get("group", 1)) != 1:
            return "grouped conv: not refitted"
        b_name = node.inputs[2] if len(node.inputs) > 2 else ""
        if b_name and g.const_value(b_name) is None:
            return "bias not constant: not refitted"
        x = capture_values(self.model, [node.inputs[0]], self.data)[node.inputs[0]]
        y = capture_values(self.original, [node.outputs[0]], self.data)[node.outputs[0]]
        if node.op_type == "Conv":
            nd = w.ndim - 2
            a = node.attrs
            strides, dil = a.get("strides") or [1] * nd, a.get("dilations") or [1] * nd
            pads = resolve_pads(a.get("auto_pad", "NOTSET"), x.shape[2:], w.shape[2:], strides, dil, a.get("pads"))
            f = im2col(x, w.shape[2:], strides, dil, pads).transpose(0, 2, 1).reshape(-1, int(np.prod(w.shape[1:])))
            t = y.reshape(y.shape[0], w.shape[0], -1).transpose(0, 2, 1).reshape(-1, w.shape[0])
            z0 = w.reshape(w.shape[0], -1).T
        else:
            if len(y.shape) != 2:
                return "output is not 2-D: not refitted"
            f, t = x, y
            trans_b = node.op_type == "Gemm" and node.attrs.get("transB", 0)
            z0 = (w.T if trans_b else w) * float(node.attrs.get("alpha", 1.0))
        rows = np.random.default_rng(0).permutation(f.shape[0])[:16384]
        st = LinearStats(f.shape[1], t.shape[1])
        st.add(f[rows], t[rows])
        mf, my, gm, h, _ = st.centered
        lam = self.o.ridge * max(np.trace(gm) / gm.shape[0], 1e-30)
        z = np.linalg.solve(gm + lam * np.eye(gm.shape[0]), h + lam * z0)
        c = (my - mf @ z).astype(w.dtype)
        before = st.rel_error(z0, self._bias_of(node, t.shape[1]))
        after = st.rel_error(z, c)
        if node.op_type == "Conv":
            new_w = z.T.reshape(w.shape)
        elif node.op_type == "Gemm":
            new_w = z.T if node.attrs.get("transB", 0) else z
            node.attrs["alpha"] = 1.0
            node.attrs["beta"] = 1.0
            node.attr_protos.pop("alpha", None)
            node.attr_protos.pop("beta", None)
        else:
            new_w = z
        b = self.b.at(before=node)
        w_new = b.const(new_w.astype(w.dtype), f"{node.inputs[1]}_refit")
        if node.op_type == "MatMul":  # no bias input: the offset becomes an Add
            base = node.name or "matmul"
            mm = b.op.MatMul(node.inputs[0], w_new, name_hint=f"{base}_refit_mm")
            out = b.op.Add(mm, b.const(c, f"{base}_refit_bias"), name_hint=f"{base}_refit_bias")
            b.replace(node, {node.outputs[0]: out}, heir=mm)
        else:
            g.set_input(node, 1, w_new.name)
            g.set_input(node, 2, b.const(c, f"{node.name or 'layer'}_refit_bias").name)
        return f"output error {before:.3g} -> {after:.3g}"

    def _bias_of(self, node: Node, out: int) -> np.ndarray:
        b_name = node.inputs[2] if len(node.inputs) > 2 else ""
        b = self.g.const_value(b_name) if b_name else None
        if b is None:
            return np.zeros(out)
        beta = float(node.attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
        return np.broadcast_to(b.astype(np.float64).reshape(-1) * beta, (out,))


# ---------------------------------------------------------------- the budget and speed keep rule
#: a pruned group must make the model at least this much faster to count as faster (timing noise)
SPEED_MARGIN = 0.03


def prune_within_budget(model: Model, options, result: PassResult) -> None:
    """Channel pruning one group at a time, in graph order. A group is kept only when the model's
    outputs stay within ``options.budget`` (largest relative L2 error over the outputs) of the
    unpruned model's on the calibration data, and, with ``options.measure``, when onnxruntime runs
    the whole model faster with it than without (interleaved, medians, batch 1). Every group gets a
    decision row saying kept or not and why."""
    o = options
    data = load_calibration(o.calib, model).first(o.calib_count)
    targets = capture_values(model, list(model.graph.outputs), data)
    one = {k: v[:1] for k, v in data.items()}
    keys = [n.outputs[0] for n in ChannelPruner(model, replace(o, calib=None), PassResult(result.pass_name))._producers()]
    tried: set = set()  # layers already in a group tried (kept or not): a joined layer's turn is over
    for key in keys:
        node = model.graph.producer(key)
        if node is None or not is_onnx(node, "Conv", "Gemm", "MatMul"):
            continue  # pruned away or refitted into a new node with an earlier group
        label = node.label
        if label in tried:
            continue
        # the largest fraction first; a smaller one only when the larger broke the budget
        for sparsity in dict.fromkeys((o.sparsity, o.sparsity / 2, o.sparsity / 4)):
            row = _try_group(model, replace(o, sparsity=sparsity), key, label, data, targets, one, result)
            if row is not None:
                tried.update([row["node"], *row.get("joined", ())])
            if row is None or row["kept"] or not row["reason"].startswith("model-output"):
                break
        if row is not None and not row["kept"]:
            result.skipped.append((label, row["reason"]))
    kept = [d for d in result.decisions if d.get("kept")]
    result.stats["groups_kept"] = len(kept)
    # what the last kept group measured: every later attempt was undone, so it is the model's error
    result.stats["model_error"] = kept[-1]["model_error"] if kept else 0.0


def _try_group(model: Model, o, key: str, label: str, data, targets, one, result: PassResult):
    """Prune the group of producer ``key`` at ``o.sparsity`` and keep it or undo it (see
    prune_within_budget); returns its decision row, or None when nothing could be pruned."""
    backup = model.copy()
    sub = PassResult(result.pass_name)
    ChannelPruner(model, o, sub, only=key, data=data, original=backup).run()
    if not sub.changed:
        if not any(s[0] == label for s in result.skipped):
            result.skipped += sub.skipped
        return None
    err = output_error(model, targets, [data])
    row = {**sub.decisions[0], "node": label, "sparsity": round(o.sparsity, 4), "model_error": round(err, 5)}
    why = None
    if o.budget is not None and err > o.budget:
        why = f"model-output relative error {err:.3g} > budget {o.budget:g} at sparsity {o.sparsity:g}"
    elif o.measure:
        # two fresh pairs of sessions, made in both orders: on a loaded host one session of a pair
        # can run 20x slower than its twin for its whole life (measured on PP-OCR cls), so one pair
        # alone can call anything faster
        for first in (0, 1):
            made = [None, None]
            for i in ((0, 1) if first == 0 else (1, 0)):
                made[i] = ort_session(backup if i == 0 else model, o.threads)
            before, after, _ = timed_ratio(lambda: made[0].run(None, one), lambda: made[1].run(None, one),
                                           1 / (1 - SPEED_MARGIN), max_rounds=o.repeats)
            row.update(ms_before=round(before, 4), ms_after=round(after, 4))
            if after > before * (1 - SPEED_MARGIN):
                why = f"not faster in onnxruntime: {after:.3g} ms pruned vs {before:.3g} ms"
                break
    if why is not None:
        model.restore(backup)
        result.decisions.append({**row, "kept": False, "reason": why})
        return result.decisions[-1]
    reason = "within budget" if o.budget is not None else "refitted"
    if "ms_after" in row:
        reason += f", faster: {row['ms_after']:.3g} vs {row['ms_before']:.3g} ms"
    result.decisions.append({**row, "kept": True, "reason": reason})
    result.rewritten += sub.rewritten
    result.changed = True
    return result.decisions[-1]
