"""Low-rank factorization, the graph side: the nodes of a factorized layer, the rewrite, and timing
the layer against its factorization in onnxruntime; mixed into the LowRank pass (passes/lowrank.py)."""
from __future__ import annotations

import numpy as np

from tvmlite.passes.lowrank_math import Layer
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model
from tvmlite.export.shapes import static_shapes
from tvmlite.passes.base import PassResult
from tvmlite.runtime.ort import fragment, ort_session, timed_ratio


class FactorNodes:
    """Writing and timing planned factorizations: ``self.options`` as LowRank's."""

    # -------------------------------------------------------------------------------- rewrite
    def _emit(self, b: Builder, layer: Layer, plan: dict, opset: int) -> str:
        """Make the factorized layer's nodes with ``b``; returns the value that replaces its output."""
        node = layer.node
        dtype = layer.weight.dtype
        base = node.name or node.op_type.lower()

        def const(arr, suffix):
            return b.const(np.asarray(arr).astype(dtype), f"{base}_{suffix}")

        def conv(ins, attrs, suffix):
            return b.op.Conv(*ins, attrs=attrs, name_hint=f"{base}_{suffix}")

        x = node.inputs[0]
        c = plan.get("c")
        if plan["method"] in ("svd", "svd-1x1"):
            a, bm = plan["A"], plan["B"]  # [in, r], [r, out]
            r = a.shape[1]
            bias = layer.bias if c is None else c
            if plan["method"] == "svd-1x1":
                nd = layer.weight.ndim - 2
                attrs = dict(node.attrs)
                attrs["kernel_shape"] = [1] * nd
                h = conv([x, const(a.T.reshape((r, -1) + (1,) * nd), "lr_U")], attrs, "lr_a")
                ins = [h, const(bm.T.reshape(bm.shape[1], r, *([1] * nd)), "lr_V")]
                if bias is not None:
                    ins.append(const(bias, "lr_B"))
                return conv(ins, {}, "lr_b")
            if node.op_type == "Gemm":
                ins = [x, const(a.T, "lr_U")]
                if opset < 11:
                    ins.append(const(np.zeros(r), "lr_zero"))
                h = b.op.Gemm(*ins, transA=int(node.attrs.get("transA", 0)), transB=1, name_hint=f"{base}_lr_a")
                ins = [h, const(bm.T, "lr_V")]
                c_name = node.inputs[2] if len(node.inputs) > 2 else ""
                if c is not None:
                    ins.append(const(c, "lr_B"))
                elif c_name and layer.bias is not None:
                    ins.append(const(layer.bias, "lr_B"))
                elif c_name:  # a non-constant C passes through as it was
                    return b.op.Gemm(*ins, c_name, transB=1, beta=float(node.attrs.get("beta", 1.0)),
                                     name_hint=f"{base}_lr_b")
                elif opset < 11:
                    ins.append(const(np.zeros(bm.shape[1]), "lr_zero"))
                return b.op.Gemm(*ins, transB=1, name_hint=f"{base}_lr_b")
            h = b.op.MatMul(x, const(a, "lr_U"), name_hint=f"{base}_lr_a")  # MatMul
            if c is not None and np.any(c):
                h2 = b.op.MatMul(h, const(bm, "lr_V"), name_hint=f"{base}_lr_b")
                return b.op.Add(h2, const(c, "lr_B"), name_hint=f"{base}_lr_bias")
            return b.op.MatMul(h, const(bm, "lr_V"), name_hint=f"{base}_lr_b")

        nd = layer.weight.ndim - 2
        geo = layer.geometry
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        one = [1] * nd
        # with a refit, c is the whole offset (the targets include the original bias)
        bias = layer.bias if c is None else c
        if plan["method"] == "tucker2":
            core, ut, us = plan["core"], plan["ut"], plan["us"]
            r3 = us.shape[1]
            h1 = conv([x, const(us.T.reshape((r3, -1) + (1,) * nd), "lr_first")], {"kernel_shape": one}, "lr_first")
            core_attrs = {"kernel_shape": list(core.shape[2:]), "strides": list(geo.strides),
                          "dilations": list(geo.dilations)}
            if auto_pad not in ("NOTSET", b"NOTSET", ""):  # kept: the core then fits any input size
                core_attrs["auto_pad"] = auto_pad
            else:
                core_attrs["pads"] = list(geo.pads)
            h2 = conv([h1, const(core, "lr_core")], core_attrs, "lr_core")
            ins = [h2, const(ut.reshape(ut.shape + (1,) * nd), "lr_last")]
            if bias is not None:
                ins.append(const(bias, "lr_B"))
            return conv(ins, {"kernel_shape": one}, "lr_last")
        # CP: 1x1 S->R, depthwise kh x 1 (stride/dilation/pads of H), depthwise 1 x kw, 1x1 R->T
        last, first, vert, horiz = plan["last"], plan["first"], plan["vert"], plan["horiz"]
        r = first.shape[1]
        kh, kw = vert.shape[0], horiz.shape[0]
        h1 = conv([x, const(first.T.reshape(r, -1, 1, 1), "lr_first")], {"kernel_shape": [1, 1]}, "lr_first")
        p = geo.pads  # explicit [top, left, bottom, right]: each depthwise pads its own axis
        h2 = conv([h1, const(vert.T.reshape(r, 1, kh, 1), "lr_vert")],
                  {"kernel_shape": [kh, 1], "group": r, "strides": [geo.strides[0], 1],
                   "dilations": [geo.dilations[0], 1], "pads": [p[0], 0, p[2], 0]}, "lr_vert")
        h3 = conv([h2, const(horiz.T.reshape(r, 1, 1, kw), "lr_horiz")],
                  {"kernel_shape": [1, kw], "group": r, "strides": [1, geo.strides[1]],
                   "dilations": [1, geo.dilations[1]], "pads": [0, p[1], 0, p[3]]}, "lr_horiz")
        ins = [h3, const(last.reshape(last.shape[0], r, 1, 1), "lr_last")]
        if bias is not None:
            ins.append(const(bias, "lr_B"))
        return conv(ins, {"kernel_shape": [1, 1]}, "lr_last")

    def _nodes(self, g: Graph, layer: Layer, plan: dict, opset: int) -> tuple[list, dict, str]:
        """(node specs, initializers {name: array}, output name) of the factorized layer, made in a
        scratch graph: the single-layer models that time it are built from these."""
        scratch = Graph("scratch")
        out = self._emit(Builder(scratch), layer, plan, opset).name
        specs = [(n.op_type, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in scratch.toposort()]
        consts = {n: scratch.values[n].const for n in scratch.initializers}
        return specs, consts, out

    def _rewrite(self, g: Graph, layer: Layer, plan: dict, opset: int, b: Builder | None = None) -> None:
        """``b``: the run's builder, if the caller keeps one (else a new one: it scans the model)."""
        b = b.at(before=layer.node) if b is not None else Builder(g, before=layer.node)
        out = self._emit(b, layer, plan, opset)
        b.replace(layer.node, {layer.node.outputs[0]: out})

    def _run_fixed(self, model: Model, planned: dict) -> PassResult:
        """Write the factors an earlier run planned (a replay): no captures, fits or timing."""
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        plans = planned.get("plans", {})
        shapes = planned.get("shapes") or static_shapes(model)  # the planning run's
        result.replay = {"plans": {}, "shapes": shapes}
        for node in g.toposort():
            if node.label not in plans or node.name in o.exclude or node.label in o.exclude:
                continue
            layer = self._layer(model, node, shapes, result)
            if layer is None:
                continue
            plan = plans[node.label]
            self._rewrite(g, layer, plan, model.opset)
            result.replay["plans"][node.label] = plan
            result.rewrote(node, kept=True, **self._summary(plan, layer))
        if result.changed:
            g.remove_unused_values()
        result.stats["factorized"] = len(result.rewritten)
        return result

    # -------------------------------------------------------------------------------- measure
    def _measure(self, model: Model, layer: Layer, plan: dict, repeats: int = 30) -> float:
        """Median onnxruntime time of the original layer over the factorized one, alone, batch as in
        the model's static shapes, timed interleaved. Both are fragments of the layer's node (at
        opset 11 at least, what the factorization writes); the second is factorized in place."""
        import dataclasses

        x = layer.node.inputs[0]
        if layer.in_shape is None:
            return float("inf")
        opset = max(model.opset, 11)
        out = [layer.node.outputs[0]]
        cut = dict(outputs=out, opset=opset, dtypes={x: layer.weight.dtype})
        orig = fragment(model, [layer.node], {x: layer.in_shape}, **cut)
        new = fragment(model, [layer.node], {x: layer.in_shape}, **cut)
        self._rewrite(new.graph, dataclasses.replace(layer, node=new.graph.producer(out[0])), plan, opset)
        new.graph.remove_unused_values()  # the unfactorized weights
        feeds = {x: np.random.default_rng(0).standard_normal(layer.in_shape).astype(layer.weight.dtype)}
        s0, s1 = ort_session(orig, threads=2), ort_session(new, threads=2)
        # more rounds only where the speedup is close to min_speedup
        t0, t1, _ = timed_ratio(lambda: s0.run(None, feeds), lambda: s1.run(None, feeds),
                                self.options.min_speedup, max_rounds=repeats, warmup=3)
        return float(t0 / max(t1, 1e-12))
