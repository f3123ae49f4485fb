r"""Layer update rules: one residual layer of a Transformer as one fixed step of a
solver.

A Transformer with step `h` (the residual weight) is a time discretisation of an
attention flow $\dot x = f(t, x)$; what distinguishes architectures is where the
normalisation $\mathcal N$ acts. Each rule below is a `diffrax.AbstractSolver`
with a fixed step (no error estimate, `order` 1) taking the normalisation as a
module, so that a new architecture is a new small class:

- `PostNorm`: $x_{k+1} = \mathcal N\big(x_k + h(u_k - x_k + f(t_k, u_k))\big)$,
  $u_k = A(x_k)$ with $A$ the normalisation's affine read-out (post-LN; with a
  manifold's projection, $A = \mathrm{id}$ and this is the retraction Euler step
  $\operatorname{project}(x_k + h f(t_k, x_k))$);
- `PreNorm`: $x_{k+1} = x_k + h f(t_k, \mathcal N(x_k))$ (pre-LN: the residual
  stream itself is not normalised);
- `Residual`: $x_{k+1} = x_k + h f(t_k, x_k)$ (no normalisation);
- `ProjectedMidpoint`: the explicit midpoint rule with both stages retracted, the
  second-order sub-step of the Strang splitting of a residual flow.

Sub-layers (attention, then the MLP) are composed by `LieTrotter` or `Strang`
with one rule per part. The step acts with the layer of the field that holds on
the start of the step (`step_field`), so a `Layerwise` field with boundaries on
the step times gives each step its own weights, whatever the rounding of the
step times.
"""

import abc
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._field import Layerwise
from .._manifold import AbstractManifold
from .base import AbstractManifoldSolver
from .splitting import _find_field


def _layer_time(t0, t1):
    """The time at which a step reads its layer: its start, probed 1/1024 of the
    step in, so that rounding of the step times (`t0` a few ulps below a layer
    boundary) never selects the previous layer."""
    return t0 + (t1 - t0) / 1024


def step_field(field, t0, t1):
    """The field acting on the step `[t0, t1]`: a field's own `on_step(t0, t1)`
    where it has one; for a `Layerwise` field its layer at the start of the step
    (robust to the rounding of `t0`); else the field itself."""
    on_step = getattr(field, "on_step", None)
    if on_step is not None:
        return on_step(t0, t1)
    if isinstance(field, Layerwise):
        return field.layer(field.index(_layer_time(t0, t1)))
    return field


def layer_index(times: Float[Array, " L1"] | None, t0, t1):
    """Index of the layer acting on `[t0, t1]` for layer boundaries `times` (at the
    start of the step, as `step_field`; 0 when `times` is `None`)."""
    if times is None:
        return 0
    k = jnp.searchsorted(times, _layer_time(t0, t1), side="right") - 1
    return jnp.clip(k, 0, times.shape[0] - 2)


class ManifoldNorm(eqx.Module):
    r"""The normalisation of a manifold: its metric projection, with no affine
    read-out. `PostNorm(ManifoldNorm(M))` is the retraction Euler method on `M`."""

    manifold: AbstractManifold

    @property
    def layered(self) -> bool:
        return False

    def at(self, k) -> "ManifoldNorm":
        del k
        return self

    def normalize(self, x) -> Array:
        return self.manifold.project(x)

    def affine(self, z) -> Array:
        return jnp.asarray(z)

    def __call__(self, x) -> Array:
        return self.manifold.project(x)


ManifoldNorm.__init__.__doc__ = """**Arguments:**

- `manifold`: the manifold whose projection normalises.
"""


class AbstractLayerUpdate(AbstractManifoldSolver):
    r"""A fixed-step solver whose step is one residual layer.

    Subclasses implement `update(f, norm, t, h, y, args)` for the field `f` of the
    step (already the layer acting on `[t, t + h]`) and the normalisation `norm` of
    that layer. `norm` holds one set of parameters, or one per layer
    (LayerNorm `(L, d)`), then chosen by the layer boundaries `times`.

    The state need not lie on a manifold (pre-LN: the residual stream; post-LN
    with $\varepsilon > 0$: the image of $N_\varepsilon$). `manifold` is where
    `spherejax.solve` and the splittings keep it (a splitting projects onto it
    after each sub-step): give the rule a field on `Euclidean()` (e.g.
    `unprojected(field)`) to leave the rule's normalisation the only one.
    """

    norm: Any = None
    times: Float[Array, " L1"] | None = None
    manifold: AbstractManifold | None = None

    term_structure = diffrax.ODETerm
    interpolation_cls = diffrax.LocalLinearInterpolation

    def __init__(
        self,
        norm: Any = None,
        *,
        times: Any = None,
        manifold: AbstractManifold | None = None,
    ):
        self.norm = norm
        self.times = None if times is None else jnp.asarray(times)
        self.manifold = manifold

    def order(self, terms) -> int:
        del terms
        return 1

    @abc.abstractmethod
    def update(self, f, norm, t, h, y, args) -> Array:
        """The state after one layer of step `h` from `y` at time `t`."""

    def init(self, terms, t0, t1, y0, args):
        del terms, t0, t1, y0, args
        return None

    def single_step(self, terms, t0, t1, y0, args):
        f = step_field(_find_field(terms), t0, t1)
        norm = self.norm
        if norm is not None and norm.layered:
            norm = norm.at(layer_index(self.times, t0, t1))
        h = terms.contr(t0, t1)
        return self.update(f, norm, t0, h, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        y1 = self.single_step(terms, t0, t1, y0, args)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


_rule_doc = """**Arguments:**

- `norm`: the normalisation: a `LayerNorm` (gain, bias, `eps`; parameters `(d,)`,
  or `(L, d)` one per layer) or `ManifoldNorm(manifold)` (a manifold's projection).
  Anything with `normalize(x)`, `affine(z)`, `__call__(x)`, `layered` and `at(k)`.
- `times`: the layer boundaries choosing the row of a per-layer `norm` (those of
  the `Layerwise` field); `None` for one set of parameters.
- `manifold`: where the state is kept; `None` lets `spherejax.solve` (or the
  enclosing `LieTrotter`/`Strang`) fill it in.
"""


class PostNorm(AbstractLayerUpdate):
    r"""Post-normalisation (post-LN): the state is the normalised $z$; the layer
    reads $u = A(z)$ (the normalisation's affine map, e.g. $\gamma\odot z + \beta$)
    and

    $$z_{k+1} = \mathcal N\big(z_k + h(u_k - z_k + f(t_k, u_k))\big).$$

    At `h = 1` this is $\mathcal N(u + f(u))$, BERT's `LN(u + F(u))` with the
    affine map moved into the next layer's input. With `ManifoldNorm(M)` it is the
    retraction Euler step $\operatorname{project}(z + h f(t, z))$ on `M`. Order 1.
    """

    def __check_init__(self):
        if self.norm is None:
            raise ValueError(
                f"`{type(self).__name__}` needs a normalisation `norm` (a `LayerNorm`, "
                "or `ManifoldNorm(manifold)`)."
            )

    def update(self, f, norm, t, h, y, args):
        u = norm.affine(y)
        return norm.normalize(y + h * (u - y + f(t, u, args)))


class PreNorm(AbstractLayerUpdate):
    r"""Pre-normalisation (pre-LN, GPT-2):

    $$x_{k+1} = x_k + h f(t_k, \mathcal N(x_k)),$$

    the residual stream itself is not normalised. Order 1.
    """

    def __check_init__(self):
        if self.norm is None:
            raise ValueError(
                f"`{type(self).__name__}` needs a normalisation `norm` (a `LayerNorm`, "
                "or `ManifoldNorm(manifold)`)."
            )

    def update(self, f, norm, t, h, y, args):
        return y + h * f(t, norm(y), args)


class Residual(AbstractLayerUpdate):
    r"""A residual layer without normalisation, $x_{k+1} = x_k + h f(t_k, x_k)$
    (explicit Euler, with the layer of the step). Order 1."""

    def update(self, f, norm, t, h, y, args):
        del norm
        return y + h * f(t, y, args)


class ProjectedMidpoint(AbstractLayerUpdate):
    r"""The explicit midpoint rule with both stages retracted onto `manifold`:

    $$y_{1/2} = R_{y_0}\big(\tfrac h2 P_{y_0} f(t_0, y_0)\big),\qquad
    y_1 = R_{y_0}\big(h P_{y_0} f(t_0 + \tfrac h2, y_{1/2})\big),$$

    with $R_y(v) = \operatorname{project}(y + v)$ and $P_y$ the tangent projection
    (the identity on `Euclidean()`); with `tangent=False` the second stage's
    velocity is added as it is ($P_{y_0}$ dropped there). Order 2; the sub-step of
    `Strang` for the continuous-time limit of a network's layers.
    """

    tangent: bool = eqx.field(static=True, default=True)

    def __init__(
        self, manifold: AbstractManifold | None = None, *, tangent: bool = True
    ):
        super().__init__(manifold=manifold)
        self.tangent = tangent

    def order(self, terms) -> int:
        del terms
        return 2

    def update(self, f, norm, t, h, y, args):
        del norm
        M = self._require_manifold()

        def retract(v, tau, tangent=True):
            if tangent:
                v = M.to_tangent(y, v)
            return M.project(y + tau * v)

        ym = retract(f(t, y, args), 0.5 * h)
        return retract(f(t + 0.5 * h, ym, args), h, self.tangent)


PostNorm.__init__.__doc__ = _rule_doc
PreNorm.__init__.__doc__ = _rule_doc
Residual.__init__.__doc__ = """**Arguments:**

- `manifold`: where the state is kept; `None` lets `spherejax.solve` (or the
  enclosing `LieTrotter`/`Strang`) fill it in.
"""
ProjectedMidpoint.__init__.__doc__ = """**Arguments:**

- `manifold`: where the state lives; `None` lets `spherejax.solve` take the
  field's.
- `tangent`: project the second stage's velocity onto the tangent space at the
  step's start (default); `False` adds it as it is.
"""


class PeriNorm(AbstractLayerUpdate):
    r"""Peri-normalisation (peri-LN: Gemma 2 and 3, OLMo 2 without the input
    norm): a norm on the sub-layer's input and one on its output,

    $$x_{k+1} = x_k + h\,\mathcal N_{\mathrm{out}}\big(f(t_k, \mathcal N(x_k))\big),$$

    the residual stream itself not normalised. `norm` (the input's) may be `None`
    (OLMo 2: $x_{k+1} = x_k + h\,\mathcal N_{\mathrm{out}}(f(t_k, x_k))$). The flow
    it discretises (order 1) is $\dot x = \mathcal N_{\mathrm{out}}(f(t,
    \mathcal N(x)))$: with RMSNorms the velocity has the fixed length
    $|(c + w_{\mathrm{out}}) \odot N_\varepsilon(\cdot)| \le \sqrt d \max|c + w|$
    whatever the sub-layer's output, so the residual stream grows at most linearly
    in depth.
    """

    out_norm: Any = None

    def __init__(
        self,
        norm: Any = None,
        out_norm: Any = None,
        *,
        times: Any = None,
        manifold: AbstractManifold | None = None,
    ):
        super().__init__(norm, times=times, manifold=manifold)
        self.out_norm = out_norm

    def __check_init__(self):
        if self.out_norm is None:
            raise ValueError(
                "`PeriNorm` needs the output normalisation `out_norm` (without it the "
                "rule is `PreNorm`)."
            )

    def single_step(self, terms, t0, t1, y0, args):
        out = self.out_norm
        if out.layered:
            out = out.at(layer_index(self.times, t0, t1))
        f = step_field(_find_field(terms), t0, t1)
        norm = self.norm
        if norm is not None and norm.layered:
            norm = norm.at(layer_index(self.times, t0, t1))
        return self.step_with(f, norm, out, t0, terms.contr(t0, t1), y0, args)

    def step_with(self, f, norm, out_norm, t, h, y, args) -> Array:
        """One step with the given (single-layer) input and output norms."""
        u = y if norm is None else norm(y)
        return y + h * out_norm(f(t, u, args))

    def update(self, f, norm, t, h, y, args):
        out = self.out_norm.at(0) if self.out_norm.layered else self.out_norm
        return self.step_with(f, norm, out, t, h, y, args)


class NGPT(AbstractLayerUpdate):
    r"""The normalised Transformer's update (nGPT, Loshchilov et al. 2024): states
    kept on the unit sphere, the sub-layer's normalised output approached with
    per-coordinate step sizes $\alpha$ (the "eigen learning rates"),

    $$x_{k+1} = \mathrm{Norm}\Big(x_k + h\,\alpha \odot
    \big(\mathrm{Norm}(f(t_k, x_k)) - x_k\big)\Big),\qquad
    \mathrm{Norm}(v) = v/|v|.$$

    Order 1 (a retraction Euler step) for the flow on the sphere

    $$\dot x = P_x\big[\alpha \odot (\mathrm{Norm}(f(t, x)) - x)\big],\qquad
    P_x = I - x x^\top,$$

    in which $-P_x(\alpha\odot x)$ vanishes for a scalar $\alpha$ and otherwise
    pulls $x$ towards the coordinates of large step size; for scalar $\alpha$
    the flow moves $x$ along the great circle towards $\mathrm{Norm}(f(x))$ with
    speed $\alpha \sin\angle(x, f(x))$. `alpha` has shape `(d,)` or `(L, d)`.

    ??? cite
        I. Loshchilov, C.-P. Hsieh, S. Sun, B. Ginsburg, *nGPT: Normalized
        Transformer with representation learning on the hypersphere*,
        arXiv:2410.01131.
    """

    alpha: Float[Array, "*L d"] | None = None

    def __init__(
        self,
        alpha: Any,
        *,
        times: Any = None,
        manifold: AbstractManifold | None = None,
    ):
        super().__init__(None, times=times, manifold=manifold)
        self.alpha = jnp.asarray(alpha)

    def __check_init__(self):
        if self.alpha is None or self.alpha.ndim not in (0, 1, 2):
            raise ValueError("`alpha` must be a scalar, `(d,)` or `(L, d)`.")

    def single_step(self, terms, t0, t1, y0, args):
        alpha = self.alpha
        assert alpha is not None
        if alpha.ndim == 2:
            alpha = alpha[layer_index(self.times, t0, t1)]
        f = step_field(_find_field(terms), t0, t1)
        return self.step_with(f, alpha, t0, terms.contr(t0, t1), y0, args)

    @staticmethod
    def step_with(f, alpha, t, h, y, args) -> Array:
        """One step with step sizes `alpha` (`(d,)` or a scalar)."""
        v = f(t, y, args)
        v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        y1 = y + h * jnp.asarray(alpha, y.dtype) * (v - y)
        return y1 / jnp.linalg.norm(y1, axis=-1, keepdims=True)

    def update(self, f, norm, t, h, y, args):
        del norm
        assert self.alpha is not None
        alpha = self.alpha[0] if self.alpha.ndim == 2 else self.alpha
        return self.step_with(f, alpha, t, h, y, args)


PeriNorm.__init__.__doc__ = """**Arguments:**

- `norm`: the input's normalisation (`LayerNorm`, `RMSNorm`, ...) or `None`.
- `out_norm`: the output's normalisation (required).
- `times`, `manifold`: as for `PreNorm`.
"""
NGPT.__init__.__doc__ = """**Arguments:**

- `alpha`: the step sizes $\\alpha$, a scalar, `(d,)`, or `(L, d)` one row per
  layer.
- `times`, `manifold`: as for `PreNorm` (the state is kept on the unit sphere by
  the rule itself).
"""
