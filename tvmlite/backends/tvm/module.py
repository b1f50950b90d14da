"""Build the kernels of a graph into one LLVM module for the host, save/load it, run it.

An artifact is three files: ``NAME.so`` (every kernel's PrimFunc in one library), ``NAME.so.json``
(the run plan: buffers, calls, inputs, outputs, and the host-run nodes as data: see host.py) and
``NAME.so.npz`` (the constants, already in the packed layouts the schedules expect, and the host
nodes' constant inputs, attribute tensors and subgraphs; the buckets of a bucketed build share one,
see params.py). `load_module` needs neither the ONNX model nor the compiler, only TVM's runtime and
tvmlite's NumPy kernels. Built artifacts are cached by graph hash (build_cache.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np

from tvmlite.backends.tvm import artifact_check, host, params, plan_func, storage, thread_choice
from tvmlite.backends.tvm.concat_views import resolve as resolve_slices
from tvmlite.backends.tvm.kernels.target import host_threads, import_tvm
from tvmlite.errors import InputError, TvmliteError
from tvmlite.limits import env_flag

FORMAT = 8  # 2: host calls, input dtypes, opsets; 3: buffer dtypes (integer inputs kernels read);
# 4: stretches (runs of kernels called from one compiled function, see plan_func.py); 5: "slice"
# buffers (a value inside a Concat's output: "of" that buffer at element "offset", concat_views.py);
# 6: a host node with compiled bodies stores its subgraphs as their plans only ("compiled": true);
# 7: intermediate buffers share "blocks" by liveness (storage.py); 8: tenants at an "offset" in one
# block per dtype


# -------------------------------------------------------------------------------------------- build
def plan_of(low, prefix: str = "") -> tuple[dict, dict]:
    """The run plan (JSON-able) and constant arrays of a lowered graph; ``prefix`` starts every
    constant's key (a control-flow body's: control.body_spec), so nested plans never collide."""
    from tvmlite.backends.tvm.lower import HostSegment, opset_versions

    buffers: dict[str, dict] = {}
    consts: dict[str, np.ndarray] = {}
    views = low.views

    def root(v):
        return views.get(v, v)

    def typed(entry, v):  # integer and bool values keep their dtype in their buffers
        dt = low.model.graph.values[v].dtype if v in low.model.graph.values else None
        if dt is not None and np.dtype(dt) != np.float32:
            entry["dtype"] = np.dtype(dt).name
        return entry

    kernel_read = {p.name for kd in low.kernels for p in kd.params if p.kind == "input"}
    segments = [e for e in low.order if isinstance(e, HostSegment)]
    # values TVM or a host call reads through a buffer: kernel inputs, and views of them anywhere
    in_buffer = {root(p.name) for kd in low.kernels for p in kd.params if p.kind == "input"}
    in_buffer |= {root(v) for v in list(low.outputs) + [i for s in segments for i in s.inputs] if root(v) != v}
    for name, shape, dtype in low.inputs:
        # other inputs are host values, and get a buffer too when a kernel reads them (Gather's ids)
        # or a host call reads a view of them (an Unsqueeze of an int mask: host calls find views
        # only in buffers)
        if dtype == np.float32 or name in kernel_read or name in in_buffer:
            buffers[name] = {"shape": list(shape), "kind": "input"}
            if dtype != np.float32:
                buffers[name]["dtype"] = str(dtype)
    # values living in a Concat's output (concat_views.py): views of its buffer at an offset
    for v, (r, off) in resolve_slices(low.slices).items():
        if r not in buffers:
            buffers[r] = typed({"shape": list(low.shapes[r]), "kind": "temp"}, r)
        buffers[v] = {"shape": list(low.shapes[v]), "kind": "slice", "of": r, "offset": off}
        if "dtype" in buffers[r]:
            buffers[v]["dtype"] = buffers[r]["dtype"]
    host_made = {o for seg in segments for n in seg.nodes for o in n.outputs if o}
    calls, host_specs = [], []
    for entry in low.order:
        if isinstance(entry, HostSegment):
            for o in entry.outputs:
                if o in in_buffer:
                    if o not in low.shapes:
                        raise TvmliteError(f"host value {o!r} is read by a kernel but has no static shape")
                    buffers[o] = typed({"shape": list(low.shapes[o]), "kind": "host"}, o)
            spec, arrays = host.segment_spec(entry, low, buffers, host_made, len(host_specs), plan_of, prefix)
            consts.update(arrays)
            calls.append({"host": len(host_specs), "nodes": [n.label for n in entry.nodes]})
            host_specs.append(spec)
            continue
        kd, args = entry, []
        for p in kd.params:
            if p.kind == "const":
                consts[prefix + p.name] = p.array
                args.append([prefix + p.name, list(p.array.shape)])
                continue
            r = root(p.name)
            if p.kind == "output" and r not in buffers:
                buffers[r] = typed({"shape": list(low.shapes[r]), "kind": "temp"}, r)
            if r not in buffers:
                raise TvmliteError(f"kernel {kd.name} reads {p.name!r} before it is made")
            n_buf = int(np.prod(buffers[r]["shape"]))
            if int(np.prod(p.shape)) != n_buf:
                raise TvmliteError(f"kernel {kd.name}: view {p.shape} of {r!r} {buffers[r]['shape']}")
            args.append([r, list(p.shape)])
        calls.append({"func": kd.name, "args": args, "nodes": kd.nodes})
    host_inputs = {n for n, _, dt in low.inputs if dt != np.float32}
    outputs = []
    for o in low.outputs:
        if o in low.consts:
            cname = f"{prefix}output.{o}"
            consts[cname] = host.storable(low.consts[o], f"output {o!r}")
            outputs.append({"name": o, "buffer": cname, "shape": list(np.shape(low.consts[o])), "const": True})
        elif o in host_made or o in host_inputs:
            outputs.append({"name": o, "host": True})
        else:
            r = root(o)
            if r not in buffers:
                raise TvmliteError(f"graph output {o!r} is not computed")
            outputs.append({"name": o, "buffer": r, "shape": list(low.shapes.get(o, buffers[r]["shape"]))})
    plan = {"format": FORMAT,
            "inputs": [{"name": n, "shape": list(s), "dtype": str(dt)} for n, s, dt in low.inputs],
            "outputs": outputs, "buffers": buffers, "calls": calls}
    if host_specs:
        plan["host"] = host_specs
        plan["opsets"] = opset_versions(low.model.opsets)
        plan["host_ops"] = low.host_problems
    if low.winograd:
        from tvmlite.backends.tvm.winograd_choice import plan_record

        plan["winograd"] = plan_record(low.winograd)
    if not prefix:  # a control-flow body's runners read its buffers by name: never shared
        storage.assign(plan)
    return plan, consts


def build_lowered(low, target, plan: dict):
    """One IRModule holding every kernel (control-flow bodies' too: control.py) and one function
    per stretch of kernels (recorded in ``plan``, see plan_func.py), compiled for ``target``."""
    return plan_func.compile_plan(plan_func.plan_module(low.kernels + low.body_kernels, plan), target)


def save_artifact(lib, plan: dict, consts: dict, path: str, lib_path: str | None = None, *,
                  outputs=None, shared=None) -> None:
    """``path`` (.so) plus ``path.json`` and ``path.npz``, landing together. ``lib_path``: the .so
    ``lib`` was loaded from (a loaded library cannot be exported again, so it is copied).
    ``outputs``: a `tvmlite.outputs.Outputs` to stage them in (they land when it commits).
    ``shared``: a `params.SharedConsts` that takes the constants instead of ``path.npz`` (the
    buckets of one build; its owner writes the file)."""
    from tvmlite.outputs import Outputs

    path = os.fspath(path)
    if outputs is None:
        with Outputs([(lib_path, "library being saved")] if lib_path else []) as own:
            return save_artifact(lib, plan, consts, path, lib_path, outputs=own, shared=shared)
    so = outputs.file(path, "library", existing_ok=True)
    js = outputs.file(path + ".json", "run plan", existing_ok=True)
    plan = {k: v for k, v in plan.items() if k not in ("const_file", "const_keys")}  # a bucket saved alone
    if shared is not None:
        plan = {**plan, "const_file": shared.file_name, "const_keys": shared.add(consts)}
    elif any("body" in seg for seg in plan.get("host", [])):
        # compiled bodies repeat constants (an If's branches each hold what followed the If,
        # control.sink_into_branches): each distinct array once, by content key (params.py)
        own = params.SharedConsts(os.path.basename(path) + ".npz")
        plan = {**plan, "const_keys": own.add(consts)}
        consts = own.arrays
    if lib_path is not None:
        try:
            shutil.copyfile(lib_path, so)
        except OSError as e:
            raise TvmliteError(f"cannot copy the built library {lib_path} ({e.strerror}): build again") from None
    else:
        lib.export_library(so)
    # the load side checks these before dlopen (artifact_check): a truncated or swapped library
    # is refused with one line instead of faulting
    with open(so, "rb") as f:
        data = f.read()
    plan = {**plan, "lib_bytes": len(data), "lib_sha256": hashlib.sha256(data).hexdigest()}
    with open(js, "w") as f:
        json.dump(plan, f)
    if shared is None:
        with open(outputs.file(path + ".npz", "constants", existing_ok=True), "wb") as f:
            params.write(f, consts)  # aligned, so that loading maps it


def load_module(path: str, pool: dict | None = None, *, verified: bool = False) -> "CompiledModel":
    """A saved artifact, ready to run (no ONNX, no compiler). ``pool``: constants already loaded
    from the same shared file, by member key (the buckets of one build); ``verified``: params.read."""
    tvm = import_tvm()
    path = os.fspath(path)
    for p in (path, path + ".json"):
        if not os.path.exists(p):
            raise TvmliteError(f"missing {p} (a TVM build is NAME.so with NAME.so.json and NAME.so.npz)")
        if not os.path.isfile(p):
            raise TvmliteError(f"{p} is not a regular file")
    # every file is checked before TVM maps the library: a truncated .so faults in dlopen
    plan = artifact_check.read_plan(path + ".json", FORMAT)
    # a pool of its own at least: the constants two bodies share (an If's branches each holding the
    # same Loop) are one member of the .npz (save_artifact), and then one tensor
    consts, tensors = params.read(path, plan, pool if pool is not None else {}, verified=verified)
    artifact_check.check_library(path, plan)
    try:
        lib = tvm.runtime.load_module(path)
    except Exception as e:  # noqa: BLE001 - TVM's own error classes
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise artifact_check.ArtifactError(f"{path}: TVM cannot load the library: {msg}") from None
    plan_func.check_stretches(plan, path + ".json")
    funcs = [c["func"] for c in plan["calls"] if "func" in c] + [s["func"] for s in plan["stretches"]]
    missing = [f for f in funcs if not lib.implements_function(f, True)]
    if missing:
        raise artifact_check.ArtifactError(f"{path}: the library has no kernel {missing[0]!r} "
                                           f"({len(missing)} missing): it belongs to another build")
    try:  # the host calls' nodes are rebuilt through the op registry and the NumPy plan
        cm = CompiledModel(lib, plan, consts, tensors=tensors)
    except TvmliteError as e:
        raise artifact_check.ArtifactError(f"{path}.json: {e}") from None
    cm.lib_path = os.path.abspath(path)
    return cm


# ---------------------------------------------------------------------------------------------- run
def picks_threads() -> bool:
    """$TVMLITE_PICK_THREADS (0 or 1, default 1): whether a small plan measures 1 thread against all."""
    return env_flag("TVMLITE_PICK_THREADS")


class CompiledModel:
    """Preallocated buffers, the kernel calls and host calls of one built graph; ``run(feeds)`` ->
    outputs."""

    def __init__(self, lib, plan: dict, consts: dict, build_seconds: float | None = None,
                 cached: bool = False, tensors: dict | None = None):
        tvm = import_tvm()
        self.lib = lib
        self.plan = plan
        self.build_seconds = build_seconds
        self.cached = cached
        self.lib_path = None  # set when the library was loaded from a file
        dev = tvm.cpu(0)
        self.input_names = [i["name"] for i in plan["inputs"]]
        self.input_shapes = {i["name"]: tuple(i["shape"]) for i in plan["inputs"]}
        self.input_dtypes = {i["name"]: np.dtype(i.get("dtype", "float32")) for i in plan["inputs"]}
        self.output_names = [o["name"] for o in plan["outputs"]]
        store = {}
        # intermediates whose lives do not overlap share a block (storage.py): views of its tensor
        blocks = [tvm.runtime.empty((blk["size"],), blk["dtype"], dev) for blk in plan.get("blocks", [])] \
            if storage.reuses() else []
        for name, b in plan["buffers"].items():
            if b.get("kind") == "slice":
                continue
            if "block" in b and blocks:
                store[name] = blocks[b["block"]]._create_view(
                    tuple(b["shape"]), relative_byte_offset=b.get("offset", 0) * np.dtype(b.get("dtype", "float32")).itemsize)
            else:
                store[name] = tvm.runtime.empty(tuple(b["shape"]), b.get("dtype", "float32"), dev)
        for name, b in plan["buffers"].items():  # inside another buffer (a Concat's inputs)
            if b.get("kind") == "slice":
                store[name] = store[b["of"]]._create_view(
                    tuple(b["shape"]), relative_byte_offset=b["offset"] * np.dtype(b.get("dtype", "float32")).itemsize)
        # the kernels' constants live as TVM tensors only (``tensors``: already read, maybe shared
        # with other buckets); host calls and constant outputs read theirs as NumPy arrays
        kernel_consts = {n for c in plan["calls"] for n, _ in c.get("args", ()) if n not in plan["buffers"]}
        self._tensors = {}
        for name in kernel_consts:
            t = (tensors or {}).get(name)
            self._tensors[name] = store[name] = t if t is not None else \
                tvm.runtime.tensor(np.require(consts[name], requirements="C"), dev)  # 0-d stays 0-d (stretches)
        self._store = store
        view = self._view

        host_view = self.buffer_view  # a host call's view of a TVM buffer
        self._env: dict = {}  # host values: non-float inputs and what host calls made
        self._body_tensors = {k: t for k, t in (tensors or {}).items() if k not in self._tensors}
        segments = [host.HostCall(spec, consts, plan.get("opsets", {}), host_view, self._env,  # control.py's bodies:
                                  sub_model=lambda p: CompiledModel(lib, p, consts, tensors=tensors))  # same tensors
                    for spec in plan.get("host", [])]
        # per call (profile, tools), and the run: each stretch of kernels as one compiled call
        self._calls = [(segments[c["host"]], []) if "host" in c else
                       (lib[c["func"]], [view(n, s) for n, s in c["args"]]) for c in plan["calls"]]
        self._run = plan_func.run_list(plan, self._calls, lambda f: lib[f], store)
        self._inputs = [store.get(n) for n in self.input_names]
        self._outputs = [(view(o["buffer"], o["shape"]) if not (o.get("const") or o.get("host")) else None, o)
                         for o in plan["outputs"]]
        # inputs and outputs are copied through NumPy views of their buffers: Tensor.copyfrom and
        # .numpy() cost ~23 us each (DLPack and FFI per call) against ~1.5 us for np.copyto and
        # np.array of a view (a [1, 512] input), a tenth of a 1 ms model with 2 inputs and 2 outputs
        self._input_views = [None if t is None else np.from_dlpack(t) for t in self._inputs]
        self._output_views = [None if t is None else np.from_dlpack(t) for t, _ in self._outputs]
        # per input (name, buffer view or None, shape, dtype, whether it goes straight into its
        # buffer): a float input a kernel reads is converted by the copy itself (set_inputs)
        self._feeds = [(n, t, self.input_shapes[n], self.input_dtypes[n],
                        t is not None and self.input_dtypes[n] == np.float32)
                       for n, t in zip(self.input_names, self._input_views)]
        self._host_consts = {k: v for k, v in consts.items() if k not in kernel_consts}
        # threads for the parallel kernels: all of TVM's pool until the runs after the second of a
        # small plan measure 1 against all, again now and then ($TVMLITE_PICK_THREADS=0: never)
        self._choice = thread_choice.ThreadChoice(host_threads(), picks_threads())

    @property
    def threads(self) -> int:
        """The threads the next run's parallel kernels use (thread_choice.py)."""
        return self._choice.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._choice.threads = n

    @property
    def thread_times(self) -> dict:
        """The mean ms per run on 1 and on all threads the last pick was made on ({}: none yet)."""
        return self._choice.times

    @property
    def kernel_count(self) -> int:
        return sum(1 for c in self.plan["calls"] if "func" in c)

    @property
    def summary(self) -> str:
        """'12 kernels, 5 host-run nodes in 2 host calls' (the host part only when there are any)."""
        segs = self.plan.get("host", [])
        n = sum(len(seg["nodes"]) for seg in segs)
        return f"{self.kernel_count} kernels" + (f", {n} host-run nodes in {len(segs)} host calls" if n else "")

    @property
    def host_ops(self) -> list[str]:
        """The build report's lines for the host-run ops ('LayerNormalization x13: no TVM emitter')."""
        from tvmlite.backends.tvm.lower import host_report

        return host_report(self.plan.get("host_ops", []))

    @property
    def winograd(self) -> list[str]:
        """The build report's Winograd lines: how many 3x3 convs went Winograd, then one line per
        conv and why ('conv2: F(4), 64->128 channels, ...'); empty when no 3x3 conv was considered."""
        from tvmlite.backends.tvm.winograd_choice import report_lines

        return report_lines(self.plan.get("winograd"))

    @property
    def unsupported(self) -> list[str]:
        """What `unsupported_ops` says of the built graph: each host-run op as 'Op (reason) xN'."""
        from tvmlite.backends.tvm.lower import problem_list

        return problem_list(self.plan.get("host_ops", []))

    def set_inputs(self, feeds: dict) -> None:
        for name, t, shape, dt, direct in self._feeds:
            if name not in feeds:
                raise InputError(f"missing input {name!r}")
            a = feeds[name]
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.shape != shape:
                raise InputError(f"input {name!r} has shape {tuple(a.shape)}, the TVM build expects "
                                 f"{shape} (build again for other shapes)")
            if direct:  # one pass: the copy converts (as np.asarray(a, float32) would) and gathers strides
                np.copyto(t, a, casting="unsafe")
                continue
            # host calls read non-float inputs from here: a C-ordered copy the kernels read too
            c = self._env[name] = np.array(a, dtype=dt)
            if t is not None:
                np.copyto(t, c)

    # what control_run's runners drive a body plan through
    @property
    def host_values(self) -> dict:
        """The values host calls read and make (the non-float inputs among them), by name."""
        return self._env

    def buffer_view(self, name: str, shape) -> np.ndarray:
        """Buffer ``name`` as a NumPy array of ``shape`` (a view: no copy)."""
        return np.from_dlpack(self._store[name]).reshape(shape)

    def input_view(self, name: str) -> np.ndarray | None:
        """Input ``name``'s buffer as a NumPy view; None when no kernel reads it (a host value)."""
        return dict(zip(self.input_names, self._input_views)).get(name)

    def output_reader(self, name: str):
        """(function giving output ``name`` of the last run as a NumPy array without copying it,
        the view of its buffer or None when it has none: a constant, or a host value)."""
        for (_, o), view in zip(self._outputs, self._output_views):
            if o["name"] != name:
                continue
            if view is not None:
                return (lambda: view), view
            if o.get("const"):
                arr = np.asarray(self._host_consts[o["buffer"]])
                return (lambda: arr), None
            return (lambda: np.asarray(self._env[name])), None  # an input passed through, a host value
        raise TvmliteError(f"compiled body has no output {name!r}")

    def calls(self, swap: dict | None = None) -> list:
        """(callable, args) in run order, each stretch of kernels one call, as ``execute`` runs
        them; with ``swap`` ({buffer: buffer} of equal shape and dtype) each reads and writes the
        other buffer of a pair instead (a loop's states that swap roles every step: control_run)."""
        if not swap:
            return list(self._run)
        store = {n: self._store[swap.get(n, n)] for n in self._store}
        calls = [(fn, [self._view(swap.get(n, n), s) for n, s in c["args"]]) if "func" in c else (fn, args)
                 for (fn, args), c in zip(self._calls, self.plan["calls"])]
        return plan_func.run_list(self.plan, calls, lambda f: self.lib[f], store)

    def _view(self, name: str, shape):
        """Buffer ``name`` (or a constant's tensor) as a TVM tensor of ``shape``."""
        t = self._store[name]
        return t if tuple(t.shape) == tuple(shape) else t._create_view(tuple(shape))

    def _go(self) -> None:
        for fn, args in self._run:
            fn(*args)

    def execute(self) -> None:
        plan_func.use_threads(self.threads)
        self._go()

    def warm_up(self, feeds: dict, most: int = 128) -> int:
        """Run until a small plan's thread picks agree twice in a row (thread_choice: each pick
        over its own runs, the second REPICK_FIRST runs after the first; at most ``most`` runs), so
        the runs after it, timed by a benchmark or serving requests, use the choice and the next
        pick is far off; the runs made."""
        for n in range(1, most + 1):
            self.run(feeds)
            if self._choice.steady:
                return n
        return most

    def execute_per_call(self) -> None:
        """The plan one kernel call at a time from Python (the reference for the stretches)."""
        plan_func.use_threads(self.threads)
        for fn, args in self._calls:
            fn(*args)

    def run(self, feeds: dict) -> list[np.ndarray]:
        self.set_inputs(feeds)
        self._choice.run(self.execute)
        return [np.array(t) if t is not None else self._held_output(o)
                for t, (_, o) in zip(self._output_views, self._outputs)]

    def _held_output(self, o: dict):
        """An output with no buffer of its own: a host value (copied when an array) or a constant."""
        if o.get("host"):
            v = self._env[o["name"]]
            return np.array(v) if isinstance(v, np.ndarray) else v
        return host.loaded(np.array(self._host_consts[o["buffer"]]))

    def profile(self, feeds: dict, repeats: int = 10) -> list[tuple[str, str, float]]:
        """Median milliseconds per kernel or host call: (call, graph nodes, ms), slowest first
        (on ``self.threads``)."""
        self.set_inputs(feeds)
        self.execute()
        rows = []
        for (fn, args), call in zip(self._calls, self.plan["calls"]):
            ts = []
            for _ in range(max(repeats, 1)):
                t0 = time.perf_counter()
                fn(*args)
                ts.append((time.perf_counter() - t0) * 1e3)
            name = call["func"] if "func" in call else f"host{call['host']}"
            rows.append((name, ", ".join(call.get("nodes", [])), float(np.median(ts))))
        return sorted(rows, key=lambda r: -r[2])

    @property
    def _consts(self) -> dict:
        """Every constant as a NumPy array (the kernels' copied out of their TVM tensors)."""
        return {**self._host_consts, **{n: t.numpy() for n, t in {**self._tensors, **self._body_tensors}.items()}}

    def save(self, path: str, *, outputs=None, shared=None) -> None:
        save_artifact(self.lib, self.plan, self._consts, path, lib_path=self.lib_path, outputs=outputs,
                      shared=shared)
