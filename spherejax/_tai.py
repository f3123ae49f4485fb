r"""LayerNorm as a projection onto a moving constraint, and the Transformer encoder
block as an operator splitting (Tai–Liu–Li–Chan).

Per token, LayerNorm without affine map is the nearest-point projection onto

$$S_1(\sigma_1, \sigma_2) = \{u \in \mathbb R^N : \operatorname{mean}(u) = \sigma_1,\
\operatorname{var}(u) = \sigma_2^2\},$$

a sphere of radius $\sqrt N \sigma_2$ about $\sigma_1\mathbf 1$ inside the hyperplane
$\operatorname{mean}(u) = \sigma_1$; ReLU is the projection onto the cone
$S_2 = \{u \ge 0\}$. With depth-dependent controls $\sigma_1(t), \sigma_2(t)$ the
constraint moves. One step of the six-sub-step Lie splitting

1. $u_1 = u + h\,\mathrm{Attn}(u)$,
2. $u_2 = P_{S_1}(u_1)$,
3. $u_3 = \mathrm{ReLU}(u_2 + h(u_2 W_1^\top + b_1))$,
4. $u_4 = u_3 + h(u_3 W_2^\top + b_2)$,
5. $u_5 = (u_4 + u_2)/2$,
6. $u_6 = P_{S_1}(u_5)$,

is at $h = 1$ exactly a post-LN encoder block $\mathrm{LN}(u'' + \mathrm{FFN}(u''))$,
$u'' = \mathrm{LN}(u + \mathrm{Attn}\,u)$, with feed-forward weights $I + W_j^\top$
(LayerNorm ignores the positive factor 1/2 of step 5). As $h \to 0$ with $Nh = T$
it converges (order 1) to the projected flow on the moving constraint,

$$\dot u = \sigma_1'\mathbf 1 + \frac{\sigma_2'}{\sigma_2}(u - \sigma_1\mathbf 1)
+ P_u\Big[\mathrm{Attn}(u) + \tfrac12\big(u (W_1 + W_2)^\top + b_1 + b_2\big)\Big],$$

valid where $S_2$ is inactive (all entries positive; e.g.
$\sigma_1 > \sqrt{N-1}\,\sigma_2$ makes $S_1 \subset S_2$); the symmetric (Strang)
composition of the two sub-flows with second-order sub-steps converges at order 2.

??? cite
    X.-C. Tai, H. Liu, L. Li, R. H. Chan, *A mathematical explanation of
    Transformers for large language models and GPTs*, arXiv:2510.03989 (2025).
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._field import AbstractField, FeedForward, Layerwise
from ._manifold import Euclidean, LayerNormSphere, _dot
from ._misc import safe_norm
from ._solver.base import AbstractManifoldSolver
from ._solver.layer_update import ProjectedMidpoint, step_field
from ._solver.splitting import Strang
from ._transformer import _steps_and_tokens, fixed_steps


def relu_projection(v: ArrayLike) -> Array:
    r"""Nearest-point projection onto the cone $S_2 = \{u \ge 0\}$: $\max(v, 0)$
    (ReLU), entrywise."""
    return jax.nn.relu(jnp.asarray(v))


def _constant(value: float) -> Callable:
    return lambda t: jnp.full((), value, jnp.result_type(t))


class MovingLayerNorm(eqx.Module):
    r"""The constraint $S_1(\sigma_1(t), \sigma_2(t))$ with time-dependent controls.

    At each time it is `LayerNormSphere(mean=sigma1(t), std=sigma2(t))`; every point of
    it is $u = \sigma_1(t)\mathbf 1 + \sigma_2(t) z$ with $z$ on the fixed
    `LayerNormSphere()` (`{mean 0, |z|^2 = N}`). Flows on the moving set are solved in
    the reference coordinate $z$ (`embed` / `reference` convert), so any manifold
    solver keeps $u(t)$ on $S_1(t)$ to round-off. A point fixed in $z$ moves with the
    set's normal velocity
    $\sigma_1'\mathbf 1 + (\sigma_2'/\sigma_2)(u - \sigma_1\mathbf 1)$.

    Methods take the time first and act row-wise on `(..., N)` arrays.
    """

    mean: Callable = eqx.field(static=True)
    std: Callable = eqx.field(static=True)

    def __init__(self, mean: Callable | float = 0.0, std: Callable | float = 1.0):
        for name, c in (("mean", mean), ("std", std)):
            if not callable(c):
                try:
                    float(c)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"`{name}` must be a number or a callable of `t`; got {c!r}."
                    )
        if not callable(std) and not float(std) > 0:
            raise ValueError(f"`std` must be positive; got {std}.")
        self.mean = mean if callable(mean) else _constant(float(mean))
        self.std = std if callable(std) else _constant(float(std))

    def controls(self, t) -> tuple[Array, Array]:
        """$(\\sigma_1(t), \\sigma_2(t))$."""
        t = jnp.asarray(t)
        return jnp.asarray(self.mean(t), t.dtype), jnp.asarray(self.std(t), t.dtype)

    def control_rates(self, t) -> tuple[Array, Array]:
        """$(\\sigma_1'(t), \\sigma_2'(t))$ by forward-mode differentiation."""
        t = jnp.asarray(t)
        return jax.jvp(self.controls, (t,), (jnp.ones_like(t),))[1]

    def at(self, t: float) -> LayerNormSphere:
        """The (static) `LayerNormSphere` at a concrete time `t`."""
        s1, s2 = self.controls(jnp.asarray(float(t)))
        return LayerNormSphere(mean=float(s1), std=float(s2))

    def project(self, t, v: Float[ArrayLike, "... N"]) -> Array:
        r"""LayerNorm onto $S_1(t)$:
        $\sigma_2 (v - \bar v)/\operatorname{std}(v) + \sigma_1$ (population standard
        deviation, no epsilon)."""
        v = jnp.asarray(v)
        s1, s2 = self.controls(jnp.asarray(t, v.dtype))
        c = v - jnp.mean(v, axis=-1, keepdims=True)
        std = safe_norm(c, keepdims=True) / jnp.sqrt(v.shape[-1]).astype(v.dtype)
        return s2 * c / std + s1

    def sq_distance(self, t, v: Float[ArrayLike, "... N"]) -> Array:
        r"""Closed-form squared distance from each row of `v` to $S_1(t)$:
        $N(\sigma_2 - \operatorname{std} v)^2
        + N(\sigma_1 - \operatorname{mean} v)^2$."""
        v = jnp.asarray(v)
        s1, s2 = self.controls(jnp.asarray(t, v.dtype))
        N = v.shape[-1]
        return (
            N * (s2 - jnp.std(v, axis=-1)) ** 2 + N * (s1 - jnp.mean(v, axis=-1)) ** 2
        )

    def to_tangent(self, t, u, v) -> Array:
        """Orthogonal projection of `v` onto the tangent space of $S_1(t)$ at `u`."""
        u, v = jnp.asarray(u), jnp.asarray(v)
        s1, _ = self.controls(jnp.asarray(t, u.dtype))
        y = u - s1
        v0 = v - jnp.mean(v, axis=-1, keepdims=True)
        return v0 - _dot(y, v0) * y / _dot(y, y)

    def normal_velocity(self, t, u) -> Array:
        r"""Velocity of the moving set at `u`:
        $\sigma_1'\mathbf 1 + (\sigma_2'/\sigma_2)(u - \sigma_1\mathbf 1)$."""
        u = jnp.asarray(u)
        t = jnp.asarray(t, u.dtype)
        s1, s2 = self.controls(t)
        r1, r2 = self.control_rates(t)
        return r1 + (r2 / s2) * (u - s1)

    def embed(self, t, z) -> Array:
        r"""$u = \sigma_1(t) + \sigma_2(t) z$ for `z` on `LayerNormSphere()`."""
        z = jnp.asarray(z)
        s1, s2 = self.controls(jnp.asarray(t, z.dtype))
        return s1 + s2 * z

    def reference(self, t, u) -> Array:
        r"""$z = (u - \sigma_1(t)) / \sigma_2(t)$ (inverse of `embed`)."""
        u = jnp.asarray(u)
        s1, s2 = self.controls(jnp.asarray(t, u.dtype))
        return (u - s1) / s2

    def violation(self, t, u) -> Array:
        """Largest constraint error (mean and radius) over the rows of `u` at `t`."""
        u = jnp.asarray(u)
        s1, s2 = self.controls(jnp.asarray(t, u.dtype))
        N = u.shape[-1]
        mean_err = jnp.max(jnp.abs(jnp.mean(u, axis=-1) - s1))
        norm_err = jnp.max(
            jnp.abs(safe_norm(u - s1) - s2 * jnp.sqrt(N).astype(u.dtype))
        )
        return jnp.maximum(mean_err, norm_err)


MovingLayerNorm.__init__.__doc__ = """**Arguments:**

- `mean`: $\\sigma_1$, a number or a (differentiable, JAX-traceable) callable of `t`.
- `std`: $\\sigma_2 > 0$, a number or a callable of `t`.
"""


def _at(field: AbstractField, t) -> AbstractField:
    return field.layer(field.index(t)) if isinstance(field, Layerwise) else field


class TaiTransformer(eqx.Module):
    r"""A post-LN Transformer encoder as an operator splitting on a moving constraint
    (Tai–Liu–Li–Chan).

    Parts: `attention`, the raw attention update $u \mapsto \mathrm{Attn}(u)$ (a
    `SelfAttention` on `Euclidean()`; per-head $\beta = 1/\sqrt{d_\text{head}}$, value
    matrices $V_h = (W^V_h W^O_h)^\top$ give standard multi-head attention);
    `feedforward`, a `FeedForward` on `Euclidean()`; both may be `Layerwise`
    (per-layer weights); `constraint`, the `MovingLayerNorm`
    $S_1(\sigma_1(t), \sigma_2(t))$.

    `feedforward_form` says how the feed-forward sub-layer enters:

    - `"tai"` (default): Tai et al.'s sub-steps 3–5 with ReLU as the projection
      onto the cone; needs square weights `W1, W2` (`(N, N)`) and the ReLU
      activation (anything else raises a `ValueError`, never a silent ReLU);
    - `"residual"`: any `FeedForward` `N -> m -> N` with any activation, as the
      residual sub-layer $u_4 = u_2 + h\,\mathrm{FFN}(u_2)$,
      $\mathrm{FFN}(u) = \sigma(u W_1^\top + b_1) W_2^\top + b_2$, then the
      projection (at `h = 1`, `LN(u'' + FFN(u''))`: a BERT block); the flow's
      feed-forward velocity is then $\mathrm{FFN}(u)$.

    - `lie_step(t, u, h)`: the six sub-steps of the module docstring; at `h = 1` and
      constant controls `(0, 1)` one post-LN encoder block with feed-forward weights
      `I + W1.T`, `I + W2.T` (row-vector convention `u @ (I + W1.T) + b1`).
    - `flow()`: the continuous-time limit, a field on `LayerNormSphere()` in the
      reference coordinate `z` ($u = \sigma_1 + \sigma_2 z$).
    - `strang_step(t, u, h)`: attention sub-flow for `h/2`, feed-forward sub-flow for
      `h`, attention sub-flow for `h/2` (`Strang` of the two `TaiSubflow`s in the
      reference coordinate `z`), each by `ProjectedMidpoint`; time advances in the
      attention sub-flow only, the feed-forward one reads the step's midpoint
      (symmetric): second order.

    ??? cite
        X.-C. Tai, H. Liu, L. Li, R. H. Chan, *A mathematical explanation of
        Transformers for large language models and GPTs*, arXiv:2510.03989 (2025).
    """

    attention: AbstractField
    feedforward: AbstractField
    constraint: MovingLayerNorm
    feedforward_form: str = eqx.field(static=True)

    def __init__(
        self,
        attention: AbstractField,
        feedforward: AbstractField,
        constraint: MovingLayerNorm | None = None,
        *,
        feedforward_form: str = "tai",
    ):
        ffn = (
            feedforward.layer(0) if isinstance(feedforward, Layerwise) else feedforward
        )
        if not isinstance(ffn, FeedForward):
            raise ValueError(
                f"`feedforward` must be a `FeedForward` (or `Layerwise` of them); got "
                f"{type(ffn).__name__}."
            )
        if feedforward_form not in ("tai", "residual"):
            raise ValueError(
                "`feedforward_form` must be 'tai' or 'residual'; got "
                f"{feedforward_form!r}."
            )
        if feedforward_form == "tai" and ffn.W1.shape[0] != ffn.W1.shape[1]:
            raise ValueError(
                "the splitting with `feedforward_form='tai'` needs a square `W1` "
                f"(hidden size = N); got {ffn.W1.shape}. Use "
                "`feedforward_form='residual'` for an `N -> m -> N` feed-forward."
            )
        if feedforward_form == "tai" and ffn.activation is not jax.nn.relu:
            raise ValueError(
                "`feedforward_form='tai'` takes ReLU as the projection onto the cone; "
                f"the `FeedForward` has activation {ffn.activation!r}. Use "
                "`feedforward_form='residual'` to run it with its own activation."
            )
        if not isinstance(attention, AbstractField):
            raise ValueError(
                f"`attention` must be a field; got {type(attention).__name__}."
            )
        self.attention = attention
        self.feedforward = feedforward
        self.constraint = MovingLayerNorm() if constraint is None else constraint
        self.feedforward_form = feedforward_form

    # ---- the raw sub-layer updates --------------------------------------------------
    def attend(self, t, u) -> Array:
        """The attention update $\\mathrm{Attn}(u)$ (not projected)."""
        return self.attention(t, u)

    def _ffn(self, t, u):
        f = _at(self.feedforward, t)
        assert isinstance(f, FeedForward)
        dt = u.dtype
        return f.W1.astype(dt), f.b1.astype(dt), f.W2.astype(dt), f.b2.astype(dt)

    def _ffn_residual(self, t, u) -> Array:
        r"""$\sigma(u W_1^\top + b_1) W_2^\top + b_2$ with the field's activation."""
        f = _at(self.feedforward, t)
        assert isinstance(f, FeedForward)
        W1, b1, W2, b2 = self._ffn(t, u)
        return f.activation(u @ W1.T + b1) @ W2.T + b2

    def feedforward_velocity(self, t, u) -> Array:
        r"""The feed-forward velocity: $\tfrac12\big(u(W_1 + W_2)^\top + b_1 +
        b_2\big)$, sub-steps 3–5 per unit time where ReLU is inactive (form
        `"tai"`), or $\mathrm{FFN}(u)$ (form `"residual"`)."""
        if self.feedforward_form == "residual":
            return self._ffn_residual(t, u)
        W1, b1, W2, b2 = self._ffn(t, u)
        return 0.5 * (u @ (W1 + W2).T + b1 + b2)

    # ---- discrete schemes ------------------------------------------------------------
    def lie_step(self, t, u, h) -> Array:
        """One step of the six-sub-step Lie splitting from time `t` to `t + h`; the
        projections are onto $S_1(t + h)$."""
        u = jnp.asarray(u)
        t = jnp.asarray(t, u.dtype)
        h = jnp.asarray(h, u.dtype)
        u1 = u + h * self.attend(t, u)
        u2 = self.constraint.project(t + h, u1)
        if self.feedforward_form == "residual":
            return self.constraint.project(t + h, u2 + h * self._ffn_residual(t, u2))
        W1, b1, W2, b2 = self._ffn(t, u)
        u3 = relu_projection(u2 + h * (u2 @ W1.T + b1))
        u4 = u3 + h * (u3 @ W2.T + b2)
        u5 = 0.5 * (u4 + u2)
        return self.constraint.project(t + h, u5)

    def _z_velocity(self, part: str, t, z) -> Array:
        u = self.constraint.embed(t, z)
        _, s2 = self.constraint.controls(t)
        a = (
            self.attend(t, u)
            if part == "attention"
            else self.feedforward_velocity(t, u)
        )
        return LayerNormSphere().to_tangent(z, a) / s2

    def strang_step(self, t, u, h) -> Array:
        """One second-order Strang step from time `t` to `t + h` (input on $S_1(t)$,
        output on $S_1(t + h)$)."""
        u = jnp.asarray(u)
        t = jnp.asarray(t, u.dtype)
        h = jnp.asarray(h, u.dtype)
        M = LayerNormSphere()
        parts = (
            TaiSubflow(self, "attention"),
            TaiSubflow(self, "feedforward", frozen=True),
        )
        strang = Strang(*parts, solver=ProjectedMidpoint(M, tangent=False), manifold=M)  # pyright: ignore[reportCallIssue]
        terms = diffrax.ODETerm(TaiFlow(self))
        z = M.project(self.constraint.reference(t, u))
        z = strang.single_step(terms, t, t + h, z, None)
        return self.constraint.embed(t + h, z)

    def flow(self) -> "TaiFlow":
        """The continuous-time limit as a field in the reference coordinate `z`."""
        return TaiFlow(self)


class TaiSubflow(AbstractField):
    r"""One part of `TaiFlow`, in the reference coordinate `z` on
    `LayerNormSphere()`: the attention (`part="attention"`) or feed-forward
    (`"feedforward"`) velocity $P_z[\,\cdot\,(u)]/\sigma_2(t)$,
    $u = \sigma_1(t) + \sigma_2(t) z$. With `frozen=True` a step on $[t_0, t_1]$
    reads it at the step's midpoint only (`on_step`), as the middle sub-flow of
    `TaiTransformer.strang_step`."""

    model: "TaiTransformer"
    part: str = eqx.field(static=True)
    frozen: bool = eqx.field(static=True)
    manifold: LayerNormSphere

    def __init__(self, model: "TaiTransformer", part: str, *, frozen: bool = False):
        if part not in ("attention", "feedforward"):
            raise ValueError(
                f"`part` must be 'attention' or 'feedforward'; got {part!r}."
            )
        self.model = model
        self.part = part
        self.frozen = frozen
        self.manifold = LayerNormSphere()

    def on_step(self, t0, t1) -> AbstractField:
        """The field acting on a step `[t0, t1]`: itself, or frozen at the midpoint."""
        if not self.frozen:
            return self
        return _AtTime(TaiSubflow(self.model, self.part), t0 + 0.5 * (t1 - t0))

    def __call__(self, t, z, args=None):
        del args
        return self.model._z_velocity(self.part, jnp.asarray(t, z.dtype), z)


class _AtTime(AbstractField):
    """`field` read at the fixed time `time`, whatever time it is called with."""

    field: AbstractField
    time: Array

    def __init__(self, field: AbstractField, time):
        self.field = field
        self.time = jnp.asarray(time)

    @property
    def manifold(self):
        return self.field.manifold

    def __call__(self, t, y, args=None):
        del t
        return self.field(self.time, y, args)


class TaiFlow(AbstractField):
    r"""The continuous-time limit of `TaiTransformer`, in the reference coordinate
    $z = (u - \sigma_1)/\sigma_2$ on the fixed `LayerNormSphere()`:

    $$\dot z = \frac{1}{\sigma_2(t)} P_z\Big[\mathrm{Attn}(u) +
    \tfrac12\big(u(W_1 + W_2)^\top + b_1 + b_2\big)\Big],\qquad
    u = \sigma_1(t)\mathbf 1 + \sigma_2(t) z,$$

    equivalent to the projected equation on the moving set $S_1(t)$ (the normal
    velocity of the set is carried by `embed`). Solve it with `spherejax.solve` and map
    back with `model.constraint.embed(t, z)`: the result stays on $S_1(t)$ to round-off.
    """

    model: TaiTransformer
    manifold: LayerNormSphere

    def __init__(self, model: TaiTransformer):
        self.model = model
        self.manifold = LayerNormSphere()

    def jump_times(self):
        jumps = [
            j
            for f in (self.model.attention, self.model.feedforward)
            if (j := f.jump_times()) is not None
        ]
        return jnp.unique(jnp.concatenate(jumps)) if jumps else None

    def velocity(self, t, u) -> Array:
        """The velocity in `u` coordinates (tangent part plus the normal motion)."""
        m = self.model
        a = m.attend(t, u) + m.feedforward_velocity(t, u)
        return m.constraint.normal_velocity(t, u) + m.constraint.to_tangent(t, u, a)

    def __call__(self, t, z, args=None):
        del args
        m = self.model
        t = jnp.asarray(t, z.dtype)
        return m._z_velocity("attention", t, z) + m._z_velocity("feedforward", t, z)


def tai_transformer(
    model: TaiTransformer,
    u0: Float[ArrayLike, "n N"],
    num_steps: int,
    h: ArrayLike,
    *,
    scheme: str = "lie",
    t0: ArrayLike = 0.0,
    final: bool = False,
) -> Float[Array, "L1 n N"] | Float[Array, "n N"]:
    r"""Run `num_steps` steps of the splitting scheme (`"lie"`: the six sub-steps;
    `"strang"`: the symmetric second-order composition) from `t0` with step `h`.

    With `h = 1`, `scheme="lie"` and `Layerwise` weights on the unit boundaries, this
    is a stack of `num_steps` post-LN encoder blocks. Returns all states, shape
    `(num_steps + 1, n, N)` (the first is `u0`), or with `final=True` only the last
    (then `num_steps` may vary without recompiling).
    """
    if scheme not in ("lie", "strang"):
        raise ValueError(f"`scheme` must be 'lie' or 'strang'; got {scheme!r}.")
    if not isinstance(model, TaiTransformer):
        raise ValueError(
            f"`model` must be a `TaiTransformer`; got {type(model).__name__}."
        )
    num_steps, u0 = _steps_and_tokens(num_steps, "num_steps", final, u0)
    if u0.ndim != 2:
        raise ValueError(f"`u0` must have shape `(n, N)`; got {u0.shape}.")
    h, t0 = jnp.asarray(h, u0.dtype), jnp.asarray(t0, u0.dtype)
    if final:
        return _run_last(model, u0, h, t0, jnp.asarray(num_steps), scheme)
    return _run(model, u0, h, t0, num_steps, scheme)


class TaiVelocity(AbstractField):
    r"""The velocity of `TaiTransformer`'s continuous-time limit in the `u`
    coordinates on the moving set $S_1(t)$ (`TaiFlow.velocity`), as a field on
    `Euclidean()`: the vector field of the ODE that `TaiSplitting` steps."""

    model: TaiTransformer
    manifold: Euclidean

    def __init__(self, model: TaiTransformer):
        self.model = model
        self.manifold = Euclidean()

    def __call__(self, t, y, args=None):
        del args
        return TaiFlow(self.model).velocity(jnp.asarray(t, y.dtype), y)


class TaiSplitting(AbstractManifoldSolver):
    r"""One step of `TaiTransformer`'s splitting as a fixed-step solver:
    `scheme="lie"` (the six sub-steps, `model.lie_step`; order 1) or `"strang"`
    (the symmetric composition, `model.strang_step`; order 2), from $S_1(t_0)$ to
    $S_1(t_1)$. The vector field it steps is `TaiVelocity(model)`; no error
    estimate."""

    model: TaiTransformer
    scheme: str = eqx.field(static=True)
    manifold: Euclidean

    def __init__(self, model: TaiTransformer, scheme: str = "lie"):
        if scheme not in ("lie", "strang"):
            raise ValueError(f"`scheme` must be 'lie' or 'strang'; got {scheme!r}.")
        self.model = model
        self.scheme = scheme
        self.manifold = Euclidean()

    term_structure = diffrax.ODETerm
    interpolation_cls = diffrax.LocalLinearInterpolation

    def order(self, terms) -> int:
        del terms
        return 1 if self.scheme == "lie" else 2

    def init(self, terms, t0, t1, y0, args):
        del terms, t0, t1, y0, args
        return None

    def single_step(self, terms, t0, t1, y0, args):
        del args
        h = terms.contr(t0, t1)
        if self.scheme == "strang":  # each stage reads the layers at its own time
            return self.model.strang_step(t0, y0, h)
        # the layers acting at the start of the step, whatever the rounding of the
        # step times; the constraint keeps its time dependence
        model = eqx.tree_at(
            lambda m: (m.attention, m.feedforward),
            self.model,
            (
                step_field(self.model.attention, t0, t1),
                step_field(self.model.feedforward, t0, t1),
            ),
        )
        return model.lie_step(t0, y0, h)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        y1 = self.single_step(terms, t0, t1, y0, args)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


TaiVelocity.__init__.__doc__ = """**Arguments:**

- `model`: a `TaiTransformer`.
"""
TaiSplitting.__init__.__doc__ = """**Arguments:**

- `model`: a `TaiTransformer`.
- `scheme`: `"lie"` or `"strang"`.
"""


@eqx.filter_jit
def _run(model, u0, h, t0, num_steps, scheme):
    solver = TaiSplitting(model, scheme)
    return fixed_steps(TaiVelocity(model), solver, u0, t0, h, num_steps, False)


@eqx.filter_jit
def _run_last(model, u0, h, t0, num_steps, scheme):
    solver = TaiSplitting(model, scheme)
    return fixed_steps(TaiVelocity(model), solver, u0, t0, h, num_steps, True)
