"""NumPy backend: ``compile_model(model).run(feeds)``."""
from tvmlite.backends.numpy.plan import Plan, compile_model, missing_kernels  # noqa: F401
from tvmlite.frontend import load


def run_model(model, feeds: dict) -> dict:
    """Run a tvmlite Model or an onnx ModelProto once; returns {output name: array}."""
    if not hasattr(model, "graph") or not hasattr(model, "opsets"):
        model = load(model)
    plan = compile_model(model)
    return dict(zip(plan.output_names, plan.run(feeds)))
