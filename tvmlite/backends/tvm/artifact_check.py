"""Checks on a saved TVM artifact (NAME.so, NAME.so.json, NAME.so.npz) before anything is loaded.

A truncated .so made ``dlopen`` fault (SIGBUS, exit 135: the loader maps pages past the end of the
file), and garbage JSON surfaced as an internal error. So, before TVM sees the files:

- the JSON is parsed and checked against the plan's schema (types, names that exist, every
  buffer's size within :mod:`tvmlite.limits`, every view the size of its buffer);
- the .npz is read without pickles and must hold every constant the calls name, in its shape;
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
import zipfile

import numpy as np

from tvmlite import limits
from tvmlite.errors import TvmliteError


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
        limits.check_tensor(b["shape"], np.float32, f"{path}: buffer {name!r}")
    for i in plan["inputs"]:
        _need(isinstance(i, dict) and isinstance(i.get("name"), str) and _is_shape(i.get("shape")),
              path, f"input entry {i!r} needs a name and a shape")
        _need(i["name"] in buffers and buffers[i["name"]]["shape"] == i["shape"], path,
              f"input {i['name']!r} has no buffer of its shape")
    for o in plan["outputs"]:
        _need(isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("buffer"), str)
              and _is_shape(o.get("shape")), path, f"output entry {o!r} needs a name, a buffer and a shape")
        if not o.get("const"):
            _view_fits(buffers, o["buffer"], o["shape"], path, f"output {o['name']!r}")
    for c in plan["calls"]:
        _need(isinstance(c, dict) and isinstance(c.get("func"), str) and isinstance(c.get("args"), list),
              path, f"call entry needs 'func' and 'args'")
        for a in c["args"]:
            _need(isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and _is_shape(a[1]),
                  path, f"call {c['func']!r}: argument {a!r} is not [buffer, shape]")
    if "lib_sha256" in plan:
        _need(isinstance(plan["lib_sha256"], str) and len(plan["lib_sha256"]) == 64, path,
              "'lib_sha256' is not a SHA-256 hex digest")


def _view_fits(buffers: dict, name: str, shape: list, path: str, what: str) -> None:
    _need(name in buffers, path, f"{what} reads buffer {name!r}, which the plan does not define")
    have, want = int(np.prod(buffers[name]["shape"])), int(np.prod(shape))
    _need(have == want, path, f"{what}: view {shape} of buffer {name!r} {buffers[name]['shape']} "
                              "has another size")


def read_consts(path: str, plan: dict) -> dict:
    """The constants in ``path`` (NAME.so.npz), each one a call argument of the plan names."""
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path}: not a .npz file of constants (no zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            consts = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: not a readable .npz of constants ({msg})") from None
    buffers = plan["buffers"]
    for c in plan["calls"]:
        for name, shape in c["args"]:
            if name in consts:
                _need(int(np.prod(consts[name].shape)) == int(np.prod(shape)), path,
                      f"constant {name!r} has shape {list(consts[name].shape)}, call "
                      f"{c['func']!r} reads it as {shape}")
            else:
                _view_fits(buffers, name, shape, path[:-4] + ".json", f"call {c['func']!r}")
    for o in plan["outputs"]:
        if o.get("const"):
            _need(o["buffer"] in consts, path, f"constant output {o['name']!r} is missing")
    return consts


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
