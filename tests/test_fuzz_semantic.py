"""Semantic fuzzing: protobuf fields of valid models changed one at a time, never a crash.

Next to the byte-level fuzzer (test_fuzz.py), which mostly makes files protobuf cannot decode, this
one edits what a model *means*: attribute values (edge values, missing or extra attributes), tensor
dims and dtypes (with and without matching data), value names (undefined, duplicated, swapped), op
types, declared input shapes and types, opset versions, and the If/Loop bodies of small control-flow
models. Seeds: models/digits_cnn.onnx, the small If/Loop/integer models built here and one with
what the float fusions rewrite.

Each mutant goes load -> NumPy backend (compile, run on random inputs); every 8th also through
onnxruntime (outputs compared when both run) and ``optimize`` with the clean preset and with the
float fusions, whose written models must run in onnxruntime with the input's outputs. It must end in a
correct run or a TvmliteError with a one-line message that is not an internal error; anything else
is a crash. In CI: a fixed seed and 300 mutants. For a longer run::

    TVMLITE_FUZZ_SECONDS=300 python tests/test_fuzz_semantic.py      # prints the figures
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import signal
import sys
import time
import traceback

import numpy as np
import onnx
from onnx import AttributeProto as A
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ROOT = pathlib.Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from tvmlite import limits  # noqa: E402
from tvmlite.backends.numpy import compile_model  # noqa: E402
from tvmlite.errors import TvmliteError  # noqa: E402
from tvmlite.frontend import load  # noqa: E402
from tvmlite.inputs import random_inputs  # noqa: E402

from helpers import memory_cap  # noqa: E402


# ------------------------------------------------------------------------------------ seed models
def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


def if_model() -> onnx.ModelProto:
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 3])
    c = h.make_tensor_value_info("c", T.BOOL, [])
    then_b = h.make_graph([h.make_node("Relu", ["x"], ["t0"]), h.make_node("Mul", ["t0", "k"], ["t1"])],
                          "then", [], [h.make_tensor_value_info("t1", T.FLOAT, [2, 3])])
    else_b = h.make_graph([h.make_node("Transpose", ["x"], ["e0"], perm=[1, 0]),
                           h.make_node("Reshape", ["e0", "shp"], ["e1"])],
                          "else", [], [h.make_tensor_value_info("e1", T.FLOAT, [2, 3])])
    nodes = [h.make_node("If", ["c"], ["y0"], name="if", then_branch=then_b, else_branch=else_b),
             h.make_node("Softmax", ["y0"], ["y"], name="softmax", axis=1)]
    inits = [nh.from_array(np.full((1, 3), 2.0, np.float32), "k"), nh.from_array(np.array([2, 3], np.int64), "shp")]
    return _model(nodes, [c, x], [h.make_tensor_value_info("y", T.FLOAT, [2, 3])], inits)


def loop_model() -> onnx.ModelProto:
    x = h.make_tensor_value_info("x", T.FLOAT, [4])
    body = h.make_graph(
        [h.make_node("Cast", ["i"], ["fi"], to=T.FLOAT),
         h.make_node("Add", ["s", "fi"], ["s1"]),
         h.make_node("Mul", ["s1", "half"], ["s2"]),
         h.make_node("Less", ["i", "lim"], ["cout"]),
         h.make_node("ReduceSum", ["s2"], ["r"], keepdims=0)],
        "body", [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cin", T.BOOL, []),
                 h.make_tensor_value_info("s", T.FLOAT, [4])],
        [h.make_tensor_value_info("cout", T.BOOL, []), h.make_tensor_value_info("s2", T.FLOAT, [4]),
         h.make_tensor_value_info("r", T.FLOAT, [])])
    nodes = [h.make_node("Loop", ["M", "C", "x"], ["y", "scan"], name="loop", body=body)]
    inits = [nh.from_array(np.array(5, np.int64), "M"), nh.from_array(np.array(True), "C"),
             nh.from_array(np.array(3, np.int64), "lim"), nh.from_array(np.array(0.5, np.float32), "half")]
    return _model(nodes, [x], [h.make_tensor_value_info("y", T.FLOAT, [4]),
                               h.make_tensor_value_info("scan", T.FLOAT, ["n"])], inits)


def int_model() -> onnx.ModelProto:
    a = h.make_tensor_value_info("a", T.INT64, [3, 4])
    nodes = [h.make_node("Shape", ["a"], ["s"], name="shape"),
             h.make_node("Gather", ["s", "one"], ["d1"], name="gather", axis=0),
             h.make_node("Mul", ["a", "a"], ["sq"], name="mul"),
             h.make_node("Mod", ["sq", "seven"], ["m"], name="mod"),
             h.make_node("Div", ["m", "two"], ["q"], name="div"),
             h.make_node("ReduceMax", ["q"], ["mx"], name="rmax", axes=[1], keepdims=1),
             h.make_node("Concat", ["mx", "q"], ["cat"], name="concat", axis=1),
             h.make_node("Slice", ["cat", "st", "en", "ax"], ["sl"], name="slice"),
             h.make_node("ArgMax", ["sl"], ["am"], name="argmax", axis=1, keepdims=0),
             h.make_node("Equal", ["am", "d1"], ["eq"], name="eq"),
             h.make_node("Where", ["eq", "am", "d1"], ["w"], name="where"),
             h.make_node("Cast", ["w"], ["y"], name="cast", to=T.INT32),
             h.make_node("Unsqueeze", ["sl", "zero"], ["u"], name="unsq"),
             h.make_node("Tile", ["u", "reps"], ["z"], name="tile")]
    inits = [nh.from_array(np.array(1, np.int64), "one"), nh.from_array(np.array(7, np.int64), "seven"),
             nh.from_array(np.array(2, np.int64), "two"), nh.from_array(np.array([1], np.int64), "st"),
             nh.from_array(np.array([4], np.int64), "en"), nh.from_array(np.array([1], np.int64), "ax"),
             nh.from_array(np.array([0], np.int64), "zero"), nh.from_array(np.array([2, 1, 1], np.int64), "reps")]
    return _model(nodes, [a], [h.make_tensor_value_info("y", T.INT32, [3]),
                               h.make_tensor_value_info("z", T.INT64, [2, 3, 3])], inits)


def fusions_model() -> onnx.ModelProto:
    """What the float fusions rewrite (PP-LCNet's and DBNet's pieces): a per-channel affine before a
    Conv, a per-channel Mul after one, hardswish written out as Add/Clip/Mul/Div, a depthwise Conv, an
    SE block with its residual (GlobalAveragePool, 1x1 Conv, HardSigmoid, x + x * s), and a head of
    two kernel=stride ConvTransposes with bias, BatchNormalization, Relu and Sigmoid."""
    rng = np.random.default_rng(0)
    c = 4
    inits = {n: (rng.standard_normal(s) * 0.5).astype(np.float32) for n, s in (
        ("s0", (1, 3, 1, 1)), ("t0", (1, 3, 1, 1)), ("w1", (c, 3, 3, 3)), ("b1", (c,)), ("m1", (c, 1, 1)),
        ("s2", (1, c, 1, 1)), ("w2", (c, 1, 3, 3)), ("w3", (c, c, 1, 1)), ("b3", (c,)), ("wt1", (c, 2, 2, 2)),
        ("bt1", (2,)), ("wt2", (2, 1, 2, 2)), ("bt2", (1,)), ("bn_s", (2,)), ("bn_b", (2,)), ("bn_m", (2,)))}
    inits["bn_v"] = np.full(2, 0.5, np.float32)
    inits.update(three=np.float32(3), zero=np.float32(0), six=np.float32(6))
    nodes = [h.make_node("Mul", ["x", "s0"], ["a0"]), h.make_node("Add", ["a0", "t0"], ["a1"]),
             h.make_node("Conv", ["a1", "w1", "b1"], ["c1"]), h.make_node("Mul", ["c1", "m1"], ["c1m"]),
             h.make_node("Add", ["c1m", "three"], ["h0"]), h.make_node("Clip", ["h0", "zero", "six"], ["h1"]),
             h.make_node("Mul", ["c1m", "h1"], ["h2"]), h.make_node("Div", ["h2", "six"], ["hs"]),
             h.make_node("Mul", ["hs", "s2"], ["a2"]),
             h.make_node("Conv", ["a2", "w2"], ["c2"], pads=[1, 1, 1, 1], group=c),
             h.make_node("GlobalAveragePool", ["c2"], ["g"]), h.make_node("Conv", ["g", "w3", "b3"], ["g1"]),
             h.make_node("HardSigmoid", ["g1"], ["g2"], alpha=0.2, beta=0.5), h.make_node("Mul", ["c2", "g2"], ["se"]),
             h.make_node("Add", ["c2", "se"], ["r"]),
             h.make_node("ConvTranspose", ["r", "wt1", "bt1"], ["u1"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("BatchNormalization", ["u1", "bn_s", "bn_b", "bn_m", "bn_v"], ["u2"]),
             h.make_node("Relu", ["u2"], ["u3"]),
             h.make_node("ConvTranspose", ["u3", "wt2", "bt2"], ["u4"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Sigmoid", ["u4"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                  [h.make_tensor_value_info("y", T.FLOAT, [1, 1, 24, 24])],
                  [nh.from_array(a, n) for n, a in inits.items()], opset=13)


def seed_models() -> dict[str, bytes]:
    seeds = {"if": if_model(), "loop": loop_model(), "int": int_model(), "fusions": fusions_model()}
    digits = ROOT / "models" / "digits_cnn.onnx"
    if digits.exists():
        seeds["digits"] = onnx.load(str(digits))
    return {k: m.SerializeToString() for k, m in seeds.items()}


# -------------------------------------------------------------------------------------- mutations
INTS = [0, 1, 2, 3, -1, -2, 7, 64, 2**31, 2**40, -2**40]
FLOATS = [0.0, -1.0, 1e-12, 1e30, float("nan"), float("inf"), 2.5]
STRINGS = ["", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "bogus", "nearest", "linear"]
OPS = ["Relu", "Add", "Mul", "Sub", "Div", "MatMul", "Gemm", "Conv", "MaxPool", "AveragePool", "Flatten",
       "Reshape", "Transpose", "Concat", "Softmax", "Identity", "BatchNormalization", "Gather", "Slice",
       "Shape", "Cast", "Where", "ReduceSum", "Tile", "Expand", "Squeeze", "Unsqueeze", "Pad", "Loop",
       "If", "Sigmoid", "ConstantOfShape", "Range", "Split", "TopK", "NonZero", "Resize", "Bogus"]
ATTR_NAMES = ["axis", "axes", "perm", "pads", "strides", "kernel_shape", "group", "dilations", "keepdims",
              "transA", "transB", "to", "auto_pad", "epsilon", "alpha", "ceil_mode", "value", "mode"]
DTYPES = [T.FLOAT, T.DOUBLE, T.FLOAT16, T.INT64, T.INT32, T.INT8, T.UINT8, T.BOOL, T.STRING, 0, 999]


def _graphs(g: onnx.GraphProto):
    """The graph and every subgraph inside it, breadth first."""
    out, todo = [], [g]
    while todo:
        cur = todo.pop(0)
        out.append(cur)
        for n in cur.node:
            for a in n.attribute:
                if a.type == A.GRAPH:
                    todo.append(a.g)
                todo.extend(a.graphs)
    return out


def _names(g: onnx.GraphProto) -> list[str]:
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    for n in g.node:
        names.extend(n.output)
    return [n for n in names if n]


def _mutate_attribute(rng, node):
    if not node.attribute or rng.random() < 0.25:  # add one
        name = rng.choice(ATTR_NAMES)
        kind = rng.choice(["i", "ints", "f", "s"])
        val = {"i": lambda: rng.choice(INTS), "ints": lambda: [rng.choice(INTS) for _ in range(rng.randint(0, 4))],
               "f": lambda: rng.choice(FLOATS), "s": lambda: rng.choice(STRINGS)}[kind]()
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                break
        node.attribute.append(h.make_attribute(name, val, attr_type=A.INTS if kind == "ints" else None))
        return f"add attr {name}={val!r}"
    i = rng.randrange(len(node.attribute))
    a = node.attribute[i]
    if rng.random() < 0.15:
        del node.attribute[i]
        return f"drop attr {a.name}"
    if a.type == A.INT:
        a.i = rng.choice(INTS)
        return f"attr {a.name}={a.i}"
    if a.type == A.FLOAT:
        a.f = rng.choice(FLOATS)
        return f"attr {a.name}={a.f}"
    if a.type == A.STRING:
        a.s = rng.choice(STRINGS).encode()
        return f"attr {a.name}={a.s!r}"
    if a.type == A.INTS:
        vals = list(a.ints)
        r = rng.random()
        if vals and r < 0.5:
            vals[rng.randrange(len(vals))] = rng.choice(INTS)
        elif vals and r < 0.7:
            vals.pop(rng.randrange(len(vals)))
        else:
            vals.append(rng.choice(INTS))
        del a.ints[:]
        a.ints.extend(vals)
        return f"attr {a.name}={vals}"
    if a.type == A.TENSOR:
        return _mutate_tensor(rng, a.t)
    if a.type == A.GRAPH:
        return "graph attr: " + _mutate_graph(rng, a.g)
    return f"attr {a.name} left"


def _mutate_tensor(rng, t: onnx.TensorProto):
    r = rng.random()
    if r < 0.3 and len(t.dims):  # a dim changes, the data stays
        k = rng.randrange(len(t.dims))
        t.dims[k] = rng.choice([0, 1, 2, 3, t.dims[k] * 2, 2**62])
        return f"tensor {t.name} dims={list(t.dims)}"
    if r < 0.45:  # dims reordered or one added/removed (the element count may still fit)
        dims = list(t.dims)
        if dims and rng.random() < 0.5:
            dims = dims[::-1] if rng.random() < 0.5 else dims[:-1]
        else:
            dims.append(1)
        del t.dims[:]
        t.dims.extend(dims)
        return f"tensor {t.name} dims={dims}"
    if r < 0.65:  # data_type relabelled, bytes kept
        t.data_type = rng.choice(DTYPES)
        return f"tensor {t.name} data_type={t.data_type}"
    if r < 0.85:  # a consistent tensor of another dtype
        try:
            arr = nh.to_array(t)
            dt = rng.choice([np.float32, np.float64, np.int64, np.int32, np.float16, np.bool_])
            t.CopyFrom(nh.from_array(arr.astype(dt), t.name))
        except Exception:  # noqa: BLE001 - an already broken tensor stays broken
            pass
        return f"tensor {t.name} cast"
    if t.raw_data:  # raw data one element longer or shorter
        t.raw_data = t.raw_data + b"\0" * 4 if rng.random() < 0.5 else t.raw_data[:-1]
        return f"tensor {t.name} raw_data {len(t.raw_data)} bytes"
    t.dims.append(2)
    return f"tensor {t.name} extra dim"


def _mutate_type(rng, vi: onnx.ValueInfoProto):
    tt = vi.type.tensor_type
    r = rng.random()
    if r < 0.3:
        tt.elem_type = rng.choice(DTYPES[:-2] + [0])
        return f"type of {vi.name} elem={tt.elem_type}"
    dims = tt.shape.dim
    if r < 0.7 and len(dims):
        d = dims[rng.randrange(len(dims))]
        v = rng.choice([0, 1, 2, 5, 2**40, -1, "sym"])
        if v == "sym":
            d.dim_param = "q"
        else:
            d.dim_value = v
        return f"type of {vi.name} dims changed"
    if rng.random() < 0.5 and len(dims):
        dims.pop()
        return f"type of {vi.name} rank-1"
    dims.add().dim_value = rng.choice([1, 2, 3])
    return f"type of {vi.name} rank+1"


def _mutate_graph(rng, g: onnx.GraphProto) -> str:
    kinds = ["attr", "attr", "tensor", "name", "op", "type", "inputs", "drop_node", "output"]
    kind = rng.choice(kinds)
    if kind == "attr" and g.node:
        n = rng.choice(list(g.node))
        return f"{n.name or n.op_type}: " + _mutate_attribute(rng, n)
    if kind == "tensor" and g.initializer:
        return _mutate_tensor(rng, rng.choice(list(g.initializer)))
    if kind == "name" and g.node:
        n = rng.choice(list(g.node))
        names = _names(g) + ["", "undefined_value"]
        if n.input and rng.random() < 0.7:
            k = rng.randrange(len(n.input))
            n.input[k] = rng.choice(names)
            return f"{n.name or n.op_type}: input {k} -> {n.input[k]!r}"
        if n.output:
            k = rng.randrange(len(n.output))
            n.output[k] = rng.choice(names)
            return f"{n.name or n.op_type}: output {k} -> {n.output[k]!r}"
    if kind == "op" and g.node:
        n = rng.choice(list(g.node))
        n.op_type = rng.choice(OPS)
        return f"{n.name}: op -> {n.op_type}"
    if kind == "type":
        vis = [v for v in list(g.input) + list(g.output) if v.type.HasField("tensor_type")]
        if vis:
            return _mutate_type(rng, rng.choice(vis))
    if kind == "inputs" and g.node:
        n = rng.choice(list(g.node))
        if n.input and rng.random() < 0.5:
            n.input.pop()
            return f"{n.name or n.op_type}: last input dropped"
        n.input.append(rng.choice(_names(g) or ["x"]))
        return f"{n.name or n.op_type}: input appended"
    if kind == "drop_node" and len(g.node) > 1:
        k = rng.randrange(len(g.node))
        del g.node[k]
        return f"node {k} dropped"
    if kind == "output" and g.output:
        if rng.random() < 0.3:
            g.output.pop()
            return "last graph output dropped"
        g.output[rng.randrange(len(g.output))].name = rng.choice(_names(g) + ["nowhere"])
        return "graph output renamed"
    return "nothing"


def mutate(seed_bytes: bytes, rng: random.Random) -> tuple[bytes, str]:
    m = onnx.ModelProto()
    m.ParseFromString(seed_bytes)
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.05:
            m.opset_import[0].version = rng.choice([1, 7, 11, 13, 21, 30])
            steps.append(f"opset {m.opset_import[0].version}")
            continue
        steps.append(_mutate_graph(rng, rng.choice(_graphs(m.graph))))
    return m.SerializeToString(), "; ".join(steps)


# ------------------------------------------------------------------------------------------ checking
class Hang(Exception):
    pass


@contextlib.contextmanager
def guard(seconds=20, extra_bytes=3 * 2**30):
    """A wall-clock alarm and an address-space cap around one mutant."""
    def on_alarm(*_):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        with memory_cap(extra_bytes):
            yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


#: the NumPy plan's wrapping of a kernel's plain exception: one line, but not a specific message
GENERIC = re.compile(r"failed: \w+(Error|Exception):")


def _ok_error(e: TvmliteError) -> bool:
    msg = str(e)
    return bool(msg.strip()) and "\n" not in msg and "internal error" not in msg


def _ort_outputs(data: bytes, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        return s.run(None, feeds)
    except Exception:  # noqa: BLE001 - onnxruntime refusing is not our crash
        return None


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        a, b = a.astype(np.float64), b.astype(np.float64)
        return bool(np.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, np.nanmax(np.abs(b), initial=0)), equal_nan=True))
    return bool(np.array_equal(a, b))


#: what deep mutants go through: the clean preset, and the float fusions of the fast preset
REWRITES = ({"preset": "clean"}, {"passes": "fuse-hardswish,fuse-affine-conv,fuse-residual-scale,affine-as-conv,"
                                             "subpixel-convtranspose,upsample-conv(min_scale=2)"})


def _check_rewrite(data: bytes, spec: dict, feeds, ref) -> str | None:
    """Why optimize(``spec``) of a mutant is a crash: a traceback, a bad message, or (when
    onnxruntime ran the mutant: ``ref``) a written model onnxruntime refuses or that computes
    other outputs; None when it is fine."""
    from tvmlite.export import export_model
    from tvmlite.optimize import optimize

    what = f"optimize({spec})"
    try:
        model, _ = optimize(data, check=False, progress=False, **spec)
        written = export_model(model).SerializeToString() if ref is not None else None
    except TvmliteError as e:
        return None if _ok_error(e) else f"{what}: bad message: {e!r}"
    except Hang as e:
        return f"{what} hang: {e}"
    except Exception:  # noqa: BLE001
        return f"{what}: " + traceback.format_exc(limit=-3)
    if written is None:
        return None
    got = _ort_outputs(written, feeds)
    if got is None:
        return f"{what}: onnxruntime refuses the model tvmlite wrote (it ran the input)"
    for i, (a, b) in enumerate(zip(got, ref)):
        if not _same(a, b):
            return f"{what}: output {i} of the written model differs from the input's in onnxruntime"
    return None


def check_mutant(data: bytes, deep: bool) -> tuple[str, str]:
    """("ok" | "refused" | "crash", detail) for one mutant; ``deep`` adds onnxruntime and optimize."""
    try:
        m = load(data)
        plan = compile_model(m)
        feeds = random_inputs(m)
        outs = plan.run(feeds)
    except TvmliteError as e:
        if not _ok_error(e):
            return "crash", f"bad message: {e!r}"
        return ("generic" if GENERIC.search(str(e)) else "refused"), str(e)
    except Hang as e:
        return "crash", f"hang: {e}"
    except Exception:  # noqa: BLE001 - that is what we look for
        return "crash", traceback.format_exc(limit=-3)
    if not deep:
        return "ok", ""
    ref = _ort_outputs(data, feeds)
    if ref is not None:
        for i, (a, b) in enumerate(zip(outs, ref)):
            if not _same(a, b):
                return "crash", f"output {i} differs from onnxruntime: {np.asarray(a).shape} vs {np.asarray(b).shape}"
    for spec in REWRITES:
        why = _check_rewrite(data, spec, feeds, ref)
        if why:
            return "crash", why
    return ("ok" if ref is not None else "ok-ort-refuses"), ""


def fuzz(n: int | None = None, seconds: float | None = None, seed: int = 0, deep_every: int = 8,
         log=None) -> dict:
    """Mutate and check until ``n`` mutants or ``seconds`` have passed; returns the figures."""
    rng = random.Random(seed)
    seeds = seed_models()
    names = sorted(seeds)
    stats = {"tried": 0, "ok": 0, "ok-ort-refuses": 0, "refused": 0, "generic": 0, "crash": 0,
             "crashes": [], "generics": []}
    t0 = time.monotonic()
    # small limits keep each mutant fast: a 10M-iteration loop or a 2 GiB tensor is allowed by
    # default and would take the whole budget
    with limits.override(max_loop_iterations=10_000, max_tensor_elements=2**24, max_tensor_bytes=2**28), \
            np.errstate(all="ignore"):
        while (n is None or stats["tried"] < n) and (seconds is None or time.monotonic() - t0 < seconds):
            which = names[stats["tried"] % len(names)]
            data, what = mutate(seeds[which], rng)
            deep = stats["tried"] % deep_every == 0
            try:
                with guard():
                    verdict, detail = check_mutant(data, deep)
            except Hang as e:  # the alarm fired outside check_mutant's own handlers
                verdict, detail = "crash", f"hang: {e}"
            stats["tried"] += 1
            stats[verdict] += 1
            if verdict == "generic":
                stats["generics"].append((which, what, detail))
            if verdict == "crash":
                stats["crashes"].append((which, what, detail))
                if log:
                    log(f"CRASH [{which}] {what}\n{detail}")
    stats["seconds"] = round(time.monotonic() - t0, 1)
    return stats


def test_semantic_fuzz_never_crashes():
    secs = float(os.environ.get("TVMLITE_FUZZ_SECONDS", 0) or 0)
    stats = fuzz(seconds=secs) if secs else fuzz(n=300, seed=12)
    assert stats["tried"] >= (300 if not secs else 1)
    assert stats["ok"] + stats["ok-ort-refuses"] > 10 and stats["refused"] > 10  # the mutants do both
    crashes = "\n\n".join(f"[{w}] {what}\n{d}" for w, what, d in stats["crashes"][:5])
    assert stats["crash"] == 0, f"{stats['crash']} crashes of {stats['tried']}:\n{crashes}"


def test_fuzzer_finds_a_planted_crash(monkeypatch):
    """The check is able to fail: a plain exception in the loader is a crash, a kernel's plain
    exception is counted as a generic refusal."""
    from tvmlite.frontend import onnx_import
    from tvmlite.ops.registry import lookup

    data = if_model().SerializeToString()
    assert check_mutant(data, deep=True)[0] == "ok"

    def broken(*a, **k):
        raise KeyError("planted")

    monkeypatch.setattr(lookup("Relu"), "kernel", broken)
    verdict, detail = check_mutant(data, deep=False)
    assert (verdict, "KeyError: 'planted'" in detail) == ("generic", True)
    monkeypatch.setattr(onnx_import, "check_graph_proto", broken)
    verdict, detail = check_mutant(data, deep=False)
    assert verdict == "crash" and "KeyError: 'planted'" in detail


if __name__ == "__main__":
    secs = float(os.environ.get("TVMLITE_FUZZ_SECONDS", 300))
    seed = int(os.environ.get("TVMLITE_FUZZ_SEED", 1))
    st = fuzz(seconds=secs, seed=seed, log=lambda s: print(s, file=sys.stderr))
    print(f"semantic fuzzer: {st['tried']} mutants in {st['seconds']} s (seed {seed}): {st['ok']} ran and "
          f"agreed with onnxruntime or were not compared, {st['ok-ort-refuses']} ran where onnxruntime "
          f"refused, {st['refused']} refused with a specific line, {st['generic']} with the plan's generic "
          f"'failed: <Exception>' line, {st['crash']} crashes")
    for w, what, d in st["generics"]:
        print(f"generic [{w}] {what}: {d}", file=sys.stderr)
    sys.exit(1 if st["crash"] else 0)
