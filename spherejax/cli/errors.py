"""Failures of the command line and their exit codes.

Every failure ends with one line `error: ...` on stderr and one of these codes:

| code | meaning |
| --- | --- |
| 0 | success |
| 1 | internal error (a bug: please report the line) |
| 2 | bad input (flags, config, input files), found before any work |
| 3 | solver failure (NaN/overflow, step budget exhausted) |
| 4 | not enough memory (refused by the pre-flight estimate or during the run) |
| 5 | file system (cannot write the outputs: permissions, disk full, ...) |
| 130 | interrupted (Ctrl-C); partial outputs removed |
"""

import errno
import os


EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_SOLVER = 3
EXIT_MEMORY = 4
EXIT_FILES = 5
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure after validation, with its exit code."""

    code = EXIT_INTERNAL


class SolverFailure(CommandError):
    code = EXIT_SOLVER


class OutOfMemory(CommandError):
    code = EXIT_MEMORY


class FileSystemFailure(CommandError):
    code = EXIT_FILES


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # equinox runtime errors put the user's message after the JIT stack
    for line in lines:
        if "EquinoxRuntimeError: " in line:
            return line.split("EquinoxRuntimeError: ", 1)[1]
    return lines[0] if lines else ""


def classify(error: BaseException) -> tuple[int, str]:
    """Exit code and one-line message (cause and remedy) of `error`."""
    message = _first_line(str(error))
    if isinstance(error, CommandError):
        return error.code, message
    if isinstance(error, ValueError):
        return EXIT_BAD_INPUT, message
    if isinstance(error, MemoryError):
        return (
            EXIT_MEMORY,
            "out of memory; lower --n or --saves (or drop --x64)",
        )
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        reason = error.strerror or message or type(error).__name__
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            remedy = "free some space or choose another --out"
        else:
            remedy = "check the path and its permissions, or choose another --out"
        return EXIT_FILES, f"cannot write or read a file{where}: {reason}; {remedy}"
    name = type(error).__name__
    if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
        return (
            EXIT_MEMORY,
            f"out of memory during the run ({message[:200]}); lower --n or --saves",
        )
    if name in ("EquinoxRuntimeError", "XlaRuntimeError", "JaxRuntimeError"):
        return (
            EXIT_SOLVER,
            f"the solve failed: {message}; try a smaller --beta, --x64, a larger "
            "--rtol or --dt0, or a shorter --t1",
        )
    return EXIT_INTERNAL, f"internal error ({name}: {message}); please report it"


def available_memory() -> int | None:
    """Bytes of memory available now (Linux `MemAvailable`, else physical pages);
    None when unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f.read(1 << 16).decode(errors="replace").splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
