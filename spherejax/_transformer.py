r"""Discrete residual stacks (Transformers) and the Pre-LN flow.

A Transformer with `L` layers and step `h` is a time discretisation of an attention
flow on `[t_0, t_0 + L h]`:

- **Post-LN** (`norm="post"`): $x_{k+1} = \operatorname{project}(x_k + h F(t_k, x_k))$,
  the retraction Euler method; first order in `h`.
- **Pre-LN** (`norm="pre"`): $x_{k+1} = x_k + h A(t_k, \operatorname{project}(x_k))$:
  the residual stream is not normalised, only the input of each sub-layer is. In
  continuous time $\dot x = A(x/|x|)$, i.e. in polar coordinates $x = r\theta$,

  $$\dot\theta = \tfrac1r P_\theta A(\theta),\qquad
  \dot r = \langle\theta, A(\theta)\rangle$$

  (Karagodin–Ge–Polyanskiy–Rigollet, 2025), provided as the field `PreLNFlow` on the
  product `RadiusSphere` of a radius and the unit sphere.
- **No normalisation** (`norm="none"`): explicit Euler, $x_{k+1} = x_k + h F(t_k, x_k)$.

With `split=True` a `Sum` field (e.g. attention + feed-forward) is applied one term at a
time, each with its own residual connection and normalisation, as in BERT's
`LN(x + Attn x)` then `LN(x + FFN x)`: a Lie–Trotter splitting of the flow of the sum.

Each layer is one step of a fixed-step solver, a layer update rule (`PostNorm`,
`PreNorm`, `Residual`, with the normalisation as a module: `LayerNorm` or a
manifold's projection), run by `diffrax.diffeqsolve` with the constant step `h`;
with `split=True` the rules of the terms are composed by `LieTrotter`.
`layer_solver` returns the field and solver of a stack.

??? cite
    N. Karagodin, S. Ge, Y. Polyanskiy, P. Rigollet, *Normalization in attention
    dynamics*, NeurIPS 2025, arXiv:2510.22026.
    B. Geshkovski, C. Letrouit, Y. Polyanskiy, P. Rigollet, *A mathematical
    perspective on Transformers*, arXiv:2312.10794.
"""

import math
from collections.abc import Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from . import _checks, _prepare
from ._checks import finite_scalars
from ._field import AbstractField, Layerwise
from ._manifold import (
    AbstractManifold,
    Euclidean,
    RadiusSphere as RadiusSphere,
    Sphere,
    _dot,
)
from ._misc import safe_norm
from ._solver.base import AbstractManifoldSolver
from ._solver.layer_update import ManifoldNorm, PostNorm, PreNorm, Residual
from ._solver.splitting import LieTrotter, field_parts


NORMS = ("post", "pre", "none")


class LayerNorm(eqx.Module):
    r"""LayerNorm with a learned affine map and an `eps`, per token:

    $$\mathrm{LN}(x) = \gamma \odot N_\varepsilon(x) + \beta,\qquad
    N_\varepsilon(x) = \frac{x - \operatorname{mean}(x)}
    {\sqrt{\operatorname{var}(x) + \varepsilon}}$$

    (population variance, as in PyTorch and JAX/Flax). `gamma` and `beta` have shape
    `(d,)`, or `(L, d)` for one set per layer (`at(k)` selects layer `k`). With
    $\varepsilon = 0$, $N_0$ is the projection of `LayerNormSphere()`; with
    $\varepsilon > 0$ its image has $\operatorname{var} = v/(v + \varepsilon)$ for
    an input of variance $v$.
    """

    gamma: Float[Array, "*L d"]
    beta: Float[Array, "*L d"]
    eps: float = eqx.field(static=True)

    def __init__(self, gamma: ArrayLike, beta: ArrayLike, eps: float = 0.0):
        gamma, beta = jnp.asarray(gamma), jnp.asarray(beta)
        if gamma.ndim not in (1, 2) or gamma.shape != beta.shape:
            raise ValueError(
                "`gamma` and `beta` must have the same shape `(d,)` or `(L, d)`; got "
                f"{gamma.shape} and {beta.shape}."
            )
        if not (math.isfinite(float(eps)) and float(eps) >= 0):
            raise ValueError(f"`eps` must be a finite number >= 0; got {eps}.")
        self.gamma, self.beta, self.eps = gamma, beta, float(eps)

    @classmethod
    def identity(cls, d: int, eps: float = 0.0, dtype=None) -> "LayerNorm":
        r"""`gamma = 1`, `beta = 0`: the plain normalisation $N_\varepsilon$."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return cls(jnp.ones(d, dtype), jnp.zeros(d, dtype), eps)

    @property
    def layered(self) -> bool:
        """Whether `gamma`, `beta` hold one row per layer."""
        return self.gamma.ndim == 2

    def at(self, k) -> "LayerNorm":
        """The LayerNorm of layer `k` (itself when not `layered`)."""
        if not self.layered:
            return self
        return LayerNorm(self.gamma[k], self.beta[k], self.eps)

    def normalize(self, x: Float[ArrayLike, "... d"]) -> Array:
        r"""$N_\varepsilon(x)$, row-wise (no affine map)."""
        x = jnp.asarray(x)
        c = x - jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(c * c, axis=-1, keepdims=True)
        return c / jnp.sqrt(var + jnp.asarray(self.eps, x.dtype))

    def affine(self, z: Float[ArrayLike, "... d"]) -> Array:
        r"""$\gamma \odot z + \beta$ (single-layer parameters)."""
        z = jnp.asarray(z)
        return self.gamma.astype(z.dtype) * z + self.beta.astype(z.dtype)

    def __call__(self, x: Float[ArrayLike, "... d"]) -> Array:
        r"""$\gamma \odot N_\varepsilon(x) + \beta$ (single-layer parameters)."""
        return self.affine(self.normalize(x))


LayerNorm.__init__.__doc__ = """**Arguments:**

- `gamma`, `beta`: scale and shift, shape `(d,)` or `(L, d)` (one row per layer).
- `eps`: added to the variance (default 0).
"""


def unprojected(field: AbstractField) -> AbstractField:
    """The same field with every manifold replaced by `Euclidean()`: its value is the
    raw update (e.g. $\\sum_j A_{ij} V x_j$) before the tangent projection."""
    is_manifold = lambda x: isinstance(x, AbstractManifold)
    return jax.tree.map(
        lambda x: Euclidean() if is_manifold(x) else x, field, is_leaf=is_manifold
    )


def _step_count(num, name: str, final: bool) -> Any:
    """The step count `num` of a discrete stack, checked: unless `final` (a `while`
    loop, where `num` may be traced), a non-negative integer (`name` is its
    argument name in the error), returned as an `int`."""
    if not final:
        if int(num) != num or num < 0:
            raise ValueError(f"`{name}` must be a non-negative integer; got {num}.")
        num = int(num)
    return num


def _steps_and_tokens(num, name: str, final: bool, x0) -> tuple[Any, Array]:
    """`_step_count(num, name, final)` and the input tokens `x0` as a real floating
    array (`tai_transformer`, whose model is not a field)."""
    return _step_count(num, name, final), _checks.real_floating("u0", x0)


def fixed_steps(field, solver, y0, t0, h, num_steps, final: bool, args=None):
    """`num_steps` steps of `solver` with step `h` from `(t0, y0)`, by
    `diffrax.diffeqsolve` with a constant step: all `num_steps + 1` states (the
    first is `y0`; `num_steps` a static `int`), or with `final` the last one only
    (`num_steps` may then be traced; a `while` loop, forward-mode differentiable).

    The step is `(t1 - t0) / num_steps` with `t1 = t0 + num_steps h`, so that diffrax
    takes exactly `num_steps` steps whatever the rounding. Shared by the discrete
    stacks (`transformer`, `tai_transformer`, `TransformerFlow`'s sub-steps).
    """
    dtype = y0.dtype
    term = diffrax.ODETerm(field)
    steps = jnp.asarray(num_steps)
    t1 = t0 + steps.astype(dtype) * h
    dt0 = (t1 - t0) / jnp.maximum(steps, 1).astype(dtype)
    controller = diffrax.ConstantStepSize()
    if final:
        sol = diffrax.diffeqsolve(
            term, solver, t0, t1, dt0, y0, args=args,
            saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller,
            max_steps=None, throw=False,
        )  # fmt: skip
        assert sol.ys is not None
        return sol.ys[0]
    if num_steps == 0:
        return y0[None]
    sol = diffrax.diffeqsolve(
        term, solver, t0, t1, dt0, y0, args=args,
        saveat=diffrax.SaveAt(t0=True, steps=True), stepsize_controller=controller,
        max_steps=num_steps, throw=False,
    )  # fmt: skip
    assert sol.ys is not None
    return sol.ys


def transformer(
    field: AbstractField,
    y0: Float[ArrayLike, "n d"],
    num_layers: int,
    h: ArrayLike,
    *,
    norm: str = "post",
    t0: ArrayLike = 0.0,
    split: bool = False,
    tangent: bool = True,
    final: bool = False,
    args=None,
    layer_norms: "Sequence[LayerNorm] | None" = None,
    final_norm: LayerNorm | None = None,
) -> Float[Array, "L1 n d"] | Float[Array, "n d"]:
    r"""Run a residual stack of `num_layers` layers with step `h`.

    Layer `k` acts at time $t_k = t_0 + k h$ (so a `Layerwise` field with boundaries
    at multiples of `h` gives each layer its own weights):

    - `norm="post"`: $x_{k+1} = R_{x_k}(h F(t_k, x_k))$ with $R$ the retraction
      (metric projection) of `field.manifold`: post-LN, the retraction Euler method.
    - `norm="pre"`: $x_{k+1} = x_k + h \tilde F(t_k, \operatorname{project}(x_k))$
      with $\tilde F$ the field *before* its tangent projection (`unprojected`):
      Pre-LN; the stream itself is not normalised.
    - `norm="none"`: $x_{k+1} = x_k + h F(t_k, x_k)$.

    With `tangent=False`, "post" and "none" use the unprojected field too.
    With `split=True` and a `Sum` field (possibly inside `Layerwise`), the terms are
    applied one after the other, each as a full residual sub-layer with its own
    normalisation (Lie–Trotter splitting).

    **Arguments:**

    - `field`: a spherejax field.
    - `y0`: input tokens `(n, d)`. For `"post"`, `y0` is returned as given and every
      later layer lies on the manifold.
    - `num_layers`: number of layers `L` (static).
    - `h`: step size (layer weight); `L h` is the depth in time.
    - `norm`: `"post"`, `"pre"` or `"none"`.
    - `t0`: time of the first layer.
    - `split`: apply the terms of a `Sum` field one at a time.
    - `tangent`: for `"post"` and `"none"`, add the field's tangent velocity (the
      default, matching the ODE); `False` adds its value before the tangent
      projection, the literal Transformer residual `x + h Attn(x)` (post-LN then is
      exactly `LN(x + h Attn(x))`). Both converge to the same flow at order 1.
    - `final`: return only the last layer. Then `num_layers` may be a traced or
      varying integer without recompiling (a `while` loop: forward-mode
      differentiable only); convenient for convergence studies over `L`.
    - `args`: passed to the field.
    - `layer_norms`: LayerNorms with learned `gamma`, `beta`, `eps` (`LayerNorm`),
      one per sub-layer (one, or one per term of the `Sum` with `split=True`);
      parameters of shape `(L, d)` are per layer (the layer of a `Layerwise` field
      acting on the step). Then every sub-layer `s` is the literal residual (the
      field's value before its tangent projection, `f_s`):

        - `"pre"`: $x \leftarrow x + h f_s(t, \mathrm{LN}_s(x))$ (GPT-2);
        - `"post"`: the state is the normalised $z$ and sub-layer `s` reads
          $u = \gamma_s \odot z + \beta_s$:
          $z \leftarrow N_{\varepsilon_s}\big(z + h(u - z + f_s(t, u))\big)$.
          At `h = 1` this is $z' = N_\varepsilon(u + f_s(u))$, the post-LN block
          `LN(u + F(u))` of BERT with its affine map moved into the next
          sub-layer's input: for BERT, $(\gamma_s, \beta_s)$ is the LayerNorm
          *preceding* sub-layer `s` (the embedding one for the first attention).
        - `"none"` takes no `layer_norms`.

      `tangent` is then ignored.
    - `final_norm`: a `LayerNorm` applied to the last state only (GPT-2's `ln_f`,
      whose output is its last hidden state).

    **Returns:** the `L + 1` layer outputs, shape `(num_layers + 1, n, d)`, or with
    `final=True` the last one, `(n, d)`.

    !!! example

        ```python
        field = sj.SelfAttention.identity(3, beta=1.0)
        x0 = sj.Sphere().random(jax.random.PRNGKey(0), (8, 3))
        xs = sj.transformers.transformer(field, x0, num_layers=12, h=0.25)  # (13, 8, 3)
        ```
    """
    if norm not in NORMS:
        raise ValueError(f"unknown `norm` {norm!r}; expected one of {NORMS}.")
    num_layers = _step_count(num_layers, "num_layers", final)
    y0 = _prepare.stack_tokens(field, y0)
    norms = _check_norms(field, norm, split, layer_norms, final_norm, y0.shape[-1])
    dtype = y0.dtype
    h, t0 = finite_scalars(dtype, h=h, t0=t0)
    if final:
        out = _last(
            field, y0, jnp.asarray(num_layers), h, t0, norm, split, tangent, args, norms
        )
        return out if final_norm is None else final_norm(out)
    out = _stack(field, y0, num_layers, h, t0, norm, split, tangent, args, norms)
    if final_norm is None:
        return out
    return out.at[-1].set(final_norm(out[-1]))


def _check_norms(field, norm, split, layer_norms, final_norm, d):
    """`layer_norms` as a tuple (or `None`), checked against the sub-layers."""
    for ln in (final_norm, *(layer_norms or ())):
        if not isinstance(ln, LayerNorm) and ln is not None:
            raise ValueError(
                f"`layer_norms` and `final_norm` take `LayerNorm`s; got {ln!r}."
            )
        if ln is not None and ln.gamma.shape[-1] != d:
            raise ValueError(
                f"a LayerNorm of dimension {ln.gamma.shape[-1]} for tokens of "
                f"dimension {d}."
            )
    if final_norm is not None and final_norm.layered:
        raise ValueError("`final_norm` takes parameters of shape `(d,)`.")
    if layer_norms is None:
        return None
    if norm == "none":
        raise ValueError("`layer_norms` needs `norm='post'` or `norm='pre'`.")
    layer_norms = tuple(layer_norms)
    count = len(field_parts(field)) if split else 1
    if len(layer_norms) != count:
        raise ValueError(
            f"`layer_norms` must hold one `LayerNorm` per sub-layer ({count}); got "
            f"{len(layer_norms)}."
        )
    for ln in layer_norms:
        if ln.layered and not (
            isinstance(field, Layerwise) and ln.gamma.shape[0] == field.num_layers
        ):
            raise ValueError(
                "per-layer LayerNorm parameters `(L, d)` need a `Layerwise` field "
                f"with L layers; got shape {ln.gamma.shape}."
            )
    return layer_norms


def layer_solver(
    field: AbstractField,
    norm: str,
    *,
    split: bool = False,
    tangent: bool = True,
    layer_norms: "Sequence[LayerNorm] | None" = None,
) -> tuple[AbstractField, AbstractManifoldSolver]:
    """The field to integrate and the fixed-step solver making one step a layer of
    `transformer` (arguments as there): a layer update rule (`PostNorm`, `PreNorm`,
    `Residual`), or with `split` a `LieTrotter` splitting with one rule per term of
    a `Sum` (possibly inside `Layerwise`)."""
    raw = field
    if norm == "pre" or not tangent or layer_norms is not None:
        raw = unprojected(field)
    parts = field_parts(raw) if split else (raw,)
    times = field.times if isinstance(field, Layerwise) else None
    if layer_norms is not None:
        rule = PostNorm if norm == "post" else PreNorm
        rules = tuple(
            rule(norm=ln, times=times if ln.layered else None) for ln in layer_norms
        )
    elif norm == "none":
        rules = (Residual(),) * len(parts)
    else:
        rule = PostNorm if norm == "post" else PreNorm
        rules = (rule(norm=ManifoldNorm(field.manifold)),) * len(parts)
    if len(parts) == 1:
        return parts[0], rules[0]
    splitting = LieTrotter(*parts, solver=rules, manifold=Euclidean())  # pyright: ignore[reportCallIssue]
    return raw, splitting


@eqx.filter_jit
def _stack(field, y0, num_layers, h, t0, norm, split, tangent, args, norms=None):
    f, solver = layer_solver(
        field, norm, split=split, tangent=tangent, layer_norms=norms
    )
    return fixed_steps(f, solver, y0, t0, h, num_layers, False, args)


@eqx.filter_jit
def _last(field, y0, num_layers, h, t0, norm, split, tangent, args, norms=None):
    f, solver = layer_solver(
        field, norm, split=split, tangent=tangent, layer_norms=norms
    )
    return fixed_steps(f, solver, y0, t0, h, num_layers, True, args)


def to_polar(x: Float[ArrayLike, "*b d"]) -> Float[Array, "*b d1"]:
    """`x = r theta` -> rows `(r, theta)` on `RadiusSphere` (`r = |x|`)."""
    x = jnp.asarray(x)
    r = safe_norm(x, keepdims=True)
    return jnp.concatenate([r, x / r], axis=-1)


def from_polar(y: Float[ArrayLike, "*b d1"]) -> Float[Array, "*b d"]:
    """Rows `(r, theta)` -> `x = r theta`."""
    y = jnp.asarray(y)
    return y[..., :1] * y[..., 1:]


class PreLNFlow(AbstractField):
    r"""The continuous-time Pre-LN Transformer (Karagodin–Ge–Polyanskiy–Rigollet, 2025).

    The residual stream $x = r\theta$ follows $\dot x = A(t, \theta)$ where $A$ is the
    wrapped field *before* its tangent projection (e.g.
    $A_i = \sum_j A_{ij} V\theta_j$); in polar coordinates on `RadiusSphere`:

    $$\dot\theta_i = \frac{1}{r_i} P_{\theta_i} A_i(t, \theta),\qquad
    \dot r_i = \langle \theta_i, A_i(t, \theta)\rangle.$$

    Since $\dot r \approx 1$ near consensus (with `V = I`), the angular speed decays
    like $1/t$ and clustering is polynomial, $1 - \rho \sim t^{-2}$, instead of the
    exponential $e^{-2t}$ of Post-LN.

    ??? cite
        N. Karagodin, S. Ge, Y. Polyanskiy, P. Rigollet, *Normalization in attention
        dynamics*, NeurIPS 2025, arXiv:2510.22026.
    """

    field: AbstractField
    raw: AbstractField
    manifold: RadiusSphere

    def __init__(self, field: AbstractField):
        if not isinstance(field, AbstractField):
            raise ValueError(
                f"`field` must be a spherejax field; got {type(field).__name__}."
            )
        if field.manifold != Sphere():
            raise ValueError(
                f"`PreLNFlow` normalises onto the unit sphere: `field` must live on "
                f"`Sphere()`; got {field.manifold}."
            )
        self.field = field
        self.raw = unprojected(field)
        self.manifold = RadiusSphere()

    def check_tokens(self, y):
        if y.ndim != 2:
            raise ValueError(
                f"`y0` must have shape `(n, 1 + d)`; got {tuple(y.shape)}."
            )
        self.field.check_tokens(y[:, 1:])

    def jump_times(self):
        return self.field.jump_times()

    def __call__(self, t, y, args=None):
        r, theta = y[..., :1], y[..., 1:]
        a = self.raw(t, theta, args)
        dr = _dot(theta, a)
        dtheta = (a - dr * theta) / r
        return jnp.concatenate([dr, dtheta], axis=-1)


PreLNFlow.__init__.__doc__ = """**Arguments:**

- `field`: an attention (or any) field on `Sphere()`; its unprojected value is the
  update `A` added to the residual stream.
"""
