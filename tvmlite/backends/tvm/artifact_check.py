"""Checks on a saved TVM artifact (NAME.so, NAME.so.json, NAME.so.npz) before anything is loaded.

A truncated .so made ``dlopen`` fault (SIGBUS, exit 135: the loader maps pages past the end of the
file), and garbage JSON surfaced as an internal error. So, before TVM sees the files:

- the JSON is parsed and checked against the plan's schema (types, names that exist, every
  buffer's size within :mod:`tvmlite.limits`, every view the size of its buffer);
- the .npz (read by params.py) must hold every constant the calls name, in its shape, without
  pickles;
- host calls (nodes run by their NumPy kernels, see host.py) must name ops the registry has for
  the plan's opsets, with an input and output count the op allows, attributes it accepts, of
  bounded size (`MAX_ATTR_ITEMS`), and read only values that exist by then;
- the .so must be a complete ELF file (its program and section headers, and every segment they
  describe, inside the file) and, when the plan records ``lib_sha256`` (and ``lib_bytes``), have
  exactly that size and SHA-256.
Each failure is one TvmliteError line naming the file and what is wrong in it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

from tvmlite import limits
from tvmlite.backends.tvm import storage
from tvmlite.backends.tvm.kernels.defs import KERNEL_DTYPES  # what a build may emit is what a load accepts
from tvmlite.errors import TvmliteError
from tvmlite.ops.registry import lookup

#: the most items (list elements, string characters) one host node's attribute may have in the
#: JSON plan; tensors and subgraphs live in the .npz, checked against the tensor limits
MAX_ATTR_ITEMS = 1 << 16
_ATTR_TYPES = {"int": int, "float": (int, float), "string": str, "bytes": str, "ints": int,
               "floats": (int, float), "strings": str, "tensor": None, "tensors": None, "graph": None,
               "graphs": None, "type_proto": None}
_INPUT_DTYPES = ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", "bool", "object")  # object: ONNX strings


class ArtifactError(TvmliteError):
    """A TVM artifact that is incomplete, corrupt or not made by this version of tvmlite."""


def read_plan(path: str, fmt: int) -> dict:
    """The run plan in ``path`` (NAME.so.json), parsed and schema-checked."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        plan = json.loads(text)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{path}: not a tvmlite build plan (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not a tvmlite build plan (invalid JSON at line {e.lineno}, "
                            f"column {e.colno}: {e.msg})") from None
    if not isinstance(plan, dict):
        raise ArtifactError(f"{path}: not a tvmlite build plan (a JSON {type(plan).__name__}, not an object)")
    if plan.get("format") != fmt:
        raise ArtifactError(f"{path} has format {plan.get('format')!r}, expected {fmt}: rebuild it")
    _check_schema(plan, path)
    return plan


def _is_shape(v) -> bool:
    return isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)


def _need(cond: bool, path: str, what: str) -> None:
    if not cond:
        raise ArtifactError(f"{path}: {what}")


def _check_schema(plan: dict, path: str) -> None:
    for key, kind in (("inputs", list), ("outputs", list), ("buffers", dict), ("calls", list)):
        _need(isinstance(plan.get(key), kind), path, f"'{key}' must be a JSON {kind.__name__}")
    buffers = plan["buffers"]
    for name, b in buffers.items():
        _need(isinstance(b, dict) and _is_shape(b.get("shape")), path, f"buffer {name!r} has no valid shape")
        _need(b.get("dtype", "float32") in KERNEL_DTYPES, path, f"buffer {name!r} has dtype {b.get('dtype')!r}, "
              f"not one of {', '.join(KERNEL_DTYPES)}")
        limits.check_tensor(b["shape"], np.dtype(b.get("dtype", "float32")), f"{path}: buffer {name!r}")
    for name, b in buffers.items():
        if b.get("kind") == "slice":
            _check_slice(buffers, name, b, path)
    for i in plan["inputs"]:
        _need(isinstance(i, dict) and isinstance(i.get("name"), str) and _is_shape(i.get("shape")),
              path, f"input entry {i!r} needs a name and a shape")
        _need(i.get("dtype", "float32") in _INPUT_DTYPES, path, f"input {i['name']!r} has dtype "
              f"{i.get('dtype')!r}, not one of {', '.join(_INPUT_DTYPES)}")
        limits.check_tensor(i["shape"], np.dtype(i.get("dtype", "float32")), f"{path}: input {i['name']!r}")
        if i.get("dtype", "float32") == "float32":
            _need(i["name"] in buffers and buffers[i["name"]]["shape"] == i["shape"], path,
                  f"input {i['name']!r} has no buffer of its shape")
        if i["name"] in buffers:
            b = buffers[i["name"]]
            _need(b["shape"] == i["shape"] and b.get("dtype", "float32") == i.get("dtype", "float32"), path,
                  f"input {i['name']!r}: its buffer is {b.get('dtype', 'float32')} {b['shape']}, not "
                  f"{i.get('dtype', 'float32')} {i['shape']}")
    for o in plan["outputs"]:
        _need(isinstance(o, dict) and isinstance(o.get("name"), str), path, f"output entry {o!r} needs a name")
        if o.get("host"):
            continue
        _need(isinstance(o.get("buffer"), str) and _is_shape(o.get("shape")), path,
              f"output entry {o!r} needs a buffer and a shape")
        if not o.get("const"):
            view_fits(buffers, o["buffer"], o["shape"], path, f"output {o['name']!r}")
    n_host = len(plan["host"]) if isinstance(plan.get("host"), list) else 0
    for c in plan["calls"]:
        if isinstance(c, dict) and "host" in c:
            _need(isinstance(c["host"], int) and not isinstance(c["host"], bool) and 0 <= c["host"] < n_host,
                  path, f"host call {c['host']!r} names no host segment of the plan")
            continue
        _need(isinstance(c, dict) and isinstance(c.get("func"), str) and isinstance(c.get("args"), list),
              path, "call entry needs 'func' and 'args'")
        for a in c["args"]:
            _need(isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and _is_shape(a[1]),
                  path, f"call {c['func']!r}: argument {a!r} is not [buffer, shape]")
    bad_blocks = storage.check(plan)  # intermediates sharing storage (formats 7, 8)
    _need(bad_blocks is None, path, str(bad_blocks))
    if "lib_sha256" in plan:
        _need(isinstance(plan["lib_sha256"], str) and len(plan["lib_sha256"]) == 64, path,
              "'lib_sha256' is not a SHA-256 hex digest")


def _check_slice(buffers: dict, name: str, b: dict, path: str) -> None:
    """A "slice" buffer (a value inside a Concat's output) lies inside an allocated buffer of its
    dtype."""
    of, off = b.get("of"), b.get("offset")
    _need(isinstance(of, str) and of in buffers and buffers[of].get("kind") != "slice", path,
          f"buffer {name!r} is a slice of {of!r}, which is no allocated buffer of the plan")
    _need(isinstance(off, int) and not isinstance(off, bool) and off >= 0, path,
          f"buffer {name!r}: slice offset {off!r} is not a non-negative integer")
    root = buffers[of]
    _need(root.get("dtype", "float32") == b.get("dtype", "float32"), path,
          f"buffer {name!r} is {b.get('dtype', 'float32')}, the buffer {of!r} it lies in is "
          f"{root.get('dtype', 'float32')}")
    _need(off + int(np.prod(b["shape"])) <= int(np.prod(root["shape"])), path,
          f"buffer {name!r}: {int(np.prod(b['shape']))} elements at offset {off} reach past the end of "
          f"{of!r} {root['shape']}")


def view_fits(buffers: dict, name: str, shape: list, path: str, what: str) -> None:
    _need(name in buffers, path, f"{what} reads buffer {name!r}, which the plan does not define")
    have, want = int(np.prod(buffers[name]["shape"])), int(np.prod(shape))
    _need(have == want, path, f"{what}: view {shape} of buffer {name!r} {buffers[name]['shape']} "
                              "has another size")


# ---------------------------------------------------------------------------------------- host calls
def check_host(plan: dict, consts, path: str) -> None:
    """The host segments of ``plan`` (see host.py), in run order: known ops, counts, attributes,
    and values that exist before they are read. ``consts``: the constant names the .npz holds."""
    segs = plan.get("host", [])
    _need(isinstance(segs, list), path, "'host' must be a JSON list")
    if not segs:
        return
    opsets = plan.get("opsets")
    _need(isinstance(opsets, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in opsets.items()),
          path, "'opsets' must map domains to versions")
    host_values = {i["name"] for i in plan["inputs"] if i.get("dtype", "float32") != "float32"}
    for c in plan["calls"]:
        if "host" in c:
            _check_segment(segs[c["host"]], c["host"], plan["buffers"], consts, opsets, host_values, path)
    for o in plan["outputs"]:
        if o.get("host"):
            _need(o["name"] in host_values, path, f"output {o['name']!r} is made by no host call")


def _names(v) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


def _check_segment(seg, i: int, buffers: dict, consts: dict, opsets: dict, host_values: set, path: str) -> None:
    where = f"host segment {i}"
    _need(isinstance(seg, dict) and isinstance(seg.get("nodes"), list) and seg["nodes"]
          and _names(seg.get("inputs")) and _names(seg.get("outputs")) and all(
              isinstance(seg.get(k), dict) for k in ("reads", "consts", "writes")),
          path, f"{where} needs nodes, inputs, outputs, reads, consts and writes")
    for name, view in list(seg["reads"].items()) + list(seg["writes"].items()):
        _need(isinstance(view, list) and len(view) == 2 and isinstance(view[0], str) and _is_shape(view[1]),
              path, f"{where}: {name!r} is not [buffer, shape]")
        view_fits(buffers, view[0], view[1], path, f"{where} value {name!r}")
    for name, key in seg["consts"].items():
        _need(isinstance(key, str) and key in consts, path, f"{where}: constant {name!r} is not in the .npz")
    known = set(seg["inputs"])
    for name in seg["inputs"]:
        _need(name in seg["reads"] or name in seg["consts"] or name in host_values, path,
              f"{where} reads {name!r}, which nothing made before it")
    for j, nd in enumerate(seg["nodes"]):
        _check_node(nd, f"{where} node {j}", consts, opsets, known, path, compiled="body" in seg)
        known.update(o for o in nd["outputs"] if o)
    for name in seg["outputs"]:
        _need(name in known, path, f"{where}: output {name!r} is made by none of its nodes")
    for name in seg["writes"]:
        _need(name in seg["outputs"], path, f"{where} writes {name!r}, which is not one of its outputs")
    host_values.update(seg["outputs"])


def _check_node(nd, where: str, consts: dict, opsets: dict, known: set, path: str, compiled: bool = False) -> None:
    _need(isinstance(nd, dict) and all(isinstance(nd.get(k), str) for k in ("op_type", "domain", "name"))
          and _names(nd.get("inputs")) and _names(nd.get("outputs")) and isinstance(nd.get("attrs"), dict),
          path, f"{where} needs op_type, domain, name, inputs, outputs and attrs")
    op_type, domain = nd["op_type"], nd["domain"]
    where = f"{where} ({op_type})"
    version = opsets.get(domain)
    op = lookup(op_type, domain, version)
    _need(op is not None, path, f"{where}: tvmlite has no kernel for {domain + '::' if domain else ''}"
                                f"{op_type} at opset {version}")
    lo, hi, out_lo, out_hi = _io_counts(op, version)
    n_in, n_out = len(nd["inputs"]), len(nd["outputs"])
    _need(lo <= n_in <= hi, path, f"{where} has {n_in} inputs, the op takes {lo} to {hi}")
    _need(out_lo <= n_out <= out_hi, path, f"{where} has {n_out} outputs, the op makes {out_lo} to {out_hi}")
    for name in nd["inputs"]:
        _need(not name or name in known, path, f"{where} reads {name!r} before it is made")
    for name, a in nd["attrs"].items():
        _need(op.attrs is None or name in op.attrs, path, f"{where}: the kernel takes no attribute {name!r}")
        _check_attr(a, f"{where} attribute {name!r}", consts, path, compiled)


def _io_counts(op, version) -> tuple[int, float, int, float]:
    """The input and output counts ``op`` allows: ONNX's schema where there is one, else the
    kernel's positional parameters."""
    import inspect

    import onnx

    try:
        s = (onnx.defs.get_schema(op.op_type, version, op.domain) if version is not None
             else onnx.defs.get_schema(op.op_type, op.domain))
        return s.min_input, s.max_input, s.min_output, s.max_output
    except Exception:  # noqa: BLE001 - no ONNX schema (tvmlite's own and contrib ops)
        pass
    params = list(inspect.signature(op.kernel).parameters.values())[1 if op.needs_ctx else 0:]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 0, float("inf"), 1, float("inf")
    pos = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return sum(p.default is inspect.Parameter.empty for p in pos), len(pos), 1, float("inf")


def _check_attr(a, where: str, consts: dict, path: str, compiled: bool = False) -> None:
    """``compiled``: the node's segment holds compiled bodies, whose subgraphs are stored as run
    plans only ({"type": "graph", "compiled": true}, host.segment_spec)."""
    _need(isinstance(a, dict) and a.get("type") in _ATTR_TYPES, path, f"{where} has no known type")
    kind, item = a["type"], _ATTR_TYPES[a["type"]]
    if "compiled" in a:
        _need(a["compiled"] is True and kind in ("graph", "graphs") and compiled, path,
              f"{where}: a subgraph stored as compiled bodies, in a host call that has none")
        return
    if item is None:  # stored in the .npz
        keys = a.get("npz") if kind in ("tensors", "graphs") else [a.get("npz")]
        _need(_names(keys) and len(keys) <= MAX_ATTR_ITEMS and all(k in consts for k in keys), path,
              f"{where}: its .npz entry is missing")
        return
    v = a.get("value")
    values = v if kind in ("ints", "floats", "strings") else [v]
    _need(isinstance(values, list), path, f"{where}: a {kind} attribute needs a list")
    _need(len(values) <= MAX_ATTR_ITEMS, path, f"{where} has {len(values):,} items (at most {MAX_ATTR_ITEMS:,})")
    for x in values:
        _need(isinstance(x, item) and not isinstance(x, bool), path, f"{where}: {x!r:.40} does not fit its type {kind!r}")
        if isinstance(x, str):
            _need(len(x) <= MAX_ATTR_ITEMS, path,
                  f"{where}: a string of {len(x):,} characters (at most {MAX_ATTR_ITEMS:,})")
            _need(kind != "bytes" or _is_hex(x), path, f"{where}: not hex digits")


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def check_library(path: str, plan: dict) -> None:
    """The .so is whole: recorded size and digest when the plan has them, else its ELF headers
    and segments lie inside the file (a truncated library faults in dlopen, no exception)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
    if "lib_bytes" in plan and plan["lib_bytes"] != size:
        if isinstance(plan["lib_bytes"], int) and size < plan["lib_bytes"]:
            raise ArtifactError(f"{path}: not a complete shared library ({size:,} of the "
                                f"{plan['lib_bytes']:,} bytes its build wrote); rebuild it")
        raise ArtifactError(f"{path} has {size:,} bytes, the build recorded {plan['lib_bytes']!r}: "
                            "the file was replaced; rebuild it")
    if "lib_sha256" in plan and hashlib.sha256(data).hexdigest() != plan["lib_sha256"]:
        raise ArtifactError(f"{path}: SHA-256 differs from the one its build recorded; rebuild it")
    _check_elf(data, path)


def _check_elf(data: bytes, path: str) -> None:
    bad = f"{path}: not a complete shared library"
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ArtifactError(f"{bad} (no ELF header)")
    if data[4] != 2 or data[5] not in (1, 2):
        raise ArtifactError(f"{bad} (not a 64-bit ELF file)")
    e = "<" if data[5] == 1 else ">"
    phoff, shoff = struct.unpack_from(e + "QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", data, 0x36)
    n = len(data)
    if phoff + phnum * phentsize > n or shoff + shnum * shentsize > n:
        raise ArtifactError(f"{bad} (truncated: its headers reach past the end of the "
                            f"{n:,}-byte file)")
    for i in range(phnum):
        off = phoff + i * phentsize
        if phentsize < 56:
            raise ArtifactError(f"{bad} (program header size {phentsize})")
        p_type, _flags, p_offset, _v, _p, p_filesz = struct.unpack_from(e + "IIQQQQ", data, off)
        if p_type != 0 and p_offset + p_filesz > n:
            raise ArtifactError(f"{bad} (truncated: segment {i} ends at byte {p_offset + p_filesz:,} "
                                f"of a {n:,}-byte file)")
    for i in range(shnum):
        if shentsize < 64:
            raise ArtifactError(f"{bad} (section header size {shentsize})")
        sh_type, = struct.unpack_from(e + "I", data, shoff + i * shentsize + 4)
        sh_offset, sh_size = struct.unpack_from(e + "QQ", data, shoff + i * shentsize + 0x18)
        if sh_type != 8 and sh_offset + sh_size > n:  # 8: SHT_NOBITS (.bss) has no file bytes
            raise ArtifactError(f"{bad} (truncated: section {i} ends past the end of the file)")
