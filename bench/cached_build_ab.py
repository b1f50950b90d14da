"""A cached TVM build of a light_* model, with and without the CRC-32 of the entry's mapped
constants (skipped for an entry whose .npz is the file written: build_cache.as_written), in one
process, interleaved (old, new, new, old, ...), medians; then the peak resident memory of one
cached build in a fresh process per variant.

    PYTHONPATH=. python bench/cached_build_ab.py [vgg19] [--rounds 5]

Rows: ``key`` (build_cache.key_parts: hashing the IR and its weights), ``load`` (load_module of
the entry), ``total`` (tvmlite.load of the proto + compile_model, as bench/cached_build.py).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]


def _model(name):
    from models_under_test import frozen_light

    proto, image, x = frozen_light(f"light_{name}.onnx")
    proto.ir_version = min(proto.ir_version, 10)
    return proto, {image: x.shape}


def _variant(v: str) -> None:
    from tvmlite.backends.tvm import build_cache

    if not hasattr(build_cache, "_real_as_written"):
        build_cache._real_as_written = build_cache.as_written
    build_cache.as_written = (lambda d: False) if v == "old" else build_cache._real_as_written


def _peak(name: str, v: str) -> None:
    import tvmlite
    from tvmlite.backends.tvm import compile_model

    proto, shapes = _model(name)
    _variant(v)
    before = _status()
    cm = compile_model(tvmlite.load(proto), shapes)
    assert cm.cached
    after = _status()
    print(f"{v}: peak {before['VmHWM'] / 1e3:.0f} MB before (the proto made), {after['VmHWM'] / 1e3:.0f} MB after "
          f"the cached build; resident {before['VmRSS'] / 1e3:.0f} -> {after['VmRSS'] / 1e3:.0f} MB")


def _status() -> dict:
    """VmHWM (the peak) and VmRSS of this process, kB: ru_maxrss would carry the parent's peak
    over fork and exec."""
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f) if k in ("VmHWM", "VmRSS")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="vgg19")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak", choices=["old", "new"], help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args(argv)
    if a.peak:
        _peak(a.model, a.peak)
        return 0
    import tvmlite
    from tvmlite.backends.tvm import build_cache, compile_model
    from tvmlite.backends.tvm.kernels.target import host_target
    from tvmlite.backends.tvm.module import load_module

    proto, shapes = _model(a.model)
    compile_model(tvmlite.load(proto), shapes)  # the entry (built once)
    m, target = tvmlite.load(proto), str(host_target())
    res: dict = {}
    for r in range(a.rounds):
        for v in ("old", "new") if r % 2 == 0 else ("new", "old"):
            _variant(v)
            t0 = time.perf_counter()
            entry = build_cache.cache_dir() / build_cache.key_of(build_cache.key_parts(m, shapes, target))
            t1 = time.perf_counter()
            load_module(str(entry / "model.so"), verified=build_cache.as_written(entry))
            t2 = time.perf_counter()
            cm = compile_model(tvmlite.load(proto), shapes)
            t3 = time.perf_counter()
            assert cm.cached
            del cm
            for k, t in (("key", t1 - t0), ("load", t2 - t1), ("total", t3 - t2)):
                res.setdefault(f"{k} {v}", []).append(t)
    for k, ts in res.items():
        print(f"{k:10s} median {statistics.median(ts):6.2f} s  all {[round(t, 2) for t in ts]}")
    for k in ("key", "load", "total"):
        print(f"{k}: new/old {statistics.median(res[k + ' new']) / statistics.median(res[k + ' old']):.2f}")
    for v in ("old", "new"):
        out = subprocess.run([sys.executable, __file__, a.model, "--peak", v], capture_output=True, text=True, check=True)
        print(out.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
