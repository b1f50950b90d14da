"""Sparse-op selection: Gemm/MatMul/1x1-Conv layers with sparse constant weights -> the block-sparse
kernel (tvmlite::SparseMatMul, BSR; CSR is its 1x1 block) where it measures faster than the dense one
on this machine.

    prune(mode=block,block=16x16,sparsity=0.9),sparsify

Per layer every block shape in ``blocks`` that tiles the weight is timed against the dense NumPy
kernel of the original op (interleaved, medians, at the batch of the model's static shapes); the
fastest wins if it beats dense by ``min_speedup``, and the decision is printed with its measured
times. Layers left dense whose weights are mostly zeros are stored as ONNX sparse initializers when
that makes the file smaller (values + int64 indices: below ~1/3 density).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import is_onnx
from tvmlite.errors import OptionError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.export.shapes import static_shapes
from tvmlite.ops.registry import lookup
from tvmlite.ops.sparse import sparse_matmul, to_bsr
from tvmlite.runtime import ort
from tvmlite.backends.numpy.plan import bind_kernel

#: a sparse initializer stores a value (4 bytes for float32) and an int64 index per nonzero
SPARSE_STORAGE_DENSITY = 1 / 3


def time_interleaved(fns: list, repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, timed in turn (tvmlite.runtime.ort.time_interleaved)."""
    return [ms / 1e3 for ms in ort.time_interleaved(fns, repeats, warmup).medians_ms]


@register_pass
class Sparsify(Pass):
    """Block-sparse kernels where measured faster; sparse initializers where smaller."""

    name = "sparsify"

    @dataclass
    class Options:
        #: candidate block shapes "RxC" (R outputs x C inputs); 1x1 is CSR
        blocks: list[str] = ("32x32", "16x16", "8x8", "4x4", "1x1")
        #: the sparse kernel must beat the dense one by this factor
        min_speedup: float = 1.2
        #: layers denser than this are not tried
        max_density: float = 0.5
        #: timing runs per kernel
        repeats: int = 30
        #: store mostly-zero dense weights as ONNX sparse initializers where that shrinks the file
        sparse_initializers: bool = True
        layers: list[str] = ()

    def _blocks(self):
        out = []
        for b in self.options.blocks:
            try:
                r, c = (int(v) for v in b.lower().split("x"))
                assert r > 0 and c > 0
            except (ValueError, AssertionError):
                raise OptionError(f"sparsify: block {b!r} is not RxC with positive integers") from None
            out.append((r, c))
        if not out:
            raise OptionError("sparsify: no block shapes given")
        return out

    def validate(self) -> None:
        o = self.options
        self._blocks()
        if o.min_speedup < 0 or not 0 < o.max_density <= 1 or o.repeats < 1:
            raise OptionError(f"sparsify: min_speedup={o.min_speedup} >= 0, 0 < max_density={o.max_density} <= 1 "
                              f"and repeats={o.repeats} >= 1 required")

    def run(self, model: Model) -> PassResult:
        blocks = self._blocks()
        o = self.options
        result = PassResult(self.name)
        g = model.graph
        shapes = static_shapes(model)
        for node in g.toposort():
            if not is_onnx(node, "Gemm", "MatMul", "Conv"):
                continue
            if o.layers and node.name not in o.layers:
                continue
            layer = self._layer(g, node, shapes)
            if isinstance(layer, str):
                result.skip(node, layer)
                continue
            w, bias, axis, x_shape = layer
            density = float(np.count_nonzero(w)) / w.size
            if density > o.max_density:
                self._dense(g, node, result, density, f"density {density:.2f} > max_density {o.max_density}")
                continue
            choice = self._measure(model, node, w, bias, axis, x_shape, blocks)
            best = choice["best"]
            if best is None or choice["dense_s"] / best[1] < o.min_speedup:
                why = (f"dense kept: best sparse {choice['best_label']} "
                       f"{choice['dense_s'] / best[1] if best else 0:.2f}x < min_speedup {o.min_speedup} "
                       f"(dense {choice['dense_s'] * 1e3:.3f} ms)") if best else "dense kept: no block shape tiles the weight"
                self._dense(g, node, result, density, why, choice)
                continue
            (r, c), secs, (data, indices, indptr) = best
            speed = choice["dense_s"] / secs
            base = node.name or node.op_type.lower()
            b = Builder(model, before=node)
            ins = [node.inputs[0], b.const(data, f"{base}_bsr_data"), b.const(indices, f"{base}_bsr_indices"),
                   b.const(indptr, f"{base}_bsr_indptr")]
            if bias is not None:
                ins.append(b.const(bias.astype(w.dtype), f"{base}_bsr_bias"))
            fmt = "csr" if (r, c) == (1, 1) else "bsr"
            out = b.tvmlite.SparseMatMul(*ins, axis=axis, name_hint=f"{base}_bsr")
            b.replace(node, {node.outputs[0]: out})
            fill = float(np.count_nonzero(data)) / max(data.size, 1)
            reason = (f"{fmt} {r}x{c}: {secs * 1e3:.3f} ms vs dense {choice['dense_s'] * 1e3:.3f} ms "
                      f"({speed:.2f}x) at density {density:.3f}, blocks {fill:.0%} full")
            result.rewrote(node, format=fmt, block=[r, c], density=round(density, 4), speedup=round(speed, 2),
                           dense_ms=round(choice["dense_s"] * 1e3, 4), sparse_ms=round(secs * 1e3, 4),
                           tried=choice["tried"], reason=reason)
        if result.changed:
            g.remove_unused_values()
        return result

    # ------------------------------------------------------------------------------------------
    def _layer(self, g: Graph, node: Node, shapes: dict):
        """(W [K, N], bias [N] or None, reduction axis of x, x shape) or a reason string."""
        if len(node.inputs) < 2:
            return "no weight"
        w = g.const_value(node.inputs[1])
        if w is None or w.dtype.kind != "f":
            return "weight is not a constant float tensor"
        xs = shapes.get(node.inputs[0])
        if xs is None:
            return "input shape unknown"
        if node.op_type == "MatMul":
            if w.ndim != 2 or len(xs) < 2:
                return "MatMul is not [.., K] x [K, N]"
            return w, None, -1, xs
        if node.op_type == "Gemm":
            if node.attrs.get("transA", 0):
                return "Gemm with transA"
            wm = (w.T if node.attrs.get("transB", 0) else w) * np.asarray(node.attrs.get("alpha", 1.0), w.dtype)
            c_name = node.inputs[2] if len(node.inputs) > 2 else ""
            bias = None
            if c_name:
                c = g.const_value(c_name)
                if c is None or (c.ndim > 1 and c.shape[0] != 1):
                    return "Gemm's C is not a constant row vector"
                bias = np.broadcast_to(c.reshape(-1) * float(node.attrs.get("beta", 1.0)), (wm.shape[1],)).copy()
            return wm, bias, -1, xs
        # Conv: only 1x1, stride 1, no padding, one group: a product over the channel axis
        a = node.attrs
        if w.ndim < 3 or any(d != 1 for d in w.shape[2:]):
            return "not a 1x1 conv"
        if int(a.get("group", 1)) != 1 or any(s != 1 for s in (a.get("strides") or [1])) \
                or any(p != 0 for p in (a.get("pads") or [0])) or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "1x1 conv with groups, strides or padding"
        b_name = node.inputs[2] if len(node.inputs) > 2 else ""
        bias = g.const_value(b_name) if b_name else None
        if b_name and bias is None:
            return "bias is not constant"
        return w.reshape(w.shape[0], w.shape[1]).T, bias, 1, xs

    def _measure(self, model: Model, node: Node, w, bias, axis, x_shape, blocks) -> dict:
        g = model.graph
        x = np.random.default_rng(0).standard_normal(x_shape).astype(w.dtype)
        op = lookup(node.op_type, "", model.opset)
        fn, attrs = bind_kernel(op, node, g)
        args = [x] + [g.const_value(n) if n else None for n in node.inputs[1:]]
        while args and args[-1] is None:
            args.pop()

        def dense():
            return fn(*args, **attrs)

        want = np.asarray(dense())
        cands = []
        K, N = w.shape
        for r, c in blocks:
            if K % c or N % r:
                continue
            packed = to_bsr(w, r, c)
            got = sparse_matmul(x, *packed, bias, axis=axis)
            if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max() or 1)):
                continue  # never pick a kernel that disagrees with the dense one
            cands.append(((r, c), packed))
        if not cands:
            return {"best": None, "dense_s": 0.0, "tried": {}, "best_label": "-"}
        fns = [dense] + [(lambda p=p: sparse_matmul(x, *p, bias, axis=axis)) for _, p in cands]
        secs = time_interleaved(fns, self.options.repeats)
        tried = {f"{rc[0]}x{rc[1]}": round(secs[0] / s, 2) for (rc, _), s in zip(cands, secs[1:])}
        i = int(np.argmin(secs[1:]))
        rc, packed = cands[i]
        return {"best": (rc, secs[1 + i], packed), "dense_s": secs[0], "tried": tried,
                "best_label": f"{rc[0]}x{rc[1]}"}

    def _dense(self, g: Graph, node: Node, result: PassResult, density: float, why: str, choice=None):
        note = why
        name = node.inputs[1]
        v = g.values.get(name)
        if (self.options.sparse_initializers and density < SPARSE_STORAGE_DENSITY and v is not None
                and v.is_initializer and name not in g.inputs and not v.sparse):
            v.sparse = True
            result.count("sparse_initializers")
            note += f"; weight stored as a sparse initializer (density {density:.3f})"
        result.skip(node, note)
        result.decisions.append({"node": node.label, "format": "dense", "density": round(density, 4),
                                 "reason": note, **({"tried": choice["tried"]} if choice else {})})
