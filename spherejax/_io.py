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
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._version import __version__


MAGIC = "spherejax-model"
FORMAT_VERSION = 1


def _version() -> str:
    return __version__


def _leaf_specs(tree) -> list:
    specs = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if eqx.is_array(leaf):
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


def save(path: str | os.PathLike, model, hyperparams: dict | None = None) -> None:
    """Write `model` (any equinox module / pytree of arrays) to `path`.

    **Arguments:**

    - `path`: the file to write. It is written to a temporary file next to it and
      moved into place, so an interrupted save never leaves a half-written file.
    - `model`: the module to save (e.g. a `SelfAttention` field or a fitted model).
    - `hyperparams`: a JSON-serialisable dict of whatever is needed to rebuild a
      skeleton of `model` (see `load`); stored in the header.
    """
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
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path) -> tuple[dict, bytes]:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
            payload = f.read()
    except FileNotFoundError:
        raise ValueError(f"no such file: {path!r}.") from None
    except IsADirectoryError:
        raise ValueError(
            f"{path!r} is a directory, not a spherejax model file."
        ) from None
    try:
        header = json.loads(first)
        ok = isinstance(header, dict) and header.get("format") == MAGIC
    except (UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise ValueError(
            f"{path!r} is not a spherejax model file (no spherejax header; was it "
            "written by `spherejax.save`?)."
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format version {header.get('format_version')}; this "
            f"spherejax ({_version()}) reads version {FORMAT_VERSION}."
        )
    if len(payload) != header["payload_bytes"]:
        raise ValueError(
            f"{path!r} is truncated or padded: its header announces "
            f"{header['payload_bytes']} bytes of parameters, the file holds {len(payload)}."
        )
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise ValueError(
            f"{path!r} is corrupted: the parameters' checksum does not match."
        )
    return header, payload


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
    if callable(like) and not isinstance(like, eqx.Module):
        like = like(dict(header["hyperparams"]))
    path = os.fspath(path)
    if type(like).__name__ != header["class"]:
        raise ValueError(
            f"{path!r} holds a `{header['class']}`; `like` is a `{type(like).__name__}`."
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

    def read_leaf(f, x):  # cast to the skeleton's dtype (float64 file, float32 run)
        if isinstance(x, jax.Array):
            return jnp.asarray(np.load(f)).astype(x.dtype)
        return eqx.default_deserialise_filter_spec(f, x)

    return eqx.tree_deserialise_leaves(io.BytesIO(payload), like, filter_spec=read_leaf)


def field_hyperparams(field) -> dict:
    """Hyperparameters that rebuild a skeleton of a `SelfAttention` field with
    `field_from_hyperparams` (used by the command line to save its fields)."""
    from ._field import SelfAttention
    from ._manifold import Sphere

    if not isinstance(field, SelfAttention):
        raise ValueError("`field_hyperparams` supports `SelfAttention` fields only.")
    if not isinstance(field.manifold, Sphere):
        raise ValueError("`field_hyperparams` supports fields on a `Sphere` only.")
    h, k, d = field.Q.shape
    return {
        "class": "SelfAttention",
        "heads": int(h),
        "k": int(k),
        "d": int(d),
        "normalization": field.normalization,
        "causal": field.causal,
        "weights": None if field.weights is None else int(field.weights.shape[0]),
        "radius": float(field.manifold.radius),
        "chunk_size": field.chunk_size,
        "sinkhorn_iters": field.sinkhorn_iters,
    }


def field_from_hyperparams(hp: dict):
    """A skeleton `SelfAttention` field with the options of `hp` (from
    `field_hyperparams`), ready to be filled by `load`."""
    from ._field import SelfAttention
    from ._manifold import Sphere

    if hp.get("class") != "SelfAttention":
        raise ValueError(f"cannot rebuild a field of class {hp.get('class')!r}.")
    h, k, d = hp["heads"], hp["k"], hp["d"]
    qk = np.zeros((h, k, d)) if h > 1 else np.zeros((k, d))
    v = np.zeros((h, d, d)) if h > 1 else np.zeros((d, d))
    m = hp["weights"]
    return SelfAttention(
        qk,
        qk,
        v,
        0.0,
        normalization=hp["normalization"],
        causal=hp["causal"],
        weights=None if m is None else np.full(m, 1.0 / m),
        manifold=Sphere(hp["radius"]),
        chunk_size=hp["chunk_size"],
        sinkhorn_iters=hp["sinkhorn_iters"],
    )
