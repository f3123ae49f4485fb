r"""Interaction energy of GLPR §3 / Burger et al."""

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike, Float

from ._checks import Checks, real_floating
from ._field import _scalar
from ._misc import is_concrete


def _expm1_ratio(z: Array) -> Array:
    """`expm1(z) / z`, equal to 1 at `z = 0` and smooth there."""
    small = jnp.abs(z) < 1e-5
    safe = jnp.where(small, 1.0, z)
    return jnp.where(small, 1 + z / 2 + z * z / 6, jnp.expm1(safe) / safe)


def interaction_energy(
    x: Float[ArrayLike, "n d"],
    beta: ArrayLike,
    D: Float[ArrayLike, "d d"] | None = None,
    weights: Float[ArrayLike, " n"] | None = None,
    *,
    log: bool = False,
    shifted: bool = False,
) -> Float[Array, ""]:
    r"""The interaction energy
    $E_\beta(X) = \frac{1}{2\beta}\sum_{i,j} w_i w_j\,
    e^{\beta\langle x_i, D x_j\rangle}$.

    With `Q = K = V = I` and uniform weights, unnormalised self-attention (USA) is
    the Riemannian gradient ascent of `E` scaled by `n`:
    `dE/dt = (1/n) sum_i |xdot_i|^2`; softmax attention (SA) increases it too.

    **Evaluation (no spurious overflow).** With $g_{ij} = \langle x_i, D x_j\rangle$
    and $a_{ij} = \beta g_{ij} + \log w_i + \log w_j$,

    $$E_\beta = \operatorname{sign}(\beta)\,
    \exp\Big(\operatorname{LSE}_{ij}(a_{ij}) - \log(2|\beta|)\Big),$$

    so `E` is finite whenever it is representable (for example at `beta = 100` in
    float32, where $e^\beta$ alone overflows) and is `inf` only when $|E_\beta|$
    itself exceeds the largest float (about $\beta > 709$ on the unit sphere in
    float64, $\beta > 88$ in float32); `log=True` returns
    $\log|E_\beta| = \operatorname{LSE}(a) - \log(2|\beta|)$, finite for every
    finite `beta != 0`.

    **`beta = 0`.** $E_\beta$ has a pole there (the constant
    $\sum_{ij} w_i w_j / (2\beta)$). `shifted=True` returns the energy without it,

    $$\tilde E_\beta = E_\beta - \frac{1}{2\beta}\sum_{i,j} w_i w_j
    = \frac12 \sum_{i,j} w_i w_j\, g_{ij}\, \frac{\operatorname{expm1}(\beta
    g_{ij})}{\beta g_{ij}},$$

    which has the same gradient flow, is continuous in `beta`, and equals
    $\frac12 \sum_{ij} w_i w_j g_{ij}$ at `beta = 0`. It is computed with `expm1`
    (no cancellation for small $\beta g$); when $\beta g_{ij}$ is large the
    log-domain value of $E_\beta$ minus the constant is used. The plain energy
    at `beta = 0` raises (`ValueError`, or `equinox`'s runtime error if traced).

    **Arguments:**

    - `x`: tokens, shape `(n, d)`.
    - `beta`: inverse temperature (finite; non-zero unless `shifted=True`).
    - `D`: symmetric interaction matrix (default the identity).
    - `weights`: positive quadrature weights (default `1/n`).
    - `log`: return $\log|E_\beta|$ (not with `shifted`).
    - `shifted`: return $\tilde E_\beta$.

    **Returns:** a scalar.

    ??? cite
        Geshkovski et al., *A mathematical perspective on Transformers*, §3;
        M. Burger, S. Kabri, Y. Korolev, T. Roith, L. Weigand, *Analysis of mean-field
        models arising from self-attention dynamics in transformer architectures
        with layer normalization*, Phil. Trans. R. Soc. A 383 (2025) 20240233.
    """
    x = real_floating("x", x)
    beta = _scalar("beta", beta).astype(x.dtype)
    if x.ndim != 2:
        raise ValueError(f"`x` must have shape `(n, d)`; got {x.shape}.")
    if log and shifted:
        raise ValueError("`log=True` and `shifted=True` cannot be combined.")
    n, d = x.shape
    if n == 0:
        raise ValueError("`x` must hold at least one token; got shape (0, d).")
    w = jnp.full((n,), 1.0 / n, x.dtype) if weights is None else jnp.asarray(weights)
    if w.shape != (n,):
        raise ValueError(f"`weights` must have shape {(n,)}; got {w.shape}.")
    w = w.astype(x.dtype)
    Dx = x if D is None else x @ jnp.asarray(D, x.dtype).T
    if Dx.shape != (n, d):
        raise ValueError(f"`D` must have shape {(d, d)}.")
    checks = Checks()
    checks.fail_or_defer(w > 0, "`weights` must be positive.")
    if not shifted:
        if is_concrete(beta) and float(np.asarray(beta)) == 0:
            raise ValueError(
                "`beta` = 0 is a pole of E_beta (the constant sum(w_i w_j) / "
                "(2 beta)); pass `shifted=True` for the energy without it."
            )
        checks.fail_or_defer(
            beta != 0, "`beta` = 0 is a pole of E_beta; use `shifted=True`."
        )
    x, w, beta = checks.attach((x, w, beta))
    gram = x @ Dx.T
    log_ww = jnp.log(w)[:, None] + jnp.log(w)[None, :]
    safe_beta = jnp.where(beta == 0, 1.0, beta)
    log_abs = logsumexp(beta * gram + log_ww) - jnp.log(2 * jnp.abs(safe_beta))
    if log:
        return log_abs
    sign = jnp.where(beta < 0, -1.0, 1.0).astype(x.dtype)
    energy = sign * jnp.exp(log_abs)
    if not shifted:
        return energy
    # beta * gram below `big`: the expm1 form is exact and finite; above, E_beta
    # exceeds the constant by a factor e^big at least, so subtracting it is exact
    big = 0.5 * float(np.log(np.finfo(x.dtype).max))
    z = beta * gram
    large = jnp.max(z) > big
    ww = jnp.exp(log_ww)
    direct = 0.5 * jnp.sum(ww * gram * _expm1_ratio(jnp.minimum(z, big)))
    constant = jnp.sum(ww) / (2 * safe_beta)
    return jnp.where(large, energy - constant, direct)
