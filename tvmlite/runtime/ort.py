"""onnxruntime sessions and timing: the one place tvmlite measures.

Sessions come from a whole model (a path, a ModelProto or a tvmlite Model) or from a *fragment*:
nodes cut out of a graph into a model of their own, their constant inputs as initializers (shared,
not copied) and their other inputs as graph inputs of the static shapes given, written by the normal
exporter. The IR version and opsets of every model tvmlite makes up to measure are chosen here, in
``graph_model`` (before this module, four one-layer builders wrote IR 8, 8, 8 and 10 by hand).

Timing runs callables interleaved: round by round, every other round in reverse order, so a load
change or a cache effect on the shared machine hits every candidate alike. The statistic is the
median (robust on a loaded host); the spread is half the interquartile range.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from tvmlite.errors import TvmliteError, UnsupportedError, message_line
from tvmlite.export import export_model, onnx_export, save
from tvmlite.ir.graph import Graph, Model, Node, tensor_type

#: above this many bytes of shared weights a session does not prepack them: onnxruntime's
#: prepacking (MatMul's B, Conv's W) copies each weight into its own layout, a second copy per
#: session while the checks hold two; measured on 2 x 70 MB MatMul weights: +143 MB a session with
#: prepacking, +10 MB without (outputs change in the last bits, alike for every session made here)
PREPACK_MAX_BYTES = 2**30
#: the lowest IR version of a model made up to measure: onnxruntime 1.32 refuses onnx 1.23's
#: default (14); the exporter raises it where the opsets or model-local functions need more
FRAGMENT_IR_VERSION = 8


# ------------------------------------------------------------------------------------ sessions
def ort_session(model, threads: int = 2, custom_ops=(), *, optimize: bool = True):
    """An onnxruntime CPU session for a path, a ModelProto, a tvmlite Model or its lean export
    (`onnx_export.Exported`). ``custom_ops``: paths of custom-op libraries to register first;
    ``optimize=False`` turns onnxruntime's graph optimizations off (to ask whether a kernel exists,
    not how fast the graph runs). A Model's big arrays are not copied: the session reads them where
    the IR holds them (`_session_sharing`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors come back as exceptions, folded into one tvmlite line
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.set_default_logger_severity(4)
    for lib in custom_ops or ():
        try:
            so.register_custom_ops_library(os.fspath(lib))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
            raise TvmliteError(f"--custom-ops {lib}: onnxruntime cannot load it: {str(e).strip()[:200]}") from None
    if isinstance(model, Model):
        model = onnx_export.export_lean(model)
    if isinstance(model, onnx_export.Exported):
        if model.arrays:
            return _session_sharing(model, so)
        model = model.proto
    if isinstance(model, (str, os.PathLike)):
        src = os.fspath(model)
    elif onnx_export.proto_bytes(model) > onnx_export.EXTERNAL_THRESHOLD:
        return _session_via_file(model, so)
    else:
        src = model.SerializeToString()
    return _load(src, so)


def _load(src, so):
    import onnxruntime as ort

    try:
        return _run_errors_as_ours(ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
        msg = message_line(e)
        raise TvmliteError(f"onnxruntime cannot load the model: {msg}") from None


def _run_errors_as_ours(sess):
    """A model that loads can still fail when run (a Reshape to a size that does not fit, say):
    that is one TvmliteError line, not an internal error. The session becomes a `_CheckedSession`
    (a subclass, not a closure over its own ``run``: that made a reference cycle, and every session
    with its weights lived until the garbage collector came by)."""
    sess.__class__ = _checked_session_class()
    return sess


_CHECKED_SESSION = []


def _checked_session_class():
    if not _CHECKED_SESSION:
        import onnxruntime as ort

        class _CheckedSession(ort.InferenceSession):
            def run(self, *args, **kw):
                try:
                    return super().run(*args, **kw)
                except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes
                    msg = " ".join(str(e).split()) or type(e).__name__
                    raise TvmliteError(f"onnxruntime failed to run the model: {msg[:500]}") from None

        _CHECKED_SESSION.append(_CheckedSession)
    return _CHECKED_SESSION[0]


def _session_sharing(exp, so):
    """A session of a lean export whose big arrays onnxruntime uses where they are (shared
    initializers: ``SessionOptions.add_initializer``), no copy: the model goes through a temporary
    file whose placeholders point into a sparse file of zeros that onnxruntime never reads (it
    refuses placeholders that point nowhere). Over PREPACK_MAX_BYTES, prepacking is off. Measured
    on 2 x 70 MB of MatMul weights: a session from bytes took +275 MB at its peak and kept +143 MB;
    this one keeps +143 MB with prepacking (the packed copy) and +10 MB without."""
    import tempfile

    import onnxruntime as ort

    shared = []
    for name, arr in exp.arrays.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))  # keeps the array alive
        so.add_initializer(name, value)
        shared.append(value)
    if sum(a.nbytes for a in exp.arrays.values()) > PREPACK_MAX_BYTES:
        so.add_session_config_entry("session.disable_prepacking", "1")
    with tempfile.TemporaryDirectory(prefix="tvmlite-ort-") as d:
        sess = _load(exp.placeholder_files(d), so)
    sess._tvmlite_shared = shared  # onnxruntime reads these buffers for as long as the session lives
    return sess


def _session_via_file(proto, so):
    """Models over protobuf's 2 GiB limit go through a temporary file with external data."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tvmlite-ort-") as d:
        path = os.path.join(d, "model.onnx")
        save(proto, path)
        return _load(path, so)


_SATURATES: list = []


def u8s8_saturates() -> bool:
    """Whether this host's onnxruntime int8 MatMul (uint8 activations x int8 weights, the form
    MatMulInteger, DynamicQuantizeMatMul and QAttention run) saturates. x86 CPUs without VNNI
    multiply with vpmaddubsw, which adds each pair of u8 x s8 products in int16: 255 * 127 * 2
    overflows it, while 7-bit weights (|w| <= 63) never do. Probed once per process on a tiny
    MatMulInteger whose exact result is known (AVX2-only EPYC: every output wrong with weights of
    127, none with 63)."""
    if not _SATURATES:
        from onnx import TensorProto, helper, numpy_helper

        a = np.full((4, 64), 255, np.uint8)
        b = np.full((64, 16), 127, np.int8)
        g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])],
                              [numpy_helper.from_array(b, "b")])
        proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        proto.ir_version = FRAGMENT_IR_VERSION
        y = ort_session(proto, threads=1).run(None, {"a": a})[0]
        _SATURATES.append(not np.array_equal(y, a.astype(np.int64) @ b.astype(np.int64)))
    return _SATURATES[0]


# ----------------------------------------------------------------------------------- fragments
def graph_model(graph: Graph, opsets: dict[str, int], functions=()) -> Model:
    """A Model around ``graph`` made up to be measured: the one place its IR version is set."""
    m = Model(graph, dict(opsets))
    m.ir_version = FRAGMENT_IR_VERSION
    m.imported_opsets = {}  # not read from a file: the exporter raises the IR version as the opsets need
    m.functions = list(functions)
    return m


def fragment(model: Model, nodes: list[Node], shapes: dict | None = None, *, outputs: list[str] | None = None,
             opset: int | None = None, dtypes: dict | None = None) -> Model:
    """``nodes`` of ``model``'s main graph as a model of their own.

    Constant inputs become initializers (the arrays are shared, the IR never writes into them); the
    other inputs become graph inputs of the static shapes in ``shapes`` (else the graph's own, when
    every dim is known). The outputs are ``outputs``, else those the rest of the graph reads or the
    graph outputs, else the last node's. ``opset`` replaces the default domain's opset; ``dtypes``
    gives input types the graph does not record (an untyped intermediate value). Value and
    node names are kept, so feeds and ranges keyed by the model's names apply. Raises
    UnsupportedError when an input's shape is unknown or a node holds a subgraph."""
    g = model.graph
    nodes = list(nodes)
    if not nodes:
        raise UnsupportedError("an empty fragment has nothing to run")
    shapes = shapes or {}
    inside = set(nodes)
    produced = {o for n in nodes for o in n.outputs if o}
    frag = Graph("fragment")
    for node in nodes:
        if node.subgraphs:
            raise UnsupportedError(f"node {node.label!r}: a fragment cannot hold {node.op_type}'s subgraphs")
        for name in node.inputs:
            if not name or name in produced or name in frag.values:
                continue
            c = g.const_value(name)
            if c is not None:
                frag.add_initializer(name, c)
                continue
            shape = _static(shapes.get(name)) or _static(g.value(name).shape)
            elem = g.value(name).elem_type
            if elem is None and name in (dtypes or {}):
                elem = tensor_type(dtypes[name]).tensor_type.elem_type
            if shape is None or elem is None:
                raise UnsupportedError(f"node {node.label!r}: input {name!r} has no static shape and type "
                                       "to measure the node alone at")
            frag.add_input(name, tensor_type(elem, shape))
    for node in nodes:
        frag.add_node(node.op_type, node.inputs, node.outputs, dict(node.attrs), domain=node.domain,
                      name=node.name)
    if outputs is None:
        outputs = [o for n in nodes for o in n.outputs if o and (
            o in g.outputs or any(c not in inside for c in g.consumers(o)))] or \
            [o for o in nodes[-1].outputs if o]
    for name in outputs:
        if name not in produced:
            raise UnsupportedError(f"fragment output {name!r} is not produced by its nodes")
        frag.outputs.append(name)
        shape = _static(shapes.get(name))
        v = g.values.get(name)
        elem = v.elem_type if v is not None else None
        if elem is not None:
            frag.values[name].type = tensor_type(elem, shape)
    opsets = dict(model.opsets)
    if opset is not None:
        opsets[""] = opset
    return graph_model(frag, opsets, model.functions)


def _static(shape) -> tuple | None:
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def timing_key(model: Model, node: Node, shapes: dict) -> tuple | None:
    """What decides ``node``'s time as a `fragment` of its own: op, attributes, and per input its
    static shape and element type (a constant's dtype and shape, not its values), and the output's
    shape where known; None when an input's shape is unknown (the node cannot be timed alone).
    Layers with equal keys time alike, so a pass times one of them."""
    g = model.graph
    ins = []
    for name in node.inputs:
        if not name:
            ins.append(None)
            continue
        c = g.const_value(name)
        if c is not None:
            ins.append(("const", np.asarray(c).dtype.str, tuple(np.shape(c))))
        elif name in shapes:
            ins.append(("value", g.value(name).elem_type, tuple(shapes[name])))
        else:
            return None
    out = node.outputs[0] if node.outputs else ""
    return (node.domain, node.op_type, tuple(sorted((k, repr(v)) for k, v in node.attrs.items())), tuple(ins),
            tuple(shapes[out]) if out in shapes else None)


def fragment_session(model: Model, nodes: list[Node], shapes: dict | None = None, threads: int = 2,
                     custom_ops=(), **kw):
    """(session, fragment model) of ``fragment(model, nodes, shapes, **kw)``."""
    frag = fragment(model, nodes, shapes, **kw)
    return ort_session(frag, threads, custom_ops), frag


def random_feeds(model: Model, ranges: dict | None = None, seed: int = 0) -> dict:
    """Uniform feeds for a fragment's (static) inputs, in ``ranges[name]`` (default -1..1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in model.graph.inputs:
        v = model.graph.value(name)
        lo, hi = (ranges or {}).get(name, (-1.0, 1.0))
        feeds[name] = rng.uniform(lo, hi, v.shape).astype(v.dtype)
    return feeds


# -------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Per timed callable: median milliseconds and spread (half the interquartile range)."""

    medians_ms: list[float]
    spreads_ms: list[float]
    rounds: int


def time_interleaved(fns: list, repeats: int, warmup: int = 2, *, budget_s: float | None = None,
                     min_rounds: int = 2, settle: int = 0, clock=None) -> Timing:
    """Time ``fns`` in turn for ``repeats`` rounds (every other round in reverse order) after
    ``warmup`` untimed calls each; with ``budget_s``, stop after ``min_rounds`` once that many
    seconds have passed.

    ``settle``: untimed calls of each callable right before each of its timed ones, so that a timed
    call never runs straight after another callable. onnxruntime sessions need it when three or more
    take turns: after a run, a session's pool threads spin for a while and take the cores from the
    session that runs next, so in plain round-robin each session's time depends on its neighbours
    and its slot (the two files of one float model, timed as 2 of 4 encoder sessions at 2 threads,
    read 1.075-1.108x of each other in both orders; with settle=1 1.002-1.024x). A pair needs
    none: alternating its order gives each the same neighbours. ``clock``: what a call's time is
    read from (`time.thread_time`: CPU time of the calling thread, for one-thread runs); wall
    time by default."""
    clock = clock or time.perf_counter
    for f in fns:
        for _ in range(warmup):
            f()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    start = time.perf_counter()
    for r in range(max(repeats, 1)):
        for i in (order if r % 2 == 0 else order[::-1]):
            for _ in range(settle):
                fns[i]()
            t0 = clock()
            fns[i]()
            times[i].append((clock() - t0) * 1e3)
        if budget_s is not None and r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    stats = [np.percentile(t, [25, 50, 75]) for t in times]
    return Timing([float(m) for _, m, _ in stats], [float((q3 - q1) / 2) for q1, _, q3 in stats],
                  len(times[0]) if times else 0)


def interleaved_ms(fns: list, repeats: int, warmup: int = 2, *, settle: int = 0) -> list[float]:
    """Median milliseconds of each callable, timed interleaved (``time_interleaved``)."""
    return time_interleaved(fns, repeats, warmup, settle=settle).medians_ms


def block_medians_ms(fns: list, repeats: int, blocks: int, warmup: int = 2, *, settle: int = 1) -> list[list[float]]:
    """``blocks`` runs of `time_interleaved` over ``fns`` (median ms of each, in ``fns``' order per
    block), each block starting its round at the next callable, so that every callable takes every
    slot. ``settle`` 1 by default: these are several onnxruntime sessions taking turns (see
    `time_interleaved`)."""
    out = []
    for b in range(max(blocks, 1)):
        order = [(i + b) % len(fns) for i in range(len(fns))]
        ms = time_interleaved([fns[i] for i in order], repeats, warmup, settle=settle).medians_ms
        out.append([ms[order.index(i)] for i in range(len(fns))])
    return out


def wait_idle(limit_s: float = 1.0, window_s: float = 0.02, busy: float = 0.02, quiet: int = 2) -> float:
    """Sleep until this process's threads have stopped using the CPU (less than ``busy`` of a core
    in each of ``quiet`` windows of ``window_s`` in a row), at most ``limit_s``; the seconds waited.
    Between two runtimes' blocks of timed calls: after a run, onnxruntime's and TVM's pool workers
    spin on and take a core from whoever runs next. A fixed pause is too short on a loaded host,
    where a spin counted in iterations lasts longer in wall time (digits_cnn QDQ, 2 threads,
    load 6, CPU used after a run: TVM's worker ~350 ms, onnxruntime's ~200 ms; bench_tvm's former
    50 ms pause left either spinning into the other's timed calls)."""
    start = time.perf_counter()
    calm = 0
    while calm < quiet and time.perf_counter() - start < limit_s:
        c0 = time.process_time()
        time.sleep(window_s)
        calm = calm + 1 if time.process_time() - c0 < busy * window_s else 0
    return time.perf_counter() - start


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of one callable."""
    return time_interleaved([fn], repeats, warmup).medians_ms[0]


def timed_ratio(fa, fb, threshold: float = 1.0, *, max_rounds: int = 30, min_rounds: int = 6,
                margin: float = 0.15, warmup: int = 2, clock=time.perf_counter) -> tuple[float, float, int]:
    """Median milliseconds of ``fa`` and ``fb`` run alternately (every other round in reverse
    order), and the rounds taken: at least ``min_rounds``, more while ``ms_a / ms_b`` lies within
    ``margin`` of ``threshold`` (the ratio the caller decides at), doubling up to ``max_rounds``.
    Most per-layer choices are not close and are decided in a few rounds. ``clock``: seconds to
    take differences of; ``time.thread_time`` times one-thread onnxruntime sessions in CPU time
    (they run in the calling thread), which a loaded host barely moves."""
    for _ in range(warmup):
        fa()
        fb()
    ta: list[float] = []
    tb: list[float] = []
    target = max(1, min(min_rounds, max_rounds))
    while True:
        while len(ta) < target:
            pair = ((fa, ta), (fb, tb)) if len(ta) % 2 == 0 else ((fb, tb), (fa, ta))
            for f, acc in pair:
                t0 = clock()
                f()
                acc.append((clock() - t0) * 1e3)
        ma, mb = float(np.median(ta)), float(np.median(tb))
        ratio = ma / max(mb, 1e-12)
        if target >= max_rounds or threshold <= 0 or abs(ratio / threshold - 1.0) > margin:
            return ma, mb, len(ta)
        target = min(2 * target, max_rounds)
