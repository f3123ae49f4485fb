"""Input files of the command line: initial tokens (`--x0`) and observed paths
(`fit --data`), validated."""


def load_x0(path):
    import numpy as np

    try:
        x0 = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"--x0 file not found: {path}") from None
    except Exception as e:
        raise ValueError(f"--x0 {path} is not a readable .npy array ({e})") from None
    if not isinstance(x0, np.ndarray) or x0.ndim != 2:
        raise ValueError(
            "--x0 must hold an (n, d) array of tokens; got shape "
            f"{getattr(x0, 'shape', '?')}"
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
    import numpy as np

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
