"""The build cache: built artifacts under $TVMLITE_CACHE (default ~/.cache/tvmlite/tvm), one folder
per cache key.

The key hashes what decides a build: the graph as the IR holds it (nodes, attributes, value types,
the raw bytes of every initializer and tensor attribute, subgraphs), the input shapes, the target,
tvmlite's TVM backend sources and the schedule knobs. It is computed by walking the IR, not by
serializing the model: a protobuf export of MiniLM copied every weight into a message first and
took 0.4 s of its 1.04 s cached build; the walk hashes the arrays where they lie (~0.1 s, SHA-256).

An entry is written into a staging folder (``.KEY.*``) and renamed into place whole, so no process
ever sees half an entry. Each entry keeps its key's parts (``key.json``: the graph's hash, the
target, the sources' digest, the knobs). An entry that fails to load is rebuilt with one line on
stderr saying which file and why; a miss for a graph the cache holds under other parts says which
part changed (the backend sources edited, $TVMLITE_THREADS...): a rebuild is never silent.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

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


def key_parts(model, input_shapes: dict, target: str) -> dict:
    """What decides a build, each part hashed or named: ``graph`` (the IR, its opsets and functions,
    the input shapes), ``target``, ``sources`` (tvmlite's TVM backend) and ``knobs``."""
    from tvmlite.backends.tvm.concat_views import enabled as concat_views_enabled
    from tvmlite.backends.tvm.emitters.nhwc import enabled as float_nhwc_enabled
    from tvmlite.backends.tvm.kernels.schedules import min_parallel_work
    from tvmlite.backends.tvm.kernels.target import host_threads
    from tvmlite.backends.tvm.winograd_choice import enabled as winograd_enabled

    h = _Digest(hash_threads())
    _graph(h, model.graph)
    h.update(json.dumps(sorted(model.opsets.items())).encode())
    for f in model.functions:  # model-local functions a node may call
        h.update(f.SerializeToString(deterministic=True))
    h.update(json.dumps(sorted((k, list(v)) for k, v in input_shapes.items())).encode())
    # both thresholds change the schedules; concat views give another plan ($TVMLITE_CONCAT_VIEWS),
    # channels-last float buffers other kernels ($TVMLITE_FLOAT_NHWC)
    knobs = f"min parallel work {min_parallel_work()}, threads {host_threads()}, concat views {concat_views_enabled()}"
    if not float_nhwc_enabled():
        knobs += ", float nhwc off"
    if not winograd_enabled():  # prepare lowers no conv to Winograd ($TVMLITE_WINOGRAD)
        knobs += ", winograd off"
    return {"graph": h.hexdigest()[:24], "target": target, "sources": _source_digest(), "knobs": knobs}


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def graph_key(model, input_shapes: dict, target: str) -> str:
    return key_of(key_parts(model, input_shapes, target))


#: arrays of this many bytes or more are hashed in pieces of this size, on hash_threads() threads
HASH_CHUNK = 8 << 20


def hash_threads() -> int:
    """Threads that hash the pieces: $TVMLITE_HASH_THREADS, default 1. Two threads did not pay on
    the shared 2-core host (load 14: 1.15 s for 400 MB on one thread, 1.15 s on two; VGG-19's key
    1.56 s against 1.61 s); on a quiet machine they may, hence the knob. The key is the same for
    any count."""
    from tvmlite.limits import env_int

    return max(1, env_int("TVMLITE_HASH_THREADS", 1))


class _Digest:
    """SHA-256 of the key's stream, where an array of HASH_CHUNK bytes or more enters as its size
    and, at the end, the SHA-256 of each of its HASH_CHUNK-byte pieces in order, hashed on
    ``threads`` threads (hashlib lets go of the GIL): VGG-19's 548 MB of weights are one 411 MB
    matrix and a few big ones, so pieces, not arrays, are what threads could share."""

    def __init__(self, threads: int):
        self._h = hashlib.sha256()
        self._threads = max(1, threads)
        self._pool = None
        self._pieces: list = []

    def update(self, data) -> None:
        self._h.update(data)

    def update_big(self, data: memoryview) -> None:
        self._h.update(f"pieces of {len(data)}".encode())
        if self._pool is None and self._threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="tvmlite-key")
        for i in range(0, len(data), HASH_CHUNK):
            piece = data[i:i + HASH_CHUNK]
            self._pieces.append(self._pool.submit(_sha256, piece) if self._pool else _sha256(piece))

    def hexdigest(self) -> str:
        for p in self._pieces:
            self._h.update(p if isinstance(p, bytes) else p.result())
        if self._pool is not None:
            self._pool.shutdown()
        self._pieces, self._pool = [], None
        return self._h.hexdigest()


def _sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


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
        data = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        if len(data) >= HASH_CHUNK:
            h.update_big(data)
        else:
            h.update(data)


#: a staging folder (``.KEY.*``) older than this is a crashed build's, and pruned
STALE_STAGING_S = 3600
_PART_NAMES = {"graph": "graph", "target": "target", "sources": "backend sources", "knobs": "schedule knobs"}


def note(msg: str) -> None:
    """One line on stderr: what the cache did that costs the user a build."""
    print(f"tvmlite: {msg}", file=sys.stderr, flush=True)


def load_failure(e: BaseException) -> str:
    """Why an entry failed to load, in one line (the checked loader names the file and the fault)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    from tvmlite.errors import TvmliteError

    return msg if isinstance(e, TvmliteError) and msg else f"{type(e).__name__}: {msg}".rstrip(": ")


def note_miss(parts: dict) -> None:
    """Say why a build the cache has no entry for is built, when the cache holds its graph."""
    why = miss_reason(parts)
    if why:
        note(f"no build cache entry for this build ({why}): building it")


def miss_reason(parts: dict) -> str | None:
    """For a build the cache has no entry for: what differs from the newest entry of the same graph
    ('backend sources, schedule knobs (threads 2 -> 1 ...)'), or None when no entry has that graph."""
    best = None
    try:
        for d in cache_dir().iterdir():
            try:
                have = json.loads((d / "key.json").read_text())
                if isinstance(have, dict) and have.get("graph") == parts["graph"]:
                    t = d.stat().st_mtime
                    if best is None or t > best[0]:
                        best = (t, d.name, have)
            except (OSError, ValueError):
                continue
    except OSError:
        return None
    if best is None:
        return None
    diff = [_PART_NAMES[k] + (f" ({best[2].get(k)} -> {parts[k]})" if k in ("target", "knobs") else "")
            for k in ("target", "sources", "knobs") if best[2].get(k) != parts[k]]
    return f"entry {best[1]} holds this graph built with other {', '.join(diff) or 'parts'}"


def _stamp(path: pathlib.Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def as_written(entry_dir: pathlib.Path) -> bool:
    """Whether the entry's .npz is the file written into it (size, time, inode and device as
    key.json recorded them): its mapped constants then skip their CRC-32 (params.read). Any
    rewrite or replacement of the file (a new inode, or a new time) is checked in full."""
    try:
        have = json.loads((entry_dir / "key.json").read_text()).get("npz")
    except (OSError, ValueError, AttributeError):
        return False
    return have is not None and have == _stamp(entry_dir / "model.so.npz")


def touch(entry_dir: pathlib.Path) -> None:
    """Mark an entry used now: pruning drops the least recently used, not the oldest built."""
    try:
        os.utime(entry_dir)
    except OSError:
        pass  # a read-only cache


def staging_dir(key: str) -> pathlib.Path:
    """A fresh folder beside the entries (same filesystem: the final rename is atomic)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir()))


def publish(staged: pathlib.Path, entry_dir: pathlib.Path, parts: dict, replace: bool) -> bool:
    """Rename the complete ``staged`` folder to ``entry_dir``. ``replace``: an entry there is broken
    and is swapped out (moved aside, then removed); otherwise one that another process published
    meanwhile wins and ``staged`` is dropped. Returns whether ``staged`` became the entry."""
    stamp = _stamp(staged / "model.so.npz")  # a folder's rename keeps its files' inodes
    (staged / "key.json").write_text(json.dumps({**parts, "npz": stamp}, sort_keys=True))
    for attempt in range(2):
        try:
            os.rename(staged, entry_dir)
            return True
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not replace or attempt:
                shutil.rmtree(staged, ignore_errors=True)
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
        aside = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry_dir.name}.broken.", dir=entry_dir.parent))
        try:
            os.rename(entry_dir, aside / "entry")
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    return False  # pragma: no cover - the loop returns or raises


def size_limit() -> int:
    """Bytes the cache may hold: $TVMLITE_CACHE_MB megabytes (default 4096: a VGG-sized model's
    packed weights alone take half a gigabyte). A value that is no integer or is negative is one
    LimitError line, raised before a build starts rather than after it."""
    from tvmlite.limits import env_int

    return env_int("TVMLITE_CACHE_MB", 4096, nonnegative=True) << 20


def prune_cache(keep=None, max_bytes: int | None = None) -> None:
    """Drop the least recently used entries while the cache holds more than ``max_bytes``
    (default ``size_limit()``). A staging folder is left alone while a build may still be writing it."""
    limit = max_bytes if max_bytes is not None else size_limit()
    entries = []
    now = time.time()
    for d in cache_dir().iterdir():
        if d.is_dir():
            st = d.stat()
            if d.name.startswith("."):
                if now - st.st_mtime > STALE_STAGING_S:
                    shutil.rmtree(d, ignore_errors=True)
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            entries.append((st.st_mtime, size, d))
    total = sum(e[1] for e in entries)
    for _, size, d in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and d == keep:
            continue
        shutil.rmtree(d, ignore_errors=True)
        total -= size
