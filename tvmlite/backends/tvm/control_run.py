"""Running control flow with TVM-compiled bodies (control.py builds them): `runner` makes the
runner of a stored body entry.

`LoopRunner`/`ScanRunner` bind the outer values and the initial state once per run, then per step
set the step number (or the slices), run the body's kernels and hand each new state to the next
step: buffers swapped where the new state has one of its own, else copied (NumPy views of the TVM
buffers, no conversion), collecting the per-step outputs in place; `IfRunner` runs the branch the
condition picks. All check the shapes they are handed against the build (the body plan's
`set_inputs`).
"""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.artifact_check import _check_schema
from tvmlite.backends.tvm.plan_func import check_stretches
from tvmlite.errors import InputError, TvmliteError


def runner(spec: dict, sub_model, where: str):
    """The runner of a stored ``body`` entry; ``sub_model(plan)``: a CompiledModel of a body plan
    over the artifact's library and constants."""
    try:
        kind, info, plans = spec["kind"], spec["info"], spec["plans"]
        if kind not in ("loop", "scan", "if") or not isinstance(plans, list) or len(plans) != (2 if kind == "if" else 1):
            raise TvmliteError(f"{where}: a compiled body of unknown kind {kind!r}")
        for p in plans:
            _check_schema(p, where)
            if "stretches" in p:  # bodies built before they had stretches run call by call
                check_stretches(p, where)
        models = []
        for p in plans:
            try:
                models.append(sub_model(p))
            except TvmliteError:
                raise
            except Exception as e:  # noqa: BLE001 - TVM's own errors: a kernel the library lacks, say
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise TvmliteError(f"{where}: its compiled body does not load: {msg}") from None
        return {"loop": LoopRunner, "scan": ScanRunner}[kind](info, models[0]) if kind != "if" else \
            IfRunner(info, models)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise TvmliteError(f"{where}: its compiled body is malformed ({type(e).__name__}: {e})") from None


class _States:
    """The values a body hands to its next step (state, or a computed condition). Where a new
    state has a buffer of its own (a kernel's output of the state's shape and dtype), the two
    buffers swap roles each step instead of being copied: the body plan's calls run in two
    versions, the second with each such pair exchanged, step k running version k % 2, and the
    readers of body outputs follow. Other states are copied into their input's buffer (or kept
    among the body plan's host values when no kernel reads them)."""

    def __init__(self, model, pairs):
        self.m = model
        self.parity = 0
        self.slots = []
        for b_in, b_out in pairs:
            read, out_view = model.output_reader(b_out)
            self.slots.append((b_in, model.input_view(b_in), read, out_view))
        # a new state in another state's input buffer (states passed round each step) is copied
        # out before any input is written, and nothing is swapped
        ins = [v for _, v, _, _ in self.slots if v is not None]
        self.snapshot = any(np.shares_memory(o, v) for _, _, _, o in self.slots if o is not None for v in ins)
        outs = {o["name"]: o for o in model.plan["outputs"]}
        bufs = model.plan["buffers"]
        self.swap: dict = {}
        for (b_in, view, _, _), (_, b_out) in zip(self.slots, pairs):
            o = outs.get(b_out, {})
            r = o.get("buffer")
            if self.snapshot or view is None or o.get("host") or o.get("const") or r == b_in or r in self.swap \
                    or b_in in self.swap or bufs.get(r, {}).get("kind") != "temp" \
                    or (bufs[r]["shape"], bufs[r].get("dtype")) != (bufs[b_in]["shape"], bufs[b_in].get("dtype")):
                continue
            self.swap[b_in], self.swap[r] = r, b_in
        self.calls = [model.calls(), model.calls(self.swap)]
        self.copied = [(name, view, self.read(b_out)) for (name, view, _, _), (_, b_out) in zip(self.slots, pairs)
                       if name not in self.swap]

    def read(self, name: str):
        """A function giving body output ``name`` of the step just run (before `step`)."""
        for o in self.m.plan["outputs"]:
            if o["name"] == name and not (o.get("const") or o.get("host")):
                views = [self.m.buffer_view(b, o["shape"]) for b in
                         (o["buffer"], self.swap.get(o["buffer"], o["buffer"]))]
                return lambda: views[self.parity]
        return self.m.output_reader(name)[0]

    def execute(self) -> None:
        for fn, args in self.calls[self.parity]:
            fn(*args)

    def step(self) -> None:
        self.parity ^= 1 if self.swap else 0
        new = [np.array(r()) if self.snapshot or v is None else r() for _, v, r in self.copied]
        for (name, view, _), value in zip(self.copied, new):
            if view is None:
                self.m.host_values[name] = value
            else:
                np.copyto(view, value)

    def values(self) -> list:
        """The current states (copies)."""
        out = []
        for name, view, _, _ in self.slots:
            if view is None:
                out.append(np.array(self.m.host_values[name]))
            elif name in self.swap and self.parity:
                out.append(np.array(self.m.buffer_view(self.swap[name], view.shape)))
            else:
                out.append(np.array(view))
        return out


class LoopRunner:
    """A Loop over a compiled body: ``run(feeds)`` -> the node's outputs, by name."""

    def __init__(self, info: dict, model):
        self.m = model
        self.info = info
        self.iter_view = model.input_view(info["iter"])
        pairs = [tuple(p) for p in info["states"]]
        if info["cond_out"]:  # the next step reads the condition this one computed
            pairs.append((info["cond_in"], info["cond_out"]))
        self.states = _States(model, pairs)
        self.n_states = len(info["states"])
        self.scans = [(self.states.read(name), tuple(shape), np.dtype(dt)) for name, shape, dt in info["scans"]]
        self.cond = self.states.read(info["cond_out"]) if info["cond_out"] else None
        # an outer sequence read one row per step (_step_slices): the row's buffer
        self.slices = [(model.input_view(b), b, o) for b, o in info.get("slices", [])]

    def run(self, feeds: dict) -> dict:
        info = self.info
        rows = [np.asarray(feeds[o]) for _, _, o in self.slices]
        ins = info["node_inputs"] + ["", ""]
        trips = int(np.asarray(feeds[ins[0]]).reshape(-1)[0]) if ins[0] else None
        cond = bool(np.asarray(feeds[ins[1]]).reshape(-1)[0]) if ins[1] else True
        body_feeds = {n: feeds[n] for n in self.m.input_names if n in feeds}
        body_feeds[info["iter"]] = np.array(0, np.int64)
        body_feeds[info["cond_in"]] = np.array(cond)
        for (_, b, _), x in zip(self.slices, rows):
            body_feeds[b] = x[0] if len(x) else np.zeros(x.shape[1:], x.dtype)
        for (b_in, _), outer in zip(info["states"], info["node_inputs"][2:]):
            body_feeds[b_in] = feeds[outer]
        self.states.parity = 0  # set_inputs writes the first state to the inputs' own buffers
        try:
            self.m.set_inputs(body_feeds)  # the outer values and the first state: bound once
        except InputError as e:
            raise TvmliteError(f"Loop body: {e}") from None
        steps = [np.empty((trips,) + s, dt) for _, s, dt in self.scans] if trips is not None and \
            info["cond_out"] is None else None
        grown = [[] for _ in self.scans]
        i = 0
        while (trips is None or i < trips) and cond:
            if self.iter_view is not None:
                self.iter_view[...] = i
            else:
                self.m.host_values[info["iter"]] = np.array(i, np.int64)
            for (view, b, o), x in zip(self.slices, rows):
                if i >= len(x):  # what the Gather it stands for would say
                    raise TvmliteError(f"Loop body: step {i} reads row {i} of {o!r}, which has {len(x)}")
                if view is not None:
                    np.copyto(view, x[i])
                else:
                    self.m.host_values[b] = x[i]
            self.states.execute()
            for k, (read, _, _) in enumerate(self.scans):
                if steps is not None:
                    steps[k][i] = read()
                else:
                    grown[k].append(read().copy())
            if self.cond is not None:
                cond = bool(self.cond().reshape(-1)[0])
            self.states.step()
            i += 1
        if steps is None:
            steps = [np.stack(g) if g else None for g in grown]
        if i == 0:  # no step ran: empty per-step outputs of shape (0,), as onnxruntime and the NumPy plan
            steps = [np.empty((0,), dt) for _, _, dt in self.scans]
        finals = self.states.values()[:self.n_states]
        return dict(zip(info["node_outputs"], finals + steps))


class ScanRunner:
    """A Scan over a compiled body: ``run(feeds)`` -> the node's outputs, by name. Each step's
    slices are copied into the body's slice inputs (the scan input moved to the front once)."""

    def __init__(self, info: dict, model):
        self.m = model
        self.info = info
        self.states = _States(model, [tuple(p) for p in info["states"]])
        # a slice no kernel reads has no buffer: nothing to copy each step
        self.slices = [(model.input_view(b), b, o, ax, d) for b, o, ax, d in info["slices"]]
        self.scans = [(self.states.read(name), tuple(shape), np.dtype(dt), ax, d)
                      for name, shape, dt, ax, d in info["scans"]]

    def run(self, feeds: dict) -> dict:
        info = self.info
        xs = []
        for _, _, outer, ax, d in self.slices:
            x = np.moveaxis(np.asarray(feeds[outer]), ax, 0)
            xs.append(x[::-1] if d else x)
        length = xs[0].shape[0] if xs else 0
        body_feeds = {n: feeds[n] for n in self.m.input_names if n in feeds}  # outer values: bound once
        body_feeds.update({b: feeds[o] for (b, _), o in zip(info["states"], info["node_inputs"])})
        body_feeds.update({b: x[0] if length else np.zeros(x.shape[1:], x.dtype)
                           for (b, _, _, _), x in zip(info["slices"], xs)})
        self.states.parity = 0
        try:
            self.m.set_inputs(body_feeds)
        except InputError as e:
            raise TvmliteError(f"Scan body: {e}") from None
        steps = [np.empty((length,) + s, dt) for _, s, dt, _, _ in self.scans]
        for t in range(length):
            if t:
                for (view, name, _, _, _), x in zip(self.slices, xs):
                    if view is not None:
                        np.copyto(view, x[t])
                    else:
                        self.m.host_values[name] = x[t]
            self.states.execute()
            for (read, _, _, _, _), y in zip(self.scans, steps):
                y[t] = read()
            self.states.step()
        finals = self.states.values()
        outs = []
        for (_, _, _, ax, d), y in zip(self.scans, steps):
            y = y[::-1] if d else y
            outs.append(np.ascontiguousarray(np.moveaxis(y, 0, ax % y.ndim)))
        return dict(zip(info["node_outputs"], finals + outs))


class IfRunner:
    """An If over two compiled branches: ``run(feeds)`` -> the node's outputs, by name."""

    def __init__(self, info: dict, models: list):
        self.info = info
        self.models = models

    def run(self, feeds: dict) -> dict:
        cond = bool(np.asarray(feeds[self.info["cond"]]).reshape(-1)[0])
        m = self.models[0 if cond else 1]
        try:
            outs = m.run({n: feeds[n] for n in m.input_names})
        except InputError as e:
            raise TvmliteError(f"If branch: {e}") from None
        return dict(zip(self.info["node_outputs"], outs))
