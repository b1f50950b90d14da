"""The models bench_backends.py times: the PP-OCR corpus, the example digits model and the light_*
models of the onnx wheel, each with realistic inputs (synthetic text images for the OCR models)."""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"


def corpus_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TVMLITE_CORPUS", ROOT.parent / "shared" / "corpus"))


def light_dir() -> pathlib.Path:
    import onnx

    return pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


# ---------------------------------------------------------------------------------------------
# models


@dataclasses.dataclass
class Case:
    key: str                 # short name used on the command line
    file: str                # file name
    where: str               # "corpus", "models" or "light"
    input_name: str
    shape: tuple             # batch-1 input shape
    max_batch: int | None = None   # larger requested batches are clamped to this (time)
    fixed_batch: bool = False      # the model's input has a fixed batch dimension of 1
    note: str = ""
    norm: str = ""                 # PP-OCR input normalization: "imagenet" or "half"

    @property
    def path(self) -> pathlib.Path:
        base = {"corpus": corpus_dir(), "models": MODELS_DIR, "light": light_dir()}[self.where]
        return base / self.file

    def available(self) -> bool:
        return self.path.exists()

    def effective_batch(self, batch: int) -> int:
        if self.fixed_batch:
            return 1
        if self.max_batch is not None:
            return min(batch, self.max_batch)
        return batch

    def source(self):
        """What the three backends load: a path, or a ModelProto for the randomized light models."""
        if self.where == "light":
            return randomized_light(self.path)
        return str(self.path)

    def feeds(self, batch: int) -> dict:
        shape = (batch,) + tuple(self.shape[1:])
        if self.key == "digits":
            data = np.load(MODELS_DIR / "digits_test.npz")["input"].astype(np.float32)
            reps = -(-batch // len(data))
            x = np.concatenate([data] * reps)[:batch] if reps > 1 else data[:batch]
            return {self.input_name: np.ascontiguousarray(x)}
        if self.norm:
            # PP-OCR models: a synthetic page of dark strokes on a light background, normalized as
            # the models expect (random noise gives det a near-zero output, useless as a check)
            return {self.input_name: synthetic_text_image(shape, seed=1234 + batch, norm=self.norm)}
        rng = np.random.default_rng(1234 + batch)
        return {self.input_name: rng.standard_normal(shape).astype(np.float32)}


CASES = [
    Case("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "corpus", "x", (1, 3, 48, 192), norm="half"),
    Case("rec", "ch_PP-OCRv4_rec_infer.onnx", "corpus", "x", (1, 3, 48, 320), norm="half"),
    Case("det", "ch_PP-OCRv4_det_infer.onnx", "corpus", "x", (1, 3, 640, 640), max_batch=2,
         note="larger batch clamped to 2 to stay within time", norm="imagenet"),
    Case("digits", "digits_cnn.onnx", "models", "input", (1, 1, 32, 32),
         note="real inputs from models/digits_test.npz"),
    Case("resnet50", "light_resnet50.onnx", "light", "gpu_0/data_0", (1, 3, 224, 224), fixed_batch=True,
         note="onnx-wheel light model, seeded random weights, fixed batch 1"),
    Case("vgg19", "light_vgg19.onnx", "light", "data_0", (1, 3, 224, 224), fixed_batch=True,
         note="onnx-wheel light model, seeded random weights, fixed batch 1"),
]
CASE_BY_KEY = {c.key: c for c in CASES}
GROUPS = {"all": ["cls", "rec", "det", "digits"], "corpus": ["cls", "rec", "det"],
          "light": ["resnet50", "vgg19"], "everything": [c.key for c in CASES]}


def resolve_models(names: list[str]) -> list[Case]:
    keys: list[str] = []
    for name in names:
        n = name.strip()
        if n in GROUPS:
            keys.extend(GROUPS[n])
            continue
        stem = n[:-5] if n.endswith(".onnx") else n
        match = [c.key for c in CASES if c.key == stem or c.file[:-5] == stem]
        if not match:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(CASE_BY_KEY)} "
                             f"or a group ({', '.join(GROUPS)})")
        keys.extend(match)
    seen: list[str] = []
    for k in keys:
        if k not in seen:
            seen.append(k)
    return [CASE_BY_KEY[k] for k in seen]


def synthetic_text_image(shape, seed: int, norm: str) -> np.ndarray:
    """NCHW float32: lines of dark stroke-like marks on a noisy light background, normalized with
    ImageNet mean/std ("imagenet", the det model) or as (x/255 - 0.5)/0.5 ("half", cls and rec)."""
    n, _, h, w = shape
    rng = np.random.default_rng(seed)
    img = np.full((n, h, w, 3), 235.0, np.float32) + rng.normal(0, 6, (n, h, w, 3)).astype(np.float32)
    for i in range(n):
        y = max(2, int(h * 0.05))
        while y < h - 14:
            lh = int(rng.integers(14, min(28, h - y) + 1))
            x, end = int(rng.integers(2, max(3, w // 4))), int(rng.integers(w // 2, w - 2))
            while x < end:
                cw = int(rng.integers(3, lh))
                if rng.random() < 0.8:
                    ink = rng.uniform(10, 60)
                    img[i, y:y + lh, x:x + max(2, cw // 3)] = ink
                    img[i, y:y + max(2, lh // 6), x:x + cw] = ink
                x += cw + int(rng.integers(2, 6))
            y += lh + int(rng.integers(8, 30))
    x = np.clip(img, 0.0, 255.0) / 255.0
    if norm == "imagenet":
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    else:
        x = (x - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def randomized_light(path: pathlib.Path, seed: int = 0):
    """A light_* model with seeded random weights (tvmlite.zoo), so the error check means something."""
    from tvmlite.zoo import randomized_light as make

    return make(path, seed)


# ---------------------------------------------------------------------------------------------
# backends
