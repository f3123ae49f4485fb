"""Writing files whole or not at all: unpredictable temporary files next to their
target, renamed into place.

Temporary names start with `.` and end with `TMP_SUFFIX`, so a folder left by a
killed command can be cleaned (`is_temporary`).
"""

import os
import tempfile
from collections.abc import Callable


TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _mkstemp(path: str | os.PathLike) -> tuple[int, str]:
    """A new temporary file next to `path`: its descriptor and name.

    `tempfile.mkstemp` gives an unpredictable name opened with `O_CREAT | O_EXCL`
    (a planted file or symlink is never followed); the file gets the permissions
    `open()` would give (`0o666` less the umask) instead of mkstemp's `0o600`.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        remove_quietly(tmp)
        raise
    return fd, tmp


def write_temporary(path: str | os.PathLike, data: bytes) -> str:
    """Write `data` to a new temporary file next to `path` (flushed to disk);
    returns its name. On any failure (disk full, interruption) the temporary file
    is removed and the error re-raised."""
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def write_temporary_with(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """A temporary file next to `path` that `write(name)` replaces whole (e.g.
    `spherejax.io.save`, itself atomic); removed if `write` fails."""
    fd, tmp = _mkstemp(path)
    os.close(fd)
    try:
        write(tmp)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`path` is either untouched or complete: a temporary file (`write_temporary`)
    renamed onto `path` with `os.replace` (atomic on POSIX), removed if the rename
    fails (e.g. `path` is a folder)."""
    tmp = write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporary files."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)
