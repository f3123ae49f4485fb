"""Saving and loading fields and fitted models.

A spherejax file is one line of JSON (the header) followed by the bytes of
`equinox.tree_serialise_leaves`. The header records the format version, the
spherejax version, the model's class and tree structure, the shape and dtype of every
array leaf, the user's hyperparameters, and the payload's length and SHA-256, so that
a truncated, corrupted or mismatched file is refused with a clear `ValueError`
instead of being loaded silently wrong.
"""

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._version import __version__


MAGIC = "spherejax-model"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # the JSON header line
MAX_PAYLOAD_BYTES = 1 << 34  # 16 GiB of parameters
TMP_SUFFIX = ".tmp"


def _write_temporary(path: str | os.PathLike, data: bytes) -> str:
    """Write `data` to a new temporary file next to `path`; returns its name.

    `tempfile.mkstemp` gives an unpredictable name opened with
    `O_CREAT | O_EXCL` (a planted file or symlink is never followed). The bytes are
    flushed to disk; on any failure (disk full, interruption) the temporary file is
    removed and the error re-raised. Names start with `.` and end with
    `TMP_SUFFIX`.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() gives
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either untouched or complete: a
    temporary file (`_write_temporary`) renamed onto `path` with `os.replace`
    (atomic on POSIX), removed if the rename fails (e.g. `path` is a folder)."""
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _version() -> str:
    return __version__


def _leaf_specs(tree) -> list:
    specs = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct):
            specs.append({"shape": list(leaf.shape), "dtype": str(leaf.dtype)})
        else:
            specs.append({"python": type(leaf).__name__})
    return specs


def _structure(tree) -> str:
    return str(jax.tree_util.tree_structure(tree))


def _check_json(name: str, value) -> None:
    """Hyperparameters must survive a JSON round trip unchanged (and be finite)."""
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`{name}` must be JSON-serialisable with finite numbers; {e}."
        ) from None
    if json.loads(text) != value:
        raise ValueError(
            f"`{name}` does not survive a JSON round trip (use lists, not tuples, "
            "and string keys)."
        )


def _model_bytes(model, hyperparams: dict | None) -> bytes:
    """The bytes `save` writes: the JSON header line and the serialised leaves."""
    hyperparams = {} if hyperparams is None else hyperparams
    if not isinstance(hyperparams, dict):
        raise ValueError(
            f"`hyperparams` must be a dict; got {type(hyperparams).__name__}."
        )
    _check_json("hyperparams", hyperparams)
    for leaf in jax.tree_util.tree_leaves(model):
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            if not bool(jnp.all(jnp.isfinite(leaf))):
                raise ValueError(
                    "`model` has a NaN or inf parameter; refusing to save it."
                )
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    payload = buffer.getvalue()
    header = {
        "format": MAGIC,
        "format_version": FORMAT_VERSION,
        "spherejax_version": _version(),
        "class": type(model).__name__,
        "structure": _structure(model),
        "leaves": _leaf_specs(model),
        "hyperparams": hyperparams,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    return json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def save(path: str | os.PathLike, model, hyperparams: dict | None = None) -> None:
    """Write `model` (any equinox module / pytree of arrays) to `path`.

    **Arguments:**

    - `path`: the file to write. It is written to a temporary file next to it and
      moved into place, so an interrupted save never leaves a half-written file.
    - `model`: the module to save (e.g. a `SelfAttention` field or a fitted model).
    - `hyperparams`: a JSON-serialisable dict of whatever is needed to rebuild a
      skeleton of `model` (see `load`); stored in the header.
    """
    _write_atomic(path, _model_bytes(model, hyperparams))


_KIND_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


def _check_header(path: str, header: dict, payload_bytes: int | None) -> None:
    """Types and sizes of the header's fields, before anything is allocated."""
    kinds = {
        "class": str,
        "structure": str,
        "leaves": list,
        "hyperparams": dict,
        "payload_bytes": int,
        "payload_sha256": str,
    }
    for key, kind in kinds.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise ValueError(
                f"{path!r} has a malformed header: `{key}` is missing or not "
                f"{_KIND_NAMES[kind]}."
            )
    size = header["payload_bytes"]
    if not 0 <= size <= MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"{path!r} has a malformed header: it announces {size} bytes of "
            f"parameters (limit {MAX_PAYLOAD_BYTES})."
        )
    if payload_bytes is not None and size != payload_bytes:
        raise ValueError(
            f"{path!r} is truncated or padded: its header announces {size} bytes of "
            f"parameters, the file holds {payload_bytes}."
        )
    declared = 0
    for k, leaf in enumerate(header["leaves"]):
        if isinstance(leaf, dict) and "python" in leaf:
            continue
        nbytes = _leaf_bytes(leaf)
        if nbytes is None:
            raise ValueError(
                f"{path!r} has a malformed header: leaf {k} is {leaf!r}, not a shape "
                "and a dtype."
            )
        declared += nbytes
    if declared > size:
        raise ValueError(
            f"{path!r} has a malformed header: its parameter shapes need {declared} "
            f"bytes but the file holds {size}."
        )


def _leaf_bytes(leaf) -> int | None:
    """Bytes of an array leaf `{"shape": [...], "dtype": "..."}`; None if malformed."""
    if not isinstance(leaf, dict):
        return None
    shape = leaf.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        return None
    if not isinstance(leaf.get("dtype"), str):
        return None
    try:
        itemsize = np.dtype(leaf["dtype"]).itemsize
    except TypeError:
        return None
    return math.prod(shape) * itemsize


def _read(path) -> tuple[dict, bytes]:
    """Header and payload, with every read bounded by a declared, checked size."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            first = f.readline(MAX_HEADER_BYTES + 1)
            header = _parse_header(path, first)
            _check_header(path, header, None)
            stat = os.fstat(f.fileno())
            if os.path.isfile(path):  # a regular file: its size is known
                _check_header(path, header, stat.st_size - len(first))
            payload = f.read(header["payload_bytes"] + 1)
    except FileNotFoundError:
        raise ValueError(f"no such file: {path!r}.") from None
    except IsADirectoryError:
        raise ValueError(
            f"{path!r} is a directory, not a spherejax model file."
        ) from None
    _check_header(path, header, len(payload))
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise ValueError(
            f"{path!r} is corrupted: the parameters' checksum does not match."
        )
    return header, payload


def _parse_header(path: str, first: bytes) -> dict:
    if len(first) > MAX_HEADER_BYTES or not first.endswith(b"\n"):
        header = None
    else:
        try:
            header = json.loads(first)
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict) or header.get("format") != MAGIC:
        raise ValueError(
            f"{path!r} is not a spherejax model file (no spherejax header; was it "
            "written by `spherejax.io.save`?)."
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format version {header.get('format_version')}; this "
            f"spherejax ({_version()}) reads version {FORMAT_VERSION}."
        )
    return header


def load_header(path: str | os.PathLike) -> dict:
    """The header of a file written by `save` (class, hyperparameters, versions,
    leaf shapes), after checking the file is complete and uncorrupted."""
    header, _ = _read(path)
    return header


def load(path: str | os.PathLike, like: Any | Callable[[dict], Any]):
    """Read a model written by `save`.

    **Arguments:**

    - `path`: the file.
    - `like`: a skeleton with the same structure as the saved model (e.g. a freshly
      built field of the same class, options and shapes), or a callable that takes
      the saved hyperparameters dict and returns such a skeleton.

    **Returns:** the model, with `like`'s structure and the saved parameters (array
    leaves take `like`'s dtype, so a float64 save loads into a float32 skeleton).

    Raises `ValueError` when the file is missing, is not a spherejax file, is
    truncated or corrupted, or holds a model of a different class, structure
    (static options such as `normalization`) or parameter shapes than `like`.
    """
    header, payload = _read(path)
    path = os.fspath(path)
    if callable(like) and not isinstance(like, eqx.Module):
        build = like
        # shapes first (nothing allocated), checked against the file's leaves
        _check_like(
            path, header, eqx.filter_eval_shape(build, dict(header["hyperparams"]))
        )
        like = build(dict(header["hyperparams"]))
    _check_like(path, header, like)

    def read_leaf(f, x):  # cast to the skeleton's dtype (float64 file, float32 run)
        if isinstance(x, jax.Array):
            return jnp.asarray(np.load(f)).astype(x.dtype)
        return eqx.default_deserialise_filter_spec(f, x)

    try:
        return eqx.tree_deserialise_leaves(
            io.BytesIO(payload), like, filter_spec=read_leaf
        )
    except (ValueError, RuntimeError) as e:  # equinox wraps numpy's ValueError
        cause = e.__cause__ if e.__cause__ is not None else e
        raise ValueError(
            f"{path!r} is not a valid model file: a parameter cannot be read ({cause})."
        ) from e


def _check_like(path: str, header: dict, like) -> None:
    """`like` (a module or its shapes) matches the saved class, structure and
    leaves."""
    if type(like).__name__ != header["class"]:
        raise ValueError(
            f"{path!r} holds a `{header['class']}`; `like` is a "
            f"`{type(like).__name__}`."
        )
    if _structure(like) != header["structure"]:
        raise ValueError(
            f"{path!r} holds a `{header['class']}` with a different structure or "
            f"options than `like`:\n  saved: {header['structure']}\n  like:  "
            f"{_structure(like)}"
        )
    saved, wanted = header["leaves"], _leaf_specs(like)
    if len(saved) != len(wanted):
        raise ValueError(f"{path!r} has {len(saved)} leaves; `like` has {len(wanted)}.")
    for k, (s, w) in enumerate(zip(saved, wanted)):
        if ("shape" in s) != ("shape" in w) or s.get("shape") != w.get("shape"):
            raise ValueError(
                f"{path!r}: parameter {k} has shape {s.get('shape', s.get('python'))}; "
                f"`like` expects {w.get('shape', w.get('python'))}."
            )


def field_hyperparams(field) -> dict:
    """Hyperparameters that rebuild a skeleton of a `SelfAttention` field with
    `field_from_hyperparams` (used by the command line to save its fields)."""
    from ._attention import Causal, Sinkhorn, normalization_name
    from ._field import SelfAttention
    from ._manifold import Sphere

    if not isinstance(field, SelfAttention):
        raise ValueError("`field_hyperparams` supports `SelfAttention` fields only.")
    if not isinstance(field.manifold, Sphere):
        raise ValueError("`field_hyperparams` supports fields on a `Sphere` only.")
    extras = ("query_bias", "key_bias", "value_bias", "output_bias", "key_mask")
    present = [name for name in extras if getattr(field, name, None) is not None]
    if field.position is not None:
        present.append("position")
    if field.O is not None or field.K.shape[0] != field.Q.shape[0]:
        present.append("grouped or factorised heads")
    if any(type(m) is not Causal for m in field.masks) and field.key_mask is None:
        present.append("masks other than `Causal()`")
    name = normalization_name(field.normalization)
    if name is None:
        present.append(f"the normalisation {type(field.normalization).__name__}")
    if present:
        raise ValueError(
            "`field_hyperparams` supports `SelfAttention` fields without biases, "
            f"key masks or other parts; this one has {', '.join(present)} (save it "
            "with `save` and load it into a skeleton built the same way)."
        )
    normalization = field.normalization
    iterations = (
        normalization.iterations if isinstance(normalization, Sinkhorn) else 100
    )
    h, k, d = field.Q.shape
    return {
        "class": "SelfAttention",
        "heads": int(h),
        "k": int(k),
        "d": int(d),
        "normalization": name,
        "causal": field.causal,
        "weights": None if field.weights is None else int(field.weights.shape[0]),
        "radius": float(field.manifold.radius),
        "chunk_size": field.chunk_size,
        "sinkhorn_iters": iterations,
    }


def field_from_hyperparams(hp: dict):
    """A skeleton `SelfAttention` field with the options of `hp` (from
    `field_hyperparams`), ready to be filled by `load`."""
    from ._attention import Causal, Chunked, Dense, normalization_from_name
    from ._field import SelfAttention
    from ._manifold import Sphere

    if not isinstance(hp, dict) or hp.get("class") != "SelfAttention":
        got = hp.get("class") if isinstance(hp, dict) else hp
        raise ValueError(f"cannot rebuild a field of class {got!r}.")
    _check_field_hyperparams(hp)
    h, k, d = hp["heads"], hp["k"], hp["d"]
    qk = np.zeros((h, k, d)) if h > 1 else np.zeros((k, d))
    v = np.zeros((h, d, d)) if h > 1 else np.zeros((d, d))
    m = hp["weights"]
    return SelfAttention(
        qk,
        qk,
        v,
        0.0,
        normalization=normalization_from_name(
            hp["normalization"], iterations=hp["sinkhorn_iters"]
        ),
        mask=Causal() if hp["causal"] else None,
        weights=None if m is None else np.full(m, 1.0 / m),
        manifold=Sphere(hp["radius"]),
        evaluation=Dense() if hp["chunk_size"] is None else Chunked(hp["chunk_size"]),
    )


def _check_field_hyperparams(hp: dict) -> None:
    """Every key of `field_hyperparams` present, of the right type and in range."""

    def count(v, optional=False):
        if optional and v is None:
            return True
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 24

    checks = {
        "heads": (count, "a positive integer"),
        "k": (count, "a positive integer"),
        "d": (count, "a positive integer"),
        "normalization": (lambda v: isinstance(v, str), "a string"),
        "causal": (lambda v: isinstance(v, bool), "true or false"),
        "weights": (lambda v: count(v, True), "null or a positive integer"),
        "radius": (
            lambda v: (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
            ),
            "a positive number",
        ),
        "chunk_size": (lambda v: count(v, True), "null or a positive integer"),
        "sinkhorn_iters": (count, "a positive integer"),
    }
    for key, (ok, what) in checks.items():
        if key not in hp:
            raise ValueError(f"the field's hyperparameters lack the key {key!r}.")
        if not ok(hp[key]):
            raise ValueError(
                f"the field's hyperparameter {key!r} must be {what}; got {hp[key]!r}."
            )
