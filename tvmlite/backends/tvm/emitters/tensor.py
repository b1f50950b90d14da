"""Data movement: views (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout share their
input's buffer, no kernel), Concat, Transpose, Slice, Split. A channel shuffle (Reshape,
Transpose, Reshape) read only by depthwise convs makes no kernel: the convs read through it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmlite.backends.tvm.emitters import nhwc
from tvmlite.backends.tvm.emitters.registry import ONNX, emitter
from tvmlite.backends.tvm.kernels.defs import KERNEL_DTYPES
from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry

VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")


def kernel_dtype(low, name: str, what: str) -> str:
    """The dtype name of value ``name``; UnsupportedError when no kernel holds that dtype."""
    dt = low.dtype(name)
    if dt is None or dt.name not in KERNEL_DTYPES:
        raise UnsupportedError(f"{what} of dtype {dt}")
    return dt.name


def moved_dtype(low, node) -> str:
    """The one dtype of a data-movement node's first input and its outputs."""
    dt = kernel_dtype(low, node.inputs[0], "input")
    for o in node.outputs:
        if o and kernel_dtype(low, o, "output") != dt:
            raise UnsupportedError(f"output of dtype {low.dtype(o)} for an input of {dt}")
    return dt


@emitter(*VIEW_OPS, checks_dtype=True)
def emit_view(low, node) -> None:
    if node.op_type == "Dropout" and len([o for o in node.outputs if o and low.g.num_uses(o)]) > 1:
        raise UnsupportedError("Dropout mask output")
    out = node.outputs[0]
    if int(np.prod(low.shape(out))) != int(np.prod(low.shape(node.inputs[0]))):
        raise UnsupportedError("view changes the element count")
    kernel_dtype(low, node.inputs[0], "input")  # a view shares the buffer, of whichever dtype
    src = node.inputs[0]
    low.views[out] = low.views.get(src, src)


@dataclass
class ConcatInfo:
    """What a Concat's kernel was made from: enough to build kernels for parts of it
    (concat_views.py)."""
    axis: int
    inputs: list          # (value name or constant array, shape)
    out: str
    out_shape: tuple
    dtype: str


def contiguous(out_shape, axis: int) -> bool:
    """Whether each input of a Concat along ``axis`` is one contiguous block of its output."""
    axis = axis % len(out_shape)
    return int(np.prod(out_shape[:axis], dtype=np.int64)) == 1 and int(np.prod(out_shape)) > 0


def may_place(low, name: str) -> bool:
    """Whether value ``name`` could live in a Concat's output, as far as the walk knows so far
    (concat_views.place decides): not a constant, a graph input or a host call's output."""
    if low.const(name) is not None:
        return False
    root = low.views.get(name, name)
    return root not in low.graph_inputs and root not in low.host_made


@emitter("Concat", checks_dtype=True)
def emit_concat(low, node) -> None:
    axis = int(node.attrs["axis"])
    dt = moved_dtype(low, node)
    ins = []
    for n in node.inputs:
        c = low.const(n)
        if c is None and kernel_dtype(low, n, "input") != dt:
            raise UnsupportedError(f"inputs of dtypes {dt} and {low.dtype(n)}")
        ins.append((c.astype(dt) if c is not None else n, low.shape(n)))
    out_shape = low.shape(node.outputs[0])
    name = low.kernel_name(node)
    epi, out, labels = low.epilogue(node) if dt == "float32" else (None, node.outputs[0], [])
    if dt == "float32" and nhwc.emit_concat(low, node, epilogue=epi, final=out, labels=labels):
        return  # channels-last, a copy (emitters/nhwc.py)
    if low.concat_views and not labels and contiguous(out_shape, axis) and any(may_place(low, n) for n in node.inputs):
        # its inputs may be written into its output (concat_views.py). With an epilogue the copy
        # is no waste: its pass applies the elementwise ops, which would otherwise take a pass of
        # their own (ShuffleNet's Concat -> Relu: 1.03x slower as views, one thread)
        low.concats[name] = ConcatInfo(axis, ins, node.outputs[0], out_shape, dt)

    def make():
        from tvmlite.backends.tvm.kernels.tensor import concat

        return concat(name, ins, axis=axis, out_value=out, out_shape=out_shape, lanes=low.lanes, dtype=dt,
                      epilogue=epi)
    low.add(make, node, out, labels)


def _only_reader(low, value: str, op_type: str):
    """The one node reading ``value`` when it is an ONNX ``op_type`` and ``value`` is no graph output."""
    g = low.g
    if value in g.outputs or g.num_uses(value) != 1:
        return None
    (node,) = g.consumers(value)
    return node if node.op_type == op_type and node.domain in ONNX else None


def _is_view_reshape(low, node) -> bool:
    return (node is not None and node.op_type == "Reshape" and node.domain in ONNX and node.outputs[0] in low.shapes
            and node.inputs[0] in low.shapes)


def channel_shuffle(low, value: str):
    """(value shuffled, G) when ``value`` is ShuffleNet's channel shuffle of a 4-D value:
    Reshape [N, C, H, W] -> [N, G, C/G, H, W], Transpose (0, 2, 1, 3, 4), Reshape back to
    [N, C, H, W], each step read by the next only; else None."""
    g = low.g
    back = g.producer(value)
    if not _is_view_reshape(low, back) or len(low.shapes[value]) != 4:
        return None
    tr = g.producer(back.inputs[0])
    if tr is None or tr.op_type != "Transpose" or tr.domain not in ONNX or _only_reader(low, tr.outputs[0], "Reshape") is not back:
        return None
    if list(tr.attrs.get("perm") or ()) != [0, 2, 1, 3, 4]:
        return None
    split = g.producer(tr.inputs[0])
    if not _is_view_reshape(low, split) or _only_reader(low, split.outputs[0], "Transpose") is not tr:
        return None
    src = split.inputs[0]
    n, c, h, w = low.shapes[src] if len(low.shapes[src]) == 4 else (None,) * 4
    five = low.shapes[split.outputs[0]]
    if low.shapes[value] != (n, c, h, w) or len(five) != 5 or five[0] != n or five[3:] != (h, w):
        return None
    groups = five[1]
    if groups * five[2] != c or low.dtype(src) != np.float32:
        return None
    return src, int(groups)


def reads_shuffle(low, node) -> bool:
    """Whether Conv ``node`` is a depthwise conv the backend emits (`kernels.depthwise`), so it
    can read its input through a channel shuffle."""
    if node.op_type != "Conv" or node.domain not in ONNX or len(node.inputs) < 2:
        return False
    w = low.const(node.inputs[1])
    bias = low.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if w is None or w.ndim != 4 or w.shape[1] != 1 or (len(node.inputs) > 2 and node.inputs[2] and bias is None):
        return False
    xs = low.shapes.get(node.inputs[0], (0, 0))
    c = xs[1]
    if not (int(node.attrs.get("group", 1)) == c > 1 and w.shape[0] % c == 0):
        return False
    try:  # the conv's emitter must not refuse it later: its input would then have no buffer
        WindowGeometry.conv(node.attrs, xs, w.shape)
    except UnsupportedError:
        return False
    return True


def shuffle_read_by_depthwise(low, node) -> bool:
    """Whether Transpose ``node`` is the middle of a channel shuffle whose result only depthwise
    convs read: then it makes no kernel (each conv reads the shuffle's input, remapping channels)."""
    back = _only_reader(low, node.outputs[0], "Reshape")
    if back is None:
        return False
    out = back.outputs[0]
    readers = low.g.consumers(out)
    return (out not in low.g.outputs and bool(readers) and channel_shuffle(low, out) is not None
            and all(reads_shuffle(low, r) for r in readers))


@emitter("Transpose", checks_dtype=True)
def emit_transpose(low, node) -> None:
    dt = moved_dtype(low, node)
    if shuffle_read_by_depthwise(low, node):
        return
    x = node.inputs[0]
    xs = low.shape(x)
    perm = list(node.attrs.get("perm") or reversed(range(len(xs))))
    out = node.outputs[0]
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.tensor import transpose

        return transpose(name, x, xs, perm, out_value=out, lanes=low.lanes, dtype=dt)
    low.add(make, node, out)


@emitter("Slice", checks_dtype=True)
def emit_slice(low, node) -> None:
    dt = moved_dtype(low, node)
    x = node.inputs[0]
    xs = low.shape(x)
    if low.opset < 10:
        a = node.attrs
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes") or range(len(starts)))
        steps = [1] * len(starts)
    else:
        vals = [low.const(n) if n else None for n in list(node.inputs[1:]) + [""] * 3][:4]
        if vals[0] is None or vals[1] is None or any(
                n and v is None for n, v in zip(list(node.inputs[3:5]), vals[2:])):
            raise UnsupportedError("non-constant starts/ends/axes/steps")
        # a 0-d starts/ends (onnxruntime takes one) is a list of one
        starts, ends, axes, steps = ([int(v) for v in np.asarray(a).reshape(-1)] if a is not None else None
                                     for a in vals)
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise UnsupportedError("starts/ends/axes/steps of different lengths")
    first = [0] * len(xs)
    step_of = [1] * len(xs)
    out_shape = list(xs)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= len(xs)
        rng = range(*slice(st, en, sp).indices(xs[ax]))  # ONNX clamps like Python slicing
        first[ax], step_of[ax], out_shape[ax] = (rng.start if len(rng) else 0), sp, len(rng)
    out = node.outputs[0]
    if tuple(out_shape) != low.shape(out) or 0 in out_shape:
        raise UnsupportedError("empty slice")
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.tensor import strided_slice

        return strided_slice(name, x, xs, first, step_of, out_value=out, out_shape=out_shape, lanes=low.lanes,
                             dtype=dt)
    low.add(make, node, out)


def axis_of(node, shape) -> int:
    """``node``'s ``axis`` attribute as a non-negative axis of ``shape`` (UnsupportedError when 0-d
    or out of range)."""
    if not shape:
        raise UnsupportedError(f"{node.op_type} of a 0-d value")
    axis = int(node.attrs.get("axis", 0))
    if not -len(shape) <= axis < len(shape):
        raise UnsupportedError(f"axis {axis} out of range for rank {len(shape)}")
    return axis % len(shape)


@emitter("Split", checks_dtype=True)
def emit_split(low, node) -> None:
    """One strided-slice kernel per used output. The part sizes are read from the inferred output
    shapes, which already resolve every form (``split`` attribute or input, even parts,
    opset 18's ``num_outputs`` with a shorter last part)."""
    dt = moved_dtype(low, node)
    x = node.inputs[0]
    xs = low.shape(x)
    axis = axis_of(node, xs)
    parts = [low.shape(o)[axis] if o else None for o in node.outputs]
    if any(p is None for p in parts):
        raise UnsupportedError("an unnamed output: part sizes unknown")
    if sum(parts) != xs[axis]:
        raise UnsupportedError(f"parts {parts} do not cover axis {axis} of {list(xs)}")
    if 0 in parts:
        raise UnsupportedError("empty split part")
    start = 0
    for i, (out, size) in enumerate(zip(node.outputs, parts)):
        first = [0] * len(xs)
        first[axis] = start
        start += size
        out_shape = list(xs)
        out_shape[axis] = size
        if tuple(out_shape) != low.shape(out):
            raise UnsupportedError(f"output {i} shape {low.shape(out)} is not {out_shape}")
        if not low.g.num_uses(out) and out not in low.g.outputs:
            continue
        name = f"{low.kernel_name(node)}_{i}"

        def make(name=name, first=first, out=out, out_shape=out_shape):
            from tvmlite.backends.tvm.kernels.tensor import strided_slice

            return strided_slice(name, x, xs, first, [1] * len(xs), out_value=out, out_shape=out_shape,
                                 lanes=low.lanes, dtype=dt)
        low.add(make, node, out)
