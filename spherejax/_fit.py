r"""Fitting with Optax: `fit`, the `riemannian` optimiser wrapper and ready-made
losses (tracking action, shooting through `solve`, end-point matching with a
kinetic-energy regulariser).

A loss is any callable `loss(model, data) -> scalar`; `fit` differentiates it with
respect to the model's trainable leaves.
"""

import time
from collections.abc import Callable
from typing import Any, cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PyTree

from ._action import Kinetic, Tracking, action
from ._field import AbstractField
from ._integrate import solve
from ._manifold import AbstractManifold
from ._riemannian import riemannian as riemannian


def _progress(steps: int, enabled: bool):
    if not enabled:
        return None
    try:
        import tqdm

        return tqdm.tqdm(total=steps, desc="fit")
    except ImportError:
        return None


def fit(
    model: PyTree,
    loss: Callable[[PyTree, Any], Array],
    data: Any,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    progress: bool = True,
    filter_spec: PyTree = eqx.is_inexact_array,
) -> tuple[PyTree, Array]:
    r"""Minimise `loss(model, data)` over the trainable leaves of `model` with Optax.

    One step is `eqx.filter_value_and_grad` of the loss with respect to the
    trainable part, `optimizer.update`, `eqx.apply_updates`, compiled once with
    `jax.jit`. The loop runs on the host so a progress bar (tqdm if installed,
    else a line every tenth of the run) can report the loss.

    **Arguments:**

    - `model`: a pytree (typically a spherejax field).
    - `loss`: `loss(model, data) -> scalar`.
    - `data`: any pytree of arrays (the full batch, passed every step).
    - `optimizer`: an Optax optimiser (wrap with `riemannian` for parameters that
      live on a manifold). Optimisers with extra arguments
      (`optax.GradientTransformationExtraArgs`, e.g. `optax.lbfgs()`) also receive
      `value`, `grad` and `value_fn` (the full-batch loss), as their line searches
      need.
    - `steps`: number of steps.
    - `progress`: show progress.
    - `filter_spec`: selects trainable leaves (an equinox filter or a pytree of
      bools with the model's structure; default every inexact array). For example
      `eqx.tree_at(lambda m: m.beta, jax.tree.map(eqx.is_inexact_array, model), False)`
      freezes `beta`.

    **Returns:** `(model, losses)`: the fitted model and the loss before each step,
    shape `(steps,)`.

    A loss that becomes NaN or inf stops the run (checked every tenth of it and at
    the last step) with a `FloatingPointError` naming the first non-finite step.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"`steps` must be a positive integer; got {steps}.")
    params, static = eqx.partition(model, filter_spec)
    opt_state = optimizer.init(params)

    def loss_params(params, data):
        return loss(eqx.combine(params, static), data)

    extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    @jax.jit
    def step(params, opt_state, data):
        value, grads = jax.value_and_grad(loss_params)(params, data)
        if extra_args:  # e.g. optax.lbfgs: line searches need the loss itself
            updates, opt_state = cast(
                optax.GradientTransformationExtraArgs, optimizer
            ).update(
                grads,
                opt_state,
                params,
                value=value,
                grad=grads,
                value_fn=lambda p: loss_params(p, data),
            )
        else:
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, value

    bar = _progress(steps, progress)
    every = max(1, steps // 10)
    losses = []
    start = time.perf_counter()
    for i in range(int(steps)):
        params, opt_state, value = step(params, opt_state, data)
        losses.append(value)
        if (i % every == 0 or i == steps - 1) and not np.isfinite(float(value)):
            _raise_nonfinite(losses)
        if bar is not None:
            bar.update(1)
            if i % every == 0 or i == steps - 1:
                bar.set_postfix(loss=f"{float(value):.3e}")
        elif progress and (i % every == 0 or i == steps - 1):
            elapsed = time.perf_counter() - start
            print(f"fit step {i + 1}/{steps}  loss {float(value):.4e}  {elapsed:.1f}s")
    if bar is not None:
        bar.close()
    return eqx.combine(params, static), jnp.stack(losses)


def _raise_nonfinite(losses: list) -> None:
    values = np.asarray(jnp.stack(losses))
    first = int(np.argmax(~np.isfinite(values)))
    before = (
        f"; the last finite loss was {values[first - 1]:.4e} at step {first - 1}"
        if first > 0
        else ""
    )
    raise FloatingPointError(
        f"`fit`: the loss became {values[first]} at step {first}{before}. The "
        "optimiser diverged or the model produced NaN/inf: lower the learning rate, "
        "or check `data` and the initial model."
    )


def _batched(x: Array, ndim: int) -> Array:
    x = jnp.asarray(x)
    if x.ndim == ndim:
        return x[None]
    if x.ndim == ndim + 1:
        return x
    raise ValueError(
        f"expected an array with {ndim} or {ndim + 1} dimensions; got {x.shape}."
    )


class TrackingLoss(eqx.Module):
    r"""Tracking action of observed paths, averaged: no ODE solve.

    $$\ell(X) = \frac{1}{B\, n\, (t_{T-1} - t_0)} \sum_b S_{\text{track}}[x^b],\qquad
    S_{\text{track}} = \int \tfrac12 \sum_i |\dot x_i - X_i(t, x)|^2 dt,$$

    computed with `spherejax.variational.action` (geodesic polygon, midpoint rule),
    so the loss is half the mean squared velocity residual. Called as
    `loss(field, (ts, paths))` with `paths` of shape `(B, T, n, d)` (or `(T, n, d)`).
    """

    manifold: AbstractManifold | None = None

    def __call__(self, field: AbstractField, data) -> Array:
        ts, paths = data
        paths = _batched(paths, 3)
        manifold = field.manifold if self.manifold is None else self.manifold
        ts = jnp.asarray(ts, paths.dtype)
        lagrangian = Tracking(field)
        values = jax.vmap(lambda p: action(p, ts, lagrangian, manifold))(paths)
        return jnp.mean(values) / (paths.shape[2] * (ts[-1] - ts[0]))


class ShootingLoss(eqx.Module):
    r"""Trajectory matching through `spherejax.solve` (shooting):

    $$\ell(X) = \frac{1}{B\, T\, n}
    \sum_{b, k, i} |\phi^X_{t_k}(x^b_0)_i - x^b_{k, i}|^2,$$

    with $\phi^X$ the flow of the field, solved from each observed initial state and
    saved at the observation times. Gradients go through the solver (default
    `RecursiveCheckpointAdjoint`, i.e. discretise-then-optimise;
    `adjoint=spherejax.ReplayAdjoint()` gives the same kind of gradient without
    re-running steps, with the adaptive steps ending on the observation times).
    Called as
    `loss(field, (ts, paths))`, `paths` of shape `(B, T, n, d)`.
    """

    solver: diffrax.AbstractSolver | None = None
    dt0: float | None = None
    adjoint: object = None  # a diffrax adjoint or `spherejax.ReplayAdjoint`
    rtol: float = 1e-6
    atol: float = 1e-8

    def __call__(self, field: AbstractField, data) -> Array:
        ts, paths = data
        paths = _batched(paths, 3)
        ts = jnp.asarray(ts, paths.dtype)

        def one(path):
            sol = solve(
                field,
                path[0],
                ts[-1],
                t0=ts[0],
                ts=ts,
                solver=self.solver,
                dt0=self.dt0,
                adjoint=cast(diffrax.AbstractAdjoint | None, self.adjoint),
                rtol=self.rtol,
                atol=self.atol,
            )
            return jnp.mean(jnp.sum((sol.ys - path) ** 2, axis=-1))

        return jnp.mean(jax.vmap(one)(paths))


class EndpointLoss(eqx.Module):
    r"""End-point matching plus a kinetic-energy regulariser (OT-Transformer):

    $$\ell(X) = \frac{1}{B n}\sum_b \Big(|\phi^X_T(x^b_0) - x^b_1|^2
    + \lambda \int_0^T \tfrac12 |X(t, x^b(t))|^2 dt\Big),$$

    the kinetic term computed by `spherejax.variational.action(..., Kinetic())` on the
    solution saved at `num_saves` uniform times. Called as
    `loss(field, (t1, x0, x1))` with `x0`, `x1` of shape `(B, n, d)`.
    """

    kinetic: float = 0.1
    num_saves: int = eqx.field(static=True, default=17)
    solver: diffrax.AbstractSolver | None = None
    dt0: float | None = None
    adjoint: diffrax.AbstractAdjoint | None = None

    def __call__(self, field: AbstractField, data) -> Array:
        t1, x0, x1 = data
        x0, x1 = _batched(x0, 2), _batched(x1, 2)
        ts = jnp.linspace(0.0, 1.0, self.num_saves, dtype=x0.dtype) * t1

        def one(a, b):
            sol = solve(
                field,
                a,
                ts[-1],
                ts=ts,
                solver=self.solver,
                dt0=self.dt0,
                adjoint=self.adjoint,
            )
            ys = cast(Array, sol.ys)
            mismatch = jnp.sum((ys[-1] - b) ** 2)
            energy = action(ys, ts, Kinetic(), field.manifold)
            return (mismatch + self.kinetic * energy) / a.shape[0]

        return jnp.mean(jax.vmap(one)(x0, x1))
