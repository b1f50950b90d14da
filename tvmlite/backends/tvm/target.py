"""The host target, TVM's thread pool and vector lanes: the module is `kernels/target.py` (the
kernels' schedules read the host's thread count, and kernels/ does not import this folder); the
names stay importable from here."""
from tvmlite.backends.tvm.kernels.target import host_cpu, host_target, host_threads, import_tvm, vector_lanes

__all__ = ["host_cpu", "host_target", "host_threads", "import_tvm", "vector_lanes"]
