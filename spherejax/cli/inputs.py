"""Input files of the command line: initial tokens (`--x0`) and observed paths
(`fit --data`), validated."""

import math
import os

import numpy as np


def _check_npy_size(path: str, flag: str) -> None:
    """Refuse a `.npy` file whose header declares more data than the file holds
    (checked before numpy allocates the array)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            left = os.fstat(f.fileno()).st_size - f.tell()
            regular = os.path.isfile(path)
    except (OSError, ValueError):
        return  # np.load reports these
    declared = math.prod(shape) * dtype.itemsize
    if regular and declared > left:
        raise ValueError(
            f"{flag} {path} declares an array of shape {shape} ({declared} bytes) "
            f"but holds {left} bytes of data"
        )


def load_x0(path):
    _check_npy_size(path, "--x0")
    try:
        x0 = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"--x0 file not found: {path}") from None
    except Exception as e:
        raise ValueError(f"--x0 {path} is not a readable .npy array ({e})") from None
    if not isinstance(x0, np.ndarray):  # an .npz archive (np.load's NpzFile)
        names = sorted(getattr(x0, "files", []))
        if hasattr(x0, "close"):
            x0.close()
        raise ValueError(
            f"--x0 {path} is an .npz archive (arrays {', '.join(names) or 'none'}), "
            "not an .npy array: save the (n, d) tokens with numpy.save"
        )
    if x0.ndim != 2:
        raise ValueError(
            f"--x0 must hold an (n, d) array of tokens; got shape {x0.shape}"
        )
    if x0.size == 0:
        raise ValueError(
            f"--x0 holds no tokens: got shape {x0.shape}; it needs n >= 1 tokens "
            "of dimension d >= 1"
        )
    if not np.issubdtype(x0.dtype, np.number) or np.issubdtype(
        x0.dtype, np.complexfloating
    ):
        raise ValueError(f"--x0 must hold real numbers; got dtype {x0.dtype}")
    if not np.all(np.isfinite(x0)):
        raise ValueError("--x0 contains NaN or inf")
    return x0


def load_paths(path):
    """`ts (T,)` and `ys (B, T, n, d)` from an .npz file, validated."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.asarray(f[name]) for name in f.files}
    except FileNotFoundError:
        raise ValueError(f"--data file not found: {path}") from None
    except Exception as e:  # not a zip, pickled objects, a bare .npy, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--data {path} is not a readable .npz file ({msg})") from None
    if not {"ts", "ys"} <= set(arrays):
        raise ValueError(
            f"--data {path} must hold arrays `ts` and `ys`; it has {sorted(arrays)}"
        )
    ts, ys = arrays["ts"], arrays["ys"]
    if ys.ndim == 3:
        ys = ys[None]
    if ts.ndim != 1 or ys.ndim != 4 or ys.shape[1] != ts.shape[0]:
        raise ValueError(
            f"--data needs ts of shape (T,) and ys of shape (T, n, d) or (B, T, n, d); "
            f"got ts {ts.shape} and ys {ys.shape}"
        )
    if ys.size == 0:
        raise ValueError(
            f"--data `ys` holds no tokens: got shape {arrays['ys'].shape}; it needs "
            "at least one trajectory of n >= 1 tokens of dimension d >= 1"
        )
    for name, a in (("ts", ts), ("ys", ys)):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(
                f"--data `{name}` must hold real floats; got dtype {a.dtype}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"--data `{name}` contains NaN or inf")
    if ts.shape[0] < 3:
        raise ValueError(f"--data needs at least 3 saved times; got {ts.shape[0]}")
    if not np.all(np.diff(ts) > 0):
        raise ValueError("--data `ts` must be strictly increasing")
    off = float(np.max(np.abs(np.linalg.norm(ys, axis=-1) - 1)))
    if off > 1e-5:
        raise ValueError(
            f"--data tokens are off the unit sphere (max ||x_i| - 1| = {off:.3g})"
        )
    return ts, ys
