"""tvmlite: a graph compiler over ONNX models."""
from tvmlite.errors import TvmliteError  # noqa: F401
from tvmlite.export import export_model, save  # noqa: F401
from tvmlite.frontend import load  # noqa: F401
from tvmlite.ir import Graph, Model, Node, Value  # noqa: F401

__version__ = "0.1.0"
