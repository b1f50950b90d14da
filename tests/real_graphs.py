"""Small models with the structure of real graphs that crashed `tvmlite optimize` (issue 11).

Each builder returns an onnx.ModelProto with seeded random weights, small enough that every preset
runs on it in seconds, and the input shapes (``shapes``) that make it runnable:

- ``detector``: YOLO-style, Conv+BN+SiLU backbone, Resize+Concat neck, two heads whose outputs are
  reshaped through int64 Shape -> Gather -> Mul -> Concat -> Reshape arithmetic, a grid built at run
  time from Range over the feature map's H and W, and Split/Sigmoid/Exp box decoding.
- ``scalar_input``: a 1-D conv featurizer over audio with a scalar int64 sample-rate input and a
  scalar float gain (0-d inputs: calibration cannot concatenate them along a batch axis).
- ``symbolic_hw``: a conv net whose input is [N, 3, H, W] with unpadded 3x3 convs (a layer timed
  at H = W = 1 has no valid output).
- ``vad``: Silero-VAD-like: audio [N, samples], state [2, N, 64] and sample rate (int64 scalar) in,
  probability and new state out; If on the sample rate picks the featurizer, a Loop runs an LSTM
  cell (MatMul, Split, Sigmoid, Tanh) over the frames, its trip count from int64 shape arithmetic.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17
F, I64 = TensorProto.FLOAT, TensorProto.INT64


class _Builder:
    """Nodes and initializers with fresh names; weights drawn from one seeded generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, inputs, base: str | None = None, n_out: int = 1, **attrs):
        outs = [self.name(base or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def weight(self, *shape, scale=None) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        s = scale if scale is not None else 1.0 / np.sqrt(fan_in)
        return (self.rng.standard_normal(shape) * s).astype(np.float32)

    def tucker_weight(self, cout: int, cin: int, k: int, share: float = 0.25) -> np.ndarray:
        """A conv weight of low Tucker-2 rank plus 5% noise, as trained convs tend to be: random
        full-rank weights would make every low-rank factorization fail its error budget."""
        ro, ri = max(1, int(cout * share)), max(1, int(cin * share))
        core = self.rng.standard_normal((ro, ri, k, k))
        w = np.einsum("abkl,oa,ib->oikl", core, self.rng.standard_normal((cout, ro)),
                      self.rng.standard_normal((cin, ri)))
        w += 0.05 * np.std(w) * self.rng.standard_normal(w.shape)
        return (w / np.sqrt(np.mean(w ** 2) * cin * k * k)).astype(np.float32)

    def conv_bn_silu(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = self.const(self.tucker_weight(cout, cin, k) if cin >= 32 else self.weight(cout, cin, k, k), "w")
        y = self.op("Conv", [x, w], "conv", kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        bn = [self.const(self.rng.uniform(0.5, 1.5, cout).astype(np.float32), "gamma"),
              self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "beta"),
              self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "mean"),
              self.const(self.rng.uniform(0.5, 1.5, cout).astype(np.float32), "var")]
        y = self.op("BatchNormalization", [y] + bn, "bn", epsilon=1e-3)
        return self.op("Mul", [y, self.op("Sigmoid", [y])], "silu")

    def model(self, inputs, outputs, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m, full_check=True)
        return m


def _i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


# ---------------------------------------------------------------------------------- detector
def detector(size: int = 128, classes: int = 3, seed: int = 0):
    """YOLO-style detector: [1, 3, size, size] -> [1, anchors, 4 + 1 + classes]."""
    b = _Builder(seed)
    x = b.conv_bn_silu("images", 3, 16, 3, 2)  # /2
    x = b.conv_bn_silu(x, 16, 32, 3, 2)  # /4
    # C2f-like block: split the channels, transform one half, concatenate
    a, c = b.op("Split", [x, b.const(_i64(16, 16))], "part", n_out=2, axis=1)
    c = b.conv_bn_silu(b.conv_bn_silu(c, 16, 16), 16, 16)
    x = b.conv_bn_silu(b.op("Concat", [a, c, x], axis=1), 64, 32, 1)
    p4 = b.conv_bn_silu(b.conv_bn_silu(x, 32, 48, 3, 2), 48, 48)  # /8
    p5 = b.conv_bn_silu(b.conv_bn_silu(p4, 48, 64, 3, 2), 64, 64)  # /16
    up = b.op("Resize", [p5, "", b.const(np.array([1, 1, 2, 2], np.float32))], "up", mode="nearest")
    n4 = b.conv_bn_silu(b.op("Concat", [up, p4], axis=1), 112, 48)
    n5 = b.conv_bn_silu(b.op("Concat", [b.conv_bn_silu(n4, 48, 48, 3, 2), p5], axis=1), 112, 64)
    outs = 4 + 1 + classes
    flat, grids, strides = [], [], []
    for feat, cin, stride in ((n4, 48, 8), (n5, 64, 16)):
        h = b.conv_bn_silu(feat, cin, 48)
        w = b.const(b.weight(outs, 48, 1, 1), "head_w")
        bias = b.const((b.rng.standard_normal(outs) * 0.1).astype(np.float32), "head_b")
        h = b.op("Conv", [h, w, bias], "head", kernel_shape=[1, 1])
        # [1, outs, H, W] -> [1, outs, H*W] through int64 shape arithmetic
        shape = b.op("Shape", [h])
        n = b.op("Gather", [shape, b.const(np.int64(0))], "n", axis=0)
        hh = b.op("Gather", [shape, b.const(np.int64(2))], "h", axis=0)
        ww = b.op("Gather", [shape, b.const(np.int64(3))], "w", axis=0)
        hw = b.op("Mul", [hh, ww], "hw")
        cc = b.op("Gather", [shape, b.const(np.int64(1))], "c", axis=0)
        cc = b.op("Add", [b.op("Sub", [cc, b.const(np.int64(1))]), b.const(np.int64(1))], "c")
        target = b.op("Concat", [b.op("Unsqueeze", [t, b.const(_i64(0))]) for t in (n, cc, hw)], axis=0)
        flat.append(b.op("Reshape", [h, target], "flat"))
        # grid of cell corners from Range over H and W, float from here on
        gx = b.op("Cast", [b.op("Range", [b.const(np.int64(0)), ww, b.const(np.int64(1))])], to=F)
        gy = b.op("Cast", [b.op("Range", [b.const(np.int64(0)), hh, b.const(np.int64(1))])], to=F)
        zero = b.const(np.float32(0.0))
        gx2 = b.op("Add", [b.op("Unsqueeze", [gx, b.const(_i64(0))]),
                           b.op("Mul", [b.op("Unsqueeze", [gy, b.const(_i64(1))]), zero])], "gx")
        gy2 = b.op("Add", [b.op("Unsqueeze", [gy, b.const(_i64(1))]),
                           b.op("Mul", [b.op("Unsqueeze", [gx, b.const(_i64(0))]), zero])], "gy")
        grid = b.op("Concat", [b.op("Unsqueeze", [g, b.const(_i64(0))]) for g in (gx2, gy2)], axis=0)
        two_hw = b.op("Concat", [b.const(_i64(1, 2)), b.op("Unsqueeze", [hw, b.const(_i64(0))])], axis=0)
        grids.append(b.op("Reshape", [grid, two_hw], "grid"))
        strides.append(b.op("Expand", [b.const(np.float32(stride)), b.op("Concat", [b.const(_i64(1, 1)),
                                       b.op("Unsqueeze", [hw, b.const(_i64(0))])], axis=0)], "stride"))
    pred = b.op("Concat", flat, "pred", axis=2)
    grid = b.op("Concat", grids, "grid", axis=2)
    stride = b.op("Concat", strides, "stride", axis=2)
    xy, wh, obj, cls = b.op("Split", [pred, b.const(_i64(2, 2, 1, classes))], "split", n_out=4, axis=1)
    xy = b.op("Sub", [b.op("Mul", [b.op("Sigmoid", [xy]), b.const(np.float32(2.0))]), b.const(np.float32(0.5))])
    xy = b.op("Mul", [b.op("Add", [xy, grid]), stride], "xy")
    wh = b.op("Mul", [b.op("Exp", [b.op("Clip", [wh, b.const(np.float32(-4)), b.const(np.float32(4))])]), stride],
              "wh")
    boxes = b.op("Concat", [xy, wh, b.op("Sigmoid", [obj]), b.op("Sigmoid", [cls])], axis=1)
    b.nodes.append(helper.make_node("Transpose", [boxes], ["detections"], name="out_T", perm=[0, 2, 1]))
    anchors = (size // 8) ** 2 + (size // 16) ** 2
    model = b.model([helper.make_tensor_value_info("images", F, [1, 3, size, size])],
                    [helper.make_tensor_value_info("detections", F, [1, anchors, outs])])
    return model, {"images": (1, 3, size, size)}


# ----------------------------------------------------------------------------- scalar input
def scalar_input(samples: int = 1600, seed: int = 1):
    """Audio [N, samples] with a scalar int64 ``sample_rate`` and a scalar float ``gain``."""
    b = _Builder(seed)
    x = b.op("Unsqueeze", ["audio", b.const(_i64(1))])  # [N, 1, samples]
    x = b.op("Mul", [x, "gain"], "gained")
    w = b.const(b.weight(64, 1, 64), "feat_w")
    x = b.op("Relu", [b.op("Conv", [x, w], "feat", kernel_shape=[64], strides=[16])])
    w2 = b.const(b.weight(64, 64, 3), "conv_w")
    x = b.op("Relu", [b.op("Conv", [x, w2, b.const(np.zeros(64, np.float32))], "conv", kernel_shape=[3],
                           pads=[1, 1])])
    # features scale with the sample rate relative to 16 kHz
    ratio = b.op("Div", [b.op("Cast", ["sample_rate"], to=F), b.const(np.float32(16000.0))], "ratio")
    x = b.op("Mul", [x, b.op("Add", [ratio, b.const(np.float32(1.0))])], "scaled")
    x = b.op("ReduceMean", [x], "pooled", axes=[2], keepdims=0)  # [N, 64]
    h = b.op("Relu", [b.op("MatMul", [x, b.const(b.weight(64, 128))], "fc1")])
    b.nodes.append(helper.make_node("Gemm", [h, b.const(b.weight(10, 128)), b.const(np.zeros(10, np.float32))],
                                    ["logits"], name="fc2", transB=1))
    model = b.model([helper.make_tensor_value_info("audio", F, ["N", samples]),
                     helper.make_tensor_value_info("sample_rate", I64, []),
                     helper.make_tensor_value_info("gain", F, [])],
                    [helper.make_tensor_value_info("logits", F, ["N", 10])])
    return model, {"audio": (1, samples)}


# ------------------------------------------------------------------------------ symbolic H/W
def symbolic_hw(seed: int = 2, size: int = 64):
    """[N, 3, H, W] conv net with unpadded 3x3 convs; ``shapes`` fixes H = W = ``size``."""
    b = _Builder(seed)
    x = "x"
    for cin, cout, stride in ((3, 32, 2), (32, 64, 1), (64, 64, 2), (64, 96, 1)):
        w = b.const(b.tucker_weight(cout, cin, 3) if cin > 3 else b.weight(cout, cin, 3, 3), "w")
        x = b.op("Relu", [b.op("Conv", [x, w, b.const(np.zeros(cout, np.float32))], "conv",
                               kernel_shape=[3, 3], strides=[stride, stride])])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    b.nodes.append(helper.make_node("Gemm", [x, b.const(b.weight(96, 10)), b.const(np.zeros(10, np.float32))],
                                    ["y"], name="fc"))
    model = b.model([helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])],
                    [helper.make_tensor_value_info("y", F, ["N", 10])])
    return model, {"x": (1, 3, size, size)}


# ------------------------------------------------------------------------------------- VAD
def _featurizer(b: _Builder, name: str, kernel: int, stride: int, channels: int):
    """If branch: a strided 1-D conv over the audio (read from the outer scope) -> [N, C, T]."""
    sub = _Builder(0)
    sub.rng, sub.n = b.rng, b.n
    x = sub.op("Unsqueeze", ["audio", sub.const(_i64(1))])
    w = sub.const(sub.weight(channels, 1, kernel), f"{name}_w")
    y = sub.op("Relu", [sub.op("Conv", [x, w], f"{name}_conv", kernel_shape=[kernel], strides=[stride])])
    sub.nodes.append(helper.make_node("Identity", [y], [f"{name}_out"], name=sub.name("Identity")))
    b.n = sub.n
    return helper.make_graph(sub.nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", F, None)],
                             sub.inits)


def _lstm_body(b: _Builder, feat: int, hidden: int):
    """Loop body: one LSTM step on frame ``i`` of ``frames`` [T, N, F] (outer scope)."""
    sub = _Builder(0)
    sub.rng, sub.n = b.rng, b.n
    xt = sub.op("Gather", ["frames", "i"], "x_t", axis=0)  # [N, F]
    gates = sub.op("Add", [sub.op("MatMul", [xt, sub.const(sub.weight(feat, 4 * hidden), "w_ih")], "xg"),
                           sub.op("MatMul", ["h_in", sub.const(sub.weight(hidden, 4 * hidden), "w_hh")], "hg")])
    gates = sub.op("Add", [gates, sub.const(np.zeros(4 * hidden, np.float32), "b_lstm")], "gates")
    i, f, g, o = sub.op("Split", [gates, sub.const(_i64(*[hidden] * 4))], "gate", n_out=4, axis=1)
    c = sub.op("Add", [sub.op("Mul", [sub.op("Sigmoid", [f]), "c_in"]),
                       sub.op("Mul", [sub.op("Sigmoid", [i]), sub.op("Tanh", [g])])], "c")
    h = sub.op("Mul", [sub.op("Sigmoid", [o]), sub.op("Tanh", [c])], "h")
    sub.nodes += [helper.make_node("Identity", ["cond"], ["cond_out"], name=sub.name("Identity")),
                  helper.make_node("Identity", [h], ["h_out"], name=sub.name("Identity")),
                  helper.make_node("Identity", [c], ["c_out"], name=sub.name("Identity")),
                  helper.make_node("Identity", [h], ["h_scan"], name=sub.name("Identity"))]
    b.n = sub.n
    vi = helper.make_tensor_value_info
    return helper.make_graph(
        sub.nodes, "lstm_step",
        [vi("i", I64, []), vi("cond", TensorProto.BOOL, []), vi("h_in", F, None), vi("c_in", F, None)],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", F, None), vi("c_out", F, None),
         vi("h_scan", F, None)], sub.inits)


def vad(samples: int = 512, hidden: int = 64, seed: int = 3):
    """Silero-VAD-like: (audio [N, samples], state [2, N, hidden], sr int64 []) -> (prob [N, 1],
    state_out [2, N, hidden])."""
    b = _Builder(seed)
    channels = 64
    # 16 kHz: kernel 32 stride 16; 8 kHz (half the samples per frame): kernel 16 stride 8
    is16k = b.op("Equal", ["sr", b.const(np.int64(16000))], "is16k")
    feats = b.op("If", [is16k], "feats", then_branch=_featurizer(b, "sr16k", 32, 16, channels),
                 else_branch=_featurizer(b, "sr8k", 16, 8, channels))
    proj = b.op("Relu", [b.op("Conv", [feats, b.const(b.weight(channels, channels, 3)),
                                        b.const(np.zeros(channels, np.float32))], "enc", kernel_shape=[3],
                              pads=[1, 1])])
    b.nodes.append(helper.make_node("Transpose", [proj], ["frames"], name="frames_T", perm=[2, 0, 1]))
    # trip count: T = Shape(frames)[0]; h0, c0 from the state
    trips = b.op("Gather", [b.op("Shape", ["frames"]), b.const(_i64(0))], "trips", axis=0)
    h0 = b.op("Gather", ["state", b.const(np.int64(0))], "h0", axis=0)
    c0 = b.op("Gather", ["state", b.const(np.int64(1))], "c0", axis=0)
    h, c, hs = b.op("Loop", [trips, "", h0, c0], "lstm", n_out=3, body=_lstm_body(b, channels, hidden))
    b.nodes.append(helper.make_node("Concat", [b.op("Unsqueeze", [h, b.const(_i64(0))]),
                                               b.op("Unsqueeze", [c, b.const(_i64(0))])],
                                    ["state_out"], name="state_cat", axis=0))
    y = b.op("Relu", [b.op("Transpose", [hs], perm=[1, 2, 0])])  # [N, hidden, T]
    y = b.op("Conv", [y, b.const(b.weight(1, hidden, 1)), b.const(np.zeros(1, np.float32))], "dec",
             kernel_shape=[1])
    y = b.op("Sigmoid", [y])
    b.nodes.append(helper.make_node("ReduceMean", [y], ["prob_3d"], name="prob_mean", axes=[2],
                                    keepdims=0))
    b.nodes.append(helper.make_node("Identity", ["prob_3d"], ["prob"], name="prob_id"))
    vi = helper.make_tensor_value_info
    model = b.model([vi("audio", F, ["N", samples]), vi("state", F, [2, "N", hidden]), vi("sr", I64, [])],
                    [vi("prob", F, ["N", 1]), vi("state_out", F, [2, "N", hidden])])
    return model, {"audio": (1, samples), "state": (2, 1, hidden)}


def vad_without_if():
    """real_graphs.vad with its If replaced by the 16 kHz branch inlined (and the sr input gone):
    the If-free variant of issue 15, whose state Gathers and trip-count arithmetic must not stay
    on the host (its Loop does: control flow is issue 15 item 1's)."""
    proto, shapes = vad()
    g = proto.graph
    nodes = []
    for n in g.node:
        if n.op_type == "If":
            then = next(a.g for a in n.attribute if a.name == "then_branch")
            inner = list(then.node)
            for m in inner:
                m.output[:] = [n.output[0] if o == then.output[0].name else o for o in m.output]
            nodes += inner
            g.initializer.extend(then.initializer)
        elif n.op_type == "Equal" and "sr" in n.input:
            continue
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    keep = [i for i in g.input if i.name != "sr"]
    del g.input[:]
    g.input.extend(keep)
    onnx.checker.check_model(proto)
    return proto, shapes


BUILDERS = {"detector": detector, "scalar_input": scalar_input, "symbolic_hw": symbolic_hw, "vad": vad}
