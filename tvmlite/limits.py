"""Resource limits: the one place that says how big a tensor, a loop or a graph tvmlite accepts.

Everything that could otherwise allocate without bound or run until killed checks these numbers
*before* it allocates or loops, and refuses with a :class:`LimitError` that names the node, tensor
or file and the environment variable that raises the limit. Each limit can be changed with an
environment variable (read when the limit is checked, so tests and long-lived processes can change
it) or, in Python, with :func:`override`.

=============================  ==========================  ===============================
limit                          environment variable        default
=============================  ==========================  ===============================
elements of one tensor         TVMLITE_MAX_TENSOR_ELEMENTS 2**31 (2,147,483,648)
bytes of one tensor            TVMLITE_MAX_TENSOR_BYTES    8 GiB
rank of one tensor             TVMLITE_MAX_RANK            32 (NumPy stops at 64)
iterations of one Loop         TVMLITE_MAX_LOOP_ITERATIONS 10,000,000
=============================  ==========================  ===============================

The defaults are far above any model in the corpus (PP-OCR det's largest tensor has 1.5 M
elements; its Loops have none) and below what a 2-core, 16 GiB machine survives: a folded
ConstantOfShape of 2**33 float32 elements is 32 GiB. A Loop iteration costs at least ~20 us in the
NumPy backend, so 10 M iterations are a few minutes, not days (a trip count of 10**12 is 230 days).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

from tvmlite.errors import TvmliteError


class LimitError(TvmliteError):
    """A tensor, loop or graph beyond one of tvmlite's resource limits."""


_DEFAULTS = {
    "TVMLITE_MAX_TENSOR_ELEMENTS": 2**31,
    "TVMLITE_MAX_TENSOR_BYTES": 8 * 2**30,
    "TVMLITE_MAX_RANK": 32,
    "TVMLITE_MAX_LOOP_ITERATIONS": 10_000_000,
}
_overrides: dict[str, int] = {}


def _get(var: str) -> int:
    if var in _overrides:
        return _overrides[var]
    return env_int(var, _DEFAULTS[var], nonnegative=True)


def env_int(var: str, default: int, *, nonnegative: bool = False) -> int:
    """The integer environment variable ``var`` (``default`` when unset or blank): a value that is
    no integer (or, with ``nonnegative``, a negative one) is one clear LimitError naming it, never a
    bare ValueError (the CLI's "internal error")."""
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.replace("_", ""), 0)
    except ValueError:
        raise LimitError(f"environment variable {var}={raw!r} is not an integer") from None
    if nonnegative and value < 0:
        raise LimitError(f"environment variable {var}={raw!r} must not be negative")
    return value


def env_flag(var: str, default: bool = True) -> bool:
    """The on/off environment variable ``var``: 1 on, 0 off, ``default`` when unset or blank; any
    other value is one clear LimitError naming it (a typo must not leave a switch silently on)."""
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    if raw.strip() not in ("0", "1"):
        raise LimitError(f"environment variable {var}={raw!r} must be 0 or 1")
    return raw.strip() == "1"


def max_tensor_elements() -> int:
    return _get("TVMLITE_MAX_TENSOR_ELEMENTS")


def max_tensor_bytes() -> int:
    return _get("TVMLITE_MAX_TENSOR_BYTES")


def max_rank() -> int:
    return _get("TVMLITE_MAX_RANK")


def max_loop_iterations() -> int:
    return _get("TVMLITE_MAX_LOOP_ITERATIONS")


@contextlib.contextmanager
def override(**limits: int):
    """Change limits for a block: ``override(max_loop_iterations=100)`` (names as the functions)."""
    saved = dict(_overrides)
    try:
        for name, value in limits.items():
            var = "TVMLITE_" + name.upper()
            if var not in _DEFAULTS:
                raise ValueError(f"unknown limit {name!r}")
            _overrides[var] = int(value)
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


def _itemsize(dtype) -> int:
    import numpy as np

    try:
        size = np.dtype(dtype).itemsize
    except TypeError:
        return 1
    return size or 1  # object/str arrays: count elements only


def check_tensor(shape, dtype, where: str) -> int:
    """Refuse a tensor of ``shape`` (ints) and ``dtype`` before allocating it; returns its element
    count. ``where`` says what it is, e.g. "initializer 'w'" or "node 'fold' (ConstantOfShape)"."""
    dims = [int(d) for d in shape]
    if len(dims) > max_rank():
        raise LimitError(f"{where}: rank {len(dims)} is above the limit of {max_rank()} "
                         f"(TVMLITE_MAX_RANK)")
    if any(d < 0 for d in dims):
        raise LimitError(f"{where}: negative dimension in shape {dims}")
    n = math.prod(dims)
    if n > max_tensor_elements():
        raise LimitError(f"{where}: {n:,} elements (shape {dims}) is above the limit of "
                         f"{max_tensor_elements():,} (TVMLITE_MAX_TENSOR_ELEMENTS)")
    nbytes = n * _itemsize(dtype)
    if nbytes > max_tensor_bytes():
        raise LimitError(f"{where}: {nbytes:,} bytes (shape {dims}) is above the limit of "
                         f"{max_tensor_bytes():,} (TVMLITE_MAX_TENSOR_BYTES)")
    return n


def check_loop_iterations(trip_count: int, where: str) -> None:
    """Refuse a Loop that would run ``trip_count`` times (or that has run that many)."""
    if trip_count > max_loop_iterations():
        raise LimitError(f"{where}: {trip_count:,} iterations is above the limit of "
                         f"{max_loop_iterations():,} (TVMLITE_MAX_LOOP_ITERATIONS)")


# ------------------------------------------------------------------------------------- BLAS threads
_BLAS = (None, -1)  # (threadpoolctl controller or False when not available, len(sys.modules) then)


def blas_limit(n: int | None):
    """A context that caps NumPy's BLAS threads at ``n`` (a no-op when n is None or without
    threadpoolctl). The NumPy backend's plans and every pass run (passes.base.Pass.__call__) use one
    thread: OpenBLAS's second thread spin-waits between calls, and on these 2-core machines beside
    other jobs that made small GEMMs 30-50x slower and lowrank's eigendecompositions 10-40x
    (`np.linalg.eigh` of 128x128 at load 13: 0.55 s with two threads, 0.013 s with one).
    The controller (~2 ms to make: it scans the loaded libraries) is made again only after an import:
    SciPy brings its own OpenBLAS, which a controller made before it would leave alone."""
    global _BLAS
    if n is None:
        return contextlib.nullcontext()
    ctl, seen = _BLAS
    if ctl is None or (ctl is not False and seen != len(sys.modules)):
        try:
            from threadpoolctl import ThreadpoolController

            ctl = ThreadpoolController()
        except Exception:  # not installed, or no BLAS found: leave threads alone
            ctl = False
        _BLAS = (ctl, len(sys.modules))
    if ctl is False:
        return contextlib.nullcontext()
    return ctl.limit(limits=n, user_api="blas")


# ------------------------------------------------------------------------------------- huge pages
@contextlib.contextmanager
def small_pages():
    """NumPy's arrays made inside take ordinary pages: NumPy advises the kernel to back each big
    array with transparent huge pages (madvise), and where the kernel's THP defrag setting is
    "madvise" (the default) it then compacts memory on the spot to find 2 MiB pages. On these KVM
    hosts that made a fresh 400 MB array cost 5.5 s of system time against 0.13 s on small pages,
    and light_vgg19's TVM build, which makes gigabytes of short-lived arrays (packed weights,
    casts), 59 s of system time in 74 (`compile_model` 50.9 -> 20.2 s). Builds and passes gain
    nothing from huge pages; NumPy's setting is restored on leaving (a no-op where NumPy has none)."""
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray as ma
    setter = getattr(ma, "_set_madvise_hugepage", None)
    if setter is None:  # pragma: no cover
        yield
        return
    before = setter(False)
    try:
        yield
    finally:
        setter(before)
