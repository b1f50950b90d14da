"""Host calls: the nodes the TVM backend has no kernel for, run by their NumPy kernels inside the
compiled plan.

A run of consecutive host-run nodes (a `lower.HostSegment`) is stored in the run plan as data, not
code: per node its op type, domain, attributes and value names, with the op's opset in the plan's
``opsets``; attribute tensors, subgraphs (If/Loop/Scan bodies, as ONNX GraphProto bytes) and the
segment's constant inputs go into the constants .npz. At load (and in process: one path for both)
`HostCall` rebuilds the nodes as a small tvmlite Graph through the op registry and runs it with
the NumPy backend's `Plan`, so subgraphs run through the NumPy plan's own KernelContext and
sub-plans. A segment reads values from the TVM buffers without copying (NumPy views of
them, read-only), other values (integers, bools, strings, sequences) from the host values earlier
segments made or the non-float graph inputs, and copies each output a TVM kernel reads into its
buffer (float32, or the value's integer/bool dtype).

`artifact_check.check_host` validates the stored segments before anything is built from them.
"""
from __future__ import annotations

import numbers

import numpy as np
import onnx

from tvmlite.backends.numpy import Plan
from tvmlite.backends.tvm import control, control_run
from tvmlite.errors import TvmliteError, UnsupportedError
from tvmlite.export.onnx_export import export_graph
from tvmlite.frontend.onnx_import import import_graph
from tvmlite.ir.graph import Graph
from tvmlite.ops.registry import canonical_domain


# -------------------------------------------------------------------------------------------- build
def segment_spec(seg, low, buffers: dict, host_made: set, index: int, plan_of=None,
                 prefix: str = "") -> tuple[dict, dict]:
    """The plan entry (JSON-able) of host segment ``seg`` and the arrays it puts in the .npz.
    ``buffers``: the TVM buffers made so far (a segment output a kernel reads has one by now);
    ``host_made``: every value a host segment makes (those are read from the host values);
    ``plan_of``: module.plan_of, for the run plans of a control-flow node's compiled bodies;
    ``prefix``: what every key it stores starts with (module.plan_of's)."""
    g = low.model.graph
    arrays: dict[str, np.ndarray] = {}
    reads, consts = {}, {}
    for name in seg.inputs:
        c = g.const_value(name)
        if c is not None:
            key = f"{prefix}host{index}.c{len(consts)}"
            arrays[key] = storable(c, name)
            consts[name] = key
            continue
        root = low.views.get(name, name)
        if name not in host_made and root in buffers:
            reads[name] = [root, list(low.shapes.get(name, buffers[root]["shape"]))]
    writes = {o: [o, list(buffers[o]["shape"])] for o in seg.outputs if o in buffers}
    nodes = []
    for i, (node, why) in enumerate(zip(seg.nodes, seg.reasons)):
        # a node with compiled bodies keeps its subgraphs as their run plans only (spec["body"]):
        # stored as ONNX too, each branch of an If holding a Loop held that Loop's weights again
        # (the VAD artifact: 4.8 MB of weights, 19.1 MB of .npz), and the load parsed them all
        attrs = {k: {"type": "graph" if isinstance(v, Graph) else "graphs", "compiled": True}
                 if seg.body is not None and _is_graphs(v) else
                 _attr_spec(node, k, v, arrays, f"{prefix}host{index}.n{i}.{j}")
                 for j, (k, v) in enumerate(node.attrs.items())}
        nodes.append({"op_type": node.op_type, "domain": canonical_domain(node.domain),
                      "name": node.name, "inputs": list(node.inputs), "outputs": list(node.outputs),
                      "attrs": attrs, "reason": why})
    spec = {"nodes": nodes, "inputs": list(seg.inputs), "outputs": list(seg.outputs),
            "reads": reads, "consts": consts, "writes": writes}
    if seg.body is not None:  # the node stays stored too (less its subgraphs): check_host reads it
        spec["body"], body_arrays = control.body_spec(seg.body, index, plan_of, prefix)
        arrays.update(body_arrays)
    return spec, arrays


def storable(arr, what: str) -> np.ndarray:
    """``arr`` as the .npz stores it without pickles: strings as fixed-width unicode."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        if not all(isinstance(v, str) for v in arr.flat):
            raise UnsupportedError(f"{what}: an object array of other things than strings cannot be "
                                   "saved without pickles")
        return arr.astype(str)
    return arr


def _is_graphs(value) -> bool:
    return isinstance(value, Graph) or (isinstance(value, (list, tuple)) and bool(value)
                                        and all(isinstance(v, Graph) for v in value))


def _bytes_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).copy()


def _attr_spec(node, name: str, value, arrays: dict, key: str) -> dict:
    where = f"node {node.label!r} ({node.op_type}) attribute {name!r}"
    if isinstance(value, Graph):
        arrays[key] = _bytes_array(export_graph(value).SerializeToString())
        return {"type": "graph", "npz": key}
    if isinstance(value, onnx.TypeProto):
        arrays[key] = _bytes_array(value.SerializeToString())
        return {"type": "type_proto", "npz": key}
    if isinstance(value, np.ndarray):
        arrays[key] = storable(value, where)
        return {"type": "tensor", "npz": key}
    if isinstance(value, bytes):
        return {"type": "bytes", "value": value.hex()}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    if isinstance(value, numbers.Integral):
        return {"type": "int", "value": int(value)}
    if isinstance(value, numbers.Real):
        return {"type": "float", "value": float(value)}
    if isinstance(value, (list, tuple)):
        items = list(value)
        if items and all(isinstance(v, Graph) for v in items):
            for i, v in enumerate(items):
                arrays[f"{key}.{i}"] = _bytes_array(export_graph(v).SerializeToString())
            return {"type": "graphs", "npz": [f"{key}.{i}" for i in range(len(items))]}
        if items and all(isinstance(v, np.ndarray) for v in items):
            for i, v in enumerate(items):
                arrays[f"{key}.{i}"] = storable(v, where)
            return {"type": "tensors", "npz": [f"{key}.{i}" for i in range(len(items))]}
        if all(isinstance(v, str) for v in items) and items:
            return {"type": "strings", "value": items}
        if all(isinstance(v, numbers.Integral) for v in items):
            kind = _empty_list_kind(node, name) if not items else "ints"
            return {"type": kind, "value": [int(v) for v in items] if kind == "ints" else []}
        if all(isinstance(v, numbers.Real) for v in items):
            return {"type": "floats", "value": [float(v) for v in items]}
    raise UnsupportedError(f"{where}: a {type(value).__name__} cannot be saved in a build")


def _empty_list_kind(node, name: str) -> str:
    """What an empty list attribute was in the file (ints unless the proto says otherwise)."""
    proto = node.attr_protos.get(name, (None, None))[1]
    kinds = {onnx.AttributeProto.FLOATS: "floats", onnx.AttributeProto.STRINGS: "strings"}
    return kinds.get(proto.type, "ints") if proto is not None else "ints"


# --------------------------------------------------------------------------------------------- load
def attr_value(spec: dict, arrays: dict, graph):
    """The plain Python value of a stored attribute (``graph``: the parent of a subgraph)."""
    kind = spec["type"]
    if kind in ("int", "float", "string", "ints", "floats", "strings"):
        return spec["value"]
    if kind == "bytes":
        return bytes.fromhex(spec["value"])
    if kind == "tensor":
        return loaded(arrays[spec["npz"]])
    if kind == "tensors":
        return [loaded(arrays[k]) for k in spec["npz"]]
    if kind == "graph":
        return import_graph(_parse(onnx.GraphProto, arrays[spec["npz"]]), graph)
    if kind == "graphs":
        return [import_graph(_parse(onnx.GraphProto, arrays[k]), graph) for k in spec["npz"]]
    if kind == "type_proto":
        return _parse(onnx.TypeProto, arrays[spec["npz"]])
    raise TvmliteError(f"unknown attribute type {kind!r}")


def loaded(arr: np.ndarray) -> np.ndarray:
    """A stored array as tvmlite's kernels take it: strings back as an object array."""
    return arr.astype(object) if arr.dtype.kind == "U" else arr


def _parse(cls, arr: np.ndarray):
    msg = cls()
    try:
        msg.ParseFromString(np.ascontiguousarray(arr, np.uint8).tobytes())
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise TvmliteError(f"a stored {cls.__name__} does not parse: {type(e).__name__}") from None
    return msg


def segment_graph(spec: dict, arrays: dict):
    """The stored segment as a tvmlite Graph: its inputs, constants, nodes and outputs."""
    g = Graph("host_segment")
    for name, key in spec["consts"].items():
        g.add_initializer(name, loaded(arrays[key]))
    for name in spec["inputs"]:
        if name not in spec["consts"]:
            g.add_input(name)
    for nd in spec["nodes"]:  # a compiled body's subgraph is its run plan only (segment_spec)
        attrs = {k: attr_value(a, arrays, g) for k, a in nd["attrs"].items() if not a.get("compiled")}
        g.add_node(nd["op_type"], nd["inputs"], nd["outputs"], attrs, domain=nd["domain"], name=nd["name"])
    g.outputs = list(spec["outputs"])
    return g


class HostCall:
    """One host segment of a compiled plan, ready to run: ``call()`` reads its inputs (TVM
    buffers, constants, host values in ``env``), runs the NumPy plan of its nodes, keeps every
    output in ``env`` and copies those TVM kernels read into their buffers."""

    def __init__(self, spec: dict, arrays: dict, opsets: dict, buffer_view, env: dict, sub_model=None):
        self.env = env
        self.labels = [nd["name"] or f"{nd['op_type']}->{nd['outputs'][0] if nd['outputs'] else '?'}"
                       for nd in spec["nodes"]]
        if "body" in spec:  # a Loop/If with TVM-compiled bodies (control.py)
            if sub_model is None:
                raise TvmliteError(f"host call {self.labels[0]!r} has compiled bodies and no library to run them")
            segment_graph(spec, arrays)  # the node as stored must still parse: a damaged artifact fails at load
            self.body = control_run.runner(spec["body"], sub_model, f"host call {self.labels[0]!r}")
            self.plan = None
            self.const_feeds = {name: loaded(arrays[key]) for name, key in spec["consts"].items()}
        else:
            # blas_threads=None: capping BLAS through threadpoolctl costs ~10 us per call, more than a
            # small host op (LayerNormalization of a 2x3x8 tensor: 25 us) takes; host ops are rarely GEMMs
            self.plan = Plan(segment_graph(spec, arrays), dict(opsets), blas_threads=None)
        self.reads = []
        for name, (buf, shape) in spec["reads"].items():
            view = buffer_view(buf, shape)
            view.flags.writeable = False  # kernels never write their inputs; make sure of it
            self.reads.append((name, view))
        self.env_reads = [n for n in spec["inputs"] if n not in spec["reads"] and n not in spec["consts"]]
        self.outputs = list(spec["outputs"])
        self.writes = [(name, buffer_view(buf, shape)) for name, (buf, shape) in spec["writes"].items()]

    def __call__(self) -> None:
        feeds = dict(self.reads)
        for name in self.env_reads:
            if name not in self.env:
                raise TvmliteError(f"host call {self.labels[0]!r}: value {name!r} was not computed")
            feeds[name] = self.env[name]
        if self.plan is None:
            made = self.body.run({**self.const_feeds, **feeds})
            self.env.update((o, made[o]) for o in self.outputs)
        else:
            self.env.update(zip(self.outputs, self.plan.run(feeds)))
        for name, dst in self.writes:
            got = self.env[name]
            if not isinstance(got, np.ndarray) or got.dtype != dst.dtype or got.shape != dst.shape:
                what = (f"{got.dtype} {list(got.shape)}" if isinstance(got, np.ndarray)
                        else type(got).__name__)
                raise TvmliteError(f"host call made {name!r} as {what}, the TVM kernels read it as "
                                   f"{dst.dtype} {list(dst.shape)}")
            np.copyto(dst, got)
