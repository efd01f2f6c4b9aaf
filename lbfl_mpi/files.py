"""Files lbfl writes: atomically, never through a planted link, as strict JSON, and deleted only when
lbfl wrote them.

A fixed temporary name (``model.pt.tmp``) can be pre-created as a symlink by anyone who can write the
run directory; opening it would overwrite the link's target. ``mkstemp`` creates a fresh file with
``O_CREAT | O_EXCL`` (so it never follows a link) under a random name in the same directory, and
``os.replace`` then swaps it in atomically: a reader sees the old file or the new one, never a part.

Strict JSON: Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON (RFC 8259)
and breaks ``jq``, JavaScript and strict parsers. Non-finite numbers become ``null`` instead, and numpy
scalars and arrays become plain Python values.

Reading: every file lbfl reads goes through :func:`open_regular` (or :func:`check_regular` where a
library needs a path), which opens with ``O_NONBLOCK`` and checks ``fstat`` for a regular file, so a
FIFO, a device, a socket or a directory at a name lbfl reads is an error naming the path, never a
read that blocks for ever. Writing: new files get the permissions ``open()`` would give them
(``0o666 & ~umask``; ``mkstemp`` alone gives 0600), and directories lbfl creates inside a run
directory are refused when a symbolic link stands in their place (:func:`real_dir`). Text from files
or the environment is passed through :func:`printable` before it is printed.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import re
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

# what lbfl writes into a run directory (relative paths); nothing else is ever deleted by it
OWNED_FILES = (re.compile(r"config\.toml"), re.compile(r"summary\.json"), re.compile(r"model\.pt"),
               re.compile(r"rank\d{4}\.h5"), re.compile(r"checkpoints/latest\.json"),
               re.compile(r"checkpoints/step_\d{8}/(rank\d{4}\.pt|meta\.json)"),
               # the temporary names temp_path gives these files only: "." + name + "." + random + ".tmp"
               re.compile(r"\.(config\.toml|summary\.json|model\.pt|rank\d{4}\.h5)\.[A-Za-z0-9_]+\.tmp"),
               re.compile(r"checkpoints/\.latest\.json\.[A-Za-z0-9_]+\.tmp"),
               re.compile(r"checkpoints/step_\d{8}/\.(rank\d{4}\.pt|meta\.json)\.[A-Za-z0-9_]+\.tmp"),
               # spilled client states of the federated layer (fl/store.py)
               re.compile(r"clients/rank\d{4}/(client_\d{6}\.pt|\.client_\d{6}\.pt\.[A-Za-z0-9_]+\.tmp)"),
               # rank files of an earlier, larger job of a federated run (fl/resume.py)
               re.compile(r"segments/step_\d{8}/rank\d{4}\.h5"))
OWNED_DIRS = (re.compile(r"checkpoints/step_\d{8}"), re.compile(r"checkpoints"), re.compile(r"clients/rank\d{4}"),
              re.compile(r"clients"), re.compile(r"segments/step_\d{8}"), re.compile(r"segments"))


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"))
_umask_lock = threading.Lock()


class NotRegularFile(OSError):
    """A name lbfl reads (or writes) holds something other than a regular file; ``strerror`` says what."""


def kind(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a directory", "a FIFO (named pipe)", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "of an unknown kind")


def _not_regular(path, mode: int) -> NotRegularFile:
    what = kind(mode)
    return NotRegularFile(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                          f"is {what}, not a regular file", str(path))


def _path_problem(path) -> NotRegularFile | None:
    """A path that cannot name a file at all: a NUL character (os calls raise ValueError for it)."""
    raw = os.fspath(path)
    if ("\0" if isinstance(raw, str) else b"\0") in raw:
        return NotRegularFile(errno.EINVAL, "contains a NUL character", printable(path))
    return None


def check_regular(path) -> os.stat_result:
    """``os.stat(path)`` (links followed) when it is a regular file; else NotRegularFile (or the
    OSError of stat: FileNotFoundError, ...). For libraries that open by name (h5py)."""
    bad = _path_problem(path)
    if bad:
        raise bad
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path, max_bytes: int | None = None):
    """A binary file object for reading ``path``, which must be a regular file (links followed).

    Opened with ``O_NONBLOCK``, so a FIFO without a writer returns at once instead of blocking, then
    checked with ``fstat``: a FIFO, device, socket or directory raises NotRegularFile naming the path,
    as does a file over ``max_bytes``. Other failures are the OSError of ``open``."""
    bad = _path_problem(path)
    if bad:
        raise bad
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket (or a device without its driver)
            try:
                mode = os.stat(path).st_mode
            except OSError:
                raise e from None
            raise _not_regular(path, mode) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotRegularFile(errno.EFBIG, f"is {st.st_size} bytes, more than the {max_bytes} a file of "
                                              "this kind may have", str(path))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, max_bytes: int | None = None) -> bytes:
    """The bytes of regular file ``path`` (see :func:`open_regular`)."""
    with open_regular(path, max_bytes) as fh:
        return fh.read()


def read_text(path, max_bytes: int | None = None) -> str:
    """Regular file ``path`` as UTF-8 text (UnicodeDecodeError when it is not)."""
    return read_bytes(path, max_bytes).decode("utf-8")


def current_umask() -> int:
    """The process umask, read without changing it (/proc/self/status, Linux >= 4.7); elsewhere by
    setting and restoring it under a lock."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new file as ``open()`` creates it: 0o666 without the umask's bits."""
    return 0o666 & ~current_umask()


def real_dir(path: Path) -> Path:
    """Create directory ``path`` (with its parents) unless it exists; refuse a symbolic link or a
    non-directory in its place (NotRegularFile), so nothing lbfl writes or deletes there lands in
    another directory. New directories get ``0o777 & ~umask``."""
    path = Path(path)
    if not os.path.lexists(path):
        path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotRegularFile(errno.ENOTDIR, f"is {kind(st.st_mode)}, not a directory (lbfl creates this "
                                            "directory itself and never follows a link there)", str(path))
    return path


def printable(text) -> str:
    """``text`` safe to print on one line: every character that is not printable (control characters
    such as ESC and newline, bidirectional overrides, line separators, lone surrogates) is written as
    a Python escape (``\\x1b``, ``\\n``, ``\\u202e``), so text from a file or the environment can
    neither drive the terminal nor forge a line of lbfl's output."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        else:
            o = ord(c)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or
                       (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"))
    return "".join(out)


def temp_path(path: Path) -> Path:
    """A new, empty, exclusively created file beside ``path`` (random name, no link followed), with
    the permissions a plain ``open()`` would give it (``mkstemp`` creates 0600)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: Path):
    """Yield a fresh temporary path beside ``path``; on success it replaces ``path`` atomically, on
    an exception it is removed. For writers that need a path (torch.save, h5py)."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _RecordingWriter(io.RawIOBase):
    """A write-only file over ``fd`` that keeps the OSError of a failed write. ``torch.save`` turns a
    failed write into ``RuntimeError("... unexpected pos ...")`` and drops the errno, so a full disk
    would otherwise read as an internal error."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd, self.error = fd, None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        view, done = memoryview(b).cast("B"), 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except OSError as e:
                self.error = e
                raise
        return done


def save_torch(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a fresh temporary file, then a rename); a failed
    write raises its own OSError (ENOSPC, EDQUOT, ...) with the path, not torch's RuntimeError."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        writer = _RecordingWriter(fd)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            err = writer.error
            raise OSError(err.errno, err.strerror, str(path)) from None
        finally:
            os.close(fd)


def os_error_line(e: BaseException) -> str:
    """An OSError as one printable line: the reason and the path. HDF5's errors carry both inside a
    multi-line message ("... filename = 'x', ... error message = 'No space left on device' ...")."""
    text = getattr(e, "strerror", None) or str(e)
    reason = re.search(r"error message = '([^']*)'", text)
    name = getattr(e, "filename", None) or (m.group(1) if (m := re.search(r"filename = '([^']*)'", text)) else None)
    line = reason.group(1) if reason else (text.strip().splitlines() or [type(e).__name__])[0]
    return printable(f"{line}: {name}" if name else line)[:300]


_IO_FAILURE = re.compile(r"file (write|read) failed|No space left on device|Disk quota exceeded|errno = (28|122)\b")


def io_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed read or write of a file: any OSError, or the RuntimeError h5py raises
    when HDF5 cannot write ("file write failed ... errno = 28")."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and bool(_IO_FAILURE.search(str(e))))


def quiet_io_unraisable() -> None:
    """Drop "Exception ignored in ... __dealloc__" reports of an I/O failure (h5py objects released
    while a failed write unwinds: a full disk gave about 30 such tracebacks before the real error);
    the failure itself still propagates and is reported on one line. Others go to the previous hook."""
    previous = sys.unraisablehook

    def hook(u) -> None:
        if u.exc_value is not None and _IO_FAILURE.search(str(u.exc_value)):
            return
        previous(u)

    sys.unraisablehook = hook


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def owned(rel: str) -> bool:
    """Whether ``rel`` (a path relative to the run directory, '/'-separated) is a file lbfl writes."""
    return any(p.fullmatch(rel) for p in OWNED_FILES)


def owned_entries(out: Path) -> tuple[list[Path], list[Path]]:
    """(files, directories) in run directory ``out`` that lbfl wrote, found without following links.
    Directories come deepest first, so they can be removed once emptied."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(out, followlinks=False):
        rel_dir = os.path.relpath(dirpath, out)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if owned(rel_dir + name):
                files.append(Path(dirpath) / name)
        for d in dirnames:
            if any(p.fullmatch(rel_dir + d) for p in OWNED_DIRS) and not os.path.islink(os.path.join(dirpath, d)):
                dirs.append(Path(dirpath) / d)
    dirs.sort(key=lambda p: len(p.parts), reverse=True)
    return files, dirs


def remove_owned(out: Path) -> list[str]:
    """Delete what lbfl wrote in ``out`` (a link is removed, never its target); directories only when
    empty afterwards. Returns the removed paths relative to ``out``."""
    files, dirs = owned_entries(out)
    removed = []
    for f in files:
        f.unlink(missing_ok=True)
        removed.append(str(f.relative_to(out)))
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # holds files lbfl did not write: they stay, and so does the directory
            continue
    return removed

def to_jsonable(obj):
    """``obj`` with non-finite floats replaced by None and numpy values made plain (recursively)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    np = sys.modules.get("numpy")  # not imported: then nothing here is a numpy value (keeps start-up light)
    if np is not None and isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_strict(obj, **kw) -> str:
    """``json.dumps`` of :func:`to_jsonable` ``(obj)``; ``allow_nan=False`` makes any non-finite number
    that slipped through an error instead of invalid JSON."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kw)


def write_json_atomic(path, obj, **kw) -> None:
    """Strict JSON to ``path`` through a fresh temporary file in the same directory and a rename.

    The temporary file comes from ``tempfile.mkstemp(dir=path's directory, prefix="." + name + ".",
    suffix=".tmp")`` (:func:`temp_path`): created with O_EXCL under a random name, so a link planted at
    a fixed name such as ``path + ".tmp"`` is never followed; readers see the old file or the new one.
    The text is built before the temporary file exists, so an unserialisable object leaves nothing."""
    write_text_atomic(Path(path), dumps_strict(obj, **kw) + "\n")
