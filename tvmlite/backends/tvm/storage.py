"""Intermediate buffers share storage when their lives do not overlap (build-time, by liveness).

Without this every value of a plan has its own buffer for the whole run: SqueezeNet held 11.7 MiB
of intermediates, ShuffleNet 14 MiB, against an 8 MiB L3, and a kernel's output went to memory
that had not been touched since the last run; densenet121 and PP-OCR's detector kept every
activation alive at once. `assign` places each plain intermediate buffer at an offset in one
"block" per dtype (a 1-D allocation): buffers whose memory overlaps have call intervals [first
call that touches it, last call that touches it] (closed: a call's inputs and outputs never share
storage) that do not overlap, and no stretch of kernels touches both (`units`). It records
``plan["blocks"]`` ([{"size": elements, "dtype": ...}]) and each tenant's ``"block"`` index and
``"offset"`` (elements, absent for 0); the loaded model makes each tenant a view of its block's
tensor at its offset (module.CompiledModel), so the kernels and the stretches (plan_func.py) see
addresses inside the block, and the artifact carries the placement ($TVMLITE_REUSE_BUFFERS=0 at
load: every buffer its own allocation again).

Only what is provably private to the kernel calls shares: a "temp" buffer that is no graph
output and not named anywhere in a host call's spec (host calls read and write buffers by name,
and control-flow bodies' runners too), counting its "slice" buffers (values inside a Concat's
output, concat_views.py) as itself: the Concat's output takes its place whole, its slices stay
views of it at their offsets. Control-flow bodies' own plans are left alone (their runners read
buffers by name).
"""
from __future__ import annotations

import numpy as np

from tvmlite.backends.tvm.plan_func import stretch_spans
from tvmlite.limits import env_flag


def reuses() -> bool:
    """$TVMLITE_REUSE_BUFFERS (default 1): whether a loaded plan's buffers share their blocks."""
    return env_flag("TVMLITE_REUSE_BUFFERS")


def _strings(obj, out: set) -> set:
    if isinstance(obj, str):
        out.add(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)
    return out


def _elements(b: dict) -> int:
    return int(np.prod(b["shape"], dtype=np.int64))


def lives(plan: dict) -> dict[str, tuple[int, int]]:
    """{buffer: (first, last) index into plan["calls"] of the kernel calls naming it or a "slice"
    buffer inside it} for every buffer that may share storage (see the module's docstring)."""
    buffers = plan["buffers"]

    def whole(n):  # a slice lives and dies with the Concat output it lies in
        b = buffers.get(n)
        return b["of"] if isinstance(b, dict) and b.get("kind") == "slice" else n

    private = {n for n, b in buffers.items() if b.get("kind") == "temp"}
    private -= {whole(o["buffer"]) for o in plan["outputs"] if "buffer" in o}
    private -= {whole(n) for n in _strings(plan.get("host", []), set())}
    spans: dict[str, tuple[int, int]] = {}
    for i, c in enumerate(plan["calls"]):
        for arg, _ in c.get("args", ()):
            n = whole(arg)
            if n in private:
                a, _b = spans.get(n, (i, i))
                spans[n] = (min(a, i), i)
    return spans


def units(calls: list) -> list[int]:
    """The compiled unit each call runs in, non-decreasing: its stretch's (plan_func.py) or its
    own (a host call). Two tenants whose memory overlaps never meet in one unit: TVM's LLVM code
    tags each buffer's loads and stores as their own alias type (TBAA, per buffer variable), so where one
    stretch inlines a kernel writing one tenant and another reading the next, LLVM may reorder
    them (a LayerNorm's ReduceMean, Sub, Pow, ReduceMean in one stretch read a stale block);
    between units, Python's separate calls order everything."""
    unit, out, ends = -1, [], {a: b for a, b in stretch_spans(calls)}
    end = 0
    for i in range(len(calls)):
        if i >= end:
            unit += 1
            end = ends.get(i, i + 1)
        out.append(unit)
    return out


ALIGN_BYTES = 64  # a tenant starts on a cache line (a block itself is allocated 64-byte aligned)


def _step(dtype: str) -> int:
    return max(1, ALIGN_BYTES // np.dtype(dtype).itemsize)


def assign(plan: dict) -> None:
    """Place the plan's private intermediate buffers in one block per dtype, each at an offset
    (elements, a multiple of `ALIGN_BYTES`) such that two tenants whose memory overlaps never
    live in the same unit. Largest first, each at the lowest offset clear of the tenants already
    placed whose units overlap its own (the greedy-by-size placement of TFLite's arena planner):
    PP-OCR det at 640x640 needs 36.5 MiB this way against 50.4 MiB for the first-fit blocks it
    replaces (one tenant per block at a time, each block as large as its largest tenant), and
    the intermediates alive in any one unit already take 35.9 MiB."""
    buffers = plan["buffers"]
    spans = lives(plan)
    unit = units(plan["calls"])
    placed: dict[str, list[tuple[int, int, int, int]]] = {}  # dtype: [(unit from, unit to, offset, end)]
    for n in sorted(spans, key=lambda n: (-_elements(buffers[n]), spans[n][0], n)):
        dt, size = buffers[n].get("dtype", "float32"), _elements(buffers[n])
        lo, hi = unit[spans[n][0]], unit[spans[n][1]]
        step, offset = _step(dt), 0
        for start, end in sorted((o, e) for a, b, o, e in placed.get(dt, ()) if a <= hi and lo <= b):
            if offset + size <= start:
                break
            offset = max(offset, -(-end // step) * step)
        placed.setdefault(dt, []).append((lo, hi, offset, offset + size))
        buffers[n]["block"] = list(placed).index(dt)
        if offset:
            buffers[n]["offset"] = offset
    if placed:
        plan["blocks"] = [{"size": max((e for *_, e in ts), default=0), "dtype": dt} for dt, ts in placed.items()]


def check(plan: dict) -> str | None:
    """What is wrong with a loaded plan's blocks (None: nothing): each tenant a private "temp"
    buffer of its block's dtype lying inside it at an aligned offset, each block exactly as
    large as the furthest end of its tenants, and no two tenants whose memory overlaps alive in
    the same call or stretch."""
    blocks = plan.get("blocks", [])
    if not isinstance(blocks, list) or not all(
            isinstance(b, dict) and isinstance(b.get("size"), int) and not isinstance(b["size"], bool)
            and b["size"] >= 0 and isinstance(b.get("dtype"), str) for b in blocks):
        return "'blocks' must be a list of {size, dtype}"
    spans = lives(plan)
    tenants: dict[int, list] = {}
    for n, b in plan["buffers"].items():
        if "block" not in b:
            continue
        k, off = b["block"], b.get("offset", 0)
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(blocks):
            return f"buffer {n!r} names no block of the plan ({k!r})"
        if n not in spans:
            return f"buffer {n!r} shares a block but is not a private intermediate of the kernel calls"
        if not isinstance(off, int) or isinstance(off, bool) or off < 0 or \
                b.get("dtype", "float32") != blocks[k]["dtype"] or off % _step(blocks[k]["dtype"]):
            return f"buffer {n!r}: offset {off!r} is not an aligned offset into block {k} ({blocks[k]['dtype']})"
        if off + _elements(b) > blocks[k]["size"]:
            return f"buffer {n!r} does not fit block {k} ({blocks[k]['dtype']} x {blocks[k]['size']})"
        tenants.setdefault(k, []).append((off, off + _elements(b), spans[n]))
    if sorted(tenants) != list(range(len(blocks))) or any(
            blocks[k]["size"] != max(e for _, e, _ in ts) for k, ts in tenants.items()):
        return "every block must be exactly as large as the furthest end of its tenants"
    unit = units(plan["calls"])
    for k, ts in tenants.items():
        ts.sort(key=lambda t: t[:2])
        for i, (_, end, (a0, a1)) in enumerate(ts):
            for start, _, (b0, b1) in ts[i + 1:]:
                if start >= end:
                    break
                if unit[a0] <= unit[b1] and unit[b0] <= unit[a1]:
                    return f"block {k} has two overlapping tenants alive in the same call or stretch"
    return None


def intermediate_bytes(plan: dict) -> tuple[int, int]:
    """(bytes of the plan's non-input, non-slice buffers each allocated alone, the same with the
    blocks shared): what `assign` saves."""
    alone = shared = 0
    for b in plan["buffers"].values():
        if b.get("kind") in ("input", "slice"):
            continue
        nbytes = _elements(b) * np.dtype(b.get("dtype", "float32")).itemsize
        alone += nbytes
        shared += 0 if "block" in b else nbytes
    shared += sum(blk["size"] * np.dtype(blk["dtype"]).itemsize for blk in plan.get("blocks", []))
    return alone, shared
