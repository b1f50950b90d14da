from tvmlite.frontend.onnx_import import import_graph, import_model, load, read_model_file  # noqa: F401
