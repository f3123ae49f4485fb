r"""Mean-field densities: the continuity equation of attention dynamics on the
circle $S^1$ and on the sphere $S^2$, as diffrax problems.

For `Q = K = V = I` and a probability density $\rho$ on $S^{d-1}$, the attention
velocity of a token at $x$ is the tangent projection of the attention average
(Geshkovski–Letrouit–Polyanskiy–Rigollet, §2; Burger et al.):

$$Z[\rho](x) = \int e^{\beta\langle x, y\rangle}\rho(y)\,dy,\qquad
v[\rho](x) = P_x\frac{\int e^{\beta\langle x,y\rangle} y\,\rho(y)\,dy}{Z[\rho](x)}
= \frac{\nabla Z[\rho](x)}{\beta\,Z[\rho](x)}\quad\text{(SA)},\qquad
v[\rho] = \frac{\nabla Z[\rho]}{\beta}\quad\text{(USA)},$$

($\nabla$ the surface gradient), and the density obeys

$$\partial_t\rho + \operatorname{div}(\rho\, v[\rho]) = \nu\,\Delta\rho,$$

with an optional diffusion $\nu \ge 0$ (the mean-field limit of noisy tokens;
$\nu = 0$ by default). $Z$ is a convolution with the zonal kernel
$e^{\beta\langle x, y\rangle}$: it is diagonal in Fourier modes on $S^1$
($e^{\beta\cos\psi} = \sum_k I_k(\beta) e^{ik\psi}$) and in spherical harmonics on
$S^2$ (Funk–Hecke: degree $l$ is multiplied by
$\kappa_l = 2\pi\int_{-1}^1 e^{\beta t}P_l(t)\,dt$), so it is computed exactly in
spectral space; only the products $\rho v$ (and the SA quotient) are formed on a
grid.

Linearising at the uniform state gives the growth rate of mode $k$ on the circle,
$\lambda_k = k^2 I_k(\beta)/(\beta I_0(\beta))$ (SA) or $k^2 I_k(\beta)/\beta$
(USA, densities of unit mass), and of degree $l$ on $S^2$,
$\lambda_l = l(l+1) I_{l+1/2}(\beta)/(\beta I_{1/2}(\beta))$ (SA); both solvers
reproduce these to round-off (their linearisation is exact).

The interaction energy of a density is
$E_\beta[\rho] = \frac{1}{2\beta}\iint e^{\beta\langle x,y\rangle}\rho(x)\rho(y)
= \frac{1}{2\beta}\int\rho\,Z[\rho]$; with $\nu = 0$,
$\frac{d}{dt}E = \int\rho\,Z\,|v|^2 \ge 0$ (SA) and $\frac{d}{dt}E = \int\rho|v|^2$
(USA).

??? cite
    B. Geshkovski, C. Letrouit, Y. Polyanskiy, P. Rigollet, *A mathematical
    perspective on Transformers*, arXiv:2312.10794; M. Burger, S. Kabri,
    Y. Korolev, T. Roith, L. Weigand, *Analysis of mean-field models arising from
    self-attention dynamics in transformer architectures with layer
    normalization*, Phil. Trans. R. Soc. A 383 (2025); G. Bruno, F. Pasqualotto,
    A. Agazzi, *Emergence of meta-stable clustering in mean-field transformer
    models*, arXiv:2410.23228.
"""

import abc
import math
from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _checks, _prepare, _step_size
from ._custom_types import RealScalarLike
from ._field import _scalar
from ._misc import is_concrete


_NORMALIZATIONS = ("softmax", "unnormalized")


def _check_common(normalization: str, diffusion) -> Array:
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {_NORMALIZATIONS}; got {normalization!r}."
        )
    diffusion = _scalar("diffusion", diffusion)
    if is_concrete(diffusion) and float(diffusion) < 0:
        raise ValueError(f"`diffusion` must be non-negative; got {float(diffusion)}.")
    return diffusion


def _check_beta(beta, limit: float, what: str) -> Array:
    beta = _scalar("beta", beta)
    if is_concrete(beta):
        b = float(beta)
        if not b > 0:
            raise ValueError(f"`beta` must be positive; got {b}.")
        if b > limit:
            raise ValueError(
                f"`beta` = {b} is too large for {what} (at most {limit:g}): the "
                "kernel's spectrum is not resolved; raise `kernel_points`."
            )
    return beta


def _check_value(V) -> Array:
    V = _checks.as_float(V)
    if V.shape != (2, 2):
        raise ValueError(f"`V` must be a 2x2 matrix; got shape {V.shape}.")
    if is_concrete(V) and not bool(jnp.all(jnp.isfinite(V))):
        raise ValueError("`V` contains NaN or inf.")
    return V


class AbstractDensity(eqx.Module):
    r"""A discretised mean-field density: a vector field `(t, state, args) ->
    d state/dt` for `diffrax.ODETerm`, integrated by `solve_density`.

    A final subclass fixes what its state is (nodal values, harmonic
    coefficients, ...) and implements the methods below; `solve_density` calls
    only these.
    """

    beta: eqx.AbstractVar[Float[Array, ""]]
    diffusion: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def check_state(self, state: ArrayLike, /) -> Array:
        """`state` as an array, with a `ValueError` if its shape is not this
        discretisation's."""

    @abc.abstractmethod
    def kernel(self, dtype=None) -> Array:
        """The interaction kernel's spectrum, computed once per solve and passed to
        `__call__` as `args`."""

    @abc.abstractmethod
    def nodal(self, states: Array, /) -> Array:
        """The density at the grid nodes of each of `states` (shape `(..., S)`),
        where its sign is checked."""

    @abc.abstractmethod
    def __call__(self, t, state: Array, args=None, /) -> Array:
        """The right-hand side; `args` may hold `self.kernel()` precomputed."""

    @abc.abstractmethod
    def mass(self, state: ArrayLike, /) -> Array:
        r"""$\int\rho$ of each state (shape `(..., S)`)."""

    @abc.abstractmethod
    def energy(self, state: ArrayLike, /) -> Float[Array, ""]:
        r"""The interaction energy $E_\beta[\rho]$."""


class CircleDensity(AbstractDensity):
    r"""The mean-field continuity equation on the circle, discretised by a
    Fourier pseudo-spectral method; a vector field `(t, rho, args) -> drho/dt`
    for `diffrax.ODETerm`.

    The state is the density at the `modes` equispaced nodes
    $\theta_j = 2\pi j/M$ (so `rho` has shape `(M,)`, $M$ = `modes`, even), i.e.
    the trigonometric interpolant with Fourier modes $|k| < M/2$ (the Nyquist mode
    is dropped). Densities are with respect to $d\theta$: mass
    $\int\rho = \frac{2\pi}{M}\sum_j\rho_j$.

    One evaluation: Fourier coefficients $\hat\rho_k$; $\hat Z_k = 2\pi
    I_k(\beta)\hat\rho_k$ and $\widehat{Z'}_k = ik\hat Z_k$ (exact convolution; the
    $I_k$ are the Fourier coefficients of $e^{\beta(\cos\psi - 1)}$ by a
    `kernel_points`-point FFT, relative error $\approx I_{P-M/2}(\beta)/I_{M/2}(\beta)$,
    negligible for $\beta \ll P/4$); $\rho$, $Z$ and $Z'$ are evaluated on a grid
    padded to $2M$ points (the "2x rule"); $v = Z'/(\beta Z)$ (SA) or
    $Z'/\beta$ (USA) and the flux $\rho v$ are formed there; the flux is
    transformed back, truncated to $|k| < M/2$ and differentiated spectrally.
    The product $\rho v$ of two band-limited factors would be alias-free on the
    padded grid; for SA $v$ is a quotient, whose modes beyond $M$ decay
    geometrically for smooth $\rho$, so aliasing is at the level of the
    truncation error. The linearisation at the uniform state is exact (the
    perturbation of $v$ is band-limited), hence the growth rates
    $\lambda_k = k^2 I_k(\beta)/(\beta I_0(\beta))$ (SA) hold to round-off.
    The $k = 0$ mode of the right-hand side is exactly zero: mass is conserved to
    round-off.

    **Positivity.** The exact equation keeps $\rho > 0$. The spectral solution
    stays positive while the density is resolved (smooth data, times before the
    clusters shrink below the grid); when clusters sharpen beyond the grid
    (for $\nu = 0$ they contract like $e^{-t}$), Gibbs oscillations make it
    negative. `solve_density` detects and reports this; add modes, shorten the
    horizon, or add a small `diffusion`.

    **A value matrix.** With `V` (a $2\times2$ matrix; default the identity) and
    still $Q = K = I$, the kernel is unchanged and, with
    $x = (\cos\theta, \sin\theta)$, $\tau = (-\sin\theta, \cos\theta)$ and
    $y = (\cos\phi, \sin\phi)$,
    $$G[\rho](\theta) = \int e^{\beta\cos(\theta-\phi)}\,y\,\rho(\phi)\,d\phi,
    \qquad v[\rho] = \frac{\langle\tau, V G\rangle}{Z}\ \text{(SA)},\qquad
    v[\rho] = \langle\tau, V G\rangle\ \text{(USA)},$$
    the mean-field limit of `SelfAttention(I, I, V, beta)` on the circle. The two
    components of $G$ are convolutions of the kernel with $\rho\cos\phi$ and
    $\rho\sin\phi$ (modes $|k| \le M/2$, whose coefficients are shifts of
    $\hat\rho$), computed exactly in spectral space like $Z$; for $V = I$,
    $\langle\tau, G\rangle = Z'/\beta$ and this is the field above. The
    discretisation is otherwise the same (the flux's modes beyond the padded
    grid's band do not alias onto $|k| < M/2$), and mass is conserved to
    round-off. The energy identity $\frac{d}{dt}E = \int\rho Z|v|^2$ (SA) /
    $\int\rho|v|^2$ (USA), hence the monotonicity of $E_\beta$, holds for
    $V = I$ (and, rescaled by $c$, for $V = cI$, $c > 0$); it is not claimed for
    other $V$: for $V \ne cI$, even symmetric positive definite, $\dot E$ has
    a term of either sign (the monotone energy of a general $V$ needs the kernel
    $e^{\beta\langle x, Vy\rangle}$, i.e. $Q^\top K = V$, which this class does
    not model). With a general `V`, `energy_rate` returns the exact
    $\frac{d}{dt}E = \int\rho Z v_I v$ (SA) / $\int\rho v_I v$ (USA),
    $v_I = Z'/(\beta Z)$ resp. $Z'/\beta$ the field for $V = I$, which is not
    sign-definite.
    """

    beta: Float[Array, ""]
    diffusion: Float[Array, ""]
    V: Float[Array, "2 2"] | None
    modes: int = eqx.field(static=True)
    normalization: str = eqx.field(static=True)
    kernel_points: int = eqx.field(static=True)

    def __init__(
        self,
        beta: ArrayLike,
        modes: int | np.integer = 256,
        *,
        normalization: str = "softmax",
        diffusion: ArrayLike = 0.0,
        kernel_points: int | None = None,
        V: ArrayLike | None = None,
    ):
        if int(modes) != modes or modes < 4 or modes % 2:
            raise ValueError(f"`modes` must be an even integer >= 4; got {modes}.")
        self.modes = int(modes)
        if kernel_points is None:
            kernel_points = max(4 * self.modes, 1024)
        if int(kernel_points) != kernel_points or kernel_points < 2 * self.modes:
            raise ValueError(
                f"`kernel_points` must be an integer >= 2 * modes; got {kernel_points}."
            )
        self.kernel_points = int(kernel_points)
        self.beta = _check_beta(
            beta, (self.kernel_points - self.modes // 2) / 4, "this `kernel_points`"
        )
        self.diffusion = _check_common(normalization, diffusion)
        self.normalization = normalization
        self.V = None if V is None else _check_value(V)

    @property
    def nodes(self) -> Float[Array, " M"]:
        """The grid angles $\\theta_j = 2\\pi j / M$."""
        j = jnp.arange(self.modes, dtype=jnp.result_type(float))
        return 2 * jnp.pi * j / self.modes

    def check_state(self, rho: ArrayLike) -> Array:
        """`rho` (the values at the nodes) as an array."""
        rho = jnp.asarray(rho)
        if rho.shape != (self.modes,):
            raise ValueError(
                f"`rho` must hold the density at the {self.modes} nodes; got shape "
                f"{rho.shape}."
            )
        return rho

    def _wavenumbers(self, dtype) -> Array:
        return jnp.arange(self.modes // 2 + 1, dtype=dtype)

    def bessel(self, dtype=None) -> Float[Array, " K"]:
        r"""$e^{-\beta} I_k(\beta)$ for $k = 0..M/2$ (scaled modified Bessel
        functions, from the FFT of $e^{\beta(\cos\psi - 1)}$)."""
        dtype = self.beta.dtype if dtype is None else dtype
        P = self.kernel_points
        psi = 2 * jnp.pi * jnp.arange(P, dtype=dtype) / P
        kern = jnp.exp(self.beta.astype(dtype) * (jnp.cos(psi) - 1))
        return jnp.fft.rfft(kern).real[: self.modes // 2 + 1] / P

    def kernel(self, dtype=None) -> Float[Array, " K"]:
        """`self.bessel(dtype)`."""
        return self.bessel(dtype)

    def nodal(self, states: Array) -> Array:
        """The states themselves (nodal values)."""
        return states

    def _spectrum(self, rho: Array) -> Array:
        """Fourier coefficients `rho_hat_k`, k = 0..M/2, Nyquist set to zero."""
        rho_hat = jnp.fft.rfft(rho) / self.modes
        return rho_hat.at[-1].set(0.0)

    def _on_fine(self, coef: Array) -> Array:
        P = 2 * self.modes
        return jnp.fft.irfft(coef, n=P) * P

    def _fields(self, rho: Array, ive: Array | None = None):
        """`(rho, Z_scaled, Z_scaled')` on the padded grid, `rho_hat`, `I_scaled`."""
        dtype = rho.dtype
        rho_hat = self._spectrum(rho)
        ive = self.bessel(dtype) if ive is None else ive.astype(dtype)
        cdt = rho_hat.dtype  # the spectra are complex: real factors cast to it
        k = self._wavenumbers(dtype).astype(cdt)
        z_hat = 2 * jnp.pi * ive.astype(cdt) * rho_hat
        fine = (
            self._on_fine(rho_hat),
            self._on_fine(z_hat),
            self._on_fine(1j * k * z_hat),
        )
        return fine, rho_hat, ive

    def _velocity_fine(self, z: Array, dz: Array) -> Array:
        beta = self.beta.astype(z.dtype)
        if self.normalization == "softmax":
            return dz / (beta * z)
        return jnp.exp(beta) * dz / beta

    def _value_velocity_fine(
        self, V: Array, rho_hat: Array, ive: Array, z: Array
    ) -> Array:
        """The field for a general `V` on the padded grid (`z` scaled as in
        `_fields`)."""
        dtype = z.dtype
        V = V.astype(dtype)
        # coefficients k = 0..M/2 of rho cos and rho sin: shifts of rho_hat
        # (rho_hat_{-1} = conj(rho_hat_1); rho_hat_{M/2} = rho_hat_{M/2+1} = 0)
        prev = jnp.concatenate([jnp.conj(rho_hat[1:2]), rho_hat[:-1]])
        nxt = jnp.concatenate([rho_hat[1:], jnp.zeros(1, rho_hat.dtype)])
        ive = ive.astype(rho_hat.dtype)
        gc = self._on_fine(2 * jnp.pi * ive * (prev + nxt) / 2)
        gs = self._on_fine(2 * jnp.pi * ive * (prev - nxt) / 2j)
        P = 2 * self.modes
        t = 2 * jnp.pi * jnp.arange(P, dtype=dtype) / P
        vg0 = V[0, 0] * gc + V[0, 1] * gs
        vg1 = V[1, 0] * gc + V[1, 1] * gs
        num = -jnp.sin(t) * vg0 + jnp.cos(t) * vg1
        if self.normalization == "softmax":
            return num / z
        return jnp.exp(self.beta.astype(dtype)) * num

    def _flow_fine(self, z: Array, dz: Array, rho_hat: Array, ive: Array) -> Array:
        if self.V is None:
            return self._velocity_fine(z, dz)
        return self._value_velocity_fine(self.V, rho_hat, ive, z)

    def velocity(self, rho: Float[ArrayLike, " M"]) -> Float[Array, " M"]:
        r"""The angular velocity $v[\rho](\theta_j)$ at the nodes."""
        rho = self.check_state(rho)
        (_, z, dz), rho_hat, ive = self._fields(rho)
        return self._flow_fine(z, dz, rho_hat, ive)[::2]

    def __call__(self, t, rho: Float[Array, " M"], args=None) -> Float[Array, " M"]:
        """The right-hand side; `args` may hold `self.bessel()` precomputed (as
        `solve_density` passes it, so the kernel is transformed once per solve)."""
        del t
        rho = self.check_state(rho)
        (rho_f, z, dz), rho_hat, ive = self._fields(rho, args)
        flux = rho_f * self._flow_fine(z, dz, rho_hat, ive)
        P = 2 * self.modes
        flux_hat = jnp.fft.rfft(flux)[: self.modes // 2 + 1] / P
        flux_hat = flux_hat.at[-1].set(0.0)
        k = self._wavenumbers(rho.dtype).astype(flux_hat.dtype)
        nu = self.diffusion.astype(flux_hat.dtype)
        rate = -1j * k * flux_hat - nu * k**2 * rho_hat
        return jnp.fft.irfft(rate, n=self.modes) * self.modes

    def mass(self, rho: Float[ArrayLike, "... M"]) -> Array:
        r"""$\int\rho\,d\theta$ (the trapezoidal rule, exact for the interpolant)."""
        rho = jnp.asarray(rho)
        return 2 * jnp.pi * jnp.mean(rho, axis=-1)

    def energy(self, rho: Float[ArrayLike, " M"]) -> Float[Array, ""]:
        r"""$E_\beta[\rho] = \frac{1}{2\beta}\iint e^{\beta\cos(\theta-\phi)}
        \rho(\theta)\rho(\phi)\,d\theta\,d\phi
        = \frac{(2\pi)^2}{2\beta}\sum_k I_k(\beta)|\hat\rho_k|^2$ (exact for the
        interpolant)."""
        rho = self.check_state(rho)
        rho_hat = self._spectrum(rho)
        ive = self.bessel(rho.dtype)
        weight = jnp.full(rho_hat.shape, 2.0, rho.dtype).at[0].set(1.0)
        beta = self.beta.astype(rho.dtype)
        total = jnp.sum(weight * ive * jnp.abs(rho_hat) ** 2)
        return (2 * jnp.pi) ** 2 * jnp.exp(beta) * total / (2 * beta)

    def energy_rate(self, rho: Float[ArrayLike, " M"]) -> Float[Array, ""]:
        r"""The dissipation identity's right-hand side ($\nu = 0$):
        $\int\rho Z|v|^2$ (SA) or $\int\rho|v|^2$ (USA), by the trapezoidal rule on
        the padded grid. With a general `V`: $\int\rho Z v_I v$ (SA) or
        $\int\rho v_I v$ (USA), $v_I$ the field for $V = I$ (still $dE/dt$, but of
        either sign)."""
        rho = self.check_state(rho)
        (rho_f, z, dz), rho_hat, ive = self._fields(rho)
        v = self._velocity_fine(z, dz)
        if self.V is None:
            density = rho_f * v**2
        else:
            density = rho_f * v * self._value_velocity_fine(self.V, rho_hat, ive, z)
        if self.normalization == "softmax":
            density = density * z * jnp.exp(self.beta.astype(rho.dtype))
        return 2 * jnp.pi * jnp.mean(density)

    def coefficients(self, rho: Float[ArrayLike, " M"], modes: int) -> Array:
        r"""The complex Fourier coefficients $\int e^{-ik\theta}\rho\,d\theta$ for
        $k = 1..$`modes` (the same normalisation as `empirical_fourier`)."""
        rho = self.check_state(rho)
        if int(modes) != modes or not 1 <= modes < self.modes // 2:
            raise ValueError(
                f"`modes` must be an integer in [1, {self.modes // 2 - 1}]; "
                f"got {modes}."
            )
        return 2 * jnp.pi * self._spectrum(rho)[1 : int(modes) + 1]


CircleDensity.__init__.__doc__ = """**Arguments:**

- `beta`: inverse temperature (positive; differentiable).
- `modes`: number of grid nodes `M` (even); Fourier modes `|k| < M/2`.
- `normalization`: `"softmax"` (SA) or `"unnormalized"` (USA).
- `diffusion`: `nu >= 0`, adds `nu * rho''` (default 0).
- `kernel_points`: FFT size for the kernel's Bessel coefficients (default
  `max(4 M, 1024)`); `beta` must stay below `(kernel_points - M/2) / 4`.
- `V`: the value matrix, `(2, 2)` and finite (default `None`, the identity):
  `v = <tau, V G> / Z` (SA) or `<tau, V G>` (USA), see above.
"""


def circle_growth_rates(
    beta: float, ks: ArrayLike, normalization: str = "softmax"
) -> np.ndarray:
    r"""Linear growth rates of the uniform state on the circle (numpy, float64):
    $\lambda_k = k^2 I_k(\beta)/(\beta I_0(\beta))$ (SA) or
    $k^2 I_k(\beta)/\beta$ (USA), with $I_k$ by a 4096-point FFT of
    $e^{\beta\cos\psi}$ (accurate to round-off for $\beta < 1000$)."""
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {_NORMALIZATIONS}; got {normalization!r}."
        )
    ks = np.abs(np.asarray(ks, dtype=int))
    psi = 2 * np.pi * np.arange(4096) / 4096
    ive = np.fft.rfft(np.exp(beta * (np.cos(psi) - 1))).real / 4096
    if normalization == "softmax":
        return ks**2 * ive[ks] / (beta * ive[0])
    return ks**2 * ive[ks] * np.exp(beta) / beta


def empirical_fourier(
    theta: Float[ArrayLike, "... n"],
    modes: int,
    weights: Float[ArrayLike, "... n"] | None = None,
) -> Array:
    r"""Fourier coefficients of the empirical measure
    $\mu = \sum_j w_j\delta_{\theta_j}$: $\hat\mu_k = \sum_j w_j e^{-ik\theta_j}$ for
    $k = 1..$`modes` (weights default to $1/n$). Compare with
    `CircleDensity.coefficients`."""
    theta = jnp.asarray(theta)
    if int(modes) != modes or modes < 1:
        raise ValueError(f"`modes` must be a positive integer; got {modes}.")
    n = theta.shape[-1]
    w = (
        jnp.full(theta.shape, 1.0 / n, theta.dtype)
        if weights is None
        else jnp.asarray(weights, theta.dtype)
    )
    if w.shape != theta.shape:
        raise ValueError(f"`weights` must have shape {theta.shape}; got {w.shape}.")
    k = jnp.arange(1, int(modes) + 1, dtype=theta.dtype)
    angle = theta[..., None, :] * k[:, None]
    phase = jax.lax.complex(jnp.cos(angle), -jnp.sin(angle))  # e^{-i k theta}
    return jnp.sum(w[..., None, :].astype(phase.dtype) * phase, axis=-1)


def fourier_distance(
    theta: Float[ArrayLike, "... n"],
    density: CircleDensity,
    rho: Float[ArrayLike, " M"],
    modes: int = 8,
) -> Array:
    r"""Distance between particles $\theta_j$ (uniform weights) and a density:
    $$D_K(\mu^n, \rho) = \Big(\sum_{1\le |k|\le K}
    |\hat\mu^n_k - \hat\rho_k|^2\Big)^{1/2},$$
    the $\ell^2$ distance of the first $K$ = `modes` Fourier coefficients (the
    $L^2$ distance of the two measures projected on the modes $|k|\le K$, times
    $\sqrt{2\pi}$). For $n$ i.i.d. samples of $\rho$,
    $\mathbb{E}D_K^2 = \frac{2}{n}\sum_{k=1}^K(1 - |\hat\rho_k|^2)$: the
    distance is $O(n^{-1/2})$."""
    mu = empirical_fourier(theta, modes)
    ref = density.coefficients(rho, modes)
    return jnp.sqrt(2 * jnp.sum(jnp.abs(mu - ref) ** 2, axis=-1))


def _legendre_normalized(L: int, mu: np.ndarray):
    r"""Fully normalised associated Legendre functions $\bar P_l^m(\mu)$
    ($2\pi\int_{-1}^1 (\bar P_l^m)^2 d\mu = 1$, no Condon–Shortley phase) and their
    $\theta$-derivatives, $\mu = \cos\theta$, for $0 \le m \le l \le L$;
    arrays `(L+1, L+1, len(mu))` indexed `[l, m]`. Standard three-term
    recurrences in $l$; $\frac{d\bar P_l^m}{d\theta} = \frac{1}{\sin\theta}\big(l\mu
    \bar P_l^m - \sqrt{(2l+1)(l^2-m^2)/(2l-1)}\,\bar P_{l-1}^m\big)$."""
    s = np.sqrt(1 - mu**2)
    P = np.zeros((L + 1, L + 1, mu.size))
    P[0, 0] = 1 / np.sqrt(4 * np.pi)
    for m in range(1, L + 1):
        P[m, m] = np.sqrt((2 * m + 1) / (2 * m)) * s * P[m - 1, m - 1]
    for m in range(L):
        P[m + 1, m] = np.sqrt(2 * m + 3) * mu * P[m, m]
    for m in range(L + 1):
        for l in range(m + 2, L + 1):
            a = np.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = np.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            P[l, m] = a * (mu * P[l - 1, m] - b * P[l - 2, m])
    dP = np.zeros_like(P)
    for l in range(1, L + 1):
        for m in range(l + 1):
            c = np.sqrt((2 * l + 1) * (l * l - m * m) / (2 * l - 1))
            dP[l, m] = (l * mu * P[l, m] - c * P[l - 1, m]) / s
    return P, dP


def sphere_harmonics(L: int, x: np.ndarray):
    r"""Real orthonormal spherical harmonics of degree $\le L$ at unit vectors `x`
    `(q, 3)` (numpy, float64) and their surface gradients: arrays `(q, S)` and
    `(q, S, 3)`, $S = (L+1)^2$, ordered by $l$ then $m = -l..l$;
    $Y_{lm} = \sqrt2\bar P_l^{|m|}\sin(|m|\phi)$ ($m<0$), $\bar P_l^0$,
    $\sqrt2\bar P_l^m\cos(m\phi)$ ($m>0$). Points must avoid the poles."""
    x = np.asarray(x, dtype=float)
    mu = np.clip(x[:, 2], -1.0, 1.0)
    sin_t = np.sqrt(1 - mu**2)
    if np.any(sin_t < 1e-12):
        raise ValueError("`x` must avoid the poles (x[:, 2] = +-1).")
    phi = np.arctan2(x[:, 1], x[:, 0])
    P, dP = _legendre_normalized(L, mu)
    e_t = np.stack([mu * np.cos(phi), mu * np.sin(phi), -sin_t], axis=-1)
    e_p = np.stack([-np.sin(phi), np.cos(phi), np.zeros_like(phi)], axis=-1)
    Y, G = [], []
    for l in range(L + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            if m == 0:
                trig, dtrig = np.ones_like(phi), np.zeros_like(phi)
            elif m > 0:
                trig = np.sqrt(2) * np.cos(m * phi)
                dtrig = -np.sqrt(2) * m * np.sin(m * phi)
            else:
                trig = np.sqrt(2) * np.sin(am * phi)
                dtrig = np.sqrt(2) * am * np.cos(am * phi)
            Y.append(P[l, am] * trig)
            grad = (dP[l, am] * trig)[:, None] * e_t + (P[l, am] * dtrig / sin_t)[
                :, None
            ] * e_p
            G.append(grad)
    return np.stack(Y, axis=1), np.stack(G, axis=1)


def sphere_quadrature(n_lat: int, n_lon: int):
    r"""Gauss–Legendre in $\cos\theta$ times the uniform rule in $\phi$: nodes `(q,
    3)` and weights `(q,)` summing to $4\pi$; exact for polynomials of degree
    $\le \min(2 n_{lat} - 1, n_{lon} - 1)$ restricted to $S^2$."""
    mu, wmu = np.polynomial.legendre.leggauss(n_lat)
    phi = 2 * np.pi * (np.arange(n_lon) + 0.5) / n_lon
    s = np.sqrt(1 - mu**2)
    x = np.stack(
        [
            (s[:, None] * np.cos(phi)[None]).ravel(),
            (s[:, None] * np.sin(phi)[None]).ravel(),
            np.repeat(mu, n_lon),
        ],
        axis=-1,
    )
    w = np.repeat(wmu, n_lon) * (2 * np.pi / n_lon)
    return x, w


class SphereDensity(AbstractDensity):
    r"""The mean-field continuity equation on $S^2$ by a spherical-harmonic
    Galerkin method; a vector field `(t, c, args) -> dc/dt` for
    `diffrax.ODETerm`.

    The state is the vector `c` of coefficients of $\rho = \sum_{l\le L}
    c_{lm}Y_{lm}$ in the real orthonormal harmonics (shape `((L+1)^2,)`, $L$ =
    `degree`). The Galerkin equations are the weak form of the continuity
    equation tested against each $Y_{lm}$:
    $$\dot c_{lm} = \int_{S^2}\nabla Y_{lm}\cdot\rho v[\rho]
    - \nu\, l(l+1) c_{lm},$$
    with $Z = \sum_l \kappa_l(\beta) c_{lm} Y_{lm}$ and $\nabla Z$ exact
    (Funk–Hecke, $\kappa_l$ by a Gauss–Legendre rule with `degree + 64` nodes),
    $v$ and $\rho v$ evaluated on a Gauss–Legendre $\times$ uniform grid of
    `2L+2` by `4L+4` nodes (exact for integrands of degree $\le 4L+3$, i.e. the
    Galerkin products are over-integrated 2x). $\nabla Y_{00} = 0$, so mass is
    conserved to round-off; the linearisation at the uniform state is exact, with
    rates $\lambda_l = l(l+1)I_{l+1/2}(\beta)/(\beta I_{1/2}(\beta))$ (SA).
    Accuracy: spectral in $L$ while the density is resolved (see the tests'
    convergence study); positivity as for `CircleDensity`.
    """

    beta: Float[Array, ""]
    diffusion: Float[Array, ""]
    degree: int = eqx.field(static=True)
    normalization: str = eqx.field(static=True)
    points: Float[Array, "q 3"]
    weights: Float[Array, " q"]
    basis: Float[Array, "q S"]
    gradients: Float[Array, "q S 3"]
    gl_nodes: Float[Array, " g"]
    gl_legendre: Float[Array, "L1 g"]

    def __init__(
        self,
        beta: ArrayLike,
        degree: int = 16,
        *,
        normalization: str = "softmax",
        diffusion: ArrayLike = 0.0,
    ):
        if int(degree) != degree or degree < 1:
            raise ValueError(f"`degree` must be a positive integer; got {degree}.")
        L = int(degree)
        self.degree = L
        self.beta = _check_beta(beta, 40.0 + L, "the Funk-Hecke rule")
        self.diffusion = _check_common(normalization, diffusion)
        self.normalization = normalization
        x, w = sphere_quadrature(2 * L + 2, 4 * L + 4)
        Y, G = sphere_harmonics(L, x)
        self.points, self.weights = jnp.asarray(x), jnp.asarray(w)
        self.basis, self.gradients = jnp.asarray(Y), jnp.asarray(G)
        t, wt = np.polynomial.legendre.leggauss(L + 64)
        Pl = np.stack(
            [np.polynomial.legendre.legval(t, np.eye(L + 1)[l]) for l in range(L + 1)]
        )
        self.gl_nodes, self.gl_legendre = jnp.asarray(t), jnp.asarray(wt[None] * Pl)

    @property
    def size(self) -> int:
        return (self.degree + 1) ** 2

    def _degrees(self) -> np.ndarray:
        return np.concatenate([np.full(2 * l + 1, l) for l in range(self.degree + 1)])

    def funk_hecke(self, dtype=None) -> Float[Array, " L1"]:
        r"""$e^{-\beta}\kappa_l(\beta)$, $\kappa_l = 2\pi\int_{-1}^1 e^{\beta t}
        P_l(t)\,dt = (2\pi)^{3/2}I_{l+1/2}(\beta)/\sqrt\beta$, for $l = 0..L$."""
        dtype = self.beta.dtype if dtype is None else dtype
        e = jnp.exp(self.beta.astype(dtype) * (self.gl_nodes.astype(dtype) - 1))
        return 2 * jnp.pi * (self.gl_legendre.astype(dtype) @ e)

    def check_state(self, c: ArrayLike) -> Array:
        """`c` (the harmonic coefficients) as an array."""
        c = jnp.asarray(c)
        if c.shape != (self.size,):
            raise ValueError(
                f"`c` must hold the {self.size} harmonic coefficients of degree <= "
                f"{self.degree}; got shape {c.shape}."
            )
        return c

    def kernel(self, dtype=None) -> Float[Array, " L1"]:
        """`self.funk_hecke(dtype)`."""
        return self.funk_hecke(dtype)

    def nodal(self, states: Array) -> Array:
        """The density at `self.points` of each of `states` (`(..., S)`)."""
        return states @ self.basis.astype(states.dtype).T

    def project(self, values: Float[ArrayLike, " q"]) -> Float[Array, " S"]:
        """Coefficients of a function given by its `values` at `self.points`
        (quadrature projection onto degree <= L)."""
        values = jnp.asarray(values)
        if values.shape != self.weights.shape:
            raise ValueError(
                f"`values` must have shape {self.weights.shape} (one per node)."
            )
        dt = values.dtype
        return self.basis.astype(dt).T @ (self.weights.astype(dt) * values)

    def values(self, c: Float[ArrayLike, " S"]) -> Float[Array, " q"]:
        """The density at `self.points`."""
        c = self.check_state(c)
        return self.basis.astype(c.dtype) @ c

    def _fields(self, c: Array, kappa: Array | None = None):
        dt = c.dtype
        kappa = self.funk_hecke(dt) if kappa is None else kappa.astype(dt)
        kappa = kappa[jnp.asarray(self._degrees())]
        zc = kappa * c
        rho = self.basis.astype(dt) @ c
        z = self.basis.astype(dt) @ zc
        dz = jnp.einsum("qsk,s->qk", self.gradients.astype(dt), zc)
        return rho, z, dz

    def _velocity(self, z: Array, dz: Array) -> Array:
        beta = self.beta.astype(z.dtype)
        if self.normalization == "softmax":
            return dz / (beta * z[:, None])
        return jnp.exp(beta) * dz / beta

    def velocity(self, c: Float[ArrayLike, " S"]) -> Float[Array, "q 3"]:
        """The velocity field $v[\\rho]$ at `self.points` (tangent 3-vectors)."""
        c = self.check_state(c)
        _, z, dz = self._fields(c)
        return self._velocity(z, dz)

    def __call__(self, t, c: Float[Array, " S"], args=None) -> Float[Array, " S"]:
        """The right-hand side; `args` may hold `self.funk_hecke()` precomputed."""
        del t
        c = self.check_state(c)
        rho, z, dz = self._fields(c, args)
        flux = (self.weights.astype(c.dtype) * rho)[:, None] * self._velocity(z, dz)
        rate = jnp.einsum("qsk,qk->s", self.gradients.astype(c.dtype), flux)
        ll = jnp.asarray(self._degrees() * (self._degrees() + 1), c.dtype)
        return rate - self.diffusion.astype(c.dtype) * ll * c

    def mass(self, c: Float[ArrayLike, "... S"]) -> Array:
        r"""$\int\rho = \sqrt{4\pi}\,c_{00}$."""
        return jnp.sqrt(4 * jnp.pi) * jnp.asarray(c)[..., 0]

    def energy(self, c: Float[ArrayLike, " S"]) -> Float[Array, ""]:
        r"""$E_\beta[\rho] = \frac{1}{2\beta}\sum_{lm}\kappa_l c_{lm}^2$ (exact for
        degree $\le L$)."""
        c = self.check_state(c)
        kappa = self.funk_hecke(c.dtype)[jnp.asarray(self._degrees())]
        beta = self.beta.astype(c.dtype)
        return jnp.exp(beta) * jnp.sum(kappa * c**2) / (2 * beta)

    def uniform(self, dtype=float) -> Float[Array, " S"]:
        r"""Coefficients of the uniform density $1/(4\pi)$."""
        return jnp.zeros(self.size, dtype).at[0].set(1 / math.sqrt(4 * math.pi))


SphereDensity.__init__.__doc__ = """**Arguments:**

- `beta`: inverse temperature (positive, at most `40 + degree`; differentiable).
- `degree`: the harmonic degree `L` (state size `(L+1)^2`).
- `normalization`: `"softmax"` (SA) or `"unnormalized"` (USA).
- `diffusion`: `nu >= 0`, adds `nu * Laplacian(rho)` (default 0).
"""


def solve_density(
    density: AbstractDensity,
    rho0: ArrayLike,
    t1: RealScalarLike,
    *,
    t0: RealScalarLike = 0.0,
    ts: ArrayLike | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int = 16**4,
    check_positive: bool = True,
    negativity_tol: float = 1e-6,
    throw: bool = True,
) -> diffrax.Solution:
    r"""Integrate a density from `t0` to `t1` with `diffrax.diffeqsolve`.

    Adaptive (`diffrax.Tsit5` with a `PIDController` by default) and
    differentiable (default `RecursiveCheckpointAdjoint`).

    **Arguments:**

    - `density`: a `CircleDensity` (state: nodal values) or `SphereDensity`
      (state: harmonic coefficients), or any `AbstractDensity`.
    - `rho0`: the initial state.
    - `t1`, `t0`: end and start times.
    - `ts`: save times (default: `t1` only).
    - `rtol`, `atol`: step-size controller tolerances.
    - `solver`, `adjoint`, `max_steps`: passed to `diffrax.diffeqsolve`.
    - `check_positive`: fail (`eqx.error_if`, an error at run time) if a saved
      density is below `-negativity_tol * max|rho|` at a node: the density is no
      longer resolved (see the class docstrings).
    - `throw`: a failed solve (step budget exhausted, or NaN/inf, which is how an
      unresolved spectral solution usually ends) raises an error saying so; with
      `throw=False` inspect `sol.result` instead.

    Inputs are checked as `spherejax.solve` checks its own (`rho0` finite, times,
    `ts`, tolerances, `max_steps`); a NaN or inf produced during the solve ends it
    with `diffrax.RESULTS.nonfinite` rather than exhausting `max_steps`.

    **Returns:** a `diffrax.Solution`; `sol.ys` has shape `(T, *rho0.shape)`.
    """
    if not isinstance(density, AbstractDensity):
        raise ValueError(
            "`density` must be a spherejax density (`CircleDensity`, "
            f"`SphereDensity`); got {type(density).__name__}."
        )
    checks = _checks.Checks()
    rho0 = density.check_state(_checks.real_floating("rho0", rho0))
    checks.finite("rho0", rho0)
    dtype = rho0.dtype
    t0, t1, saveat = _prepare.check_times(checks, dtype, t0, t1, ts, None)
    _checks.tolerances(checks, rtol, atol, dtype, _prepare.token_scale(rho0))
    budget = _checks.max_steps_value(max_steps)
    rho0, t0, t1 = checks.attach((rho0, t0, t1))
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(density),
        _prepare.check_plain_solver(solver),
        t0,
        t1,
        None,
        rho0,
        args=density.kernel(dtype),
        saveat=saveat,
        stepsize_controller=_step_size.guard_nonfinite(controller),
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        max_steps=budget,
        throw=False,
    )
    ys = cast(Array, sol.ys)
    if throw:
        ys = eqx.error_if(
            ys,
            sol.result != diffrax.RESULTS.successful,
            "the density solve failed (step budget exhausted or non-finite "
            "values): the density has most likely stopped being resolved "
            "(clusters sharper than the grid). Use more modes, a shorter horizon "
            "or a small `diffusion`.",
        )
    if check_positive:
        nodal = density.nodal(ys)
        worst = jnp.min(nodal) / jnp.max(jnp.abs(nodal))
        ys = eqx.error_if(
            ys,
            worst < -negativity_tol,
            "the density became negative at a node: it is no longer resolved "
            "(clusters sharper than the grid). Use more modes, a shorter horizon or "
            "a small `diffusion`, or pass `check_positive=False`.",
        )
    return eqx.tree_at(lambda s: s.ys, sol, ys)
