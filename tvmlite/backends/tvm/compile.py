"""Whole-graph builds: ``compile_model`` lowers, schedules and builds a model for the host CPU, or
takes the build from the cache (build_cache.py), and publishes a fresh build there whole."""
from __future__ import annotations

import shutil
import time

from tvmlite.backends.tvm import build_cache, storage
from tvmlite.backends.tvm.build_cache import cache_dir, prune_cache
from tvmlite.backends.tvm.module import CompiledModel, build_lowered, load_module, picks_threads, plan_of, save_artifact
from tvmlite.errors import InputError, TvmliteError
from tvmlite.limits import small_pages
from tvmlite.ops.typecheck import check_declared_types


def compile_model(model, input_shapes: dict | None = None, *, cache: bool = True, lanes: int | None = None,
                  verbose: bool = False, strict: bool = False) -> CompiledModel:
    """Lower, schedule and build ``model`` for the host CPU (or take it from the cache). Nodes the
    backend has no kernel for run as host calls (``.host_ops`` says which and why); ``strict``
    refuses such a model with UnsupportedError instead."""
    with small_pages():  # a build's short-lived weight copies on huge pages cost more than the build
        return _compile_model(model, input_shapes, cache=cache, lanes=lanes, verbose=verbose, strict=strict)


def _compile_model(model, input_shapes: dict | None, *, cache: bool, lanes: int | None, verbose: bool,
                   strict: bool) -> CompiledModel:
    from tvmlite.backends.tvm.lower import lower, refusal
    from tvmlite.backends.tvm.kernels.target import host_target, vector_lanes

    cache_bytes = build_cache.size_limit() if cache else 0  # a bad $TVMLITE_CACHE_MB is refused up front
    picks_threads()  # read by every CompiledModel: a bad value is refused here, not as a broken cache entry
    storage.reuses()  # the same
    model, shapes = static_inputs(model, input_shapes)
    check_declared_types(model.graph, model.opsets)  # as the NumPy backend: before any kernel is made for them
    target = host_target()
    parts = build_cache.key_parts(model, shapes, str(target))
    key = build_cache.key_of(parts)
    entry = cache_dir() / key / "model.so"
    broken = False
    if cache and entry.parent.is_dir():
        try:
            t0 = time.perf_counter()
            cm = load_module(str(entry), verified=build_cache.as_written(entry.parent))
            cm.build_seconds = time.perf_counter() - t0
            cm.cached = True
        except Exception as e:  # noqa: BLE001 - a broken cache entry is rebuilt, and says why
            broken = True
            build_cache.note(f"build cache entry {key} cannot be used, rebuilding it: {build_cache.load_failure(e)}")
        else:
            build_cache.touch(entry.parent)
            if strict and cm.plan.get("host_ops"):
                raise refusal(cm.plan["host_ops"])
            return cm
    elif cache:
        build_cache.note_miss(parts)
    t0 = time.perf_counter()
    low = lower(model, shapes, lanes or vector_lanes(), strict=strict)
    plan, consts = plan_of(low)
    lib = build_lowered(low, target, plan)
    plan["build_seconds"] = round(time.perf_counter() - t0, 3)
    cm = _cache_build(lib, plan, consts, entry, parts, broken, cache_bytes) if cache else None
    if cm is None:
        cm = CompiledModel(lib, plan, consts)
    cm.build_seconds = time.perf_counter() - t0
    return cm


def _cache_build(lib, plan: dict, consts: dict, entry, parts: dict, broken: bool, max_bytes: int):
    """Write a fresh build into a staging folder, rename it into place whole (build_cache.publish)
    and load it from there; None where the cache cannot be written (a read-only cache only costs
    rebuilds). LLVM makes the machine code when the module is exported, and again when it is run
    in this process (JIT): exporting to the cache and running that library makes it once (MiniLM:
    12 s of 33), and saving the build elsewhere then copies the file."""
    staged = None
    try:
        staged = build_cache.staging_dir(entry.parent.name)
        save_artifact(lib, plan, consts, str(staged / entry.name))
        build_cache.publish(staged, entry.parent, parts, replace=broken)
        staged = None
        prune_cache(keep=entry.parent, max_bytes=max_bytes)
        return load_module(str(entry), verified=build_cache.as_written(entry.parent))
    except (OSError, TvmliteError):
        return None
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)


def static_inputs(model, input_shapes):
    """(model loaded if a path or proto, {input: static shape}): ``input_shapes`` over the graph's
    own shapes; an input without a static shape is refused (InputError)."""
    from tvmlite.inputs import graph_inputs

    if not hasattr(model, "graph"):
        from tvmlite.frontend import load

        model = load(model)
    if input_shapes:  # names the model's inputs and fits their declared shapes, or refused
        from tvmlite.export.shapes import check_input_shapes

        check_input_shapes(model, input_shapes)
    shapes = {}
    for name in graph_inputs(model.graph):
        s = (input_shapes or {}).get(name) or model.graph.values[name].shape
        if s is None or not all(isinstance(d, int) and d > 0 for d in s):
            raise InputError(f"input {name!r} has shape {s}: give static shapes to build with TVM "
                             f"(e.g. --shape {name}=1x3x224x224)")
        shapes[name] = tuple(int(d) for d in s)
    return model, shapes
