"""The plan's kernels called from compiled code instead of one Python call each.

Each kernel ``K`` becomes a private subroutine ``K__impl`` taking raw data pointers (no packed-API
checks, no DLTensor per view) and a public ``K`` with the old signature that only calls it, so
profiling and single-kernel runs still work without compiling each kernel twice. Each stretch of
consecutive kernels between host calls becomes one public function ``plan__stretchN`` whose
arguments are the plan buffers and constants it touches (whole, as allocated): one packed call
from Python runs the whole stretch. A view is the root buffer's pointer, since every view in a plan
covers its whole buffer (plan_of checks that); a "slice" buffer (a value inside a Concat's output,
concat_views.py) is its root buffer's address at the slice's offset, a constant.

Why: a packed call from Python is cheap (0.15-0.4 us measured, bench/plan_overhead.py), but between
two Python calls the interpreter can be descheduled, and each call re-checks every DLTensor; one
compiled call per stretch removes both (shufflenet at 2 threads, loaded: 4.18x -> 1.49x of
onnxruntime). What remains between kernels is the thread pool's wake-up and barrier per parallel
kernel and cold caches, which is why small plans also pick their thread count (thread_choice.py).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from tvmlite.backends.tvm.kernels.target import bound_cpus, import_tvm

STRETCH = "plan__stretch"
IMPL = "__impl"


# kernels per stretch: LLVM's time on a stretch grows faster than its length (its packed-API
# prologue checks every buffer it takes). inception_v2 (94 kernels), LLVM seconds by the most
# kernels a stretch calls: unlimited 27.3, 16: 13.3, 8: 11.3, 4: 8.5, no stretches 6.9; densenet's
# 242-kernel stretch made its build 163 s (8: LLVM 23.6 s, no stretches 9.9 s). Python calls cost
# 0.14-0.4 us each, and on a quiet machine stretches gain ~1% (shufflenet 3.82 vs 3.85 ms,
# bench/plan_overhead.py); under load they cut the gaps a descheduled Python thread leaves. Short
# stretches keep most of that at a quarter of the extra build time.
MAX_STRETCH = 4


def stretch_spans(calls: list) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive kernel calls (host calls break runs), cut into
    pieces of at most MAX_STRETCH calls."""
    spans, start = [], None
    for i, c in enumerate(calls + [{"host": -1}]):
        if "func" in c and start is None:
            start = i
        elif "func" not in c and start is not None:
            spans.extend((a, min(a + MAX_STRETCH, i)) for a in range(start, i, MAX_STRETCH))
            start = None
    return spans


def _dtype_of(buf) -> str:
    return str(buf.dtype)


def same_kernels(kernels: list) -> dict[str, str]:
    """{kernel name: name of the first kernel structurally equal to it} for every kernel that
    repeats an earlier one (its weights are parameters, so only shapes and schedule count): it
    calls that one's subroutine instead of compiling its own. LLVM's time is most of a build
    (densenet121: 188 kernels of which 54 repeat a dense block's 3x3 conv; shufflenet: 59 of
    which 32 repeat), and repeated blocks are what deep CNNs are made of."""
    import tvm_ffi

    import_tvm()
    first, same = {}, {}
    for kd in kernels:
        f = kd.func.without_attr("global_symbol") if kd.func.attrs and "global_symbol" in kd.func.attrs else kd.func
        bucket = first.setdefault(tvm_ffi.structural_hash(f, map_free_vars=True), [])
        rep = next((name for name, g in bucket if tvm_ffi.structural_equal(f, g, map_free_vars=True)), None)
        if rep is None:
            bucket.append((kd.name, f))
        else:
            same[kd.name] = rep
    return same


def _split_kernel(name: str, func, impl_gv=None):
    """(private impl over data pointers, public wrapper with the kernel's buffer signature).
    ``impl_gv``: the impl the wrapper calls instead (a structurally equal kernel's, `same_kernels`)."""
    tvm = import_tvm()
    tirx = tvm.tirx
    handles, decls = [], []
    for p in func.params:
        if not isinstance(p, tirx.Buffer):
            raise TypeError(f"kernel {name}: parameter {p} is not a buffer")
        h = tirx.Var(f"{p.name}_data", tvm.ir.PointerType(tvm.ir.PrimType(_dtype_of(p))))
        handles.append(h)
        decls.append(tirx.DeclBuffer(p, data=h))
    attrs = {k: v for k, v in func.attrs.items() if k != "global_symbol"} if func.attrs else {}
    # int32: a failed workspace allocation returns -1 from the subroutine
    impl = tirx.PrimFunc(handles, tirx.SeqStmt(decls + [func.body]), ret_type=tvm.ir.PrimType("int32"),
                         attrs=tvm.ir.make_node("ir.DictAttrs", **attrs))
    gv = impl_gv if impl_gv is not None else tvm.ir.GlobalVar(name + IMPL)
    # any element offset: a value inside a Concat's output is a view at an offset (concat_views.py)
    outer = [tirx.decl_buffer(p.shape, _dtype_of(p), p.name, offset_factor=1 if len(p.shape) else 0)
             for p in func.params]
    call = tvm.ir.Call(gv, [_address(b, 0) for b in outer])
    wrapper = tirx.PrimFunc(outer, tirx.Evaluate(call)).with_attr("global_symbol", name)
    return gv, impl, wrapper


def _address(buf, offset: int):
    """The address of element ``offset`` (row-major) of ``buf``, its own element offset included."""
    tirx = import_tvm().tirx
    if not len(buf.shape):
        return buf.data
    idx = np.unravel_index(int(offset), tuple(int(d) for d in buf.shape))
    return tirx.address_of(tirx.BufferLoad(buf, [tirx.const(int(i), "int32") for i in idx]))


def arg_root(plan: dict, name: str) -> tuple[str, int]:
    """(buffer allocated for argument ``name``, element offset in it): a "slice" buffer lies in
    another one (concat_views.py), every other argument is its own."""
    b = plan["buffers"].get(name)
    if b is not None and b.get("kind") == "slice":
        return b["of"], b["offset"]
    return name, 0


def plan_module(kernels: list, plan: dict):
    """An IRModule with every kernel (public wrapper + private impl) and one function per stretch
    of ``plan["calls"]``, and of each compiled control-flow body's plan nested in it (named after
    where it sits: ``c<host>b<k>_plan__stretchN``; a Loop's 31 steps of 12 kernel calls each spent
    more time in the calls than in the kernels); records the stretches in each plan's
    ``"stretches"`` (name, call span, args)."""
    tvm = import_tvm()
    funcs, impls = {}, {}
    same = same_kernels(kernels)
    for kd in kernels:
        rep = impls.get(same.get(kd.name))
        gv, impl, wrapper = _split_kernel(kd.name, kd.func, rep[0] if rep else None)
        if rep is None:
            funcs[gv] = impl
        funcs[tvm.ir.GlobalVar(kd.name)] = wrapper
        impls[kd.name] = (gv, [_dtype_of(p) for p in kd.func.params])
    for p, prefix in [(plan, "")] + list(body_plans(plan)):
        _add_stretches(funcs, impls, p, prefix)
    return tvm.IRModule(funcs)


def body_plans(plan: dict, prefix: str = ""):
    """(plan, name prefix) of every compiled control-flow body nested in ``plan``, at any depth;
    in a loaded plan, only what looks like a plan (the runners check them fully)."""
    segs = plan.get("host", [])
    for i, seg in enumerate(segs if isinstance(segs, list) else []):
        body = seg.get("body") if isinstance(seg, dict) else None
        plans = body.get("plans") if isinstance(body, dict) else None
        for k, p in enumerate(plans if isinstance(plans, list) else []):
            if isinstance(p, dict) and isinstance(p.get("calls"), list) and isinstance(p.get("buffers"), dict):
                yield p, f"{prefix}c{i}b{k}_"
                yield from body_plans(p, f"{prefix}c{i}b{k}_")


def _add_stretches(funcs: dict, impls: dict, plan: dict, prefix: str) -> None:
    tvm = import_tvm()
    tirx = tvm.tirx
    # a buffer's whole shape; a constant's tensor has the array's shape, which is what its
    # argument gives (plan_of), though kernels may read it through other shapes
    shapes = {n: (b["shape"], b.get("dtype", "float32")) for n, b in plan["buffers"].items()}
    stretches = []
    for i, (a, b) in enumerate(stretch_spans(plan["calls"])):
        params, names, stmts = {}, [], []
        for c in plan["calls"][a:b]:
            gv, dts = impls[c["func"]]
            if len(dts) != len(c["args"]):
                raise TypeError(f"kernel {c['func']}: {len(dts)} parameters, {len(c['args'])} arguments")
            ptrs = []
            for (arg, shape), dt in zip(c["args"], dts):
                n, offset = arg_root(plan, arg)
                if n not in params:
                    full, bdt = shapes.get(n, (shape, dt))
                    if bdt != dt:  # a kernel reading a buffer as another dtype: not expressible here
                        raise TypeError(f"kernel {c['func']} reads {n!r} ({bdt}) as {dt}")
                    # any element offset: an intermediate may be a view at an offset into its
                    # storage block (storage.py)
                    params[n] = tirx.decl_buffer(list(full), bdt, f"p{len(names)}",
                                                 offset_factor=1 if len(full) else 0)
                    names.append(n)
                ptrs.append(_address(params[n], offset) if len(params[n].shape) else params[n].data)
            # a subroutine's failed workspace allocation fails the stretch with TVM's last error
            failed = tvm.ir.Call(gv, ptrs, ret_ty="int32") != tirx.const(0, "int32")
            stmts.append(tirx.IfThenElse(failed, tirx.Evaluate(tirx.call_intrin("int32", "tirx.tvm_throw_last_error")), None))
        fname = f"{prefix}{STRETCH}{i}"
        body = tirx.SeqStmt(stmts) if len(stmts) > 1 else stmts[0]
        funcs[tvm.ir.GlobalVar(fname)] = tirx.PrimFunc([params[n] for n in names], body).with_attr(
            "global_symbol", fname)
        stretches.append({"func": fname, "calls": [a, b], "args": names})
    plan["stretches"] = stretches


def _declare_cpu(mod):
    """Workspaces (packed tiles, im2col columns) are allocated on "the current device", which only
    the packed API's prologue declares: each subroutine declares the CPU around its whole body,
    after the pipeline has hoisted its allocations to the top."""
    tvm = import_tvm()
    tirx = tvm.tirx
    node = tvm.ir.StringImm("default")
    out = {}
    for gv, f in mod.functions.items():
        if gv.name_hint.endswith(IMPL):
            body = tirx.AttrStmt(node, "device_id", tirx.const(0, "int32"),
                                 tirx.AttrStmt(node, "device_type", tirx.const(1, "int32"), f.body))
            f = f.with_body(body)
        out[gv] = f
    return tvm.IRModule(out, attrs=mod.attrs)


def compile_plan(mod, target):
    """tvm.tirx.build's steps for a CPU target, with `_declare_cpu` between the pipeline and the
    host finalization (tirx.build takes no custom pass there)."""
    import importlib

    tvm = import_tvm()
    B = importlib.import_module("tvm.tirx.build")  # the module (tvm.tirx.build is also the function)

    target = tvm.target.Target(target)
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
    pipeline, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(target)
    mod = _declare_cpu(pipeline(mod))
    host_mod, device_mods = B.split_host_device_mods(mod)
    if device_mods:
        raise TypeError(f"device code in a CPU plan: {list(device_mods)}")
    return B.tir_to_runtime(finalize_host()(host_mod), {}, target)


def run_list(plan: dict, calls: list, lookup, store: dict) -> list:
    """(callable, args) in run order: one per stretch, the host calls of ``calls`` between."""
    out, i = [], 0
    for s in sorted(plan.get("stretches", []), key=lambda s: s["calls"][0]):
        a, b = s["calls"]
        out.extend(calls[i:a])
        out.append((lookup(s["func"]), [store[n] for n in s["args"]]))
        i = b
    out.extend(calls[i:])
    return out


def check_stretches(plan: dict, where: str) -> None:
    """A loaded plan's stretches cover each run of kernel calls once, with arguments it has."""
    from tvmlite.backends.tvm.artifact_check import ArtifactError

    st = plan.get("stretches")
    if not isinstance(st, list):
        raise ArtifactError(f"{where}: 'stretches' must be a list")
    calls, names = plan["calls"], set(plan["buffers"])
    names |= {n for c in calls for n, _ in c.get("args", ())}
    want = stretch_spans(calls)
    got = []
    for s in st:
        ok = (isinstance(s, dict) and isinstance(s.get("func"), str) and isinstance(s.get("calls"), list)
              and len(s["calls"]) == 2 and all(isinstance(x, int) for x in s["calls"])
              and isinstance(s.get("args"), list) and all(isinstance(n, str) and n in names for n in s["args"]))
        if not ok:
            raise ArtifactError(f"{where}: stretch {s!r:.80} is malformed (func, calls [start, end), args)")
        a, b = s["calls"]
        if not 0 <= a < b <= len(calls) or set(s["args"]) != {arg_root(plan, n)[0] for c in calls[a:b]
                                                              for n, _ in c.get("args", ())}:
            raise ArtifactError(f"{where}: stretch {s['func']!r} does not name the arguments of calls {a}..{b}")
        got.append((a, b))
    if sorted(got) != want:
        raise ArtifactError(f"{where}: the stretches {sorted(got)} do not match the kernel calls {want}")


# --------------------------------------------------------------------------------- thread choice
_pool = threading.local()  # TVM's pool configuration is per calling thread


# TVM's AffinityMode values (runtime/threading_backend.h): 0 changes only the count of workers used;
# kSpecifyOneCorePerThread pins worker i to the i-th core of the list given (the caller to them all)
_COUNT_ONLY, _ONE_CORE_PER_THREAD = 0, -2


def use_threads(n: int) -> None:
    """Run parallel loops launched from this thread on ``n`` threads of TVM's pool (1: the caller
    alone, no wake-up and no barrier). For more than one, the pool's workers are pinned a core each,
    off the core the caller runs on (`target.bound_cpus`, `_pin_off_caller`); otherwise only the
    count of workers used changes (no threads are made or moved), so switching between models
    costs microseconds."""
    if n > 1:
        _pin_off_caller(n)
    if getattr(_pool, "n", None) != n:
        import_tvm().get_global_func("runtime.config_threadpool")(_COUNT_ONLY, int(n))
        _pool.n = n


def _pin_off_caller(n: int) -> None:
    """Pin this thread's pool workers one core each to the cores of its mask other than the one it
    runs on now, again whenever it is found on another core (a sched_getcpu per run; the caller's
    own mask is left as it was). Pinned to fixed cores, a worker shared its core with a caller that
    had settled there: the int8 digits CNN at 2 threads ran 205-220 us in one process out of three
    (the caller's home core the worker's), 131-145 in the others, 116 back to back."""
    cpus = getattr(_pool, "cpus", ())
    if cpus == ():
        cpus = _pool.cpus = bound_cpus()
    if cpus is None:
        return
    cpu = _current_cpu()
    if cpu == getattr(_pool, "pinned_off", -1):
        return
    first = cpus.index(cpu) if cpu in cpus else 0
    order = cpus[first:] + cpus[:first]  # worker i to order[i]: order[0], the caller's core, has none
    mask = os.sched_getaffinity(0)
    # TVM reads $TVM_BIND_THREADS as it configures: on for this call only (import_tvm keeps TVM's
    # own binding off); it also sets the caller's mask to the list, which is put back after
    asked = os.environ.get("TVM_BIND_THREADS")
    os.environ["TVM_BIND_THREADS"] = "1"
    try:
        import_tvm().get_global_func("runtime.config_threadpool")(_ONE_CORE_PER_THREAD, int(n), [str(c) for c in order])
    finally:
        os.environ["TVM_BIND_THREADS"] = asked if asked is not None else "0"
        os.sched_setaffinity(0, mask)
    _pool.n, _pool.pinned_off = n, cpu


_getcpu = None


def _current_cpu() -> int | None:
    """The core this thread runs on now (glibc's sched_getcpu, a vDSO call), or None."""
    global _getcpu
    if _getcpu is None:
        try:
            import ctypes

            f = ctypes.CDLL(None).sched_getcpu
            f.restype, f.argtypes = ctypes.c_int, []
            _getcpu = f
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            _getcpu = False
    if _getcpu is False:
        return None
    cpu = _getcpu()
    return cpu if cpu >= 0 else None
