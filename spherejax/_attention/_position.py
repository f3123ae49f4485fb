r"""Positions: how the scores depend on the token order.

A position part maps projected queries or keys $u_i \in \mathbb{R}^{c}$ (one head)
and their token positions $p_i$ to $R(p_i) u_i$. Rotary embeddings use rotations,
so the score $\langle R(p_i) q_i, R(p_j) k_j\rangle = \langle q_i, R(p_j - p_i) k_j
\rangle$ depends on the positions through $p_j - p_i$ only.
"""

import abc
import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


class AbstractPosition(eqx.Module):
    """A position part: `__call__(u, positions)` with `u` of shape `(..., n, c)`
    (queries or keys of every head) and integer `positions` `(n,)`."""

    @abc.abstractmethod
    def __call__(
        self, u: Float[Array, "*h n c"], positions: Int[Array, " n"]
    ) -> Float[Array, "*h n c"]:
        """`u` with the position of each token applied."""


_SCALINGS = ("default", "linear", "llama3")


def _scaling_items(scaling) -> tuple[tuple[str, Any], ...] | None:
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(
            "`scaling` must be a dict (a `rope_scaling` entry) or None; got "
            f"{scaling!r}."
        )
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in _SCALINGS:
        raise ValueError(
            f"unsupported rope scaling type {kind!r}; supported: {_SCALINGS}."
        )
    need = {
        "default": (),
        "linear": ("factor",),
        "llama3": (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ),
    }[kind]
    missing = [k for k in need if k not in scaling]
    if missing:
        raise ValueError(f"rope scaling {kind!r} needs the keys {missing}.")
    items = {"rope_type": kind, **{k: float(scaling[k]) for k in need}}
    return tuple(sorted(items.items()))


class RoPE(AbstractPosition):
    r"""Rotary position embeddings (Su et al., *RoFormer*, 2021) in Hugging Face's
    `rotate_half` convention.

    For a head of size $c$, the leading $r = $ `fraction` $\cdot c$ coordinates
    (rounded down to an even number) are rotated; coordinate $a < r/2$ pairs with
    $a + r/2$ and turns by the angle $p\,\omega_a$ at position $p$, with
    frequencies $\omega_a = \theta^{-2a/r}$:

    $$R(p)u = u \odot \cos(p\omega) + \mathrm{rot}(u) \odot \sin(p\omega),\qquad
    \mathrm{rot}(u) = (-u_{r/2:r},\ u_{0:r/2}),$$

    the remaining $c - r$ coordinates unchanged (GPT-NeoX's `rotary_pct`).
    `scaling` takes a `rope_scaling` entry of a `transformers` config:
    `{"rope_type": "linear", "factor": f}` divides every frequency by $f$;
    `"llama3"` divides the low frequencies by `factor`, keeps the high ones and
    interpolates in between (Llama 3.1).

    ??? cite
        J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu, *RoFormer: Enhanced
        Transformer with rotary position embedding*, arXiv:2104.09864.
    """

    theta: float = eqx.field(static=True)
    fraction: float = eqx.field(static=True)
    scaling: tuple[tuple[str, Any], ...] | None = eqx.field(static=True)

    def __init__(
        self,
        theta: float = 10000.0,
        fraction: float = 1.0,
        scaling: dict | None = None,
    ):
        if not (math.isfinite(theta) and theta > 1):
            raise ValueError(f"`theta` must be a finite number > 1; got {theta!r}.")
        if not (0 < fraction <= 1):
            raise ValueError(f"`fraction` must be in (0, 1]; got {fraction!r}.")
        self.theta = float(theta)
        self.fraction = float(fraction)
        self.scaling = _scaling_items(scaling)

    def rotary_dim(self, c: int) -> int:
        """The number $r$ of rotated coordinates of a head of size `c`."""
        r = int(c * self.fraction)
        return r - r % 2

    def frequencies(self, c: int) -> np.ndarray:
        r"""The frequencies $\omega_a$, $a < r/2$, for heads of size `c` (float64)."""
        r = self.rotary_dim(c)
        omega = 1.0 / self.theta ** (np.arange(0, r, 2, dtype=np.float64) / r)
        if self.scaling is None:
            return omega
        s = dict(self.scaling)
        kind = s["rope_type"]
        if kind == "linear":
            return omega / s["factor"]
        if kind == "llama3":
            factor = s["factor"]
            old = s["original_max_position_embeddings"]
            low, high = s["low_freq_factor"], s["high_freq_factor"]
            wavelen = 2 * np.pi / omega
            scaled = np.where(wavelen > old / low, omega / factor, omega)
            smooth = (old / wavelen - low) / (high - low)
            mixed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelen >= old / high) & (wavelen <= old / low)
            return np.where(medium, mixed, scaled)
        return omega

    def __call__(self, u, positions):
        c = u.shape[-1]
        r = self.rotary_dim(c)
        if r == 0:
            return u
        omega = jnp.asarray(self.frequencies(c), u.dtype)
        angles = positions.astype(u.dtype)[:, None] * omega  # (n, r/2)
        cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)
        sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)
        rot, rest = u[..., :r], u[..., r:]
        half = r // 2
        turned = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
        out = rot * cos + turned * sin
        return out if r == c else jnp.concatenate([out, rest], axis=-1)


RoPE.__init__.__doc__ = """**Arguments:**

- `theta`: the base $\\theta$ of the frequencies (`rope_theta`; default 10000).
- `fraction`: the fraction of each head's coordinates that rotate (default 1).
- `scaling`: a `rope_scaling` dict (`"linear"` or `"llama3"`), or `None`.
"""
