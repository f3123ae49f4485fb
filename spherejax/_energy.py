r"""Interaction energy of GLPR §3 / Burger et al."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._field import _scalar


def interaction_energy(
    x: Float[ArrayLike, "n d"],
    beta: ArrayLike,
    D: Float[ArrayLike, "d d"] | None = None,
    weights: Float[ArrayLike, " n"] | None = None,
) -> Float[Array, ""]:
    r"""$E_\beta(X) = \frac{1}{2\beta}\sum_{i,j} w_i w_j\, e^{\beta\langle x_i, D x_j\rangle}$.

    With `Q = K = V = I` and uniform weights, unnormalised self-attention (USA) is
    the Riemannian gradient ascent of `E` scaled by `n`:
    `dE/dt = (1/n) sum_i |xdot_i|^2`; softmax attention (SA) increases it too.

    **Arguments:**

    - `x`: tokens, shape `(n, d)`.
    - `beta`: inverse temperature (non-zero).
    - `D`: symmetric interaction matrix (default the identity).
    - `weights`: quadrature weights (default `1/n`).

    **Returns:** a scalar.

    ??? cite
        Geshkovski et al., *A mathematical perspective on Transformers*, §3;
        M. Burger, S. Kabri, Y. Korolev, T. Roith, L. Weigand, *Analysis of mean-field
        models arising from self-attention dynamics in transformer architectures
        with layer normalization*, Phil. Trans. R. Soc. A 383 (2025) 20240233.
    """
    x = jnp.asarray(x)
    beta = _scalar("beta", beta).astype(x.dtype)
    if x.ndim != 2:
        raise ValueError(f"`x` must have shape `(n, d)`; got {x.shape}.")
    n, d = x.shape
    w = jnp.full((n,), 1.0 / n, x.dtype) if weights is None else jnp.asarray(weights)
    if w.shape != (n,):
        raise ValueError(f"`weights` must have shape {(n,)}; got {w.shape}.")
    Dx = x if D is None else x @ jnp.asarray(D, x.dtype).T
    if Dx.shape != (n, d):
        raise ValueError(f"`D` must have shape {(d, d)}.")
    gram = x @ Dx.T
    return jnp.sum(w[:, None] * w[None, :] * jnp.exp(beta * gram)) / (2 * beta)
