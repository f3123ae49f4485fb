r"""Models of the form embedding -> attention flow -> readout, and the regularised
forward pass: the flow's kinetic action and a Hutchinson estimate of its Jacobian's
Frobenius norm integrated alongside the tokens in one solve.

For a flow $\dot y = X_\theta(t, y)$ on $[0, T]$ the augmented system is

$$\dot y = X_\theta(t, y),\qquad
\dot E = \tfrac12 \sum_i |X_\theta(t, y)_i|^2,\qquad
\dot J = |\varepsilon^\top \partial_y X_\theta(t, y)|^2,$$

with $E(0) = J(0) = 0$ and $\varepsilon$ a Rademacher vector (one per example,
fixed over the solve): $E(T)$ is the kinetic action of the path and
$\mathbb{E}_\varepsilon J(T) = \int_0^T \|\partial_y X_\theta\|_F^2\, dt$
(Hutchinson's estimator). This is the regulariser of RNODE.

??? cite
    C. Finlay, J.-H. Jacobsen, L. Nurbekyan, A. Oberman, *How to train your
    neural ODE: the world of Jacobian and kinetic regularization*, ICML 2020.
    M. F. Hutchinson, *A stochastic estimator of the trace of the influence matrix
    for Laplacian smoothing splines*, 1989.
"""

from collections.abc import Callable
from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optimistix as optx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._field import AbstractField
from .._manifold import AbstractManifold, Sphere
from .._solver.retract import RetractFirst


class PatchEmbedding(eqx.Module):
    r"""Tokens from a set of feature vectors (image patches, say) plus a learned class
    token, projected onto the manifold:

    $$y_0 = \operatorname{project}\big([c;\ x W^\top + P]\big)$$

    with `x` of shape `(m, p)`, `W` `(d, p)`, positions `P` `(m, d)` and the class
    token `c` `(d,)`: `m + 1` tokens, the class token first.
    """

    W: Float[Array, "d p"]
    positions: Float[Array, "m d"]
    cls: Float[Array, " d"]
    manifold: AbstractManifold

    def __init__(
        self,
        key: PRNGKeyArray,
        tokens: int,
        features: int,
        d: int,
        *,
        manifold: AbstractManifold = Sphere(),
    ):
        k1, k2, k3 = jr.split(key, 3)
        self.W = jr.normal(k1, (d, features)) / jnp.sqrt(features)
        self.positions = 0.5 * jr.normal(k2, (tokens, d))
        self.cls = jr.normal(k3, (d,))
        self.manifold = manifold

    def __call__(self, x: Float[Array, "m p"]) -> Float[Array, "m+1 d"]:
        z = x @ self.W.T + self.positions
        return self.manifold.project(jnp.concatenate([self.cls[None], z]))


PatchEmbedding.__init__.__doc__ = """**Arguments:**

- `key`: a JAX random key for the initial weights.
- `tokens`: the number `m` of feature vectors per example.
- `features`: their length `p`.
- `d`: the token dimension.
- `manifold`: where the tokens live (default `Sphere()`).
"""


class ByteEmbedding(eqx.Module):
    r"""Tokens of a byte string: a learned table row per byte plus a learned
    position vector, projected onto the manifold,
    $y_{0,i} = \operatorname{project}(E_{b_i} + P_i)$."""

    table: Float[Array, "vocab d"]
    positions: Float[Array, "length d"]
    manifold: AbstractManifold

    def __init__(
        self,
        key: PRNGKeyArray,
        length: int,
        d: int,
        *,
        vocab: int = 256,
        manifold: AbstractManifold = Sphere(),
    ):
        k1, k2 = jr.split(key)
        self.table = jr.normal(k1, (vocab, d))
        self.positions = 0.5 * jr.normal(k2, (length, d))
        self.manifold = manifold

    def __call__(self, x: Int[Array, " length"]) -> Float[Array, "length d"]:
        return self.manifold.project(self.table[x] + self.positions)


ByteEmbedding.__init__.__doc__ = """**Arguments:**

- `key`: a JAX random key.
- `length`: the sequence length.
- `d`: the token dimension.
- `vocab`: the number of symbols (256 bytes).
- `manifold`: where the tokens live (default `Sphere()`).
"""


class ClassReadout(eqx.Module):
    """Class logits from one token: `W y[token] + b`, shape `(classes,)`."""

    W: Float[Array, "classes d"]
    b: Float[Array, " classes"]
    token: int = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, d: int, classes: int, *, token: int = 0):
        self.W = 4.0 * jr.normal(key, (classes, d)) / jnp.sqrt(d)
        self.b = jnp.zeros(classes)
        self.token = token

    def __call__(self, y: Float[Array, "n d"]) -> Float[Array, " classes"]:
        return self.W @ y[self.token] + self.b


ClassReadout.__init__.__doc__ = """**Arguments:**

- `key`: a JAX random key.
- `d`: the token dimension.
- `classes`: the number of classes.
- `token`: which token is read (default the first, the class token of
  `PatchEmbedding`).
"""


class TokenReadout(eqx.Module):
    """Logits for every token: `y W^T + b`, shape `(n, vocab)` (a language model's
    next-symbol prediction)."""

    W: Float[Array, "vocab d"]
    b: Float[Array, " vocab"]

    def __init__(self, key: PRNGKeyArray, d: int, vocab: int = 256):
        self.W = 4.0 * jr.normal(key, (vocab, d)) / jnp.sqrt(d)
        self.b = jnp.zeros(vocab)

    def __call__(self, y: Float[Array, "n d"]) -> Float[Array, "n vocab"]:
        return y @ self.W.T + self.b


TokenReadout.__init__.__doc__ = """**Arguments:**

- `key`: a JAX random key.
- `d`: the token dimension.
- `vocab`: the number of symbols.
"""


class FlowModel(eqx.Module):
    r"""A continuous-depth Transformer: `embedding` -> the flow of `field` on
    $[0, T]$ -> `readout`.

    $$\text{outputs} = \text{readout}\big(\Phi^{X_\theta}_{0 \to T}
    (\text{embedding}(x))\big)$$

    with $\Phi$ the flow map of the attention field (solved by `forward`).
    """

    embedding: Callable[..., Array]
    field: AbstractField
    readout: Callable[..., Array]
    t1: float = eqx.field(static=True)

    def __init__(
        self,
        embedding: Callable[..., Array],
        field: AbstractField,
        readout: Callable[..., Array],
        *,
        t1: float = 1.0,
    ):
        if not isinstance(field, AbstractField):
            raise ValueError(
                f"`field` must be a spherejax field; got {type(field).__name__}."
            )
        if not callable(embedding) or not callable(readout):
            raise ValueError("`embedding` and `readout` must be callable modules.")
        if not (float(t1) > 0.0):
            raise ValueError(f"`t1` must be positive; got {t1}.")
        self.embedding, self.field, self.readout = embedding, field, readout
        self.t1 = float(t1)


FlowModel.__init__.__doc__ = """**Arguments:**

- `embedding`: a module mapping one input to tokens `(n, d)` on
  `field.manifold` (`PatchEmbedding`, `ByteEmbedding` or your own).
- `field`: the attention field (`spherejax.SelfAttention`, a `Sum` with a
  `FeedForward`, ...), whose arrays are trained.
- `readout`: a module mapping the final tokens to outputs (logits).
- `t1`: the depth $T$ of the flow.
"""


def evaluations_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """`(per_step, at_start)`: the field evaluations of one step of an explicit
    Runge–Kutta `solver` (first-same-as-last stages counted once) and those made
    before the first step (the first-same-as-last stage)."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        raise ValueError(
            f"the evaluation count needs an explicit Runge–Kutta solver; got "
            f"{type(solver).__name__}."
        )
    stages = tableau.num_stages
    return (stages - 1, 1) if tableau.fsal else (stages, 0)


class FlowOutput(eqx.Module):
    """What `forward` returns for one example."""

    outputs: Array
    kinetic: Float[Array, ""]
    jacobian: Float[Array, ""]
    nfe: Int[Array, ""]
    ok: Array


def _tokens_norm(state) -> Array:
    return optx.rms_norm(state[0])


def forward(
    model: FlowModel,
    x: Array,
    *,
    key: PRNGKeyArray | None = None,
    jacobian: bool = False,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    dt0: float | None = None,
    max_steps: int = 4096,
) -> FlowOutput:
    r"""One example through the model, with the regularisers integrated in the same
    solve as the tokens (module docstring).

    **Arguments:**

    - `model`: a `FlowModel`.
    - `x`: one input (what `model.embedding` takes).
    - `key`: draws the Rademacher vector $\varepsilon$ of the Jacobian term (needed
      when `jacobian=True`).
    - `jacobian`: integrate the Hutchinson term $J$ too (one vector-Jacobian
      product per field evaluation); otherwise $J = 0$.
    - `solver`: an explicit diffrax Runge–Kutta solver (default `Tsit5()`); every
      step ends with the retraction of the tokens onto the manifold.
    - `rtol`, `atol`: tolerances of the adaptive step (`diffrax.PIDController`),
      measured on the tokens only, so that the regularisers do not change the
      steps taken.
    - `dt0`: a fixed step instead.
    - `max_steps`: the step budget.

    **Returns:** a `FlowOutput` with the readout's `outputs`, the kinetic action
    `kinetic` $= E(T)$, the Jacobian term `jacobian` $= J(T)$, the number of field
    evaluations `nfe` (steps attempted, accepted or rejected, times evaluations per
    step, plus those before the first step) and `ok` (whether the solve succeeded;
    a failed solve does not raise, so that a training loop can stop cleanly).
    """
    solver = diffrax.Tsit5() if solver is None else solver
    per_step, at_start = evaluations_per_step(solver)
    field = model.field
    y0 = model.embedding(x)
    dtype = y0.dtype
    if jacobian:
        if key is None:
            raise ValueError("`forward(..., jacobian=True)` needs a `key`.")
        eps = jr.rademacher(key, y0.shape, dtype=dtype)
    else:
        eps = jnp.zeros((), dtype)

    def augmented(t, state, args):
        y = state[0]
        if jacobian:
            v, pullback = jax.vjp(lambda z: field(t, z, None), y)
            (row,) = pullback(args)
            jac = jnp.sum(row**2)
        else:
            v = field(t, y, None)
            jac = jnp.zeros((), dtype)
        return v, 0.5 * jnp.sum(v**2), jac

    zero = jnp.zeros((), dtype)
    t0, t1 = jnp.zeros((), dtype), jnp.asarray(model.t1, dtype)
    if dt0 is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_tokens_norm)
        step0 = None
    else:
        controller = diffrax.ConstantStepSize()
        step0 = jnp.asarray(dt0, dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(augmented),
        RetractFirst(solver, field.manifold),
        t0,
        t1,
        step0,
        (y0, zero, zero),
        args=eps,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    ys, stats = cast(tuple, sol.ys), cast(dict, sol.stats)
    y1, kinetic, jac = (a[-1] for a in ys)
    nfe = per_step * stats["num_steps"] + at_start
    ok = sol.result == diffrax.RESULTS.successful
    return FlowOutput(model.readout(y1), kinetic, jac, nfe, ok)
