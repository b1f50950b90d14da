"""What a pass declares that the optimizer (tvmlite.optimize) reads: capabilities, not policy.

* ``LayerwisePass``: the pass decides per layer. It names a list option of nodes to leave alone
  (``exclude_option``) and implements the protocol the checked pipeline drives to undo single
  layers: ``layers(result)`` (what the run rewrote), ``replay(result, exclude)`` (a pass that redoes
  that run minus ``exclude``, without measuring again when the run left a replay token in
  ``result.replay``) and ``layer_costs(result)`` (each layer's own error when the run measured it).
* ``Calibrated``: the pass takes calibration data in the option ``calibration_option``;
  ``tvmlite.optimize(calib=...)`` fills it in when the spec leaves it unset.
* ``Cleanup``: the pass keeps outputs and onnxruntime does the same rewrite at load, so it is never
  slower: speed-checked pipelines do not time it, and it gets the clean-up error budget.

A pass may also declare these as plain class attributes of the same names (``exclude_option =
"exclude"``, ``calibration_option = "calib"``, ``cleanup = True``): the readers below accept both,
so passes written before the protocol keep working. The optimizer asks only through the readers.
"""
from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from tvmlite.passes.base import Pass, PassResult


@runtime_checkable
class Layerwise(Protocol):
    """The per-layer protocol, as the optimizer sees it (``layerwise(p)`` returns one)."""

    exclude_option: str

    def layers(self, result: PassResult) -> list[str]: ...

    def replay(self, result: PassResult, exclude: list[str]) -> Pass: ...

    def layer_costs(self, result: PassResult) -> dict[str, float] | None: ...


class LayerwisePass:
    """Mixin for passes that decide per layer; defaults fit a pass whose decisions are cheap to redo."""

    #: the list option naming nodes the pass must leave alone
    exclude_option: ClassVar[str] = "exclude"

    def layers(self, result: PassResult) -> list[str]:
        """The layers the run rewrote, in order, each once (the units undo works in)."""
        return list(dict.fromkeys(result.rewritten))

    def replay(self, result: PassResult, exclude: list[str]) -> Pass:
        """A pass redoing what ``result`` records except on ``exclude``. The default runs the pass
        again with ``exclude`` added to its exclude option; passes that measure or calibrate
        override it to reuse ``result.replay``."""
        return _with_exclude(self, exclude)

    def layer_costs(self, result: PassResult) -> dict[str, float] | None:
        """Per rewritten layer, the output error it caused alone when the run measured that; None
        when it did not (the checked pipeline then measures each layer)."""
        return None


class Calibrated:
    """Mixin for passes that take calibration data."""

    calibration_option: ClassVar[str] = "calib"


class Cleanup:
    """Mixin for clean-up passes (outputs kept; onnxruntime does the same at load)."""

    cleanup: ClassVar[bool] = True


def _with_exclude(p, exclude: list[str]) -> Pass:
    opt = p.exclude_option
    return type(p)(**{**p.option_values(), opt: list(getattr(p.options, opt) or []) + list(exclude)})


class _Declared(LayerwisePass):
    """The protocol for a pass that declares ``exclude_option`` as a plain attribute: its own
    ``replay``/``layer_costs`` when it has them, else the defaults."""

    def __init__(self, p: Pass):
        self.p = p
        self.exclude_option = p.exclude_option

    def replay(self, result: PassResult, exclude: list[str]) -> Pass:
        own = getattr(self.p, "replay", None)
        return own(result, exclude) if own is not None else _with_exclude(self.p, exclude)

    def layer_costs(self, result: PassResult) -> dict[str, float] | None:
        own = getattr(self.p, "layer_costs", None)
        return own(result) if own is not None else None


def layerwise(p: Pass) -> Layerwise | None:
    """The pass's per-layer protocol, or None when it does not decide per layer."""
    if isinstance(p, LayerwisePass):
        return p
    if getattr(p, "exclude_option", None):
        return _Declared(p)
    return None


def calibration_option(p: Pass) -> str | None:
    """The option taking calibration data, or None."""
    return getattr(p, "calibration_option", None) or None


def is_cleanup(p: Pass) -> bool:
    return bool(getattr(p, "cleanup", False))
