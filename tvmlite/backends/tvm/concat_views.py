"""Concat without copies: the kernels that make a Concat's inputs write straight into their slice
of its output, and the Concat's kernel disappears.

A Concat whose every input is one contiguous block of its output (all dims before the axis are 1:
channels at batch 1 in NCHW) and that takes no epilogue (fusion.py) is recorded in
``Lowering.concats``. One with an epilogue keeps its kernel: the copy's pass applies the
elementwise ops, which as views would take a pass of their own (ShuffleNet's Concat -> Relu ran
1.03x slower that way; prepare now moves such an activation onto the inputs where their kernels
take it, concat_acts.py). After the walk, `place` gives each input whose buffer may move a place in
the output: its root (behind views) is written by exactly one kernel of the plan, or is the output
of a Concat placed the same way (nested Concats: DenseNet's blocks become one buffer that each
layer appends to), and it has no place yet. An input that may not move (a graph input, a
constant, a host call's output, a value already placed, in another Concat or earlier in this one)
is copied into its slice by a small Concat kernel over each run of such inputs; a Concat with no
movable input keeps its kernel. ``Lowered.slices`` maps each placed value to (the Concat output
it lives in, element offset); module.plan_of turns those into "slice" buffers (views of their
root buffer at an offset) and plan_func passes their address to the kernels.

It is only memory: every value is still written once, by its producer, before anything reads it
(a plan's buffers are never reused), and a kernel never writes a region it reads, since a value
placed in a Concat is made before the Concat's output exists. Control-flow bodies keep their
Concat kernels (their plans swap buffers between steps, control_run.py).

Measured (``bench/concat_views.py``, views against none in one process, interleaved; a shared
2-core machine under load, so at one thread by the calling thread's CPU time, medians): densenet121
0.961x (242 -> 188 kernels, load 4), detector 0.984x, squeezenet 0.979x, inception_v1 0.988x,
inception_v2 1.000x (load 6-21). Fresh builds got shorter (fewer kernels: densenet121 82.5 -> 66.1 s
at load 3), cached ones load in under 1 s.
"""
from __future__ import annotations


import numpy as np

from tvmlite.backends.tvm.emitters.tensor import ConcatInfo
from tvmlite.limits import env_flag


def enabled() -> bool:
    """Concat views are on unless $TVMLITE_CONCAT_VIEWS is 0 (for A/B measurements)."""
    return env_flag("TVMLITE_CONCAT_VIEWS")


def place(low, lowered, lanes: int) -> None:
    """Give the inputs of each recorded Concat (``low.concats``: kernel name -> ConcatInfo) their
    slice of its output in ``lowered`` (a `lower.Lowered`): ``lowered.slices`` and
    ``lowered.order`` (the Concat's kernel replaced by the kernels copying the inputs that cannot
    move, or nothing)."""
    from tvmlite.backends.tvm.lower import HostSegment

    if not low.concats:
        return
    views = lowered.views
    written = {}  # root value -> how many kernels write it
    for e in lowered.order:
        if not isinstance(e, HostSegment):
            for p in e.params:
                if p.kind == "output":
                    r = views.get(p.name, p.name)
                    written[r] = written.get(r, 0) + 1
    slices, made, order = lowered.slices, set(), []
    for e in lowered.order:
        info = None if isinstance(e, HostSegment) else low.concats.get(e.name)
        parts = None if info is None else _parts(info, views, written, made, slices)
        if parts is None:
            order.append(e)
            continue
        made.add(info.out)
        for i, (what, off, run) in enumerate(parts):
            if what == "place":
                slices[run] = (info.out, off)
                continue
            order.append(_copy_kernel(e, info, i, run, off, lanes, lowered, slices))
    lowered.order = order


def _parts(info: ConcatInfo, views: dict, written: dict, made: set, slices: dict):
    """[("place", element offset, root value) or ("copy", element offset, [(input, shape)...])]
    over the Concat's inputs in order, or None when no input can move."""
    axis = info.axis % len(info.out_shape)
    inner = int(np.prod(info.out_shape[axis + 1:], dtype=np.int64))
    parts, taken, off = [], set(), 0
    for x, shape in info.inputs:
        if not int(np.prod(shape)):
            continue  # an empty input has nothing to write
        root = views.get(x, x) if isinstance(x, str) else None
        movable = root is not None and (written.get(root) == 1 or root in made) \
            and root not in slices and root not in taken and root != info.out
        if movable:
            parts.append(("place", off, root))
            taken.add(root)
        elif parts and parts[-1][0] == "copy":
            parts[-1][2].append((x, shape))
        else:
            parts.append(("copy", off, [(x, shape)]))
        off += int(shape[axis]) * inner
    return parts if taken else None


def _copy_kernel(kd, info: ConcatInfo, i: int, run: list, off: int, lanes: int, lowered, slices: dict):
    """The kernel writing the inputs of ``run`` (consecutive, none movable) into their slice,
    a value of its own placed at ``off``."""
    from tvmlite.backends.tvm.kernels.tensor import concat

    axis = info.axis % len(info.out_shape)
    shape = list(info.out_shape)
    shape[axis] = sum(int(s[axis]) for _, s in run)
    value = f"{info.out}:part{i}"
    lowered.shapes[value] = tuple(shape)
    slices[value] = (info.out, off)
    part = concat(f"{kd.name}_p{i}", run, axis=axis, out_value=value, out_shape=tuple(shape), lanes=lanes,
                  dtype=info.dtype)
    part.nodes = list(kd.nodes)
    return part


def resolve(slices: dict) -> dict:
    """value -> (root buffer value, element offset), following nested Concats to the outermost."""
    out = {}
    for v in slices:
        r, off = v, 0
        while r in slices:
            r, o = slices[r]
            off += o
        out[v] = (r, off)
    return out
