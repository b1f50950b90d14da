"""From a tvmlite Graph to TVM kernels: fix shapes, fold, pick an emitter per node, fuse.

`prepare` copies the model, fixes its input shapes, folds everything constant (including Shape
of static tensors, so shape arithmetic disappears) and folds BatchNormalization into the
producing conv/GEMM. `lower` walks the result in topological order: each node is an anchor
(Conv, Gemm, MatMul, pool, softmax, reduction, or the first of a run of elementwise ops), a view
(Reshape, Flatten, ... share their input's buffer) or a problem. Elementwise ops that follow an
anchor through a value nobody else reads become the anchor's epilogue.

`unsupported_ops` lists every node the backend cannot emit (op and reason) in one pass, without
importing TVM's compiler.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

import numpy as np

from tvmlite.errors import InputError, UnsupportedError
from tvmlite.ir.graph import Model, Node, tensor_type, type_shape

ONNX = ("", "ai.onnx")
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
CROSSABLE_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}  # an epilogue may continue behind them
UNARY_OPS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
             "Erf", "Floor", "Ceil", "HardSigmoid", "HardSwish", "Clip", "Elu", "Softplus", "Gelu"}
BINARY_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "PRelu"}
TVMLITE_OPS = {"Im2Col", "WinogradInput", "WinogradOutput", "MecLower", "MecMatMul"}  # tvmlite's own (conv-lowering) ops
EW_OPS = UNARY_OPS | BINARY_OPS | {"BatchNormalization"}
#: an epilogue is one nested TE expression: TVM's C++ passes recurse over it, and a 10,000-op chain
#: overflowed their stack (SIGSEGV). Real epilogues are a few ops (bias, BN, activation, residual);
#: a longer chain continues in the next kernel.
MAX_EPILOGUE_OPS = 64
ANCHOR_OPS = {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
              "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
              "ReduceSumSquare", "Concat", "Transpose", "Slice", "LRN", "ConvTranspose", "Resize", "Upsample"}


# -------------------------------------------------------------------------------- elementwise chains
@dataclass
class EwOp:
    """One elementwise op: ``op`` applied to the running value and ``operands``
    (("value", name, shape) or ("const", array)), ONNX-broadcast to the output."""
    op: str
    operands: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    first: int = 0  # position of the running value among the op's inputs (Sub/Div are not symmetric)
    shape: tuple | None = None  # the op's index space when a view (Reshape...) came between: the
    # kernel's output index is flattened and unflattened into it; None: the kernel's own shape


@dataclass
class Epilogue:
    """Elementwise ops applied, in order, to a kernel's value before it is stored."""
    ops: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------ prepare
def prepare(model: Model, input_shapes: dict) -> tuple[Model, dict[str, tuple]]:
    """A folded copy of ``model`` with static shapes, and the shape of every value."""
    from tvmlite.passes.cleanup import DeadCodeElimination, FoldBatchNorm, FoldConstants, RemoveIdentity
    from tvmlite.inputs import graph_inputs

    m = model.copy()
    g = m.graph
    # inputs with an initializer (IR < 4 lists every weight as an input) are built in as constants
    g.inputs = [n for n in g.inputs if n not in g.initializers]
    m.ir_version = max(m.ir_version, 7)  # so shape inference reads initializers that are not inputs
    for name in graph_inputs(g):
        if name not in input_shapes:
            raise InputError(f"no shape for input {name!r}")
        v = g.values[name]
        v.type = tensor_type(v.dtype or np.float32, input_shapes[name])
    for _ in range(8):  # Shape -> constant -> fold, until shape arithmetic is gone
        shapes = _shapes(m)
        changed = _fold_static_shapes(m, shapes)
        changed |= FoldConstants(max_growth=float("inf"))(m).changed
        if not changed:
            break
    FoldBatchNorm()(m)
    RemoveIdentity()(m)
    DeadCodeElimination()(m)
    return m, _shapes(m)


def _shapes(m: Model) -> dict[str, tuple]:
    from tvmlite.export.shapes import inferred_types

    # passing the input shapes makes inference drop recorded (possibly symbolic) types first
    types = inferred_types(m, {n: m.graph.values[n].shape for n in m.graph.inputs
                               if m.graph.values[n].shape is not None})
    out = {}
    for name, v in m.graph.values.items():
        s = v.shape if v.is_initializer else type_shape(types.get(name, v.type))
        if s is not None and all(isinstance(d, int) and d >= 0 for d in s):
            out[name] = tuple(int(d) for d in s)
    for name in m.graph.inputs:  # inference may drop what we set
        s = m.graph.values[name].shape
        if s is not None and all(isinstance(d, int) for d in s):
            out[name] = tuple(s)
    return out


def _fold_static_shapes(m: Model, shapes: dict) -> bool:
    g = m.graph
    changed = False
    for node in g.toposort():
        if node.domain in ONNX and node.op_type in ("Shape", "Size") and node.inputs[0] in shapes \
                and node.outputs[0] not in g.outputs:
            s = np.array(shapes[node.inputs[0]], np.int64)
            if node.op_type == "Size":
                arr = np.array(int(np.prod(s)), np.int64)
            else:
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                arr = s[start:end]
            g.remove_node(node, remove_outputs=False)
            g.add_initializer(node.outputs[0], arr)
            changed = True
    return changed


# -------------------------------------------------------------------------------------------- lower
@dataclass
class Lowered:
    kernels: list = field(default_factory=list)       # KernelDef in execution order
    views: dict = field(default_factory=dict)         # value -> value whose buffer it shares
    shapes: dict = field(default_factory=dict)
    consts: dict = field(default_factory=dict)        # graph outputs that are constants
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


class Lowering:
    def __init__(self, model: Model, shapes: dict, lanes: int = 16, emit: bool = True):
        self.m = model
        self.g = model.graph
        self.shapes = shapes
        self.lanes = lanes
        self.emit = emit  # False: only check what can be emitted (no TVM needed)
        self.absorbed: set = set()
        self.problems: collections.Counter = collections.Counter()
        self.kernels: list = []
        self.keys: list = []
        self.views: dict[str, str] = {}
        self.opset = model.opset

    # --------------------------------------------------------------------------------- helpers
    def const(self, name: str):
        return self.g.const_value(name) if name else None

    def shape(self, name: str) -> tuple:
        c = self.const(name)
        if c is not None:
            return tuple(c.shape)
        if name not in self.shapes:
            raise UnsupportedError("an input shape is not static")
        return self.shapes[name]

    def check_float(self, node: Node) -> None:
        for name in list(node.inputs[:1]) + list(node.outputs[:1]):
            if not name:
                continue
            v = self.g.value(name)
            dt = v.dtype if v.dtype is not None else (self.const(name).dtype if self.const(name) is not None else None)
            if dt is not None and np.dtype(dt) != np.float32:
                raise UnsupportedError(f"dtype {np.dtype(dt)} (only float32 is emitted)")

    def operand(self, name: str):
        c = self.const(name)
        if c is not None:
            if c.dtype.kind != "f":
                raise UnsupportedError(f"non-float operand {name!r}")
            return ("const", c.astype(np.float32))
        return ("value", name, self.shape(name))

    # ------------------------------------------------------------------------- elementwise ops
    def ewops(self, node: Node, running: str | None):
        """EwOps computing ``node`` from the running value (None: the node starts a chain and its
        first input is the running value). Returns (ops, first operand) or raises."""
        op = node.op_type
        ins = [n for n in node.inputs]
        a = dict(node.attrs)
        if op in ("Identity", "Dropout"):
            if len([o for o in node.outputs if o and self.g.num_uses(o)]) > 1:
                raise UnsupportedError("Dropout mask output")
            return [EwOp("Identity")], ins[0]
        if op == "BatchNormalization":
            if a.get("training_mode", 0) or len([o for o in node.outputs if o]) > 1:
                raise UnsupportedError("training-mode BatchNormalization")
            p = [self.const(n) for n in ins[1:5]]
            if any(x is None for x in p):
                raise UnsupportedError("BatchNormalization with non-constant parameters")
            scale, beta, mean, var = (x.astype(np.float64) for x in p)
            s = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))
            rank = len(self.shape(ins[0]))
            shp = (-1,) + (1,) * (rank - 2)
            return [EwOp("Mul", [("const", s.astype(np.float32).reshape(shp))]),
                    EwOp("Add", [("const", (beta - mean * s).astype(np.float32).reshape(shp))])], ins[0]
        if op in UNARY_OPS:
            if op == "Clip":
                if self.opset < 11 or ("min" in a or "max" in a):
                    lo, hi = a.get("min"), a.get("max")
                else:
                    lo_c = self.const(ins[1]) if len(ins) > 1 and ins[1] else None
                    hi_c = self.const(ins[2]) if len(ins) > 2 and ins[2] else None
                    if (len(ins) > 1 and ins[1] and lo_c is None) or (len(ins) > 2 and ins[2] and hi_c is None):
                        raise UnsupportedError("Clip with non-constant bounds")
                    lo = None if lo_c is None else float(lo_c)
                    hi = None if hi_c is None else float(hi_c)
                return [EwOp("Clip", attrs={"min": lo, "max": hi})], ins[0]
            return [EwOp(op, attrs=a)], ins[0]
        if op in BINARY_OPS:
            names = [n for n in ins if n]
            if running is None:
                run, rest, first = names[0], names[1:], 0
            else:
                if names.count(running) != 1:
                    raise UnsupportedError("value used twice by one op")
                first = names.index(running)
                run, rest = running, [n for n in names if n != running]
            if op in ("Sum", "Max", "Min") and len(names) != 2:
                return [EwOp(op, [self.operand(n) for n in rest])], run
            if len(rest) != 1:
                raise UnsupportedError(f"{op} with {len(names)} inputs")
            if op == "Pow" and self.const(rest[0]) is None:
                raise UnsupportedError("Pow with a non-constant exponent")
            return [EwOp(op, [self.operand(rest[0])], first=first)], run
        raise UnsupportedError("not an elementwise op")

    def absorb(self, value: str, out_shape: tuple):
        """Elementwise consumers of ``value`` that can be folded into its producer's epilogue."""
        ops = []
        kernel_shape = cur_shape = tuple(out_shape)
        while len(ops) < MAX_EPILOGUE_OPS:
            cons = self.g.consumers(value)
            if len(cons) != 1 or self.g.num_uses(value) != 1 or value in self.g.outputs:
                break
            c = cons[0]
            if c in self.absorbed or c.domain not in ONNX:
                break
            if c.op_type in CROSSABLE_VIEWS:
                # an elementwise op behind a view (lower-conv's MatMul -> Reshape -> BN, say) still
                # joins the epilogue, in the view's index space; the kernel writes the view's buffer
                view_shape = self.shapes.get(c.outputs[0])
                nxt = self.g.consumers(c.outputs[0])
                if view_shape is None or int(np.prod(view_shape)) != int(np.prod(cur_shape)) \
                        or self.g.num_uses(c.outputs[0]) != 1 or c.outputs[0] in self.g.outputs \
                        or len(nxt) != 1 or nxt[0].domain not in ONNX or nxt[0].op_type not in EW_OPS \
                        or self.shapes.get(nxt[0].outputs[0]) != view_shape:
                    break
                self.absorbed.add(c)
                value, cur_shape = c.outputs[0], view_shape
                continue
            if c.op_type not in EW_OPS | {"Identity", "Dropout"}:
                break
            out = c.outputs[0]
            out_shape = cur_shape
            if self.shapes.get(out) != tuple(out_shape):
                break
            try:
                self.check_float(c)
                new, _ = self.ewops(c, value)
                for op in new:  # operands must be readable in the kernel's index space
                    for o in op.operands:
                        shp = o[2] if o[0] == "value" else np.shape(o[1])
                        if len(shp) > len(out_shape) or any(
                                d not in (1, od) for d, od in zip(shp[::-1], out_shape[::-1])):
                            raise UnsupportedError("broadcast grows the output")
            except UnsupportedError:
                break
            for op in new:
                op.shape = None if cur_shape == kernel_shape else cur_shape
            ops.extend(new)
            self.absorbed.add(c)
            value = out
        return Epilogue(ops), value

    # ---------------------------------------------------------------------------------- walk
    def run(self) -> Lowered:
        g = self.g
        order = g.toposort()
        self.pos = {n: i for i, n in enumerate(order)}
        for node in order:
            if node in self.absorbed:
                continue
            if node.op_type == "Constant" and node.domain in ONNX:
                continue
            try:
                if node.domain == "tvmlite" and node.op_type in TVMLITE_OPS:
                    self.check_float(node)
                    getattr(self, f"lower_tvmlite_{node.op_type.lower()}")(node)
                    continue
                if node.domain == "tvmlite":
                    raise UnsupportedError("tvmlite op without a TVM emitter")
                if node.domain not in ONNX:
                    raise UnsupportedError(f"domain {node.domain!r}")
                if node.subgraphs:
                    raise UnsupportedError("control flow")
                if all(self.const(n) is not None for n in node.inputs if n) and node.inputs:
                    raise UnsupportedError("constant computation left unfolded")
                self.lower_node(node)
            except UnsupportedError as e:
                self.problems[f"{node.op_type} ({e})"] += 1
        if self.problems:
            return None
        # a fused kernel runs where its last node was: the operands of its epilogue (a residual
        # made by a later branch, say) are ready by then
        self.kernels = [k for _, k in sorted(zip(self.keys, self.kernels), key=lambda t: t[0])]
        low = Lowered(self.kernels, self.views, self.shapes)
        from tvmlite.inputs import graph_inputs

        low.inputs = [(n, self.shape(n)) for n in graph_inputs(g)]
        low.outputs = list(g.outputs)
        for o in g.outputs:
            c = self.const(o)
            if c is not None:
                low.consts[o] = c
        return low

    def kernel_name(self, node: Node) -> str:
        base = re.sub(r"[^0-9A-Za-z_]", "_", node.name or node.outputs[0])[:40]
        return f"k{len(self.kernels):03d}_{node.op_type.lower()}_{base}"

    def lower_node(self, node: Node) -> None:
        op = node.op_type
        if op in VIEW_OPS:
            if op == "Dropout" and len([o for o in node.outputs if o and self.g.num_uses(o)]) > 1:
                raise UnsupportedError("Dropout mask output")
            out = node.outputs[0]
            if int(np.prod(self.shape(out))) != int(np.prod(self.shape(node.inputs[0]))):
                raise UnsupportedError("view changes the element count")
            self.check_float(node)
            src = node.inputs[0]
            self.views[out] = self.views.get(src, src)
            return
        self.check_float(node)
        if op in ANCHOR_OPS:
            getattr(self, f"lower_{op.lower()}", self.lower_other)(node)
        elif op in EW_OPS:
            self.lower_elementwise(node)
        else:
            raise UnsupportedError("no TVM emitter")

    def add(self, kd_factory, node: Node, out: str, epi_nodes=(), key=None):
        # key: run position for a kernel whose output is no graph value (a node's first half)
        self.keys.append(self.pos[self.g.producer(out)] if key is None else key)
        if self.emit:
            kd = kd_factory()
            kd.nodes = [node.label] + list(epi_nodes)
            self.kernels.append(kd)
        else:
            self.kernels.append(None)

    def _epilogue(self, node: Node):
        out = node.outputs[0]
        before = set(self.absorbed)
        epi, final = self.absorb(out, self.shape(out))
        return epi, final, [n.label for n in self.absorbed - before]

    # --------------------------------------------------------------------------------- anchors
    def const_input(self, node: Node, index: int, what: str, required: bool = False):
        """The constant array at input ``index`` (None when the optional input is absent);
        UnsupportedError when it is given but not constant."""
        name = node.inputs[index] if len(node.inputs) > index else ""
        c = self.const(name) if name else None
        if c is None and (name or required):
            raise UnsupportedError(f"non-constant {what}")
        return c

    def conv_operands(self, node: Node):
        """(input, constant weights, constant bias or None, input shape, spatial rank) of a
        Conv/ConvTranspose the backend can emit (1-D or 2-D), else UnsupportedError."""
        x = node.inputs[0]
        w = self.const_input(node, 1, "weights", required=True)
        bias = self.const_input(node, 2, "bias")
        xs = self.shape(x)
        if len(xs) not in (3, 4):
            raise UnsupportedError(f"{len(xs) - 2}-D {node.op_type}")
        return x, w, bias, xs, len(xs) - 2

    def lower_conv(self, node: Node) -> None:
        from tvmlite.ops.conv import resolve_pads

        x, w, bias, xs, nsp = self.conv_operands(node)
        a = node.attrs
        kshape = list(a.get("kernel_shape") or w.shape[2:])
        strides = list(a.get("strides") or [1] * nsp)
        dil = list(a.get("dilations") or [1] * nsp)
        pads = resolve_pads(a.get("auto_pad", "NOTSET"), xs[2:], kshape, strides, dil, a.get("pads"))
        if nsp == 1:  # 1-D as 2-D with a unit height
            xs = (xs[0], xs[1], 1, xs[2])
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
            strides, dil, pads = [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
        else:
            pads = [pads[0], pads[1], pads[2], pads[3]]
        group = int(a.get("group", 1))
        c = xs[1]
        if group == c and group > 1 and w.shape[1] == 1 and w.shape[0] % c == 0:
            factory = "depthwise"
        elif c % group == 0 and w.shape[0] % group == 0 and w.shape[1] * group == c:
            factory = "gemm"
        else:
            raise UnsupportedError(f"group={group} does not fit {c} input and {w.shape[0]} output channels")
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        w32 = w.astype(np.float32)
        b32 = None if bias is None else bias.astype(np.float32)

        def make():
            from tvmlite.backends.tvm import kernels as K

            kw = {"group": group} if factory == "gemm" else {}
            fn = K.conv2d if factory == "gemm" else K.depthwise_conv2d
            return fn(name, x, xs, w32, b32, pads=tuple(pads), strides=tuple(strides),
                      dilations=tuple(dil), out_value=final, epilogue=epi, lanes=self.lanes, **kw)
        self.add(make, node, final, labels)

    def lower_gemm(self, node: Node) -> None:
        a = node.attrs
        A, B = node.inputs[0], node.inputs[1]
        Cn = node.inputs[2] if len(node.inputs) > 2 else ""
        w = self.const(B)
        if w is None or self.const(A) is not None:
            raise UnsupportedError("Gemm whose B is not constant")
        if a.get("transB", 0):
            w = w.T
        w = w.astype(np.float64) * float(a.get("alpha", 1.0))
        n_out = w.shape[1]
        bias = None
        extra = []
        if Cn:
            c = self.const(Cn)
            if c is None:
                extra = [("value", Cn)]
            else:
                c = c.astype(np.float64) * float(a.get("beta", 1.0))
                if c.size == 1 or c.shape in ((n_out,), (1, n_out)):
                    bias = np.broadcast_to(c.reshape(-1), (n_out,)).astype(np.float32)
                else:
                    extra = [("const", c.astype(np.float32))]
        if extra and extra[0][0] == "value" and float(a.get("beta", 1.0)) != 1.0:
            raise UnsupportedError("Gemm with beta != 1 and a runtime C")
        out = node.outputs[0]
        epi, final, labels = self._epilogue(node)
        if extra:
            op = EwOp("Add", [("value", Cn, self.shape(Cn)) if extra[0][0] == "value" else extra[0]])
            epi.ops.insert(0, op)
        self._dense(node, A, self.shape(A), w.astype(np.float32), bias, final, self.shape(out), epi, labels,
                    trans_a=bool(a.get("transA", 0)))

    def _dense(self, node, A, a_shape, w, bias, final, out_shape, epi, labels, trans_a=False):
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.dense_gemm(name, A, a_shape, w, bias, out_value=final, out_shape=out_shape,
                                epilogue=epi, lanes=self.lanes, trans_a=trans_a)
        self.add(make, node, final, labels)

    def lower_matmul(self, node: Node) -> None:
        A, B = node.inputs
        w = self.const(B)
        out = node.outputs[0]
        a_shape = self.shape(A)
        if w is not None and self.const(A) is None and w.ndim == 2 and len(a_shape) >= 2:
            epi, final, labels = self._epilogue(node)
            self._dense(node, A, a_shape, w.astype(np.float32), None, final, self.shape(out), epi, labels)
            return
        a_const = self.const(A)
        if a_const is not None and w is None:  # weights on the left (lower-conv, Winograd)
            b_shape, o_shape = self.shape(B), self.shape(out)
            if a_const.ndim < 2 or len(b_shape) < 2:
                raise UnsupportedError("MatMul with 1-D operands")
            epi, final, labels = self._epilogue(node)
            name = self.kernel_name(node)
            a32 = a_const.astype(np.float32)

            def make_left():
                from tvmlite.backends.tvm import kernels as K

                return K.const_a_batch_gemm(name, a32, B, b_shape, out_value=final, out_shape=o_shape,
                                            epilogue=epi, lanes=self.lanes)
            self.add(make_left, node, final, labels)
            return
        if w is not None or a_const is not None:
            raise UnsupportedError("MatMul with a constant operand that is not a 2-D right-hand side")
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        b_shape, o_shape = self.shape(B), self.shape(out)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.batch_matmul(name, A, a_shape, B, b_shape, out_value=final, out_shape=o_shape,
                                  epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    def _pool(self, node: Node, kind: str) -> None:
        from tvmlite.ops.conv import resolve_pads

        a = node.attrs
        if len([o for o in node.outputs if o]) > 1:
            raise UnsupportedError("MaxPool Indices output")
        x = node.inputs[0]
        xs = self.shape(x)
        if len(xs) != 4:
            raise UnsupportedError(f"{len(xs) - 2}-D pooling")
        k = list(a["kernel_shape"])
        strides = list(a.get("strides") or [1, 1])
        dil = list(a.get("dilations") or [1, 1])
        pads = resolve_pads(a.get("auto_pad", "NOTSET"), xs[2:], k, strides, dil, a.get("pads"))
        out_shape = self.shape(node.outputs[0])
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        cip = bool(a.get("count_include_pad", 0))

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.pool2d(name, x, xs, kind=kind, kernel=k, pads=pads, strides=strides, dilations=dil,
                            out_shape=out_shape, count_include_pad=cip, out_value=final, epilogue=epi,
                            lanes=self.lanes)
        self.add(make, node, final, labels)

    def lower_maxpool(self, node):
        if node.attrs.get("storage_order", 0) and len(node.outputs) > 1:
            raise UnsupportedError("storage_order")
        self._pool(node, "max")

    def lower_averagepool(self, node):
        self._pool(node, "avg")

    def _global(self, node, kind):
        x = node.inputs[0]
        xs = self.shape(x)
        if len(xs) < 3:
            raise UnsupportedError("global pooling of rank < 3")
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.global_pool(name, x, xs, kind=kind, out_value=final, epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    def lower_globalaveragepool(self, node):
        self._global(node, "avg")

    def lower_globalmaxpool(self, node):
        self._global(node, "max")

    def _softmax(self, node, log):
        x = node.inputs[0]
        xs = self.shape(x)
        axis = int(node.attrs.get("axis", -1 if self.opset >= 13 else 1))
        name = self.kernel_name(node)
        out = node.outputs[0]
        opset = self.opset

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.softmax(name, x, xs, axis=axis, log=log, opset=opset, out_value=out,
                             epilogue=Epilogue(), lanes=self.lanes)
        self.add(make, node, out)

    def lower_softmax(self, node):
        self._softmax(node, False)

    def lower_logsoftmax(self, node):
        self._softmax(node, True)

    def _reduce(self, node):
        a = node.attrs
        x = node.inputs[0]
        xs = self.shape(x)
        if len(node.inputs) > 1 and node.inputs[1]:
            axes = self.const(node.inputs[1])
            if axes is None:
                raise UnsupportedError("non-constant axes")
            axes = [int(v) for v in axes.reshape(-1)]
        else:
            axes = list(a.get("axes") or [])
        if not axes and a.get("noop_with_empty_axes", 0):
            raise UnsupportedError("noop_with_empty_axes")
        keep = bool(a.get("keepdims", 1))
        out = node.outputs[0]
        out_shape = self.shape(out)
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        op = node.op_type

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.reduce(name, x, xs, op=op, axes=axes, keepdims=keep, out_value=final, out_shape=out_shape,
                            epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    lower_reducemean = lower_reducesum = lower_reducemax = lower_reducemin = lower_reducesumsquare = _reduce

    def lower_concat(self, node):
        axis = int(node.attrs["axis"])
        ins = []
        for n in node.inputs:
            c = self.const(n)
            ins.append((c.astype(np.float32) if c is not None else n, self.shape(n)))
        out = node.outputs[0]
        out_shape = self.shape(out)
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.concat(name, ins, axis=axis, out_value=out, out_shape=out_shape, lanes=self.lanes)
        self.add(make, node, out)

    def lower_transpose(self, node):
        x = node.inputs[0]
        xs = self.shape(x)
        perm = list(node.attrs.get("perm") or reversed(range(len(xs))))
        out = node.outputs[0]
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.transpose(name, x, xs, perm, out_value=out, lanes=self.lanes)
        self.add(make, node, out)

    def lower_slice(self, node):
        x = node.inputs[0]
        xs = self.shape(x)
        if self.opset < 10:
            a = node.attrs
            starts, ends = list(a["starts"]), list(a["ends"])
            axes = list(a.get("axes") or range(len(starts)))
            steps = [1] * len(starts)
        else:
            vals = [self.const(n) if n else None for n in list(node.inputs[1:]) + [""] * 3][:4]
            if vals[0] is None or vals[1] is None or any(
                    n and v is None for n, v in zip(list(node.inputs[3:5]), vals[2:])):
                raise UnsupportedError("non-constant starts/ends/axes/steps")
            starts, ends = [int(v) for v in vals[0]], [int(v) for v in vals[1]]
            axes = [int(v) for v in vals[2]] if vals[2] is not None else list(range(len(starts)))
            steps = [int(v) for v in vals[3]] if vals[3] is not None else [1] * len(starts)
        first = [0] * len(xs)
        step_of = [1] * len(xs)
        out_shape = list(xs)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax %= len(xs)
            rng = range(*slice(st, en, sp).indices(xs[ax]))  # ONNX clamps like Python slicing
            first[ax], step_of[ax], out_shape[ax] = (rng.start if len(rng) else 0), sp, len(rng)
        out = node.outputs[0]
        if tuple(out_shape) != self.shape(out) or 0 in out_shape:
            raise UnsupportedError("empty slice")
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.strided_slice(name, x, xs, first, step_of, out_value=out, out_shape=out_shape, lanes=self.lanes)
        self.add(make, node, out)

    def lower_lrn(self, node):
        x = node.inputs[0]
        xs = self.shape(x)
        a = node.attrs
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.lrn(name, x, xs, size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                         beta=float(a.get("beta", 0.75)), bias=float(a.get("bias", 1.0)), out_value=final,
                         epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    def lower_convtranspose(self, node: Node) -> None:
        """A grouped 1x1 GEMM making every tap's contribution (the columns), then a gather
        (col2im) that sums the taps landing on each output pixel, adds the bias and runs the
        epilogue: two kernels, no redundant multiply-adds whatever the stride."""
        from tvmlite.ops.conv import _norm, conv_transpose_pads, kernel_geometry

        x, w, bias, xs, nsp = self.conv_operands(node)
        a = node.attrs
        kshape, strides, dil = kernel_geometry(w.shape, nsp, a.get("kernel_shape"), a.get("strides"),
                                               a.get("dilations"))
        out_pad = _norm(a.get("output_padding"), nsp, 0)
        group = int(a.get("group", 1))
        c = xs[1]
        if w.shape[0] != c or c % group:
            raise UnsupportedError(f"group={group} does not fit {c} input channels and weights {list(w.shape)}")
        pads, out_sp = conv_transpose_pads(a.get("auto_pad", "NOTSET"), xs[2:], kshape, strides, dil,
                                           a.get("pads"), out_pad, a.get("output_shape"))
        out = node.outputs[0]
        m = w.shape[1] * group
        if (xs[0], m, *out_sp) != self.shape(out):
            raise UnsupportedError(f"output shape {self.shape(out)} disagrees with the attributes")
        if nsp == 1:  # 1-D as 2-D with a unit height
            xs = (xs[0], xs[1], 1, xs[2])
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
            kshape, strides, dil, pads = [1] + kshape, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
            out_sp = [1] + list(out_sp)
        n, _, h, wd = xs
        cols = f"{out}::cols"
        self.shapes[cols] = (n, m * kshape[0] * kshape[1], h, wd)
        gemm_name = self.kernel_name(node) + "_gemm"
        w_cols = w.astype(np.float32)

        def make_gemm():
            from tvmlite.backends.tvm import kernels as K

            return K.conv2d_gemm(gemm_name, x, xs, K.conv_transpose_gemm_weights(w_cols, group), None,
                                 pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), out_value=cols,
                                 epilogue=Epilogue(), lanes=self.lanes, group=group)
        self.add(make_gemm, node, out, key=self.pos[node])
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node) + "_col2im"
        b32 = None if bias is None else bias.astype(np.float32)
        out_shape = (n, m, *out_sp)
        cols_shape = self.shapes[cols]

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.col2im(name, cols, cols_shape, b32, kernel=kshape, pads=(pads[0], pads[1]),
                            strides=strides, dilations=dil, out_shape=out_shape, out_value=final,
                            epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    def lower_resize(self, node: Node) -> None:
        x = node.inputs[0]
        if any(n and self.const(n) is None for n in node.inputs[1:]):
            raise UnsupportedError("non-constant roi/scales/sizes")  # before the output shape, unknown then
        xs = self.shape(x)
        out = node.outputs[0]
        maps = resize_maps(node, xs, self.shape(out), self.const, self.opset)
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        out_shape = self.shape(out)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.resize(name, x, xs, axes_maps=maps, out_shape=out_shape, out_value=final, epilogue=epi,
                            lanes=self.lanes)
        self.add(make, node, final, labels)

    lower_upsample = lower_resize

    def lower_other(self, node):
        raise UnsupportedError("no TVM emitter")

    # ------------------------------------------------------------------- tvmlite's lowered ops
    def _conv_geometry(self, node: Node, xs: tuple):
        """(4-D input shape, kernel, pads [t, l, b, r], strides, dilations); 1-D as unit height."""
        a = node.attrs
        k = [int(v) for v in a["kernel_shape"]]
        nsp = len(k)
        if nsp not in (1, 2) or len(xs) != nsp + 2:
            raise UnsupportedError(f"{nsp}-D window")
        strides = [int(v) for v in (a.get("strides") or [1] * nsp)]
        dil = [int(v) for v in (a.get("dilations") or [1] * nsp)]
        pads = [int(v) for v in a["pads"]]
        if nsp == 1:
            return (xs[0], xs[1], 1, xs[2]), [1] + k, [0, pads[0], 0, pads[1]], [1] + strides, [1] + dil
        return tuple(xs), k, pads, strides, dil

    def lower_tvmlite_im2col(self, node: Node) -> None:
        x = node.inputs[0]
        xs, k, pads, strides, dil = self._conv_geometry(node, self.shape(x))
        out = node.outputs[0]
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.im2col(name, x, xs, kernel=k, pads=pads, strides=strides, dilations=dil, out_value=out,
                            lanes=self.lanes)
        self.add(make, node, out)

    def lower_tvmlite_meclower(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.shape(x)
        if len(xs) != 4:
            raise UnsupportedError(f"rank-{len(xs)} input")
        _, k, pads, strides, dil = self._conv_geometry(node, xs)
        out = node.outputs[0]
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.mec_lower(name, x, xs, kernel=k, pads=pads, strides=strides, dilations=dil, out_value=out,
                               lanes=self.lanes)
        self.add(make, node, out)

    def lower_tvmlite_mecmatmul(self, node: Node) -> None:
        low = node.inputs[0]
        w = self.const_input(node, 1, "weights", required=True)
        bias = self.const_input(node, 2, "bias")
        a = node.attrs
        l_shape = self.shape(low)
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        w32 = w.astype(np.float32)
        b32 = None if bias is None else bias.astype(np.float32)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.mec_matmul(name, low, l_shape, w32, b32, stride_h=int(a["stride_h"]),
                                dilation_h=int(a["dilation_h"]), out_h=int(a["out_h"]), out_value=final,
                                epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    def lower_tvmlite_winogradinput(self, node: Node) -> None:
        from tvmlite.ops.lowered import winograd_matrices

        x = node.inputs[0]
        xs = self.shape(x)
        if len(xs) != 4:
            raise UnsupportedError(f"rank-{len(xs)} input")
        a = node.attrs
        m, r = int(a["m"]), int(a.get("r", 3))
        pads = [int(v) for v in a["pads"]]
        _, _, bt = winograd_matrices(m, r)
        out = node.outputs[0]
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.winograd_input(name, x, xs, m=m, r=r, pads=pads, bt=bt, out_value=out, lanes=self.lanes)
        self.add(make, node, out)

    def lower_tvmlite_winogradoutput(self, node: Node) -> None:
        from tvmlite.ops.lowered import winograd_matrices

        mt = node.inputs[0]
        bias = self.const_input(node, 1, "bias")
        a = node.attrs
        m, r = int(a["m"]), int(a.get("r", 3))
        at, _, _ = winograd_matrices(m, r)
        mt_shape = self.shape(mt)
        out = node.outputs[0]
        out_shape = self.shape(out)
        epi, final, labels = self._epilogue(node)
        name = self.kernel_name(node)
        b32 = None if bias is None else bias.astype(np.float32)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.winograd_output(name, mt, mt_shape, b32, m=m, r=r, out_shape=out_shape, at=at, out_value=final,
                                     epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)

    def lower_elementwise(self, node: Node) -> None:
        ops, first = self.ewops(node, None)
        out = node.outputs[0]
        out_shape = self.shape(out)
        epi2, final, labels = self._epilogue(node)
        epi = Epilogue(ops + epi2.ops)
        src = self.operand(first)
        name = self.kernel_name(node)

        def make():
            from tvmlite.backends.tvm import kernels as K

            return K.elementwise(name, src, out_shape, out_value=final, epilogue=epi, lanes=self.lanes)
        self.add(make, node, final, labels)


# ------------------------------------------------------------------------------------------ Resize
RESIZE_COORD_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                      "half_pixel_symmetric", "tf_half_pixel_for_nn")
RESIZE_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resize_maps(node: Node, in_shape: tuple, out_shape: tuple, const, opset: int) -> list:
    """Per axis, how a Resize/Upsample output index reads the input (see `kernels.resize`):
    index tables and linear weights computed on the host in float64 with the NumPy backend's own
    ONNX formulas; anything those formulas or the kernel do not cover raises UnsupportedError."""
    from tvmlite.ops import nn as R

    a = node.attrs
    ins = list(node.inputs) + [""] * 4
    mode = a.get("mode", "nearest")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if node.op_type == "Upsample" or opset < 11:  # Upsample-7/9, Resize-10: asymmetric, onnxruntime's rounding
        coord, nearest_mode = "asymmetric", "simple"
        mode = "linear" if mode == "bilinear" else mode
        if opset < 9 and node.op_type == "Upsample":
            scales, roi, sizes = a.get("scales"), None, None
        else:
            scales, roi, sizes = const(ins[1]) if ins[1] else None, None, None
            if scales is None:
                raise UnsupportedError("non-constant scales")
        axes, policy, antialias = None, "stretch", 0
    else:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest_mode = a.get("nearest_mode", "round_prefer_floor")
        roi = const(ins[1]) if ins[1] else None
        scales = const(ins[2]) if ins[2] else None
        sizes = const(ins[3]) if ins[3] else None
        if (ins[2] and scales is None) or (ins[3] and sizes is None) or (ins[1] and roi is None):
            raise UnsupportedError("non-constant roi/scales/sizes")
        axes, policy = a.get("axes"), a.get("keep_aspect_ratio_policy", "stretch")
        antialias = int(a.get("antialias", 0))
    if mode not in ("nearest", "linear"):
        raise UnsupportedError(f"mode={mode}")
    if coord not in RESIZE_COORD_MODES:
        raise UnsupportedError(f"coordinate_transformation_mode={coord}")
    if mode == "nearest" and nearest_mode not in RESIZE_NEAREST_MODES + ("simple",):
        raise UnsupportedError(f"nearest_mode={nearest_mode}")
    if antialias:
        raise UnsupportedError("antialias=1")
    dummy = np.empty(in_shape, np.float32)  # only its shape is read
    scales_full, sizes_full, _, from_sizes = R._resize_args(dummy, roi, scales, sizes, axes, policy)
    if from_sizes and policy not in ("stretch", None):
        from_sizes = False
    if tuple(sizes_full) != tuple(out_shape):
        raise UnsupportedError(f"output shape {tuple(out_shape)} disagrees with scales/sizes {tuple(sizes_full)}")
    maps = []
    for ax, (in_len, out_len) in enumerate(zip(in_shape, out_shape)):
        scale = float(scales_full[ax])
        if out_len == 0:
            raise UnsupportedError("empty output")
        if out_len == in_len and np.isclose(scale, 1.0):  # the reference skips such axes too
            maps.append(None)
            continue
        xo = R._x_original(coord, out_len, in_len, scale, out_w=float(out_len) if from_sizes else None)
        if mode == "nearest":
            idx = R._nearest_index(xo, nearest_mode, in_len, scale < 1)
            o = np.arange(out_len)
            if np.array_equal(idx, o * in_len // out_len):  # e.g. asymmetric floor, integer scale
                maps.append(("div", int(in_len), int(out_len)))
            else:
                maps.append(("nearest", idx.astype(np.int32)))
        else:
            if ax < len(in_shape) - 2:
                raise UnsupportedError(f"linear resize of axis {ax} (only the last two axes)")
            idx, wts = R._taps(xo, "linear", scale, in_len, -0.75, False, bool(a.get("exclude_outside", 0)))
            maps.append(("linear", idx.astype(np.int32), wts.astype(np.float32)))
    return maps


def unsupported_ops(model: Model, input_shapes: dict) -> list[str]:
    """Each op the TVM backend cannot emit, as 'Op (reason) xN', after folding."""
    prepared, shapes = prepare(model, input_shapes)
    low = Lowering(prepared, shapes, emit=False)
    low.run()
    return _format(low.problems)


def _format(problems) -> list[str]:
    return [f"{p} x{n}" if n > 1 else p for p, n in problems.items()]


def lower(model: Model, input_shapes: dict, lanes: int) -> Lowered:
    prepared, shapes = prepare(model, input_shapes)
    check = Lowering(prepared, shapes, emit=False)  # cheap: report every problem before emitting
    check.run()
    if check.problems:
        probs = _format(check.problems)
        raise UnsupportedError(f"the TVM backend cannot emit {len(probs)} op kind(s): " + "; ".join(probs))
    return Lowering(prepared, shapes, lanes=lanes).run()
