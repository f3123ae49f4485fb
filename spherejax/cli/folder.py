"""The output folder of a sweep: what may be reused, and the lock that keeps a
second sweep out."""

import contextlib
import fcntl
import json
import os

from .cells import FORMAT
from .files import is_temporary


LOCK = ".sweep.lock"


def _leftovers(folder: str) -> list[str]:
    """Names in `folder` that a sweep killed before its manifest may leave."""
    names = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name == LOCK or is_temporary(name):
            continue
        if name == "cells" and os.path.isdir(path) and not os.path.islink(path):
            if all(is_temporary(f) for f in os.listdir(path)):
                continue
        names.append(name)
    return names


def check_folder(out: str, manifest: dict) -> None:
    """Refuse a folder that holds anything but (part of) this same sweep."""
    path = os.path.join(out, "sweep.json")
    if not os.path.isdir(out):
        return
    if not os.path.exists(path):
        stray = _leftovers(out)
        if stray:
            raise ValueError(
                f"--out {out} is a non-empty folder without a sweep manifest "
                f"(holds {stray[0]!r}); use a new folder"
            )
        return
    old = None
    try:
        with open(path, "rb") as f:
            old = json.loads(f.read(1 << 24))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise ValueError(f"{path} is not a spherejax sweep manifest (corrupted?)")
    if old.get("hash") != manifest["hash"]:
        old_options = old.get("options", {})
        old_options = old_options if isinstance(old_options, dict) else {}
        diff = [
            k
            for k in sorted(set(old_options) | set(manifest["options"]))
            if k != "out" and old_options.get(k) != manifest["options"].get(k)
        ]
        detail = (
            f"{diff[0]} = {old_options.get(diff[0])!r} there, "
            f"{manifest['options'].get(diff[0])!r} here"
            if diff
            else "different hash"
        )
        raise ValueError(
            f"--out {out} holds a different sweep ({detail}); use another --out "
            "or delete it"
        )


@contextlib.contextmanager
def locked(out: str):
    """Hold `out/.sweep.lock` (exclusive `flock`) or refuse: another sweep runs."""
    fd = os.open(os.path.join(out, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"--out {out} is in use by another running sweep; wait for it to "
                "finish or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)
