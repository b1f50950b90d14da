"""Opset upgrade before quantization: the QDQ forms need newer opsets than many models carry."""
from __future__ import annotations

from tvmlite.errors import UnsupportedError
from tvmlite.export import export_model
from tvmlite.frontend import import_model
from tvmlite.ir.graph import Model
from tvmlite.quant.qdq import MIN_OPSET


def upgrade_opset(model: Model, version: int = MIN_OPSET) -> bool:
    """Convert the model to ``version`` (onnx.version_converter) when it is older; in place."""
    if model.opset >= version:
        return False
    import onnx.version_converter

    try:
        proto = onnx.version_converter.convert_version(export_model(model), version)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError/ValueError/...
        raise UnsupportedError(f"cannot convert the model from opset {model.opset} to {version}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    new = import_model(proto, check=False)
    new.external_data = model.external_data
    model.restore(new)
    return True
