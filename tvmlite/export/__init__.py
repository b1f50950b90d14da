from tvmlite.export.onnx_export import export_graph, export_model, save  # noqa: F401
