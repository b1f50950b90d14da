"""simplify: every clean-up family, repeated until nothing changes, as one pass.

One pass rather than a list so that a checked pipeline (`optimize --preset clean`) measures the model
once for all of them: each checked pass costs an onnxruntime session and timed runs, which took
95% of the clean preset's time on PP-OCR rec (cProfile: 26 of 29 s). Everything here except
fuse-conv-affine leaves onnxruntime's outputs bit-identical (fold-bn folds Conv+BN with onnxruntime's
own arithmetic), so the preset checks fuse-conv-affine separately and can undo it alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.cleanup import DeadCodeElimination, FoldBatchNorm, FoldConstants, InferShapes, RemoveIdentity
from tvmlite.passes.constants import LiftConstants, constants_as_nodes
from tvmlite.passes.cse import CommonSubexpressions
from tvmlite.passes.fusions import FuseConvAffine, MatMulAddToGemm
from tvmlite.passes.redundant import RemoveRedundant
from tvmlite.passes.shape_fold import FoldShapes
from tvmlite.ir.graph import Model

#: the order of one round: constants first (so every later rule sees weights), shape chains before
#: the redundancy rules that read static shapes, fusions before CSE, dead code last
FAMILIES = (LiftConstants, FoldConstants, FoldShapes, RemoveIdentity, RemoveRedundant, FoldBatchNorm,
            FuseConvAffine, MatMulAddToGemm, CommonSubexpressions, DeadCodeElimination)

#: families that can only act when one of these op types is in the graph: the others are not run
#: (each run sorts the graph: 0.5 s a time on a 100k-node chain)
TRIGGERS = {LiftConstants: {"Constant"}, FoldShapes: {"Shape"}, RemoveIdentity: {"Identity", "Dropout"},
            RemoveRedundant: {"Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"},
            FoldBatchNorm: {"BatchNormalization"}, FuseConvAffine: {"Conv"}, MatMulAddToGemm: {"MatMul"}}


@register_pass
class Simplify(Pass):
    """Run lift-constants, fold-constants, fold-shapes, remove-identity, remove-redundant, fold-bn,
    fuse-conv-affine, matmul-add-to-gemm, cse and dce in rounds until a round changes nothing, then
    record the inferred types (infer-shapes)."""

    name = "simplify"
    cleanup = True

    @dataclass
    class Options:
        #: rounds at most: a Reshape whose shape fold-shapes rewrote lets shape inference see past
        #: it, which exposes the next chain (PP-OCR rec needs 4 rounds)
        rounds: int = 8
        #: fold MatMul+Add into Gemm (onnxruntime does the same at load)
        gemm: bool = True
        #: fold per-channel Mul/Add/Sub into Conv weights; this changes float rounding where
        #: onnxruntime would not fuse the pair itself, so --preset clean runs it as its own checked pass
        affine: bool = True
        #: record the inferred types at the end, as infer-shapes does
        infer: bool = True

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        o = self.options
        passes = [cls() for cls in FAMILIES
                  if (o.gemm or cls is not MatMulAddToGemm) and (o.affine or cls is not FuseConvAffine)]
        skipped: dict[str, list] = {}  # per family, its skips in the latest round it ran
        changes = 0  # rewrites so far: a family that saw the graph at this count would find nothing new
        seen_at: dict[str, int] = {}
        rounds = 0
        while rounds < max(self.options.rounds, 1):
            rounds += 1
            before = changes
            present = {n.op_type for n in model.graph.nx.nodes}
            for p in passes:
                if seen_at.get(p.name) == changes or not TRIGGERS.get(type(p), present) & present:
                    continue
                r = p(model)
                skipped[p.name] = [(node, f"{p.name}: {why}") for node, why in r.skipped]
                if r.changed:
                    changes += 1
                    result.changed = True
                    for key, n in r.stats.items():
                        if isinstance(n, int):
                            result.stats[f"{p.name}.{key}"] = result.stats.get(f"{p.name}.{key}", 0) + n
                    result.rewritten.extend(r.rewritten)
                    seen_at.pop(p.name, None)  # its own rewrite may expose more for it (fold-shapes)
                else:
                    seen_at[p.name] = changes
            if changes == before:
                break
        result.skipped = [s for p in passes for s in skipped.get(p.name, [])]
        result.stats["constants_as_nodes"] = constants_as_nodes(model)
        result.stats["rounds"] = rounds
        if self.options.infer:
            g = model.graph
            declared = {n: g.values[n].type for n in g.outputs if n in g.values}
            result.count("values_typed", InferShapes()(model).stats.get("values_typed", 0))
            for name, tp in declared.items():  # graph outputs keep the type the model declares
                if tp is not None:
                    g.values[name].type = tp
        return result
