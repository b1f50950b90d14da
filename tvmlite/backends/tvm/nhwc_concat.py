"""Channel Concats of channels-last values without copies: each input's kernel writes its pixels'
channels straight into their run of the Concat's NHWC output, and the Concat's kernel goes.

In NCHW an input of a channel Concat is one contiguous block of its output (concat_views.py); in
NHWC it is a run of C_i channels in every pixel of C, a stride of C between pixels. The kernel
making the input (a channels-last conv, pool or Winograd output transform, kernels/conv_nhwc.py,
kernels/nhwc_moves.py, kernels/lowered.py) writes it through a 1-D view instead:
``sch.transform_layout`` maps its output index (pixel, channel) to ``pixel * C + channel``, so the
buffer it writes is ``(pixels - 1) * C + C_i`` elements long and starts at the input's channel
offset in the Concat's buffer (a "slice" buffer of the plan, `Lowered.slices`, as concat_views.py
places NCHW inputs). The vector stores of a pixel's channels stay vector stores.

A Concat is placed whole or not at all: every input stored NHWC, made by one kernel with an
"epilogue" block writing it, read by nothing but this Concat (a transpose that `nhwc.materialize`
added reads it too, a host call, a view: then the copy stays), no input twice, no nested NHWC
Concat, and no elementwise ops on the copy. A Concat not placed keeps its copy kernel
(`nhwc_moves.concat_nhwc`). Off with TVMLITE_CONCAT_VIEWS=0, as the NCHW views.
"""
from __future__ import annotations

import collections

import numpy as np


def place(low, lowered) -> None:
    """Place the inputs of each channels-last Concat recorded in ``low.nhwc_concats`` (kernel name
    -> (inputs as (buffer, logical shape, stored NHWC), output buffer, logical output shape, has an
    epilogue)) in its output, dropping its kernel from ``lowered.order`` (a `lower.Lowered`)."""
    from tvmlite.backends.tvm.lower import HostSegment

    if not (low.nhwc_concats and low.concat_views):
        return
    kernels = [e for e in lowered.order if not isinstance(e, HostSegment)]
    writers, reads = collections.defaultdict(list), collections.Counter()
    for kd in kernels:
        for p in kd.params:
            if p.kind == "output":
                writers[p.name].append(kd)
            elif p.kind == "input":
                reads[p.name] += 1
    host_read = {v for e in lowered.order if isinstance(e, HostSegment) for v in e.inputs}
    viewed = set(lowered.views.values())
    dropped = set()
    for kd in kernels:
        info = low.nhwc_concats.get(kd.name)
        if info is None:
            continue
        ins, out, out_shape, has_epilogue = info
        bufs = [b for b, _, stored_nhwc in ins if stored_nhwc]
        if has_epilogue or len(bufs) != len(ins) or len(set(bufs)) != len(bufs) or out in lowered.slices:
            continue
        if not all(len(writers[b]) == 1 and reads[b] == 1 and b not in host_read and b not in viewed
                   and b not in lowered.slices and writers[b][0].name not in low.nhwc_concats for b in bufs):
            continue
        total = int(out_shape[1])
        strided = [_strided_output(writers[b][0], b, int(shape[1]), total) for b, shape, _ in ins]
        if any(s is None for s in strided):
            continue
        off = 0
        for (b, shape, _), (producer, func, index, length) in zip(ins, strided):
            producer.func = func
            producer.params[index].shape = (length,)
            lowered.shapes[b] = (length,)
            lowered.slices[b] = (out, off)
            off += int(shape[1])
        dropped.add(kd.name)
    if dropped:
        lowered.order = [e for e in lowered.order if isinstance(e, HostSegment) or e.name not in dropped]


def _strided_output(kd, buf: str, channels: int, total: int):
    """(kernel, its PrimFunc writing ``buf`` (``channels`` per pixel, contiguous in its own
    output) as a 1-D view with ``total`` channels between pixels, the parameter's index, the
    view's length), or None when the kernel has no single "epilogue" block writing it."""
    from tvmlite.backends.tvm.kernels.target import import_tvm

    tvm = import_tvm()
    index = next((i for i, p in enumerate(kd.params) if p.kind == "output" and p.name == buf), None)
    if index is None or sum(p.kind == "output" for p in kd.params) != 1:
        return None
    shape = [int(d) for d in kd.func.params[index].shape]
    k = len(shape)
    while k > 0 and int(np.prod(shape[k - 1:])) <= channels:  # the trailing dims of a pixel's channels
        k -= 1
    if int(np.prod(shape[k:])) != channels:
        return None
    pixels = int(np.prod(shape[:k]))

    def flat(ix, dims):
        v = 0
        for i, d in zip(ix, dims):
            v = v * d + i
        return v

    try:
        sch = tvm.s_tir.Schedule(kd.func)
        blk = sch.get_sblock("epilogue")
        writes = sch.get(blk).writes
        if len(writes) != 1 or not writes[0].source.same_as(kd.func.params[index]):
            return None
        sch.transform_layout(blk, ("write", 0), lambda *ix: [flat(ix[:k], shape[:k]) * total + flat(ix[k:], shape[k:])],
                             assume_injective_transform=True)
    except Exception:  # noqa: BLE001 - a schedule TVM cannot rewrite keeps its copy
        return None
    return kd, sch.mod["main"], index, (pixels - 1) * total + channels
