"""The build cache: built artifacts under $TVMLITE_CACHE (default ~/.cache/tvmlite/tvm), one folder
per cache key.

The key hashes what decides a build: the graph as the IR holds it (nodes, attributes, value types,
the raw bytes of every initializer and tensor attribute, subgraphs), the input shapes, the target,
tvmlite's TVM backend sources and the schedule knobs. It is computed by walking the IR, not by
serializing the model: a protobuf export of MiniLM copied every weight into a message first and
took 0.4 s of its 1.04 s cached build; the walk hashes the arrays where they lie (~0.1 s, SHA-256).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np

from tvmlite.ir.graph import Graph


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TVMLITE_CACHE") or pathlib.Path.home() / ".cache" / "tvmlite" / "tvm")


_digests: dict = {}  # the sources' (name, size, mtime) -> their digest


def _source_digest() -> str:
    """Changing an emitter or a schedule must invalidate cached builds. The sources are read again
    only when a file's size or time changed (reading all of them took ~20 ms per cache key)."""
    here = pathlib.Path(__file__).parent
    paths = sorted(here.rglob("*.py"))  # the emitters and kernels folders too
    stamp = tuple((p.relative_to(here).as_posix(), st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()])
    if stamp not in _digests:
        h = hashlib.sha256()
        for path in paths:
            h.update(path.relative_to(here).as_posix().encode())
            h.update(path.read_bytes())
        _digests.clear()
        _digests[stamp] = h.hexdigest()[:16]
    return _digests[stamp]


def graph_key(model, input_shapes: dict, target: str) -> str:
    from tvmlite.backends.tvm.concat_views import enabled as concat_views_enabled
    from tvmlite.backends.tvm.kernels.schedules import min_parallel_work
    from tvmlite.backends.tvm.kernels.target import host_threads

    h = hashlib.sha256()
    _graph(h, model.graph)
    h.update(json.dumps(sorted(model.opsets.items())).encode())
    for f in model.functions:  # model-local functions a node may call
        h.update(f.SerializeToString(deterministic=True))
    h.update(json.dumps(sorted((k, list(v)) for k, v in input_shapes.items())).encode())
    h.update(target.encode())
    h.update(_source_digest().encode())
    h.update(f"{min_parallel_work()}/{host_threads()}".encode())  # both change the schedules
    h.update(f"concat views {concat_views_enabled()}".encode())  # another plan ($TVMLITE_CONCAT_VIEWS)
    return h.hexdigest()[:24]


def _text(h, *parts) -> None:
    h.update(json.dumps(parts).encode() + b"\n")


def _graph(h, g) -> None:
    _text(h, "graph", list(g.inputs), list(g.outputs), list(g.initializers))
    for name in sorted(g.values):  # declared types: inference and the untyped-value rule read them
        t = g.values[name].type
        if t is not None:
            _text(h, "type", name)
            h.update(t.SerializeToString(deterministic=True))
    for name in g.initializers:
        _text(h, "init", name)
        _array(h, g.values[name].const)
    for node in g.toposort():
        _text(h, "node", node.op_type, node.domain, list(node.inputs), list(node.outputs))
        for k, v in node.attrs.items():
            _text(h, "attr", k)
            if v is None and k in node.attr_protos:  # a function's reference to its caller's attribute
                h.update(node.attr_protos[k][1].SerializeToString(deterministic=True))
            else:
                _attr(h, v)


def _attr(h, v) -> None:
    if isinstance(v, Graph):
        _graph(h, v)
    elif isinstance(v, np.ndarray):
        _array(h, v)
    elif isinstance(v, (list, tuple)):
        _text(h, "list", len(v))
        for x in v:
            _attr(h, x)
    elif hasattr(v, "SerializeToString"):  # TypeProto, or a proto kept as read
        h.update(v.SerializeToString(deterministic=True))
    else:  # int, float (repr round-trips), str, bytes
        _text(h, type(v).__name__, repr(v))


def _array(h, a) -> None:
    a = np.asarray(a)
    _text(h, "array", a.dtype.str, list(a.shape))
    if a.dtype == object:  # strings
        _text(h, [repr(x) for x in a.reshape(-1)])
    else:
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def prune_cache(keep=None, max_bytes: int | None = None) -> None:
    """Drop the least recently built entries while the cache holds more than $TVMLITE_CACHE_MB
    (default 4096) megabytes: a VGG-sized model's packed weights alone take half a gigabyte."""
    limit = max_bytes if max_bytes is not None else int(os.environ.get("TVMLITE_CACHE_MB", 4096)) << 20
    entries = []
    for d in cache_dir().iterdir():
        if d.is_dir():
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            entries.append((d.stat().st_mtime, size, d))
    total = sum(e[1] for e in entries)
    for _, size, d in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and d == keep:
            continue
        shutil.rmtree(d, ignore_errors=True)
        total -= size
