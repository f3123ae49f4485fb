r"""`riemannian`: an Optax optimiser on a manifold (Riemannian gradient, inner
update, retraction)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._manifold import AbstractManifold


class RiemannianState(NamedTuple):
    inner: optax.OptState


def riemannian(
    optimizer: optax.GradientTransformation, manifold: AbstractManifold
) -> optax.GradientTransformation:
    r"""Turn an Optax optimiser into a Riemannian one on `manifold`.

    Every parameter leaf is an array `(..., d)` whose rows lie on `manifold`. One
    update with Euclidean gradient $g$ at $x$:

    1. Riemannian gradient $\operatorname{grad} f = P_x g$ (tangent projection; the
       induced metric);
    2. inner update $u = \text{optimizer.update}(P_x g)$, projected again onto $T_x M$
       (coordinate-wise rescalings such as Adam's leave the tangent space);
    3. retraction $x^+ = R_x(u)$.

    The returned updates are $R_x(u) - x$, so the usual
    `optax.apply_updates(params, updates)` (or `eqx.apply_updates`) lands on
    $R_x(u)$, on the manifold to round-off. The inner optimiser's moments live in
    the ambient space and are not transported: each step re-projects onto the
    current tangent space (a projection vector transport), which is the standard
    choice for Riemannian Adam/momentum on embedded spheres.

    **Arguments:**

    - `optimizer`: any `optax.GradientTransformation`.
    - `manifold`: a spherejax manifold (applied to every leaf).

    **Returns:** an `optax.GradientTransformation`; its `update` needs `params`.
    """
    if not isinstance(manifold, AbstractManifold):
        raise ValueError(f"`manifold` must be a spherejax manifold; got {manifold!r}.")

    def init_fn(params):
        return RiemannianState(optimizer.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("`riemannian(...).update` needs `params`.")
        grads = jax.tree.map(manifold.to_tangent, params, updates)
        inner, new_state = optimizer.update(grads, state.inner, params)
        step = jax.tree.map(manifold.to_tangent, params, inner)
        new = jax.tree.map(manifold.retract, params, step)
        return jax.tree.map(jnp.subtract, new, params), RiemannianState(new_state)

    return optax.GradientTransformation(init_fn, update_fn)
