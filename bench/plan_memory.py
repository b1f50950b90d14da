"""Intermediate bytes of a model's TVM plan with every buffer its own allocation and with the
blocks shared by liveness (storage.py): lowers and plans only, no LLVM build.

    PYTHONPATH=.:tests python bench/plan_memory.py light_squeezenet light_densenet121 \
        /work/shared/corpus/ch_PP-OCRv4_det_infer.onnx:1x3x640x640

MODEL as bench/tree_ab.py takes it (a light_* name, ``detector``, an .onnx path), an .onnx path
optionally with ``:1x3xHxW`` for its input shape.
"""
from __future__ import annotations

import sys

from tree_ab import load_model

from tvmlite.backends.tvm import storage
from tvmlite.backends.tvm.compile import static_inputs
from tvmlite.backends.tvm.kernels.target import vector_lanes
from tvmlite.backends.tvm.lower import lower
from tvmlite.backends.tvm.module import plan_of
from tvmlite.frontend.onnx_import import import_model


def main(specs: list[str]) -> None:
    for spec in specs:
        path, _, dims = spec.partition(":")
        m, name, shape = load_model(path)
        if dims:
            shape = tuple(int(d) for d in dims.split("x"))
        model, shapes = static_inputs(import_model(m), {name: shape})
        plan, _ = plan_of(lower(model, shapes, vector_lanes()))
        alone, shared = storage.intermediate_bytes(plan)
        tenants = sum("block" in b for b in plan["buffers"].values())
        print(f"{spec}: intermediates {alone / 2**20:.2f} MiB alone -> {shared / 2**20:.2f} MiB shared "
              f"({shared / alone:.2f}x; {tenants} buffers in {len(plan.get('blocks', []))} blocks)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
