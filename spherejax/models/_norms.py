r"""RMSNorm, the normalisation of Llama-era decoders."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


class RMSNorm(eqx.Module):
    r"""Root-mean-square normalisation with a learned gain (Zhang and Sennrich,
    2019), per token:

    $$\mathrm{RMSNorm}(x) = (c + w) \odot N_\varepsilon(x),\qquad
    N_\varepsilon(x) = \frac{x}{\sqrt{\tfrac1d |x|^2 + \varepsilon}},$$

    with $c = 0$ (Llama, Mistral, Qwen, OLMo 2) or $c = 1$ (`offset=1`: Gemma's
    `(1 + w)`). $N_0$ is the radial projection onto the sphere of radius
    $\sqrt d$; with $\varepsilon > 0$ a token of mean square $s$ lands at radius
    $\sqrt{d\, s/(s + \varepsilon)}$. `weight` has shape `(d,)` or `(L, d)` (one
    row per layer; `at(k)` selects layer `k`). The same interface as
    `spherejax.transformers.LayerNorm` (`normalize`, `affine`, `at`), so it serves
    the layer update rules as their normalisation.

    ??? cite
        B. Zhang, R. Sennrich, *Root mean square layer normalization*, NeurIPS
        2019, arXiv:1910.07467.
    """

    weight: Float[Array, "*L d"]
    eps: float = eqx.field(static=True)
    offset: float = eqx.field(static=True)

    def __init__(self, weight: ArrayLike, eps: float = 0.0, offset: float = 0.0):
        weight = jnp.asarray(weight)
        if weight.ndim not in (1, 2):
            raise ValueError(
                f"`weight` must have shape `(d,)` or `(L, d)`; got {weight.shape}."
            )
        if not (math.isfinite(float(eps)) and float(eps) >= 0):
            raise ValueError(f"`eps` must be a finite number >= 0; got {eps}.")
        self.weight, self.eps, self.offset = weight, float(eps), float(offset)

    @property
    def layered(self) -> bool:
        """Whether `weight` holds one row per layer."""
        return self.weight.ndim == 2

    def at(self, k) -> "RMSNorm":
        """The RMSNorm of layer `k` (itself when not `layered`)."""
        if not self.layered:
            return self
        return RMSNorm(self.weight[k], self.eps, self.offset)

    def normalize(self, x: Float[ArrayLike, "... d"]) -> Array:
        r"""$N_\varepsilon(x)$, row-wise (no gain)."""
        x = jnp.asarray(x)
        ms = jnp.mean(x * x, axis=-1, keepdims=True)
        return x / jnp.sqrt(ms + jnp.asarray(self.eps, x.dtype))

    def affine(self, z: Float[ArrayLike, "... d"]) -> Array:
        r"""$(c + w) \odot z$ (single-layer parameters)."""
        z = jnp.asarray(z)
        return (self.offset + self.weight.astype(z.dtype)) * z

    def __call__(self, x: Float[ArrayLike, "... d"]) -> Array:
        r"""$(c + w) \odot N_\varepsilon(x)$ (single-layer parameters)."""
        return self.affine(self.normalize(x))


RMSNorm.__init__.__doc__ = """**Arguments:**

- `weight`: the gain $w$, shape `(d,)` or `(L, d)` (one row per layer).
- `eps`: added to the mean square (default 0).
- `offset`: $c$ in $(c + w)$: 0 (default) or 1 (Gemma).
"""
