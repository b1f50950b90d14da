"""subpixel-convtranspose: a chain of ConvTransposes whose kernel equals their stride (2x2, stride 2),
with per-channel affines, BatchNormalizations and activations between them, becomes 1x1 Convs in
sub-pixel space and one DepthToSpace at the end.

A ConvTranspose with kernel = stride K and no padding writes every output pixel from exactly one
input pixel: it is a 1x1 Conv to Cout*K*K channels followed by DepthToSpace(K, CRD). A tensor of C
channels at block B is kept as C*B*B channels at the base resolution (channel c*B*B + u*B + v is
pixel (h*B + u, w*B + v)), so
- a per-channel Mul/Add/Sub or BatchNormalization folds into the Conv before it (its constants
  repeated B*B times), as fuse-conv-affine and fold-bn do;
- an element-wise activation runs unchanged (onnxruntime fuses Relu/Sigmoid... into the Conv);
- the next ConvTranspose (kernel K') is a 1x1 Conv from Cin*B*B to Cout*(B*K')^2 channels whose
  weight is W where the sub-pixel positions line up and 0 elsewhere (B*B times its MACs);
and one DepthToSpace(B) at the end puts the pixels in place.

PP-OCRv4 det's DBNet head (ConvTranspose 2x2 s2 -> +bias -> BatchNormalization -> Relu ->
ConvTranspose 2x2 s2 -> +bias -> Sigmoid, 24 channels at 160x160) in onnxruntime at one thread (CPU
time, interleaved medians of 40 runs): 7.4 ms as 2 Convs + DepthToSpace(4) vs 11.0 ms as the two
ConvTransposes without their Adds and BatchNormalization (which the rewrite removes too). A lone
ConvTranspose does not pay: its DepthToSpace (a 6-D transpose in onnxruntime) of 24 x 320 x 320
took 8.3 ms, more than the ConvTranspose it replaces, so only chains of ``min_convtransposes`` (2)
or more are rewritten. The whole det model: 0.966x of its time with the head rewritten (the fast
preset's speed check, one thread, CPU time: 175.9 vs 182.1 ms, load ~8). Not a clean-up: whether it pays depends on the runtime (optimize's speed
check decides in the fast preset).

Refused (left alone with the reason): group != 1, non-square or non-4-D kernels, kernel != stride,
padding, dilation, output_padding or output_shape, weights or bias not constant floats, a block
beyond ``max_block`` (the dense sub-pixel weights grow as its square), opset < 11 (DepthToSpace CRD).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.errors import OptionError
from tvmlite.passes.base import Pass, PassResult, register_pass
from tvmlite.passes.fusions import per_channel
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Graph, Model, Node
from tvmlite.ops.batchnorm_fold import remove_dead_producers

#: element-wise activations that run the same on a permuted tensor (their other inputs scalars)
ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
               "Clip", "PRelu"}
_ONNX = ("", "ai.onnx")


def kernel_as_stride(g: Graph, ct: Node) -> tuple[int, np.ndarray, np.ndarray] | str:
    """(K, W, bias) of a ConvTranspose that is a 1x1 Conv + DepthToSpace(K), else why not."""
    w = g.const_value(ct.inputs[1]) if len(ct.inputs) > 1 else None
    if w is None or w.dtype.kind != "f" or w.ndim != 4:
        return "weights are not constant 4-D floats"
    b_name = ct.inputs[2] if len(ct.inputs) > 2 else ""
    bias = g.const_value(b_name) if b_name else np.zeros(w.shape[1], w.dtype)
    if bias is None or bias.shape != (w.shape[1],):
        return "bias is not a constant per output channel"
    a = ct.attrs
    k = list(a.get("kernel_shape", w.shape[2:]))
    if int(a.get("group", 1)) != 1:
        return "group != 1"
    if len(k) != 2 or k[0] != k[1] or k[0] < 2 or tuple(k) != w.shape[2:]:
        return f"kernel {k} is not square (2x2 or larger)"
    if list(a.get("strides", [1, 1])) != k:
        return f"strides {list(a.get('strides', [1, 1]))} differ from the kernel {k}"
    if any(a.get("pads", [0] * 4)) or any(a.get("output_padding", [0, 0])) or "output_shape" in a:
        return "padding, output_padding or output_shape"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated"
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad {a.get('auto_pad')}"
    return k[0], w, bias


@dataclass
class _Stage:
    """A 1x1 Conv in sub-pixel space (weight (Co, Ci) and bias, float64) or an activation node."""

    node: Node
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def subpixel_weight(w: np.ndarray, block: int) -> np.ndarray:
    """ConvTranspose weight (Cin, Cout, K, K) as a 1x1 Conv's (Cout*(B*K)^2, Cin*B^2) on a tensor kept
    at block B: row co*(BK)^2 + (u*K+a)*BK + (v*K+b) reads column ci*B^2 + u*B + v with W[ci, co, a, b]."""
    cin, cout, k, _ = w.shape
    m = np.zeros((cout, block, k, block, k, cin, block, block), np.float64)
    wt = w.astype(np.float64).transpose(1, 2, 3, 0)  # (co, a, b, ci)
    for u in range(block):
        for v in range(block):
            m[:, u, :, v, :, :, u, v] = wt
    return m.reshape(cout * (block * k) ** 2, cin * block * block)


def _affine(g: Graph, n: Node, cur: str, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of a Mul/Add/Sub by a constant or an inference BatchNormalization."""
    if n.domain not in _ONNX:
        return None
    if n.op_type == "BatchNormalization":
        params = [g.const_value(i) for i in n.inputs[1:5]]
        if len([o for o in n.outputs if o]) > 1 or n.attrs.get("training_mode", 0) or any(
                p is None or p.shape != (channels,) for p in params):
            return None
        scale, beta, mean, var = (p.astype(np.float64) for p in params)
        s = scale / np.sqrt(var + float(n.attrs.get("epsilon", 1e-5)))
        return s, beta - mean * s
    if n.op_type not in ("Mul", "Add", "Sub") or len(n.inputs) != 2:
        return None
    other = n.inputs[1] if n.inputs[0] == cur else n.inputs[0]
    c = g.const_value(other)
    if c is None or c.dtype.kind != "f" or (n.op_type == "Sub" and n.inputs[0] != cur):
        return None
    v = per_channel(c, 4, channels)
    if v is None:
        return None
    v = v.astype(np.float64)
    if n.op_type == "Mul":
        return v, np.zeros(channels)
    return np.ones(channels), (v if n.op_type == "Add" else -v)


def _activation(g: Graph, n: Node, cur: str) -> bool:
    if n.domain not in _ONNX or n.op_type not in ACTIVATIONS or n.inputs[0] != cur or len(n.outputs) != 1:
        return False
    rest = [i for i in n.inputs[1:] if i]
    return all(g.const_value(i) is not None and g.const_value(i).size == 1 for i in rest)


def _chain(g: Graph, ct: Node, k: int, w: np.ndarray, bias: np.ndarray, max_block: int):
    """(stages, chain nodes, block, ConvTransposes in it) starting at ``ct``."""
    stages = [_Stage(ct, subpixel_weight(w, 1), np.repeat(bias.astype(np.float64), k * k))]
    nodes, block, cts, channels = [ct], k, 1, w.shape[1]
    while True:
        cur = nodes[-1].outputs[0]
        readers = g.consumers(cur)
        if cur in g.outputs or len(readers) != 1 or readers[0].inputs.count(cur) != 1:
            break
        n = readers[0]
        if n.domain in _ONNX and n.op_type == "ConvTranspose" and n.inputs[0] == cur:
            got = kernel_as_stride(g, n)
            if isinstance(got, str) or got[1].shape[0] != channels or block * got[0] > max_block:
                break
            k2, w2, b2 = got
            block *= k2
            stages.append(_Stage(n, subpixel_weight(w2, block // k2), np.repeat(b2.astype(np.float64), block * block)))
            channels, cts = w2.shape[1], cts + 1
        elif stages[-1].weight is not None and (af := _affine(g, n, cur, channels)) is not None:
            s, t = (np.repeat(x, block * block) for x in af)
            last = stages[-1]
            last.weight, last.bias = last.weight * s[:, None], last.bias * s + t
        elif _activation(g, n, cur):
            stages.append(_Stage(n))
        else:
            break
        nodes.append(n)
    return stages, nodes, block, cts


def _emit(model: Model, stages: list[_Stage], nodes: list[Node], block: int, dtype) -> None:
    g = model.graph
    b = Builder(model, before=nodes[-1])
    x = nodes[0].inputs[0]
    for st in stages:
        base = st.node.name or st.node.outputs[0]
        if st.weight is None:
            x = b.make(st.node.op_type, x, *st.node.inputs[1:], attrs=dict(st.node.attrs), name_hint=f"{base}_subpixel")
        else:
            co, ci = st.weight.shape
            x = b.op.Conv(x, b.const(st.weight.reshape(co, ci, 1, 1).astype(dtype), f"{base}_W"),
                          b.const(st.bias.astype(dtype), f"{base}_B"), kernel_shape=[1, 1], name_hint=f"{base}_subpixel")
            if st.node.op_type == "ConvTranspose":
                b.inherit_name(x, st.node)
    out = b.op.DepthToSpace(x, blocksize=block, mode="CRD", name_hint=f"{nodes[-1].name or 'subpixel'}_depth_to_space")
    inputs = [i for n in nodes for i in n.inputs[1:] if i]
    b.replace(nodes[-1], {nodes[-1].outputs[0]: out})
    for n in reversed(nodes[:-1]):
        g.remove_node(n)
    b.settle_names()
    remove_dead_producers(g, inputs)


@register_pass
class SubpixelConvTranspose(Pass):
    """ConvTransposes with kernel = stride chained through affines/activations -> 1x1 Convs in
    sub-pixel space and one DepthToSpace."""

    name = "subpixel-convtranspose"

    @dataclass
    class Options:
        #: rewrite only chains holding this many ConvTransposes or more (one alone does not pay in
        #: onnxruntime: the DepthToSpace costs more than the ConvTranspose saves)
        min_convtransposes: int = 2
        #: largest DepthToSpace block (the sub-pixel weights of a chain hold block^2 times the MACs
        #: of its last ConvTranspose)
        max_block: int = 4

    def validate(self) -> None:
        if self.options.min_convtransposes < 1:
            raise OptionError(f"pass {self.name!r}: min_convtransposes={self.options.min_convtransposes} is below 1")
        if self.options.max_block < 2:
            raise OptionError(f"pass {self.name!r}: max_block={self.options.max_block} is below 2")

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        if model.opset < 11:
            for n in g.nodes:
                if n.op_type == "ConvTranspose":
                    result.skip(n, f"opset {model.opset} < 11 (DepthToSpace CRD)")
            return result
        for ct in g.toposort():
            if ct.graph is None or ct.op_type != "ConvTranspose" or ct.domain not in _ONNX:
                continue
            got = kernel_as_stride(g, ct)
            if isinstance(got, str):
                result.skip(ct, got)
                continue
            if got[0] > self.options.max_block:
                result.skip(ct, f"kernel {got[0]} > max_block {self.options.max_block}")
                continue
            stages, nodes, block, cts = _chain(g, ct, *got, self.options.max_block)
            if cts < self.options.min_convtransposes:
                result.skip(ct, f"a chain of {cts} ConvTranspose(s), fewer than min_convtransposes="
                                f"{self.options.min_convtransposes}")
                continue
            labels = [n.label for n in nodes]
            _emit(model, stages, nodes, block, got[1].dtype)
            result.rewrote(labels[0], chain=labels, block=block)
        result.stats["chains"] = len(result.rewritten)
        return result
