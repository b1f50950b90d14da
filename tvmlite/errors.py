"""One exception family for user-facing failures.

Each message is one line that says what went wrong and where. The CLI prints it on stderr and exits
with status 2 (no traceback unless --debug).
"""


class TvmliteError(Exception):
    """Base of every error a user can cause (bad file, bad option, unsupported model)."""


class ModelLoadError(TvmliteError):
    """The model file is missing, truncated, corrupt or not a valid ONNX model."""


class UnsupportedError(TvmliteError):
    """An op, attribute value, dtype or feature the backend or pass does not handle."""


class ShapeError(TvmliteError):
    """Shapes or dtypes that do not fit (inputs vs model, or inside the graph)."""


class InputError(TvmliteError):
    """Bad input data: missing names, wrong shapes or dtypes, unreadable .npz files."""


class OptionError(TvmliteError):
    """A bad command-line option, pass spec or pass option."""


def message_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name when the message is empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def first_line(e: BaseException) -> str:
    """``e`` as one line: 'TypeName: the first line of its message' (the type alone when empty)."""
    return f"{type(e).__name__}: {message_line(e)}" if str(e).strip() else type(e).__name__
