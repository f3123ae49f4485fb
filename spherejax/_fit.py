r"""Fitting with Optax: `fit`, the `riemannian` optimiser wrapper and ready-made
losses (tracking action, shooting through `solve`, end-point matching with a
kinetic-energy regulariser).

A loss is any callable `loss(model, data) -> scalar`; `fit` differentiates it with
respect to the model's trainable leaves.
"""

import abc
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

from . import _checks
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
    - `loss`: `loss(model, data) -> scalar`: one of spherejax's losses (an
      `AbstractLoss`: `TrackingLoss`, `ShootingLoss`, `EndpointLoss`,
      `MeasureLoss`) or any such callable.
    - `data`: any pytree of arrays (the full batch, passed every step). An
      `AbstractLoss` checks and casts it once, before the step is compiled
      (`loss.prepare(model, data)`): a wrong shape or a NaN raises `ValueError`
      before any training.
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
    if isinstance(loss, AbstractLoss):
        data = loss.prepare(model, data)
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


def _batched(x: Array, ndim: int, name: str = "data") -> Array:
    x = jnp.asarray(x)
    if x.ndim == ndim:
        return x[None]
    if x.ndim == ndim + 1:
        return x
    raise ValueError(
        f"`{name}` must have {ndim} or {ndim + 1} dimensions; got shape {x.shape}."
    )


def _unpack(data, names: tuple[str, ...]) -> tuple:
    if not isinstance(data, tuple | list) or len(data) != len(names):
        raise ValueError(
            f"`data` must be the tuple `({', '.join(names)})`; got "
            f"{type(data).__name__}."
        )
    return tuple(data)


def _tokens_of(field, x: Array) -> None:
    """`x` (`(..., n, d)`) holds tokens `field` accepts."""
    if isinstance(field, AbstractField):
        field.check_tokens(x.reshape(-1, *x.shape[-2:])[0])


def _observed_paths(field, data) -> tuple[Array, Array]:
    """`(ts, paths)`: `paths` `(B, T, n, d)` (or `(T, n, d)`), finite; `ts` `(T,)`,
    finite and strictly increasing, of the paths' dtype."""
    ts, paths = _unpack(data, ("ts", "paths"))
    paths = _batched(_checks.real_floating("paths", paths), 3, "paths")
    ts = _checks.real_floating("ts", ts).astype(paths.dtype)
    if ts.shape != paths.shape[1:2]:
        raise ValueError(
            f"`ts` must hold one time per saved state of `paths` (shape "
            f"({paths.shape[1]},)); got shape {ts.shape}."
        )
    _tokens_of(field, paths)
    checks = _checks.Checks()
    checks.finite("ts", ts)
    checks.finite("paths", paths)
    checks.fail_or_defer(jnp.all(jnp.diff(ts) > 0), "`ts` must be strictly increasing.")
    return checks.attach((ts, paths))


def _end_points(field, data, batched: bool) -> tuple[Array, Array, Array]:
    """`(t1, x0, x1)`: `t1` a finite scalar; `x0`, `x1` finite tokens, `(B, n, d)`
    alike (`batched`) or `(n, d)` and `(m, d)` with the same `d`."""
    t1, x0, x1 = _unpack(data, ("t1", "x0", "x1"))
    x0 = _checks.real_floating("x0", x0)
    x1 = _checks.real_floating("x1", x1).astype(x0.dtype)
    if batched:
        x0, x1 = _batched(x0, 2, "x0"), _batched(x1, 2, "x1")
        if x0.shape != x1.shape:
            raise ValueError(
                f"`x0` and `x1` must have the same shape; got {x0.shape} and "
                f"{x1.shape}."
            )
    elif x0.ndim != 2 or x1.ndim != 2 or x0.shape[1] != x1.shape[1]:
        raise ValueError(
            "`x0` and `x1` must have shapes `(n, d)` and `(m, d)` with the same "
            f"`d`; got {x0.shape} and {x1.shape}."
        )
    _tokens_of(field, x0)
    checks = _checks.Checks()
    (t1,) = _checks.finite_scalars(x0.dtype, t1=t1)
    checks.finite("x0", x0)
    checks.finite("x1", x1)
    x0, x1 = checks.attach((x0, x1))
    return t1, x0, x1


class AbstractLoss(eqx.Module):
    """A loss of a field on observed data, `loss(field, data) -> scalar`, as
    `fit` uses it: `fit` calls `prepare(field, data)` once (checking and casting
    `data` before anything is compiled), then `loss(field, data)` every step."""

    @abc.abstractmethod
    def prepare(self, field, data, /) -> Any:
        """`data` checked (shapes, finiteness, times) and cast to arrays of one
        floating dtype; raises `ValueError` naming the wrong part."""

    @abc.abstractmethod
    def __call__(self, field, data, /) -> Array:
        """The loss (a scalar)."""


class TrackingLoss(AbstractLoss):
    r"""Tracking action of observed paths, averaged: no ODE solve.

    $$\ell(X) = \frac{1}{B\, n\, (t_{T-1} - t_0)} \sum_b S_{\text{track}}[x^b],\qquad
    S_{\text{track}} = \int \tfrac12 \sum_i |\dot x_i - X_i(t, x)|^2 dt,$$

    computed with `spherejax.variational.action` (geodesic polygon, midpoint rule),
    so the loss is half the mean squared velocity residual. Called as
    `loss(field, (ts, paths))` with `paths` of shape `(B, T, n, d)` (or `(T, n, d)`).
    """

    manifold: AbstractManifold | None = None

    def prepare(self, field, data) -> tuple[Array, Array]:
        """`(ts, paths)` checked: `ts` finite, strictly increasing, one per saved
        state; `paths` finite, `(B, T, n, d)`."""
        return _observed_paths(field, data)

    def __call__(self, field: AbstractField, data) -> Array:
        ts, paths = data
        paths = _batched(paths, 3)
        manifold = field.manifold if self.manifold is None else self.manifold
        ts = jnp.asarray(ts, paths.dtype)
        lagrangian = Tracking(field)
        values = jax.vmap(lambda p: action(p, ts, lagrangian, manifold))(paths)
        return jnp.mean(values) / (paths.shape[2] * (ts[-1] - ts[0]))


class ShootingLoss(AbstractLoss):
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

    def prepare(self, field, data) -> tuple[Array, Array]:
        """`(ts, paths)` checked as for `TrackingLoss`."""
        return _observed_paths(field, data)

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


class EndpointLoss(AbstractLoss):
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

    def prepare(self, field, data) -> tuple[Array, Array, Array]:
        """`(t1, x0, x1)` checked: `t1` a finite scalar; `x0`, `x1` finite, of one
        shape `(B, n, d)`."""
        return _end_points(field, data, batched=True)

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
