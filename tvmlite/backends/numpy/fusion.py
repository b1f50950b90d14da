"""Pointwise fusion for the NumPy plan: runs of consecutive pointwise steps become one step.

After the plan's first run records each value's shape and dtype, a run qualifies when every value in
it has the run's output shape and dtype, outside operands broadcast into it, and every value but the
last is read only inside the run. It may start after a head step whose op has ``fresh_output`` (its
result is a new array the group can write into: Conv, ConvTranspose, MatMul, Gemm, Sigmoid) or on
its own (one new output array). Each step runs as its op's ``pointwise`` description (NumPy calls
with ``out=``, same float values, same order), so results are bit-identical to the unfused steps;
shapes or dtypes that do not fit at run time fall back to the steps one by one.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np


def fuse_steps(steps: list, shapes: dict, const_of_slot: dict, keep: set) -> list:
    """Replace runs of pointwise steps (after a Conv or on their own) by :class:`_Fused` steps,
    grouped by the (shape, dtype) each slot had in a run (``shapes``). A group's values all
    have its output's shape, and all but the last are read only inside the group."""
    cos = const_of_slot
    readers: dict = collections.Counter()
    for st in steps:
        for s in st.ins:
            readers[s] += 1
        for _, s in st.implicit:
            readers[s] += 1

    def pw_ok(t, S):
        if t.needs_ctx or t.implicit or len(t.outs) != 1 or t.outs[0] < 0:
            return False
        desc = t.op.pointwise if t.op is not None else None
        if desc is None or S is None or shapes.get(t.outs[0]) != S:
            return False
        consts = [cos.get(s) if s >= 0 else None for s in t.ins]
        try:
            ops = desc(consts, dict(t.attrs), S[1], len(S[0]))
        except Exception:
            return False
        # the first call must read every input computed at run time
        return bool(ops) and all(s < 0 or s in cos or k in ops[0][1]
                                 for k, s in enumerate(t.ins))

    out = []
    i = 0
    while i < len(steps):
        st = steps[i]
        S = shapes.get(st.outs[0]) if st.outs and st.outs[0] >= 0 else None
        head = st if (_fresh_output(st) and len(st.outs) == 1 and not st.needs_ctx
                      and S is not None) else None
        members = [] if head is not None else ([st] if pw_ok(st, S) else None)
        if members is None:
            out.append(st)
            i += 1
            continue
        latest = st.outs[0]
        values = {latest}
        j = i + 1
        while j < len(steps):
            t = steps[j]
            if latest not in t.ins or not pw_ok(t, S):
                break
            if not all(s < 0 or s in values or s in cos or (
                    shapes.get(s) is not None and shapes[s][1] == S[1]
                    and _bcast_within(shapes[s][0], S[0])) for s in t.ins):
                break
            members.append(t)
            latest = t.outs[0]
            values.add(latest)
            j += 1
        # longest prefix whose inner values are read only inside it
        group = None
        lo = 1 if head is not None else 2
        for n in range(len(members), lo - 1, -1):
            part = ([head] if head is not None else []) + members[:n]
            inner = [t.outs[0] for t in part[:-1]]
            inside = collections.Counter(s for t in part for s in t.ins)
            if all(v not in keep and readers[v] == inside[v] for v in inner):
                group = members[:n]
                break
        if group is None:
            out.append(st)
            i += 1
            continue
        f = _Fused(head, group, cos)
        ins = (tuple(head.ins) if head is not None else ()) + tuple(f.ext)
        out.append(dataclasses.replace(st, ins=ins, outs=(group[-1].outs[0],), attrs={}, free=(),
                                       needs_ctx=False, implicit=(), call=f, op=None))
        i += len(group) + (1 if head is not None else 0)
    return out


def _bcast_within(shape, yshape) -> bool:
    """``shape`` broadcasts to ``yshape`` without growing it."""
    if len(shape) > len(yshape):
        return False
    return all(s == 1 or s == y for s, y in zip(shape[::-1], yshape[::-1]))


def _fresh_output(st) -> bool:
    """The step's kernel (or its prepared callable) returns a new array nobody else holds."""
    return st.op is not None and st.op.fresh_output


class _Fused:
    """Consecutive pointwise steps, after an optional head step whose output is a fresh array,
    run as one step, in place.

    Every group value has the group's output shape; operands from outside (constants, tensors
    computed earlier) broadcast into it. Each pointwise step runs as its kernel's ``pointwise``
    description: NumPy calls with ``out=`` on the same float values in the same order as the
    kernel, so the results are bit-identical to the unfused steps, but there is no new array per
    step: values live in the output array (the head's output, else one new array) and a few
    scratch arrays, assigned once here (an input that dies at a step lends its buffer to the
    step's output).
    """

    def __init__(self, head, psteps, const_of_slot):
        self.head = head
        self.psteps = psteps
        self.nh = len(head.ins) if head is not None else 0
        vals = {}  # slot -> value index
        if head is not None:
            vals[head.outs[0]] = 0
        first = len(vals)
        for j, st in enumerate(psteps):
            vals[st.outs[0]] = first + j
        ext: list = []
        srcs = []  # per step, per input: ('v', value) | ('e', ext index) | ('c', array) | None
        last_read = {v: -1 for v in vals.values()}
        for j, st in enumerate(psteps):
            row = []
            for s in st.ins:
                if s < 0:
                    row.append(None)
                elif s in vals and vals[s] < first + j:
                    row.append(("v", vals[s]))
                    last_read[vals[s]] = j
                elif s in const_of_slot:
                    row.append(("c", const_of_slot[s]))
                else:
                    if s not in ext:
                        ext.append(s)
                    row.append(("e", ext.index(s)))
            srcs.append(row)
        self.ext = ext
        self.srcs = srcs
        self.consts = [[const_of_slot.get(s) if s >= 0 else None for s in st.ins] for st in psteps]
        # buffers: 0 = the output array, 1.. = scratch arrays
        holder = {0: 0 if head is not None else None}  # buffer -> value it holds
        out_buf = []
        for j in range(len(psteps)):
            if j == len(psteps) - 1:
                b = 0
            else:
                dying = [b for b, v in holder.items() if v is not None and last_read[v] == j]
                free = [b for b in sorted(holder) if holder[b] is None or last_read[holder[b]] < j]
                cand = dying or free
                b = cand[0] if cand else len(holder)
            holder[b] = first + j
            out_buf.append(b)
        self.out_buf = out_buf
        self.val_buf = {0: 0} if head is not None else {}
        for j, b in enumerate(out_buf):
            self.val_buf[first + j] = b
        self.ntemps = len(holder) - 1
        self._progs: dict = {}
        self._binds: dict = {}

    def program(self, dt, ndim):
        """[(func, operand specs, out buffer)] for values of dtype ``dt`` and rank ``ndim``; None
        when a kernel has no pointwise form for them. Operand specs: ('b', buffer), ('e', ext
        index), ('k', constant array or Python float)."""
        key = (dt, ndim)
        if key in self._progs:
            return self._progs[key]
        prog = []
        ok = dt.kind == "f" and dt.itemsize >= 4
        for j, st in enumerate(self.psteps if ok else ()):
            desc = st.op.pointwise(self.consts[j], dict(st.attrs), dt, ndim)
            if not desc:
                ok = False
                break
            ob = self.out_buf[j]
            used = set()
            for m, (func, operands) in enumerate(desc):
                specs = []
                for o in operands:
                    if o is None:  # the previous call's result
                        ok = ok and m > 0
                        specs.append(("b", ob))
                    elif isinstance(o, int) and not isinstance(o, bool):  # the step's input o
                        src = self.srcs[j][o] if m == 0 and o < len(self.srcs[j]) else None
                        if src is None:
                            ok = False
                            break
                        used.add(o)
                        if src[0] == "v":
                            specs.append(("b", self.val_buf[src[1]]))
                        elif src[0] == "e":
                            specs.append(("e", src[1]))
                        elif isinstance(src[1], np.ndarray) and src[1].dtype == dt:
                            specs.append(("k", src[1]))
                        else:
                            ok = False
                    elif isinstance(o, np.ndarray) and o.dtype == dt or isinstance(o, float):
                        specs.append(("k", o))
                    else:
                        ok = False
                    if not ok:
                        break
                if not ok:
                    break
                prog.append((func, tuple(specs), ob))
            # every input computed at run time must be read
            if ok and any(src is not None and src[0] != "c" and i not in used
                          for i, src in enumerate(self.srcs[j])):
                ok = False
            if not ok:
                break
        prog = prog if ok else None
        self._progs[key] = prog
        return prog

    def bind(self, yshape, dt, ext):
        """The program for output shape ``yshape`` / dtype ``dt`` on these outside tensors, or None
        when the group cannot run fused on them."""
        try:
            key = (yshape, dt) + tuple([(e.shape, e.dtype) for e in ext])
        except AttributeError:  # an outside value that is not an array
            return None
        prog = self._binds.get(key, False)
        if prog is False:
            prog = self._binds[key] = self._make_prog(tuple(yshape), np.dtype(dt), ext)
        return prog

    def _make_prog(self, yshape, dt, ext):
        prog = self.program(dt, len(yshape))
        if prog is None or not all(type(e) is np.ndarray and e.dtype == dt and
                                   _bcast_within(e.shape, yshape) for e in ext):
            return None
        if not all(_bcast_within(np.shape(s[1]), yshape) for _, specs, _ in prog for s in specs
                   if s[0] == "k"):
            return None
        return prog

    def unfused(self, y, ext):
        """The group's steps one by one (``y``: the head's output, if any)."""
        vals = [] if y is None else [y]
        for j, st in enumerate(self.psteps):
            args = [None if s is None else vals[s[1]] if s[0] == "v" else ext[s[1]]
                    if s[0] == "e" else s[1] for s in self.srcs[j]]
            while args and args[-1] is None:
                args.pop()
            vals.append(st.call(*args))
        return vals[-1]

    def _apply(self, prog, y, ext):
        bufs = [y] + [np.empty(y.shape, y.dtype) for _ in range(self.ntemps)]
        for func, specs, ob in prog:
            func(*[bufs[s[1]] if s[0] == "b" else ext[s[1]] if s[0] == "e" else s[1]
                   for s in specs], out=bufs[ob])
        return y

    def __call__(self, *args):
        # (run inside Plan.run's errstate)
        ext = args[self.nh:]
        if self.head is not None:
            y = self.head.call(*args[:self.nh])
            prog = self.bind(y.shape, y.dtype, ext) if type(y) is np.ndarray else None
            return self.unfused(y, ext) if prog is None else self._apply(prog, y, ext)
        try:
            yshape = np.broadcast_shapes(*[e.shape for e in ext])
            prog = self.bind(yshape, ext[0].dtype, ext)
        except (AttributeError, ValueError):
            prog = None
        if prog is None:
            return self.unfused(None, ext)
        return self._apply(prog, np.empty(yshape, ext[0].dtype), ext)
