"""Output files that cannot destroy inputs, written all together or not at all.

A command registers every file it will write in one `Outputs` transaction before any work. Each
path is refused with one line when it is the same file as an input (by inode, so symlinks and hard
links count), the same as another output, or exists and is not a regular file (replacing a device
node or FIFO with a regular file, as a rename does, breaks whatever used it). Files are written
into a staging directory beside their destination (same filesystem, so the final renames cannot
fail half-way for lack of space) and renamed into place together when the command succeeds; on an
error or a signal the staging directories are removed and nothing new is left behind. Committed
files get the mode a plain ``open()`` would give them under the current umask.

`private_tmpdir` gives the process its own $TMPDIR, removed on exit: onnxruntime drops a ``.ses``
file into $TMPDIR on import, and TVM and ONNX's shape inference make temporary directories there.
`signals_as_interrupts` turns SIGTERM into the same unwinding as Ctrl-C so every cleanup runs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import sys
import tempfile

from tvmlite.errors import TvmliteError

#: failures of the filesystem while writing, not of tvmlite: one line naming the outputs
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.ENAMETOOLONG}


class OutputError(TvmliteError):
    """An output path that would overwrite an input, a device, a FIFO, or cannot be written."""


def current_umask() -> int:
    try:  # Linux: reading it does not change it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular_file(path: str, what: str) -> None:
    """Raise unless ``path`` is an existing regular file (after symlinks): opening a FIFO blocks
    until a writer appears, and a device would be read without end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TvmliteError(f"{what} not found: {path}") from None
    except OSError as e:
        raise TvmliteError(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TvmliteError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _key(path: str) -> str:
    """One spelling per destination: the directory resolved (symlinks too), the name as given."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


class Outputs:
    """One command's outputs. ``inputs``: (path, description) pairs, or a callable that returns
    them, called only once a destination already exists (only then can it be the same file as an
    input, and finding a model's external-data files means parsing the model)."""

    def __init__(self, inputs=()):
        self._inputs_src = inputs
        self._inputs: list[tuple[str, str]] | None = None if callable(inputs) else list(inputs)
        self._staged: dict[str, tuple[str, str, str]] = {}  # key -> (final, staged, what)
        self._staging: dict[str, str] = {}  # destination directory -> staging directory
        self._trees: set[str] = set()

    # -------------------------------------------------------------------------------- registering
    def _input_files(self) -> list[tuple[str, str]]:
        if self._inputs is None:
            self._inputs = [(p, w) for p, w in self._inputs_src() if p]
        return self._inputs

    def _check(self, path: str, what: str, *, tree: bool = False) -> str:
        if not path or path.endswith(("/", os.sep)) or os.path.basename(os.path.abspath(path)) in ("", ".", ".."):
            raise OutputError(f"{what} {path!r}: give a file name, not a directory")
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise OutputError(f"{what} {path}: output directory does not exist: {d}" if not os.path.exists(d)
                              else f"{what} {path}: {d} is not a directory")
        name = os.path.basename(os.path.abspath(path))
        try:
            limit = os.pathconf(d, "PC_NAME_MAX")
        except (OSError, ValueError):
            limit = 255
        if len(name.encode(errors="surrogateescape")) > limit:
            raise OutputError(f"{what}: file name of {len(name)} characters is longer than the "
                              f"filesystem allows ({limit}): {path[:60]}...")
        if not os.access(d, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {path}: the directory {d} is not writable")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OutputError(f"{what} {path}: {e.strerror}") from None
        if st is not None:
            ok = stat.S_ISDIR(st.st_mode) if tree else stat.S_ISREG(st.st_mode)
            if not ok:
                want = "a directory" if tree else "a regular file"
                have = "not a directory" if tree else _kind(st.st_mode)
                raise OutputError(f"{what} {path} exists and is {have}, not {want}: refusing to replace it")
            for inp, desc in self._input_files():
                if _same_file(path, inp):
                    raise OutputError(f"refusing to overwrite the {desc} {inp}: {what} {path} is the same "
                                      f"file; choose another output path")
        key = _key(path)
        for other_key, (final, _, other_what) in self._staged.items():
            if other_key == key or (st is not None and _same_file(path, final)):
                raise OutputError(f"{what} {path} is the same file as {other_what} {final}: give them different paths")
        return key

    def _staging_dir(self, d: str, what: str) -> str:
        d = os.path.realpath(d)
        if d not in self._staging:
            try:
                self._staging[d] = tempfile.mkdtemp(prefix=".tvmlite-", dir=d)
            except OSError as e:
                raise OutputError(f"{what}: cannot write in {d}: {e.strerror}") from None
        return self._staging[d]

    def file(self, path: str, what: str, *, existing_ok: bool = False) -> str:
        """Register ``path``; returns where to write it now. ``existing_ok``: the same path again
        returns its staged name (a writer that does not know whether the command registered it)."""
        path = os.fspath(path)
        if existing_ok and _key(path) in self._staged:
            return self._staged[_key(path)][1]
        key = self._check(path, what)
        staged = os.path.join(self._staging_dir(os.path.dirname(os.path.abspath(path)), what),
                              os.path.basename(os.path.abspath(path)))
        self._staged[key] = (path, staged, what)
        return staged

    def tree(self, path: str, what: str, *, existing_ok: bool = False) -> str:
        """Register directory ``path``; returns an empty directory to fill. On commit its files go
        into ``path`` (created when missing; files already there and not written are kept)."""
        path = os.fspath(path).rstrip("/") or "/"
        if existing_ok and _key(path) in self._staged:
            return self._staged[_key(path)][1]
        key = self._check(path, what, tree=True)
        staged = os.path.join(self._staging_dir(os.path.dirname(os.path.abspath(path)), what),
                              os.path.basename(os.path.abspath(path)))
        os.mkdir(staged)
        self._staged[key] = (path, staged, what)
        self._trees.add(key)
        return staged

    # -------------------------------------------------------------------------------- finishing
    def _moves(self) -> list[tuple[str, str, str]]:
        """(staged, final, what) for every file to rename; a new tree is one rename."""
        moves = []
        for key, (final, staged, what) in self._staged.items():
            if key in self._trees and os.path.isdir(final):
                for name in sorted(os.listdir(staged)):
                    src, dst = os.path.join(staged, name), os.path.join(final, name)
                    if os.path.lexists(dst) and not os.path.isfile(dst):
                        raise OutputError(f"{what} {final}: {name} exists there and is not a regular file")
                    for inp, desc in self._input_files():
                        if _same_file(dst, inp):
                            raise OutputError(f"refusing to overwrite the {desc} {inp}: {what} {final} "
                                              f"would write {name} over it")
                    moves.append((src, dst, what))
            elif os.path.lexists(staged):
                moves.append((staged, final, what))
        return moves

    def commit(self) -> None:
        """Rename every staged file into place. Signals wait until all are renamed; an error half
        way puts back what was replaced."""
        umask = current_umask()
        blocked = {signal.SIGINT, signal.SIGTERM}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        done: list[tuple[str, str | None]] = []  # (final, backup of what it replaced)
        try:
            moves = self._moves()
            for src, dst, _ in moves:
                _set_mode(src, umask)
            for i, (src, dst, what) in enumerate(moves):
                backup = None
                if os.path.isfile(dst) and not os.path.islink(dst):
                    backup = os.path.join(os.path.dirname(src), f".backup-{i}")
                    try:
                        os.link(dst, backup)
                    except OSError:
                        backup = None
                try:
                    os.replace(src, dst)
                except OSError as e:
                    raise OutputError(f"cannot write {what} {dst}: {e.strerror}") from None
                done.append((dst, backup))
        except BaseException:
            for dst, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup:
                        os.replace(backup, dst)
                    elif os.path.isdir(dst) and not os.path.islink(dst):
                        shutil.rmtree(dst)
                    else:
                        os.unlink(dst)
            raise
        finally:
            self.discard()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def discard(self) -> None:
        for d in self._staging.values():
            shutil.rmtree(d, ignore_errors=True)
        self._staging.clear()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, etype, exc, tb) -> None:
        if etype is None:
            self.commit()
            return
        self.discard()
        if isinstance(exc, OSError) and not isinstance(exc, TvmliteError) and exc.errno in USER_ERRNOS:
            finals = ", ".join(f"{w} {f}" for f, _, w in self._staged.values())
            raise OutputError(f"cannot write {finals}: {exc.strerror}") from None


def _set_mode(path: str, umask: int) -> None:
    """The mode ``open()`` or ``mkdir`` would give under ``umask`` (temporary files are made 0600,
    directories 0700); an executable (a shared library) stays executable."""
    for root, dirs, files in (os.walk(path) if os.path.isdir(path) else [(None, [], [path])]):
        for p in ([root] if root else []) + [os.path.join(root, f) if root else f for f in files]:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
            os.chmod(p, full & ~umask)


# ------------------------------------------------------------------------------- process-wide
@contextlib.contextmanager
def private_tmpdir():
    """Point $TMPDIR (and Python's tempfile) at a fresh directory, removed on the way out."""
    d = tempfile.mkdtemp(prefix="tvmlite-")
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
    saved_tempdir = tempfile.tempdir
    for k in saved:
        os.environ[k] = d
    tempfile.tempdir = d
    try:
        yield d
    finally:
        tempfile.tempdir = saved_tempdir
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(d, ignore_errors=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and ``except BaseException`` runs."""


#: the signal that stopped the command, if any
received_signal: int | None = None
#: set once the command's cleanup has begun: signals then wait for it to finish
cleaning = False


def _unraisable(info) -> None:
    """The interrupt raised inside a ``__del__`` or a weakref callback (an import lock's) is
    raised again by the resend thread: Python's report of the swallowed one would only print a
    traceback above the command's one line."""
    if received_signal is not None and isinstance(info.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(info)


def signals_as_interrupts() -> None:
    """SIGINT and SIGTERM unwind the stack. One swallowed on the way (raised inside a ``__del__``,
    which Python only reports) is raised again every second until the cleanup begins; signals
    during the cleanup are ignored, so a second Ctrl-C cannot leave a staging directory behind."""
    import threading

    global received_signal, cleaning
    received_signal, cleaning = None, False
    stop = threading.Event()

    def resend():
        while not stop.wait(1.0) and not cleaning:
            os.kill(os.getpid(), received_signal)

    def handler(signum, frame):
        global received_signal
        if cleaning:
            return
        if received_signal is None:
            received_signal = signum
            threading.Thread(target=resend, daemon=True).start()
        raise Terminated() if received_signal == signal.SIGTERM else KeyboardInterrupt()

    sys.unraisablehook = _unraisable
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def model_files(path: str | None, what: str = "input model") -> list[tuple[str, str]]:
    """``path`` and the external-data files it names (those lie beside it; a model whose data
    points elsewhere is refused when it is loaded)."""
    if not path:
        return []
    out = [(path, what)]
    if path.endswith(".so"):  # a 'tvmlite build' library comes with its plan and constants
        return out + [(path + ".json", f"plan of {what}"), (path + ".npz", f"constants of {what}")]
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return out
        import onnx
        from onnx import external_data_helper

        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported when it is loaded
        return out
    base = os.path.dirname(os.path.abspath(path))
    seen = set()
    for t in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc and loc not in seen:
                seen.add(loc)
                out.append((os.path.join(base, loc), f"external data of the {what}"))
    return out


def data_files(path: str | None, what: str) -> list[tuple[str, str]]:
    """``path`` itself, or every file of a directory (a directory of calibration .npy files)."""
    if not path:
        return []
    if os.path.isdir(path):
        return [(os.path.join(path, f), f"{what} file") for f in sorted(os.listdir(path))]
    return [(path, what)]
