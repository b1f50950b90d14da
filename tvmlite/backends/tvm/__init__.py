"""TVM backend: per op a TE compute and an s_tir schedule, the whole graph built into one LLVM
module for the host CPU.

    from tvmlite.backends.tvm import compile_model
    cm = compile_model(model, {"input": (1, 1, 32, 32)})   # cached by graph hash
    cm.host_ops                                             # ops run as host calls, and why
    outputs = cm.run(feeds)
    cm.save("model.so")                                     # + model.so.json, model.so.npz
    load_module("model.so").run(feeds)

TVM is imported only when one of these is called (`import tvm` takes seconds).
"""
from __future__ import annotations


def compile_model(model, input_shapes=None, **kw):
    from tvmlite.backends.tvm.compile import compile_model as _compile

    return _compile(model, input_shapes, **kw)


def load_module(path, pool=None):
    """A library from `tvmlite build`; a bucketed build (NAME.so.buckets.json beside it) runs any
    shape inside its ranges, each bucket loaded on its first use, all sharing one copy of the
    constants. ``pool``: see module.load_module."""
    import os

    from tvmlite.backends.tvm.module import load_module as _load

    if os.path.exists(path + ".buckets.json"):
        from tvmlite.backends.tvm import buckets as bk

        return bk.BucketedModel(path, bk.read_manifest(path), _load)
    return _load(path, pool)


def emit_tvmscript(model, out_dir, input_shapes=None, **kw):
    from tvmlite.backends.tvm.emit import emit_tvmscript as _emit

    return _emit(model, out_dir, input_shapes, **kw)


def unsupported_ops(model, input_shapes=None) -> list[str]:
    """Ops the backend has no kernel for, which a build runs as host calls ('Op (reason) xN');
    empty when every node becomes a TVM kernel (what ``strict=True`` requires)."""
    from tvmlite.backends.tvm.lower import unsupported_ops as _unsupported
    from tvmlite.backends.tvm.compile import static_inputs

    model, shapes = static_inputs(model, input_shapes)
    return _unsupported(model, shapes)
