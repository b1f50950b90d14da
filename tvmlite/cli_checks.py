"""Checks of command-line values that click's types cannot express, each failing with one
OptionError or InputError line that names the option, and the outputs of a CLI command.

Kept out of cli.py so the commands' bodies stay short: a command calls these before any work.
"""
from __future__ import annotations

import math
import os
import signal
import sys

import numpy as np

from tvmlite.errors import InputError, OptionError, TvmliteError
from tvmlite import outputs
from tvmlite.outputs import Outputs, USER_ERRNOS, data_files, model_files
from tvmlite.inputs import load_npz, random_array

#: the transactions of the running command: `tvmlite.cli.main` discards whatever is left
#: uncommitted when the command fails or is interrupted
open_outputs: list[Outputs] = []


def command_outputs(model: str | None = None, inputs: str | None = None, calib: str | None = None,
                    custom_ops=()) -> Outputs:
    """An Outputs transaction whose files may be none of the command's inputs: the model (and
    its external data, or a built library's plan and constants), --inputs, --calib and --custom-ops."""
    txn = Outputs(lambda: model_files(model) + data_files(inputs, "--inputs file")
                  + data_files(calib, "--calib data")
                  + [(lib, "--custom-ops library") for lib in custom_ops or ()])
    open_outputs.append(txn)
    return txn


def write_error(e: OSError) -> str | None:
    """One line for a filesystem failure while the command wrote (a full disk, a quota, a
    read-only mount), naming the outputs; None for an OSError that is not of that kind."""
    if e.errno not in USER_ERRNOS:
        return None
    finals = [f"{what} {final}" for txn in open_outputs for final, _, what in txn._staged.values()]
    where = ", ".join(finals) if finals else f"a temporary file in {os.environ.get('TMPDIR', '/tmp')}"
    return f"cannot write {where}: {e.strerror or e}"


def discard_open_outputs() -> None:
    while open_outputs:
        open_outputs.pop().discard()


def check_budgets(**values) -> None:
    """Tolerances and budgets must be finite and non-negative (a NaN budget accepts nothing and
    reports nothing; a negative one undoes every pass)."""
    for name, v in values.items():
        if v is None:
            continue
        if not math.isfinite(v) or v < 0:
            raise OptionError(f"--{name.replace('_', '-')} {v}: must be a finite number >= 0")


def check_pass_spec_text(spec: str | None) -> None:
    """``--passes ""`` would fall back to the default preset without a word."""
    if spec is not None and not spec.replace(",", "").strip():
        raise OptionError("--passes is empty: list passes ('tvmlite passes' shows them) or use --preset")


def load_labels(inputs: str | None, labels: str | None):
    """The --labels array of the --inputs file (None without --labels): one integer class per
    example, as many as the examples of every other array in that file."""
    if not labels:
        return None
    if not inputs:
        raise InputError("--labels needs --inputs (the labels are an array of that file)")
    data = load_npz(inputs)
    if labels not in data:
        raise InputError(f"inputs file {inputs} has no array {labels!r} (it has {sorted(data)})")
    arr = data[labels]
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"--labels {labels}: shape {arr.shape} in {inputs}; expected one class per example (1-D)")
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(np.isfinite(arr))
                                          and np.all(arr == np.round(arr))):
        raise InputError(f"--labels {labels}: dtype {arr.dtype} in {inputs}; expected integer class ids")
    for name, other in data.items():
        if name != labels and other.ndim >= 1 and other.shape[0] != len(arr):
            raise InputError(f"--labels {labels}: {len(arr)} labels for {other.shape[0]} examples "
                             f"of {name!r} in {inputs}")
    return arr


def debug_first(args: list[str]) -> list[str]:
    """``--debug`` is a group option; accept it anywhere before ``--`` by moving it to the front."""
    cut = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:cut]:
        return args
    return ["--debug"] + [a for a in args[:cut] if a != "--debug"] + args[cut:]


def interrupted() -> int:
    """Exit status of a command stopped by Ctrl-C or SIGTERM (128 + the signal), after one line."""
    outputs.cleaning = True
    sig = outputs.received_signal or signal.SIGINT
    print(f"tvmlite: {'terminated (SIGTERM)' if sig == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
    return 128 + int(sig)


def built_feeds(built, inputs) -> dict:
    """Feeds for a TVM library: the --inputs file, else seeded random data of the built shapes and
    dtypes."""
    if inputs:
        data = load_npz(inputs)
        feeds = {n: data[n] for n in built.input_names if n in data}
        for n, a in feeds.items():  # as check_feeds does for a model: no silent cast
            if a.dtype != np.dtype(built.input_dtypes[n]):
                raise InputError(f"input {n!r}: dtype {a.dtype} does not fit the build's {np.dtype(built.input_dtypes[n])}")
        return feeds
    rng = np.random.default_rng(0)
    return {n: random_array(rng, built.input_shapes[n], built.input_dtypes[n], n) for n in built.input_names}


def save_checked(model, output: str, txn) -> None:
    """Stage the model in ``txn`` (its big arrays written from where the IR holds them) after
    onnx.checker passed its lean export (`Exported.check`: the structure, no weights loaded); one
    whose lean proto is still past protobuf's 2 GiB limit is checked as written (the transaction
    drops it when that fails)."""
    import onnx

    from tvmlite.export import save
    from tvmlite.export.onnx_export import EXTERNAL_THRESHOLD, export_lean, proto_bytes

    exported = export_lean(model)
    exported.external = False  # the optimized model goes inline unless it is too big for protobuf
    in_memory = proto_bytes(exported.proto) <= EXTERNAL_THRESHOLD
    if in_memory:
        _checked(exported.check)
    staged = save(exported, output, outputs=txn)
    if not in_memory:
        _checked(lambda: onnx.checker.check_model(staged))


def _checked(check) -> None:
    import onnx

    try:
        check()
    except onnx.checker.ValidationError as e:
        raise TvmliteError(f"the optimized model fails onnx.checker: {str(e).strip().splitlines()[0]}") from None


def unknown_dims(m, overrides) -> list[str]:
    """The graph inputs' dims that are not known numbers (``inspect`` counts them as 1), as
    'name[i]'; inputs in ``overrides`` (their --shape) aside."""
    out = []
    for n in m.graph.inputs:
        if n in m.graph.initializers or n in overrides:
            continue
        for i, d in enumerate(m.graph.values[n].shape or ()):
            if not (isinstance(d, int) and d > 0):
                out.append(f"{n}[{i}]")
    return out


def human_size(n: int) -> str:
    """A byte count as '12.3 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
