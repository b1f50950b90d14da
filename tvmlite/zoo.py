"""Real models that ship inside installed packages, for tests and benchmarks.

The onnx wheel carries ``onnx/backend/test/data/light/light_*.onnx`` (ResNet-50, VGG-19, DenseNet-121,
…; opset 9) whose weights are ConstantOfShape(0.02), so every output is a constant: they test
topology and op coverage, not numerics. ``randomized_light`` swaps in seeded random weights.
"""
from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_models() -> list[str]:
    return sorted(p.name for p in LIGHT_DIR.glob("light_*.onnx"))


def randomized_light(name_or_path, seed: int = 0) -> onnx.ModelProto:
    """A light_* model with its constant-0.02 weights replaced by seeded random Constants: He-scaled
    for tensors of rank >= 2, uniform in [0.5, 1.5] for 1-D ones (BatchNorm variances stay positive)."""
    path = pathlib.Path(name_or_path)
    model = onnx.load(path if path.is_absolute() or path.exists() else LIGHT_DIR / path)
    rng = np.random.default_rng(seed)
    shapes = {i.name: np.asarray(numpy_helper.to_array(i)) for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) >= 2:
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
            else:
                arr = rng.uniform(0.5, 1.5, shape)
            t = numpy_helper.from_array(arr.astype(np.float32), node.output[0])
            nodes.append(onnx.helper.make_node("Constant", [], [node.output[0]], value=t))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
