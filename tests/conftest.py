import os
import pathlib
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = pathlib.Path(os.environ.get("TVMLITE_CORPUS", ROOT.parent / "shared" / "corpus"))
MODELS = ROOT / "models"


def corpus_model(name: str) -> pathlib.Path:
    p = CORPUS / name
    if not p.exists():
        pytest.skip(f"corpus model {name} not found in {CORPUS} (set TVMLITE_CORPUS)")
    return p


@pytest.fixture(autouse=True)
def _quiet_ort():
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    yield


def pytest_configure(config):
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="onnx.backend.test.case")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
