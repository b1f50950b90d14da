"""The TVM emitter registry: one entry per (domain, op), filled by ``@emitter`` in the op-family
modules of this folder.

An emitter is ``fn(low, node)``: ``low`` is the `Lowering` walking the graph (shapes, constants,
epilogue fusion, kernel naming; see lower.py), ``node`` the node to emit. It either registers a
kernel factory with ``low.add`` (building it only when TVM is wanted), records a view, or raises
UnsupportedError with the reason the build report shows. The walker dtype-checks a node before
calling its emitter, unless the emitter does its own checks first (``checks_dtype=True``: views,
whose element-count check comes first).

This registry is the TVM backend's, not ``tvmlite.ops.registry``'s: the TVM layer sits above the
ops and may read their registry, never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ONNX = ("", "ai.onnx")


@dataclass(frozen=True)
class Emitter:
    op: str
    domain: str
    fn: Callable
    checks_dtype: bool = False


_EMITTERS: dict[tuple[str, str], Emitter] = {}


def _domain(domain: str) -> str:
    return "" if domain in ONNX else domain


def emitter(*ops: str, domain: str = "", checks_dtype: bool = False):
    """Register the decorated function as the emitter of ``ops`` in ``domain``."""
    def register(fn):
        for op in ops:
            key = (_domain(domain), op)
            if key in _EMITTERS:
                raise RuntimeError(f"internal error: two TVM emitters for {domain or 'ai.onnx'}::{op}")
            _EMITTERS[key] = Emitter(op, key[0], fn, checks_dtype)
        return fn
    return register


def lookup(domain: str, op: str) -> Emitter | None:
    return _EMITTERS.get((_domain(domain), op))


def registered() -> list[tuple[str, str]]:
    """(domain, op) of every emitter, sorted ("" is ONNX)."""
    return sorted(_EMITTERS)
