r"""Two small tasks on data available offline, and the Euler–Lagrange residual of a
trained flow.

- `digits_task`: scikit-learn's bundled 8x8 digits (1797 images), each image a set
  of patch tokens plus a class token on the sphere, classified from the class token.
- `bytes_task`: a byte-level causal language model on the Python standard
  library's own source files.
- `flow_residual`: how far the trained flow's paths are from solving the
  Euler–Lagrange equation of a Lagrangian (by default the kinetic one, whose
  solutions are geodesics: the path-optimal flows of the kinetic action).
"""

import math
import os
import pathlib
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._action import AbstractLagrangian, Kinetic, euler_lagrange_residual
from .._attention import Causal
from .._field import FeedForward, SelfAttention, Sum
from .._integrate import solve
from ._model import ByteEmbedding, ClassReadout, FlowModel, PatchEmbedding, TokenReadout


def _heads(key, heads: int, k: int, d: int, scale: float):
    return scale * jr.normal(key, (heads, k, d)) / math.sqrt(d)


def digits_data(
    *, patch: int = 2, test_fraction: float = 0.25, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as patch tokens: `((x_train, y_train), (x_test,
    y_test))`, `x` of shape `(N, (8 / patch)^2, patch^2)` with pixels scaled to
    `[0, 1]`, split at random (`seed`) with `test_fraction` held out.

    Needs scikit-learn (the `train` extra), which ships the data in its wheel.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the digits task needs scikit-learn: `pip install spherejax[train]`."
        ) from e
    if patch not in (1, 2, 4, 8):
        raise ValueError(f"`patch` must divide 8 (1, 2, 4 or 8); got {patch}.")
    digits: Any = load_digits()
    images = digits.images.astype(np.float64) / 16.0  # (N, 8, 8)
    g = 8 // patch
    x = images.reshape(-1, g, patch, g, patch).transpose(0, 1, 3, 2, 4)
    x = x.reshape(len(images), g * g, patch * patch)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def digits_task(
    key: PRNGKeyArray,
    *,
    d: int = 16,
    heads: int = 2,
    patch: int = 2,
    beta: float = 1.0,
    t1: float = 1.0,
) -> tuple[FlowModel, tuple, tuple]:
    """The digits classifier and its data: `(model, train, test)`.

    The model embeds the `(8 / patch)^2` patches and a class token on the unit
    sphere of `R^d` (`PatchEmbedding`), runs a multi-head softmax attention flow
    (`heads` heads of width `d / heads`, trained `Q`, `K`, merged values `V`)
    for time `t1`, and reads 10 class logits off the class token
    (`ClassReadout`).
    """
    k1, k2, k3, k4, k5 = jr.split(key, 5)
    train, test = digits_data(patch=patch)
    m, p = train[0].shape[1:]
    kh = d // heads
    field = SelfAttention(
        _heads(k1, heads, kh, d, 1.0),
        _heads(k2, heads, kh, d, 1.0),
        0.5 * jr.normal(k3, (heads, d, d)) / math.sqrt(d),
        beta,
    )
    model = FlowModel(
        PatchEmbedding(k4, m, p, d), field, ClassReadout(k5, d, 10), t1=t1
    )
    return model, train, test


_CORPUS = (
    "textwrap.py",
    "string.py",
    "bisect.py",
    "heapq.py",
    "fractions.py",
    "shlex.py",
    "difflib.py",
    "argparse.py",
    "functools.py",
    "dataclasses.py",
)


def bytes_data(
    *, length: int = 32, max_bytes: int = 200_000, test_fraction: float = 0.1
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Next-byte prediction on the Python standard library's source (a fixed list of
    modules, read from this interpreter's installation, no download):
    `((x_train, y_train), (x_test, y_test))` with `x` the windows of `length`
    bytes and `y` the same windows shifted by one byte. The first
    `1 - test_fraction` of the text trains, the rest tests."""
    root = pathlib.Path(os.path.dirname(os.__file__))
    text = b"".join(
        (root / name).read_bytes() for name in _CORPUS if (root / name).exists()
    )
    text = text[:max_bytes]
    if len(text) < 4 * (length + 1):
        raise ValueError(
            f"the standard library source found under {root} is too short "
            f"({len(text)} bytes)."
        )
    data = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    windows = len(data) // (length + 1)
    w = data[: windows * (length + 1)].reshape(windows, length + 1)
    x, y = w[:, :-1], w[:, 1:]
    n_test = max(1, int(round(test_fraction * windows)))
    return (x[:-n_test], y[:-n_test]), (x[-n_test:], y[-n_test:])


def bytes_task(
    key: PRNGKeyArray,
    *,
    length: int = 32,
    d: int = 32,
    heads: int = 4,
    hidden: int = 64,
    beta: float = 1.0,
    t1: float = 1.0,
    max_bytes: int = 200_000,
) -> tuple[FlowModel, tuple, tuple]:
    """The byte-level causal language model and its data: `(model, train, test)`.

    Tokens are byte embeddings plus positions on the unit sphere of `R^d`
    (`ByteEmbedding`); the flow is causal softmax attention (`heads` heads)
    plus a token-wise feed-forward term (`hidden` tanh units), run for time `t1`;
    every token's final state gives logits for the next byte (`TokenReadout`).
    The task loss in nats per byte divided by $\\ln 2$ is bits per byte.
    """
    k1, k2, k3, k4, k5, k6 = jr.split(key, 6)
    train, test = bytes_data(length=length, max_bytes=max_bytes)
    kh = d // heads
    attention = SelfAttention(
        _heads(k1, heads, kh, d, 1.0),
        _heads(k2, heads, kh, d, 1.0),
        0.5 * jr.normal(k3, (heads, d, d)) / math.sqrt(d),
        beta,
        mask=Causal(),
    )
    mlp = FeedForward.random(k4, d, hidden, scale=0.5, activation=jnp.tanh)
    model = FlowModel(
        ByteEmbedding(k5, length, d), Sum(attention, mlp), TokenReadout(k6, d), t1=t1
    )
    return model, train, test


def flow_residual(
    model: FlowModel,
    inputs,
    *,
    lagrangian: AbstractLagrangian | None = None,
    num_points: int = 33,
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> float:
    r"""The relative Euler–Lagrange residual of the model's flow,

    $$\rho = \Big(\frac{\sum_{b,k,i} |R_{b,k,i}|^2}
    {\sum_{b,k,i} |\ddot x_{b,i}(t_k)|^2}\Big)^{1/2},$$

    with $R$ the constrained residual of `lagrangian` on the path of example $b$
    sampled at `num_points` uniform times (`spherejax.variational.
    euler_lagrange_residual`, second-order differences) and $\ddot x = \partial_x
    X \cdot X + \partial_t X$ the path's exact acceleration. For the kinetic
    Lagrangian (default) $R = P_x \ddot x$, so $\rho \in [0, 1]$ is the share of
    the acceleration that is not the sphere's constraint force: 0 on geodesics
    (path-optimal for the kinetic action), 1 when all of it is tangential.

    **Arguments:**

    - `model`: a `FlowModel`.
    - `inputs`: a batch of inputs (leading example axis).
    - `lagrangian`: a spherejax Lagrangian (default `Kinetic()`); with
      `Tracking(model.field)` the flow is an exact solution and $\rho$ measures
      the discretisation error only.
    - `num_points`: the sampling of each path (at least 5).
    - `rtol`, `atol`: the tolerances of the solve that samples the paths.

    **Returns:** $\rho$ (a float).
    """
    lagrangian = Kinetic() if lagrangian is None else lagrangian
    ts = jnp.linspace(0.0, model.t1, num_points)
    num = den = 0.0
    for x in np.asarray(inputs):
        r, a = _residual_terms(model, jnp.asarray(x), ts, lagrangian, rtol, atol)
        num, den = num + float(r), den + float(a)
    return math.sqrt(num / den)


@eqx.filter_jit
def _residual_terms(model, x, ts, lagrangian, rtol, atol):
    field = model.field
    y0 = model.embedding(x)
    path = cast(Array, solve(field, y0, model.t1, ts=ts, rtol=rtol, atol=atol).ys)
    residual = euler_lagrange_residual(path, ts, lagrangian, field.manifold)

    def acceleration(t, y):
        v = field(t, y, None)
        tangent = (jnp.ones_like(t), v)
        return jax.jvp(lambda s, z: field(s, z, None), (t, y), tangent)[1]

    acc = jax.vmap(acceleration)(ts[1:-1], path[1:-1])
    return jnp.sum(residual**2), jnp.sum(acc**2)
