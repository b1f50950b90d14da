"""MaxPool / AveragePool (2-D windows, geometry resolved by `WindowGeometry.pool`: auto_pad,
ceil_mode) and global pooling."""
from __future__ import annotations

from tvmlite.backends.tvm.emitters import nhwc
from tvmlite.backends.tvm.emitters.registry import emitter
from tvmlite.errors import UnsupportedError
from tvmlite.ops.geometry import WindowGeometry


def _pool(low, node, kind: str) -> None:
    a = node.attrs
    if len([o for o in node.outputs if o]) > 1:
        raise UnsupportedError("MaxPool Indices output")
    x = node.inputs[0]
    xs = low.shape(x)
    if len(xs) != 4:
        raise UnsupportedError(f"{len(xs) - 2}-D pooling")
    geom = WindowGeometry.pool(a, xs)
    out_shape = low.shape(node.outputs[0])
    if tuple(out_shape[2:]) != geom.out_spatial:
        raise UnsupportedError(f"output shape {out_shape} disagrees with the attributes")
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)
    cip = bool(a.get("count_include_pad", 0))
    if nhwc.emit_pool(low, node, geom, kind=kind, count_include_pad=cip, epilogue=epi, final=final, labels=labels):
        return  # channels-last in and out (emitters/nhwc.py)

    def make():
        from tvmlite.backends.tvm.kernels.pool import pool2d

        return pool2d(name, x, xs, geom, kind=kind, count_include_pad=cip, out_value=final, epilogue=epi,
                      lanes=low.lanes)
    low.add(make, node, final, labels)


@emitter("MaxPool")
def emit_maxpool(low, node) -> None:
    if node.attrs.get("storage_order", 0) and len(node.outputs) > 1:
        raise UnsupportedError("storage_order")
    _pool(low, node, "max")


@emitter("AveragePool")
def emit_averagepool(low, node) -> None:
    _pool(low, node, "avg")


def _global(low, node, kind: str) -> None:
    x = node.inputs[0]
    xs = low.shape(x)
    if len(xs) < 3:
        raise UnsupportedError("global pooling of rank < 3")
    epi, final, labels = low.epilogue(node)
    name = low.kernel_name(node)

    def make():
        from tvmlite.backends.tvm.kernels.pool import global_pool

        return global_pool(name, x, xs, kind=kind, out_value=final, epilogue=epi, lanes=low.lanes)
    low.add(make, node, final, labels)


@emitter("GlobalAveragePool")
def emit_globalaveragepool(low, node) -> None:
    _global(low, node, "avg")


@emitter("GlobalMaxPool")
def emit_globalmaxpool(low, node) -> None:
    _global(low, node, "max")
