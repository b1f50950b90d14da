"""The real models the end-to-end tests use: light_* models of the onnx wheel, the corpus, models/."""
from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import numpy_helper

from conftest import CORPUS, MODELS

LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT = sorted(p.name for p in LIGHT_DIR.glob("light_*.onnx"))
CORPUS_MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": {"x": (1, 3, 48, 192)},
    "ch_PP-OCRv4_rec_infer.onnx": {"x": (1, 3, 48, 320)},
    "ch_PP-OCRv4_det_infer.onnx": {"x": (1, 3, 320, 320)},
}


def randomized_light(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light_* model with its constant-0.02 weights replaced by seeded random ones.

    The light models fill weights with ConstantOfShape(0.02), so every output is a constant; random
    weights (He-scaled for >= 2-D tensors, in [0.5, 1.5] for 1-D ones so BatchNorm variances stay
    positive) make the comparison numeric.
    """
    model = onnx.load(LIGHT_DIR / name)
    rng = np.random.default_rng(seed)
    shapes = {i.name: np.asarray(numpy_helper.to_array(i)) for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            else:
                arr = rng.uniform(0.5, 1.5, shape)
            t = numpy_helper.from_array(arr.astype(np.float32), node.output[0])
            nodes.append(onnx.helper.make_node("Constant", [], [node.output[0]], value=t))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def light_input(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def example_model() -> pathlib.Path:
    return MODELS / "digits_cnn.onnx"


def frozen_light(name: str, seed: int = 0) -> tuple[onnx.ModelProto, str, np.ndarray]:
    """A randomized light_* model whose extra inputs (BatchNorm scales and biases, which the
    light models take as inputs) are fixed to `light_input`'s values as Constants: a model with
    one image input, as deployed. Returns (model, image input name, image)."""
    model = randomized_light(name, seed)
    feeds = light_input(model, seed)
    image = next(i.name for i in model.graph.input if i.name in feeds
                 and len(i.type.tensor_type.shape.dim) == 4 and i.type.tensor_type.shape.dim[1].dim_value == 3)
    x = feeds.pop(image)
    nodes = [onnx.helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in feeds.items()]
    nodes += list(model.graph.node)
    keep = [i for i in model.graph.input if i.name not in feeds]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model, image, x
