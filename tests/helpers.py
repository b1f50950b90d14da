"""Small model builders shared by the tests."""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import tempfile
import traceback
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime 1.31 refuses onnx 1.23's default IR 14


def make_model(nodes, inputs, outputs, initializers=(), opset=17, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)
    model.ir_version = IR_VERSION
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_bn_relu_model(seed=0, with_dropout=True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(8).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    mean = rng.standard_normal(8).astype(np.float32) * 0.1
    var = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    fc = rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["r2"], name="ident"),
    ]
    last = "r2"
    if with_dropout:
        nodes.append(helper.make_node("Dropout", ["r2"], ["d"], name="drop"))
        last = "d"
    nodes += [
        helper.make_node("Flatten", [last], ["f"], name="flat"),
        helper.make_node("Constant", [], ["two"], name="two_c",
                         value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Constant", [], ["three"], name="three_c",
                         value=numpy_helper.from_array(np.array(3.0, np.float32))),
        helper.make_node("Mul", ["two", "three"], ["six"], name="six"),
        helper.make_node("MatMul", ["f", "fc"], ["mm"], name="fc"),
        helper.make_node("Div", ["mm", "six"], ["y"], name="scale_out"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    return make_model(nodes, [tensor("x", ["N", 3, 4, 4])], [tensor("y", ["N", 5])],
                      [("w", w), ("b", b), ("scale", scale), ("bias", bias), ("mean", mean), ("var", var),
                       ("fc", fc)])


def ort_run(model, feeds):
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def cpu_has_vnni() -> bool:
    """Whether onnxruntime's fused uint8 x int8 kernels are exact on this CPU: with a VNNI dot
    product (AVX-512 VNNI or AVX-VNNI) they sum in int32; without it (AVX2 only, e.g. Zen 1-3, or
    AVX-512 without VNNI) they use `vpmaddubsw`, whose int16 pair sums saturate, so QLinearConv,
    MatMulInteger, QGemm, QAttention, DynamicQuantizeMatMul and the QDQ groups its optimizer fuses
    are up to ~100 steps off the model's own arithmetic (onnxruntime's quantization docs say so)."""
    from tvmlite.backends.tvm.kernels.target import has_int8_dot

    return has_int8_dot()


def ort_exact_options(so=None):
    """Session options for the int8 reference: onnxruntime's defaults (its fused kernels) where the
    CPU has VNNI, else graph optimizations off (DequantizeLinear -> float op -> QuantizeLinear, the
    QDQ model's meaning, no saturating fused kernel). With VNNI the fused kernels still round
    differently now and then (one step of a conv's grid, onnxruntime 1.32 on a Xeon): a test that
    needs the model's exact arithmetic on every CPU uses `ort_unfused`."""
    import onnxruntime as ort

    so = so if so is not None else ort.SessionOptions()
    if not cpu_has_vnni():
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def ort_qdq(model, feeds):
    """onnxruntime's outputs for a QDQ model, as the int8 reference: its optimized session where
    the CPU has a VNNI dot product, else the graph as written (see `ort_exact_options`; on an AVX2
    Zen machine the fused kernels were 12 steps off digits' own arithmetic)."""
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, ort_exact_options(), providers=["CPUExecutionProvider"]).run(None, feeds)


def ort_unfused(model, feeds):
    """onnxruntime running the QDQ graph as written (graph optimizations off: no fused kernels), the
    model's exact arithmetic on every CPU; its fused kernels round differently even with VNNI (one
    step of a conv's grid on this test suite's HardSwish chain, onnxruntime 1.32 on a Xeon)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


# op type -> (activation input, int8 weight input, its zero point input) of the uint8 x int8 ops
_U8S8_WEIGHTS = {"QLinearConv": (0, 3, 5), "QLinearMatMul": (0, 3, 5), "MatMulInteger": (0, 1, 3),
                 "ConvInteger": (0, 1, 3), "QGemm": (0, 3, 5), "DynamicQuantizeMatMul": (None, 1, 3),
                 "QAttention": (0, 1, 7), "MatMulIntegerToFloat": (0, 1, 5)}


def _to_u8(w, zp):
    """int8 weights and their zero point (None: 0) as uint8 w + 128, zp + 128."""
    zp = np.zeros((), np.int8) if zp is None else zp
    return (np.asarray(w, np.int16) + 128).astype(np.uint8), np.asarray(np.asarray(zp, np.int16) + 128, np.uint8)


def u8u8_inputs(op_type, inputs):
    """A one-node test's input arrays (None: absent) with a uint8 x int8 op's int8 weight and zero
    point moved to uint8 (see `u8u8_model`) where the CPU has no VNNI; unchanged otherwise."""
    if cpu_has_vnni() or op_type not in _U8S8_WEIGHTS:
        return inputs
    act, w, zp = _U8S8_WEIGHTS[op_type]
    if (act is not None and inputs[act].dtype != np.uint8) or inputs[w].dtype != np.int8:
        return inputs
    ins = list(inputs) + [None] * (zp + 1 - len(inputs))
    ins[w], ins[zp] = _to_u8(ins[w], ins[zp])
    return ins


def u8u8_model(model) -> onnx.ModelProto:
    """The model with the int8 weights of its uint8 x int8 ops (QLinearConv, MatMulInteger, QGemm,
    QAttention, DynamicQuantizeMatMul, ...) stored as uint8 w + 128 with zero point zp + 128: the same
    arithmetic ((w + 128) - (zp + 128) = w - zp), which onnxruntime's uint8 x uint8 kernels compute
    exactly on every CPU (they widen to int16 before `vpmaddwd`). Ops with an int8 activation (int8 x
    int8) and weights that are not initializers are left alone."""
    m = onnx.ModelProto()
    m.CopyFrom(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    inits = {t.name: t for t in m.graph.initializer}
    types.update({n: t.data_type for n, t in inits.items()})
    replaced = set()
    for k, node in enumerate(m.graph.node):
        if node.op_type not in _U8S8_WEIGHTS:
            continue
        act, w, zp = _U8S8_WEIGHTS[node.op_type]
        if act is not None and types.get(node.input[act]) != TensorProto.UINT8:
            continue
        if len(node.input) <= w or node.input[w] not in inits or inits[node.input[w]].data_type != TensorProto.INT8:
            continue
        zp_name = node.input[zp] if len(node.input) > zp else ""
        if zp_name and zp_name not in inits:
            continue
        wv, zv = _to_u8(numpy_helper.to_array(inits[node.input[w]]),
                        numpy_helper.to_array(inits[zp_name]) if zp_name else None)
        new_w, new_zp = f"{node.input[w]}__u8_{k}", f"{zp_name or 'zp'}__u8_{k}"
        m.graph.initializer.extend([numpy_helper.from_array(wv, new_w), numpy_helper.from_array(zv, new_zp)])
        ins = list(node.input) + [""] * (zp + 1 - len(node.input))
        replaced |= {ins[w], ins[zp]}
        ins[w], ins[zp] = new_w, new_zp
        node.input[:] = ins
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    kept = [t for t in m.graph.initializer if t.name in used or t.name not in replaced]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def ort_exact(model, feeds):
    """onnxruntime's outputs for a model with uint8 x int8 ops (QLinearConv, MatMulInteger, QGemm,
    QAttention, DynamicQuantizeMatMul, the QDQ groups its optimizer fuses), as the int8 reference:
    the model as it is where the CPU has VNNI (strict comparison with the fused kernels), else
    `u8u8_model(model)` with graph optimizations off, which computes the exact arithmetic."""
    if cpu_has_vnni():
        return ort_run(model, feeds)
    return ort_qdq(u8u8_model(model), feeds)


@contextlib.contextmanager
def memory_cap(extra_bytes=3 * 2**30):
    """Cap this process's address space at its current size plus ``extra_bytes`` (a fuzzed model
    that asks for a huge tensor gets MemoryError instead of taking the machine)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vsz + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def two_matmuls(n: int, k: int, seed: int = 0, scale: float = 1.0) -> onnx.ModelProto:
    """MatMul(x, w1) -> Identity -> MatMul(., w2), x of shape [N, n], weights n x k and k x n: the
    large-model tests' model (two big weights, one clean-up to do)."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.standard_normal((n, k), np.float32), rng.standard_normal((k, n), np.float32)
    if scale != 1.0:
        w1 *= scale
        w2 *= scale
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    del w1, w2
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Identity", ["h"], ["h2"], name="id"),
             helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def cli_main(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``tvmlite ARGS`` run in this process by ``tvmlite.cli.main``,
    as a user's shell would see them: file descriptors 1 and 2 are captured as well as Python's
    streams (TVM's and onnxruntime's C++ logs write to the descriptors), and an exception that
    escapes ``main`` is printed as a traceback with status 1, as the interpreter would; warnings
    are printed to stderr under Python's default filters (pytest would otherwise record them).

    Starting ``python -m tvmlite.cli`` costs 2-5 s of imports here (onnx, TVM, onnxruntime) and the
    suite runs the CLI a few hundred times; the command's code path is the same. Tests of what only
    a real process shows (signals, resource limits, the console script) still start one."""
    import tvmlite.cli

    files = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    # main() turns SIGINT/SIGTERM into interrupts and quietens their reports: pytest's own come back after
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    try:
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        with open(1, "w", closefd=False) as out, open(2, "w", closefd=False) as err, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                err.write(warnings.formatwarning(message, category, filename, lineno, line))
            try:
                rc = tvmlite.cli.main([str(a) for a in args])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught one
                traceback.print_exc(file=err)
                rc = 1
            out.flush()
            err.flush()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        sys.unraisablehook = hook
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    texts = []
    for f in files:
        f.seek(0)
        texts.append(f.read().decode("utf-8", "replace"))
        f.close()
    return int(rc), texts[0], texts[1]


def refused_passes(tmp_path, proto: onnx.ModelProto, passes: str) -> str:
    """`tvmlite optimize --passes PASSES` on ``proto`` saved in ``tmp_path``: asserts exit 2, one
    line on stderr and no traceback, no output written and the input unchanged; returns the line."""
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(proto, src)
    before = src.read_bytes()
    rc, _, err = cli_main("optimize", src, "-o", dst, "--passes", passes)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not dst.exists() and src.read_bytes() == before
    return lines[0]
