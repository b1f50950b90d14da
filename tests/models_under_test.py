"""The real models the end-to-end tests use: light_* models of the onnx wheel, the corpus, models/."""
from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import numpy_helper

from conftest import CORPUS, MODELS

from tvmlite.zoo import LIGHT_DIR, light_models, randomized_light  # noqa: F401  (re-exported for the tests)

LIGHT = light_models()
CORPUS_MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": {"x": (1, 3, 48, 192)},
    "ch_PP-OCRv4_rec_infer.onnx": {"x": (1, 3, 48, 320)},
    "ch_PP-OCRv4_det_infer.onnx": {"x": (1, 3, 320, 320)},
}


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
