"""Low-rank factorization, the graph side: the nodes of a factorized layer, the rewrite, and timing
the layer against its factorization in onnxruntime; mixed into the LowRank pass (passes/lowrank.py)."""
from __future__ import annotations

import numpy as np

from tvmlite.passes.lowrank_math import Layer, conv_attrs
from tvmlite.ir.graph import Graph, Model
from tvmlite.ir.shapes import static_shapes
from tvmlite.passes.base import PassResult


class FactorNodes:
    """Writing and timing planned factorizations: ``self.options`` as LowRank's."""

    # -------------------------------------------------------------------------------- rewrite
    def _nodes(self, g: Graph, layer: Layer, plan: dict, opset: int) -> tuple[list, list]:
        """(node specs, new initializers {name: array}) of the factorized layer; names are fresh."""
        node = layer.node
        dtype = layer.weight.dtype
        base = node.name or node.op_type.lower()
        consts: dict[str, np.ndarray] = {}
        taken: set = {n.name for n in g.nx.nodes}  # node names too: onnxruntime refuses duplicates

        def const(arr, suffix):
            name = g.fresh_name(f"{base}_{suffix}")
            while name in taken:
                name = g.fresh_name(f"{name}_")
            taken.add(name)
            consts[name] = np.ascontiguousarray(np.asarray(arr).astype(dtype))
            return name

        def tmp(suffix):
            name = g.fresh_name(f"{base}_{suffix}")
            while name in taken:
                name = g.fresh_name(f"{name}_")
            taken.add(name)
            return name

        x, y = node.inputs[0], node.outputs[0]
        out = tmp("lr_out")
        specs = []
        c = plan.get("c")
        if plan["method"] in ("svd", "svd-1x1"):
            a, b = plan["A"], plan["B"]  # [in, r], [r, out]
            r = a.shape[1]
            bias = layer.bias if c is None else c
            h = tmp("lr_mid")
            if plan["method"] == "svd-1x1":
                attrs = dict(node.attrs)
                attrs["kernel_shape"] = [1] * (layer.weight.ndim - 2)
                specs.append(("Conv", [x, const(a.T.reshape((r, -1) + (1,) * (layer.weight.ndim - 2)), "lr_U")],
                              [h], attrs, {"name": tmp(f"{base}_lr_a")}))
                ins = [h, const(b.T.reshape(b.shape[1], r, *([1] * (layer.weight.ndim - 2))), "lr_V")]
                if bias is not None:
                    ins.append(const(bias, "lr_B"))
                specs.append(("Conv", ins, [out], {}, {"name": tmp(f"{base}_lr_b")}))
            elif node.op_type == "Gemm":
                t_a = int(node.attrs.get("transA", 0))
                ins = [x, const(a.T, "lr_U")]
                if opset < 11:
                    ins.append(const(np.zeros(r), "lr_zero"))
                specs.append(("Gemm", ins, [h], {"transA": t_a, "transB": 1}, {"name": tmp(f"{base}_lr_a")}))
                ins = [h, const(b.T, "lr_V")]
                c_name = node.inputs[2] if len(node.inputs) > 2 else ""
                if c is not None:
                    ins.append(const(c, "lr_B"))
                elif c_name and layer.bias is not None:
                    ins.append(const(layer.bias, "lr_B"))
                elif c_name:  # a non-constant C passes through as it was
                    ins.append(c_name)
                    specs.append(("Gemm", ins, [out], {"transB": 1, "beta": float(node.attrs.get("beta", 1.0))},
                                  {"name": tmp(f"{base}_lr_b")}))
                    return specs, consts, out
                elif opset < 11:
                    ins.append(const(np.zeros(b.shape[1]), "lr_zero"))
                specs.append(("Gemm", ins, [out], {"transB": 1}, {"name": tmp(f"{base}_lr_b")}))
            else:  # MatMul
                specs.append(("MatMul", [x, const(a, "lr_U")], [h], {}, {"name": tmp(f"{base}_lr_a")}))
                if c is not None and np.any(c):
                    h2 = tmp("lr_mm")
                    specs.append(("MatMul", [h, const(b, "lr_V")], [h2], {}, {"name": tmp(f"{base}_lr_b")}))
                    specs.append(("Add", [h2, const(c, "lr_B")], [out], {}, {"name": tmp(f"{base}_lr_bias")}))
                else:
                    specs.append(("MatMul", [h, const(b, "lr_V")], [out], {}, {"name": tmp(f"{base}_lr_b")}))
            return specs, consts, out

        nd = layer.weight.ndim - 2
        a = conv_attrs(node, nd)
        one = [1] * nd
        # with a refit, c is the whole offset (the targets include the original bias)
        bias = layer.bias if c is None else c
        if plan["method"] == "tucker2":
            core, ut, us = plan["core"], plan["ut"], plan["us"]
            r3, r4 = us.shape[1], ut.shape[1]
            h1, h2 = tmp("lr_in"), tmp("lr_core")
            specs.append(("Conv", [x, const(us.T.reshape((r3, -1) + (1,) * nd), "lr_first")], [h1],
                          {"kernel_shape": one}, {"name": tmp(f"{base}_lr_first")}))
            core_attrs = {"kernel_shape": list(core.shape[2:]), "strides": a["strides"],
                          "dilations": a["dilations"]}
            if a["auto_pad"] not in ("NOTSET", b"NOTSET", ""):
                core_attrs["auto_pad"] = a["auto_pad"]
            else:
                core_attrs["pads"] = a["pads"]
            specs.append(("Conv", [h1, const(core, "lr_core")], [h2], core_attrs,
                          {"name": tmp(f"{base}_lr_core")}))
            ins = [h2, const(ut.reshape(ut.shape + (1,) * nd), "lr_last")]
            if bias is not None:
                ins.append(const(bias, "lr_B"))
            specs.append(("Conv", ins, [out], {"kernel_shape": one}, {"name": tmp(f"{base}_lr_last")}))
            return specs, consts, out
        # CP: 1x1 S->R, depthwise kh x 1 (stride/dilation/pads of H), depthwise 1 x kw, 1x1 R->T
        last, first, vert, horiz = plan["last"], plan["first"], plan["vert"], plan["horiz"]
        r = first.shape[1]
        kh, kw = vert.shape[0], horiz.shape[0]
        h1, h2, h3 = tmp("lr_in"), tmp("lr_v"), tmp("lr_h")
        specs.append(("Conv", [x, const(first.T.reshape(r, -1, 1, 1), "lr_first")], [h1],
                      {"kernel_shape": [1, 1]}, {"name": tmp(f"{base}_lr_first")}))
        p = layer.pads  # explicit [top, left, bottom, right]: each depthwise pads its own axis
        specs.append(("Conv", [h1, const(vert.T.reshape(r, 1, kh, 1), "lr_vert")], [h2],
                      {"kernel_shape": [kh, 1], "group": r, "strides": [a["strides"][0], 1],
                       "dilations": [a["dilations"][0], 1], "pads": [p[0], 0, p[2], 0]},
                      {"name": tmp(f"{base}_lr_vert")}))
        specs.append(("Conv", [h2, const(horiz.T.reshape(r, 1, 1, kw), "lr_horiz")], [h3],
                      {"kernel_shape": [1, kw], "group": r, "strides": [1, a["strides"][1]],
                       "dilations": [1, a["dilations"][1]], "pads": [0, p[1], 0, p[3]]},
                      {"name": tmp(f"{base}_lr_horiz")}))
        ins = [h3, const(last.reshape(last.shape[0], r, 1, 1), "lr_last")]
        if bias is not None:
            ins.append(const(bias, "lr_B"))
        specs.append(("Conv", ins, [out], {"kernel_shape": [1, 1]}, {"name": tmp(f"{base}_lr_last")}))
        return specs, consts, out

    def _rewrite(self, g: Graph, layer: Layer, plan: dict, opset: int) -> None:
        specs, consts, out = self._nodes(g, layer, plan, opset)
        for name, arr in consts.items():
            g.add_initializer(name, arr)
        g.replace_node_with(layer.node, specs, outputs=[out])

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

        from tvmlite.runtime.ort import fragment, ort_session, timed_ratio

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
