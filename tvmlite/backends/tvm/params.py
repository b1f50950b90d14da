"""The constants of a TVM artifact (NAME.so.npz): written once per distinct array, read straight
into TVM tensors.

A plain build stores each constant under the name its plan uses. A bucketed build stores one file
for all its buckets, NAME.so.npz, each distinct array once under a content key ("c" and the
SHA-256 of its dtype, shape and bytes); each bucket's plan names that file (``const_file``, a name
beside the plan) and maps its names to keys (``const_keys``). The weights do not depend on the
sequence length, so every bucket maps them to the same keys: the file holds one copy, and buckets
loaded through one ``pool`` (a dict, key -> TVM tensor) share one copy in memory too.

Reading checks each member's .npy header before anything is allocated (dtype, shape within
tvmlite.limits, the size the plan reads it as, the member holds exactly those bytes) and every
byte against the member's CRC-32: a truncated, flipped or swapped file is one line, never a wrong
answer. `write` stores each member uncompressed with its data at a 64-byte boundary of the file,
so those are mapped, not copied: the TVM tensor is the file's pages (copy-on-write, private to the
process; np.savez's chunked reads into fresh memory were 1 s of VGG-19's 1.3 s cached build). A
member that is not aligned (an .npz written by np.savez) is read into a fresh tensor.
The files land by rename (`tvmlite.outputs`), so a later build writing the same name leaves a
mapped file as it was.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import os
import struct
import zipfile
import zlib

import numpy as np

from tvmlite import limits
from tvmlite.backends.tvm.artifact_check import ArtifactError, check_host, view_fits
from tvmlite.backends.tvm.kernels.target import import_tvm
from tvmlite.backends.tvm.plan_func import body_plans

_CHUNK = 1 << 22  # bytes per read into a TVM tensor: the only transient copy


def content_key(arr: np.ndarray) -> str:
    # np.require, not ascontiguousarray: that makes a 0-d array 1-d, and a scalar constant then
    # shared the key (and the stored array) of a [1] one of the same value
    arr = np.require(arr, requirements="C")
    h = hashlib.sha256(f"{arr.dtype.str}{list(arr.shape)}".encode())
    if arr.dtype.kind in "OU":  # host strings (kept as fixed-width unicode)
        h.update(np.asarray(arr, str).tobytes())
    else:
        h.update(arr.reshape(-1).view(np.uint8))
    return "c" + h.hexdigest()[:32]


class SharedConsts:
    """The constants of several plans (the buckets of one build), each distinct array once."""

    def __init__(self, file_name: str):
        self.file_name = file_name  # the .npz, named relative to the plans beside it
        self.arrays: dict[str, np.ndarray] = {}
        self.stored_bytes = 0  # what the file holds
        self.offered_bytes = 0  # what separate files would have held

    def add(self, consts: dict) -> dict:
        """Take a plan's constants; returns its ``const_keys`` (name -> key)."""
        keys = {}
        for name, arr in consts.items():
            keys[name] = k = content_key(arr)
            self.offered_bytes += np.asarray(arr).nbytes
            if k not in self.arrays:
                self.arrays[k] = np.asarray(arr)
                self.stored_bytes += self.arrays[k].nbytes
        return keys

    def write(self, path: str) -> None:
        with open(path, "wb") as f:
            write(f, self.arrays)


#: the file offset of every stored array's data is a multiple of this (TVM takes only 64-byte
#: aligned data as it lies), for arrays of MAP_MIN_BYTES or more: smaller ones are read (the
#: padding, up to 67 bytes a member, would make a small model's file a third larger)
ALIGN = 64
MAP_MIN_BYTES = 1 << 16


def write(f, arrays: dict) -> None:
    """``arrays`` (name -> array) as an .npz into the open file ``f`` (np.load reads it): each
    member stored, its data aligned to ALIGN bytes of the file by padding in the zip entry's extra
    field (as Android's zipalign does)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.require(arr, requirements="C")  # ascontiguousarray would make a 0-d array 1-d
            if arr.dtype.hasobject:
                raise ValueError(f"constant {name!r} holds Python objects")
            head = io.BytesIO()
            meta = np.lib.format.header_data_from_array_1_0(arr)
            try:
                np.lib.format.write_array_header_1_0(head, meta)
            except ValueError:  # a header over 64 KiB
                head = io.BytesIO()
                np.lib.format.write_array_header_2_0(head, meta)
            head = head.getvalue()
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = len(head) + arr.nbytes
            zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile then adds a 20-byte field
            start = zf.start_dir + 30 + len(info.filename.encode()) + 4 + (20 if zip64 else 0) + len(head)
            if arr.nbytes >= MAP_MIN_BYTES:
                pad = -start % ALIGN
                info.extra = struct.pack("<HH", 0xD935, pad) + b"\0" * pad
            with zf.open(info, "w", force_zip64=zip64) as w:
                w.write(head)
                if arr.size:
                    w.write(memoryview(arr.reshape(-1)).cast("B"))


def const_file(path: str, plan: dict) -> str:
    """The .npz a plan reads its constants from: NAME.so.npz, or the shared file it names."""
    name = plan.get("const_file")
    if name is None:
        return path + ".npz"
    if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".npz") \
            or name in (".", ".."):
        raise ArtifactError(f"{path}.json: 'const_file' {name!r} must name a .npz file beside the plan")
    return os.path.join(os.path.dirname(path), name)


def read(path: str, plan: dict, pool: dict | None = None, *, verified: bool = False) -> tuple[dict, dict]:
    """The constants of the artifact ``path`` (NAME.so) with plan ``plan``: (NumPy arrays for the
    host calls and constant outputs, TVM tensors for the kernels), by the names the plan uses.
    ``pool``: tensors already read from the same file, by member key, shared instead of read again.
    ``verified``: the file is known to be the one written (a build cache entry whose .npz has the
    size, time and inode recorded when it was written): mapped members skip their CRC-32, which
    read every byte (VGG-19: a quarter of its cached build); headers and sizes are still checked."""
    npz = const_file(path, plan)
    js = path + ".json"
    keys = plan.get("const_keys", {})
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        raise ArtifactError(f"{js}: 'const_keys' must map constant names to .npz members")
    buffers = plan["buffers"]
    kernel: dict[str, list] = {}  # constant -> the shapes calls read it as
    for c in plan["calls"]:
        for name, shape in c.get("args", ()):
            if name in buffers:  # a view the kernel takes of a buffer: it must fit
                view_fits(buffers, name, shape, js, f"call {c['func']!r}")
            else:
                kernel.setdefault(name, []).append((c["func"], shape))
    # the kernels of compiled control-flow bodies read theirs as tensors too (mapped, not copied
    # out of a NumPy array per body); their plans are checked when their runners are made
    for p, _ in body_plans(plan):
        for c in p["calls"]:
            for a in c.get("args", ()) if isinstance(c, dict) and isinstance(c.get("func"), str) else ():
                if isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and a[0] not in p["buffers"]:
                    kernel.setdefault(a[0], []).append((c["func"], a[1]))
    host_names = {o["buffer"] for o in plan["outputs"] if o.get("const")}
    for seg in plan.get("host", []) if isinstance(plan.get("host"), list) else []:
        if isinstance(seg, dict) and isinstance(seg.get("consts"), dict):
            host_names.update(k for k in seg["consts"].values() if isinstance(k, str))
            body = seg.get("body")  # a control-flow node's compiled bodies (control.py)
            if isinstance(body, dict) and isinstance(body.get("consts"), list):
                host_names.update(k for k in body["consts"] if isinstance(k, str))
            for nd in seg.get("nodes", []) if isinstance(seg.get("nodes"), list) else []:
                for a in (nd.get("attrs") or {}).values() if isinstance(nd, dict) else []:
                    ref = a.get("npz") if isinstance(a, dict) else None
                    host_names.update([ref] if isinstance(ref, str) else ref if isinstance(ref, list) else [])
    if not os.path.isfile(npz):
        raise ArtifactError(f"missing {npz} (the constants of {path})")
    if not zipfile.is_zipfile(npz):
        raise ArtifactError(f"{npz}: not a .npz file of constants (no zip archive)")
    tvm = import_tvm()
    arrays, tensors = {}, {}
    try:
        with zipfile.ZipFile(npz) as zf, open(npz, "rb", buffering=0) as raw:
            mapped = _map(raw)
            members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            for name in sorted(host_names | set(kernel)):
                key = keys.get(name, name)
                info = members.get(key)
                if info is None:
                    if name in kernel:
                        raise ArtifactError(f"{npz}: constant {name!r} (call {kernel[name][0][0]!r}) is missing"
                                            + (f" (member {key!r})" if key != name else ""))
                    continue  # check_host names what is missing, and where
                if name in kernel:
                    if pool is not None and key in pool:
                        tensors[name] = pool[key]
                    else:
                        tensors[name] = _read_tensor(zf, raw, mapped, info, npz, name, tvm, verified)
                        if pool is not None:
                            pool[key] = tensors[name]
                    have = int(np.prod(tensors[name].shape))
                    for func, shape in kernel[name]:
                        if have != int(np.prod(shape)):
                            raise ArtifactError(f"{npz}: constant {name!r} has shape {list(tensors[name].shape)}, "
                                                f"call {func!r} reads it as {shape}")
                else:
                    arrays[name] = _read_array(zf, info, npz, name)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{npz}: not a readable .npz of constants ({msg})") from None
    for o in plan["outputs"]:
        if o.get("const") and o["buffer"] not in arrays:
            raise ArtifactError(f"{npz}: constant output {o['name']!r} is missing")
    check_host(plan, set(arrays) | set(tensors), js)
    return arrays, tensors


def _header(f, npz: str, name: str):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ArtifactError(f"{npz}: constant {name!r} is in .npy version {version}, not 1.0 or 2.0")
    if dtype.hasobject:
        raise ArtifactError(f"{npz}: constant {name!r} holds Python objects (a pickle), refused")
    limits.check_tensor(shape, dtype, f"{npz}: constant {name!r}")
    return shape, fortran, dtype


def _read_array(zf, info, npz: str, name: str) -> np.ndarray:
    with zf.open(info) as f:
        _header(f, npz, name)
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _data_offset(raw, info, npz: str, name: str) -> int:
    """Where a stored member's bytes begin in the file (after its local header)."""
    raw.seek(info.header_offset)
    head = raw.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise ArtifactError(f"{npz}: constant {name!r} has no zip entry header where the index puts it")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _map(raw):
    """The whole file mapped copy-on-write (the process's writes, if any, stay its own), or None."""
    try:
        return mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):  # an empty file, or one that cannot be mapped: read instead
        return None


def _read_tensor(zf, raw, mapped, info, npz: str, name: str, tvm, verified: bool = False):
    """A member as a TVM tensor: a stored member whose data is aligned is the mapped file's pages
    (``mapped``), another stored one is read from ``raw`` (the file, unbuffered) straight into a
    new tensor, both with their CRC-32 checked; a compressed one goes through zipfile."""
    stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
    start = _data_offset(raw, info, npz, name) if stored else 0
    with (zf.open(info) if not stored else _Member(raw, start)) as f:
        shape, fortran, dtype = _header(f, npz, name)
        head = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size != head + nbytes:
            raise ArtifactError(f"{npz}: constant {name!r} holds {info.file_size - head:,} bytes of data, "
                                f"its header says {nbytes:,}")
        if dtype.kind not in "biuf":
            raise ArtifactError(f"{npz}: constant {name!r} has dtype {dtype}, which no kernel reads")
        if fortran or not dtype.isnative or not stored:  # through NumPy; zipfile checks the CRC
            with zf.open(info) as z:
                arr = np.lib.format.read_array(z, allow_pickle=False)
                z.read(1)  # the end of the member: zip checks its CRC-32 here
            return tvm.runtime.tensor(np.require(arr, arr.dtype.newbyteorder("="), "C"))
        if mapped is not None and nbytes >= MAP_MIN_BYTES and (start + head) % ALIGN == 0:
            if start + info.file_size > len(mapped):
                raise ArtifactError(f"{npz}: constant {name!r} ends after {len(mapped) - start - head:,} "
                                    f"of {nbytes:,} bytes")
            if not verified:
                with memoryview(mapped) as whole:
                    if zlib.crc32(whole[start:start + info.file_size]) != info.CRC:
                        raise ArtifactError(f"{npz}: Bad CRC-32 for constant {name!r}: its bytes are not the "
                                            "ones written")
            arr = np.frombuffer(mapped, dtype, count=nbytes // dtype.itemsize, offset=start + head)
            return tvm.runtime.from_dlpack(arr.reshape(tuple(shape)))
        t = tvm.runtime.empty(tuple(shape), str(dtype), tvm.cpu(0))
        dst = memoryview(np.from_dlpack(t).reshape(-1).view(np.uint8))
        pos = 0
        while pos < nbytes:
            n = f.readinto(dst[pos:pos + _CHUNK])
            if not n:
                raise ArtifactError(f"{npz}: constant {name!r} ends after {pos:,} of {nbytes:,} bytes")
            pos += n
        crc = zlib.crc32(dst, zlib.crc32(f.head_bytes(head)))
    if crc != info.CRC:
        raise ArtifactError(f"{npz}: Bad CRC-32 for constant {name!r}: its bytes are not the ones written")
    return t


class _Member:
    """A stored zip member's bytes, read from the file at ``start`` (what _header and the tensor
    read need of a file object)."""

    def __init__(self, raw, start: int):
        self.raw, self.start = raw, start
        raw.seek(start)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def readinto(self, b) -> int:
        return self.raw.readinto(b)

    def tell(self) -> int:
        return self.raw.tell() - self.start

    def head_bytes(self, n: int) -> bytes:
        """The member's first ``n`` bytes (its .npy header), for the CRC; the position stays."""
        here = self.raw.tell()
        self.raw.seek(self.start)
        data = self.raw.read(n)
        self.raw.seek(here)
        return data
