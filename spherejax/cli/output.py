"""Output files of the command line: written whole or not at all.

A subcommand stages its outputs (`Outputs.stage`: each to an unpredictable
temporary file in the output folder) and renames them all into place at the end
(`Outputs.commit`), so a failure or Ctrl-C before the end leaves no output file,
and no temporary file either (`cancel` removes them; a folder this command
created is removed if it is left empty). `write_atomic` writes one file at once
(sweep cells). After `cancel`, nothing more is written.
"""

import errno
import io
import json
import math
import os
import threading

import numpy as np

from . import files
from .errors import FileSystemFailure


_lock = threading.Lock()
_cancelled = threading.Event()
_active: list["Outputs"] = []


class Cancelled(Exception):
    """Raised in the worker when a write is attempted after `cancel`."""


def _check_not_cancelled():
    if _cancelled.is_set():
        raise Cancelled("interrupted")


def make_folder(folder: str) -> list[str]:
    """Create `folder` and its missing parents; returns those created (outermost
    first). A path component that is a file is a `FileSystemFailure`."""
    created = []
    path = os.path.abspath(folder)
    missing = []
    while not os.path.isdir(path):
        if os.path.lexists(path):
            raise FileSystemFailure(
                f"--out {folder}: {path} exists and is not a directory; choose "
                "another --out"
            )
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        os.mkdir(path)
        created.append(path)
    return created


class Outputs:
    """The files of one command in `folder`, staged then committed together."""

    def __init__(self, folder: str):
        self.folder = folder
        self.staged: list[tuple[str, str]] = []  # (temporary, final path)
        self.created: list[str] = []
        with _lock:
            _active.append(self)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def stage(self, name: str, data: bytes) -> str:
        """Write `data` to a temporary file for `name`; returns the final path."""
        return self.stage_with(name, lambda final: files.write_temporary(final, data))

    def stage_model(self, name: str, model, hyperparams: dict) -> str:
        """Stage `spherejax.io.save(name, model, hyperparams)`; returns the final
        path."""
        import spherejax as sj

        def write(final):
            return files.write_temporary_with(
                final, lambda tmp: sj.io.save(tmp, model, hyperparams)
            )

        return self.stage_with(name, write)

    def stage_with(self, name: str, write) -> str:
        """Stage the temporary file `write(final path)` creates; returns the final
        path."""
        with _lock:
            _check_not_cancelled()
            if not self.created and not os.path.isdir(self.folder):
                self.created = make_folder(self.folder)
            final = self.path(name)
            self.staged.append((write(final), final))
        return final

    def commit(self) -> None:
        """Rename every staged file into place; a Ctrl-C meanwhile waits for the
        renames to finish (`cancel` takes the same lock)."""
        with _lock:
            _check_not_cancelled()
            for _, final in self.staged:  # fail before renaming anything
                if os.path.isdir(final) and not os.path.islink(final):
                    raise IsADirectoryError(errno.EISDIR, "Is a directory", final)
            for tmp, final in self.staged:
                os.replace(tmp, final)
            self.staged = []
            _active.remove(self)

    def discard(self) -> None:
        """Remove the staged files and the folders this command created (if
        empty)."""
        for tmp, _ in self.staged:
            files.remove_quietly(tmp)
        self.staged = []
        for path in reversed(self.created):
            try:
                os.rmdir(path)
            except OSError:
                pass
        self.created = []
        if self in _active:
            _active.remove(self)


def write_atomic(path: str, data: bytes) -> None:
    """`path` written whole or not at all (refused after `cancel`)."""
    with _lock:
        _check_not_cancelled()
        files.write_atomic(path, data)


def cancel() -> None:
    """Stop all writing and remove what `Outputs` staged (waits for a write in
    progress to finish)."""
    _cancelled.set()
    with _lock:
        for outputs in list(_active):
            outputs.discard()


def discard_all() -> None:
    """Remove every uncommitted output (after a failure)."""
    with _lock:
        for outputs in list(_active):
            outputs.discard()


def reset() -> None:
    """Allow writing again (a new command in the same process)."""
    _cancelled.clear()
    with _lock:
        _active.clear()


def _finite(value):
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_bytes(summary: dict) -> bytes:
    """Strict JSON (NaN and inf written as null)."""
    return json.dumps(_finite(summary), indent=2, allow_nan=False).encode()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def png_bytes(fig, dpi: int) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
