"""Constant, control flow (If, Loop, Scan), sequences and optionals.

Sequences are Python lists of arrays; an empty optional is None. Subgraph kernels get a
KernelContext whose ``run_subgraph(graph, feeds, scope)`` runs a body (compiled once, cached).
"""
from __future__ import annotations

import numpy as np

from tvmlite import limits
from tvmlite.errors import UnsupportedError
from tvmlite.ir.attrs import constant_value  # noqa: F401 - lives in the IR (Graph.const_value); importable here
from tvmlite.ops.registry import kernel


@kernel("Constant")
def constant(**attrs):
    return constant_value(attrs)


@kernel("If", needs_ctx=True)
def if_(ctx, cond, *, then_branch, else_branch):
    branch = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
    return tuple(ctx.run_subgraph(branch, {}, ctx.scope))


@kernel("Loop", needs_ctx=True)
def loop(ctx, max_trip=None, cond=None, *carried, body):
    n_carried = len(carried)
    trip = None if max_trip is None else int(np.asarray(max_trip).reshape(-1)[0])
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    names = body.inputs
    state = list(carried)
    scans: list[list] = []
    i = 0
    cap = limits.max_loop_iterations()
    if trip is not None and trip > cap and cond is None:  # nothing can stop it earlier
        limits.check_loop_iterations(trip, "trip count M")
    while keep_going and (trip is None or i < trip):
        if i >= cap:  # a condition that has not turned false yet
            limits.check_loop_iterations(i + 1, "condition still true")
        feeds = {names[0]: np.array(i, dtype=np.int64)}
        if len(names) > 1:
            feeds[names[1]] = np.array(keep_going, dtype=np.bool_)
        for n, v in zip(names[2:], state):
            feeds[n] = v
        outs = ctx.run_subgraph(body, feeds, ctx.scope)
        if cond is not None or max_trip is None:
            keep_going = bool(np.asarray(outs[0]).reshape(-1)[0])
        state = list(outs[1:1 + n_carried])
        scan_vals = outs[1 + n_carried:]
        if not scans:
            scans = [[] for _ in scan_vals]
        for lst, v in zip(scans, scan_vals):
            lst.append(v)
        i += 1
    results = list(state)
    n_scan = len(body.outputs) - 1 - n_carried
    for k in range(n_scan):
        if scans and scans[k]:
            results.append(np.stack(scans[k]))
        else:
            dtype = body.value(body.outputs[1 + n_carried + k]).dtype or np.float32
            results.append(np.zeros((0,), dtype=dtype))
    return tuple(results)


@kernel("Scan", since=9, needs_ctx=True)
def scan(ctx, *inputs, body, num_scan_inputs, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None):
    n_state = len(inputs) - num_scan_inputs
    state = list(inputs[:n_state])
    xs = list(inputs[n_state:])
    in_axes = scan_input_axes or [0] * num_scan_inputs
    in_dirs = scan_input_directions or [0] * num_scan_inputs
    xs = [np.moveaxis(x, ax % x.ndim, 0) for x, ax in zip(xs, in_axes)]
    xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs)]
    length = xs[0].shape[0] if xs else 0
    names = body.inputs
    n_scan_out = len(body.outputs) - n_state
    collected: list[list] = [[] for _ in range(n_scan_out)]
    for t in range(length):
        feeds = dict(zip(names[:n_state], state))
        feeds.update({n: x[t] for n, x in zip(names[n_state:], xs)})
        outs = ctx.run_subgraph(body, feeds, ctx.scope)
        state = list(outs[:n_state])
        for lst, v in zip(collected, outs[n_state:]):
            lst.append(v)
    out_axes = scan_output_axes or [0] * n_scan_out
    out_dirs = scan_output_directions or [0] * n_scan_out
    results = list(state)
    for k, lst in enumerate(collected):
        y = np.stack(lst[::-1] if out_dirs[k] else lst)
        results.append(np.moveaxis(y, 0, out_axes[k] % y.ndim))
    return tuple(results)


# ----------------------------------------------------------------------------------- sequences
def _index(position) -> int:
    return int(np.asarray(position).reshape(-1)[0])


@kernel("SequenceEmpty")
def sequence_empty(*, dtype=1):
    return []


@kernel("SequenceConstruct")
def sequence_construct(*tensors):
    return list(tensors)


@kernel("SequenceLength")
def sequence_length(seq):
    return np.array(len(seq), dtype=np.int64)


@kernel("SequenceAt")
def sequence_at(seq, position):
    return seq[_index(position)]


@kernel("SequenceInsert")
def sequence_insert(seq, tensor, position=None):
    out = list(seq)
    if position is None:
        out.append(tensor)
    else:
        p = _index(position)
        out.insert(p if p >= 0 else len(out) + p, tensor)
    return out


@kernel("SequenceErase")
def sequence_erase(seq, position=None):
    out = list(seq)
    del out[-1 if position is None else _index(position)]
    return out


@kernel("ConcatFromSequence")
def concat_from_sequence(seq, *, axis, new_axis=0):
    return np.stack(seq, axis=axis) if new_axis else np.concatenate(seq, axis=axis)


@kernel("SplitToSequence")
def split_to_sequence(x, split=None, *, axis=0, keepdims=1):
    axis = axis % x.ndim
    if split is None:
        parts = np.split(x, x.shape[axis], axis=axis)
        return [np.squeeze(p, axis=axis) for p in parts] if keepdims == 0 else parts
    split = np.asarray(split)
    if split.ndim == 0:
        step = int(split)
        idx = list(range(step, x.shape[axis], step))
    else:
        idx = list(np.cumsum(split)[:-1])
    return np.split(x, idx, axis=axis)


@kernel("Optional")
def optional(x=None, *, type=None):
    return x


@kernel("OptionalHasElement")
def optional_has_element(x=None):
    return np.array(x is not None, dtype=np.bool_)


@kernel("OptionalGetElement")
def optional_get_element(x):
    if x is None:
        raise UnsupportedError("OptionalGetElement on an empty optional")
    return x
