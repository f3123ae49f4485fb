r"""Spectral evaluation: attention on the circle and the 2-sphere in $O(n)$.

The maths, the truncation bound and the supported parts are in the docstring
of `Spectral`.
"""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._evaluation import AbstractEvaluation
from ._mask import Causal, KeyMask, SlidingWindow
from ._normalization import Softmax, Unnormalized


_BAND = 8  # orders beyond the truncation computed for the run-time check
_CAUSAL_BLOCK = 128
_BLOCK_ELEMENTS = 2**19  # tokens x features per block (a few MB: stays in cache)
_MAX_GRID = 4096
_MAX_DEGREE = 400


def _concrete(x, what: str):
    try:
        return np.asarray(x, dtype=np.float64)
    except (
        jax.errors.ConcretizationTypeError,
        jax.errors.TracerArrayConversionError,
    ) as e:
        raise ValueError(
            f"`Spectral` chooses its truncation from the field's {what} when the "
            f"field is built, but the {what} is traced here (the field is built "
            "inside `jit`/`vmap`/`grad`); pass the order yourself with "
            "`Spectral(tol, terms=...)`."
        ) from e


def _ring(N: int) -> np.ndarray:
    """`max(|p|, |q|)` of the FFT indices of an `N x N` grid."""
    p = np.abs(np.fft.fftfreq(N, 1.0 / N)).astype(int)
    return np.maximum(p[:, None], p[None, :])


def _circle_order_np(Qh, Kh, qb, kb, beta: float, r: float, tol: float) -> int:
    """The truncation order `P` on the circle (float64 numpy, concrete inputs)."""
    order = 0
    for a in range(Qh.shape[0]):
        N = 64
        while True:
            t = 2 * np.pi * np.arange(N) / N
            X = r * np.stack([np.cos(t), np.sin(t)], axis=-1)
            q = X @ Qh[a].T + (0.0 if qb is None else qb[a])
            k = X @ Kh[a].T + (0.0 if kb is None else kb[a])
            S = beta * (q @ k.T)
            F = np.exp(S - S.max())
            c = np.abs(np.fft.fft2(F)) / N**2
            ring = _ring(N)
            noise = 16 * np.finfo(np.float64).eps * c.max()  # FFT round-off
            if c[ring >= N // 4].max() <= noise:
                c = np.where(c > noise, c, 0.0)
                break
            if N >= _MAX_GRID:
                raise ValueError(
                    f"`Spectral`: the kernel at beta = {beta} needs more than "
                    f"{_MAX_GRID // 4} Fourier modes on the circle; use `Chunked` "
                    "or `Dense` evaluation."
                )
            N *= 2
        ref = F.mean(axis=1).min()
        mass = np.bincount(ring.ravel(), weights=c.ravel())
        tail = np.cumsum(mass[::-1])[::-1]  # tail[P] = mass at rings >= P
        ok = np.nonzero(np.r_[tail[1:], 0.0] <= tol * ref)[0]
        order = max(order, int(ok[0]))
    return order


def _legendre_np(u: np.ndarray, L: int) -> np.ndarray:
    """`P_l(u)` for `l = 0..L`, shape `(len(u), L + 1)` (three-term recurrence)."""
    P = np.zeros((u.size, L + 1))
    P[:, 0] = 1.0
    if L >= 1:
        P[:, 1] = u
    for l in range(2, L + 1):
        P[:, l] = ((2 * l - 1) * u * P[:, l - 1] - (l - 1) * P[:, l - 2]) / l
    return P


def _zonal_coefficients(x, L: int, xp=np):
    r"""$a_l(x) = (2l + 1)\, e^{-x} i_l(x)$ for `l = 0..L`, shape `x.shape + (L+1,)`,
    for $x \ge 0$ (numpy or `jax.numpy` as `xp`). The ratios
    $r_l = i_l / i_{l-1} = x / (2l + 1 + x\, r_{l+1})$ come from the backward
    recurrence started far above `L` (the minimal solution: any start error is
    damped by $r^2 < 1$ per step), and $e^{-x} i_0(x) = (1 - e^{-2x})/(2x)$; no
    division by $x$, no overflow, accurate to round-off relative to every
    coefficient, and differentiable in $x$."""
    x = xp.asarray(x)
    ls = np.arange(L + 100, 0, -1)
    if xp is np:
        ratio = np.zeros_like(x)
        ratios = []
        for l in ls:
            ratio = x / (2 * l + 1 + x * ratio)
            if l <= L:
                ratios.append(ratio)
        stacked = np.stack(ratios[::-1], axis=-1) if ratios else None
    else:  # one scan: a compact program whatever L

        def step(ratio, l):
            ratio = x / (2 * l + 1 + x * ratio)
            return ratio, ratio

        _, all_ratios = jax.lax.scan(step, xp.zeros_like(x), jnp.asarray(ls, x.dtype))
        stacked = jnp.moveaxis(all_ratios[100:][::-1], 0, -1)
    one = xp.ones_like(x)
    small = x < 1e-8
    xs = xp.where(small, one, x)
    i0 = xp.where(small, one - x, -xp.expm1(-2 * xs) / (2 * xs))
    if L == 0:
        return i0[..., None]
    prods = xp.cumprod(stacked, axis=-1)
    vals = xp.concatenate([i0[..., None], i0[..., None] * prods], axis=-1)
    return (2 * xp.arange(L + 1, dtype=vals.dtype) + 1) * vals


def _zonal_np(M: np.ndarray, eps: float) -> tuple[float, bool]:
    c = math.sqrt(float(np.sum(M * M)) / 3)
    if c == 0:
        return 0.0, True
    dev = np.abs(M @ M.T / c**2 - np.eye(3)).max()
    return c, bool(dev <= 64 * eps)


def _sphere_order_np(Ms, beta: float, r: float, tol: float, eps: float) -> int:
    order = 0
    for a in range(Ms.shape[0]):
        c, zonal = _zonal_np(Ms[a], eps)
        if not zonal:
            raise ValueError(
                "`Spectral` on the 2-sphere needs zonal kernels, `Q_a^T K_a = c R` "
                f"with `R` orthogonal, for every head; head {a} has `Q^T K` = "
                f"{np.round(Ms[a], 6).tolist()}. Use `Chunked` or `Dense` evaluation "
                "for other matrices."
            )
        bp = abs(beta) * c * r * r
        a_l = _zonal_coefficients(np.float64(bp), _MAX_DEGREE)
        tail = np.cumsum(a_l[::-1])[::-1]  # tail[l] = sum over degrees >= l
        ok = np.nonzero(np.r_[tail[1:], 0.0] <= tol * a_l[0])[0]
        if ok.size == 0 or ok[0] > _MAX_DEGREE - 2 * _BAND:
            raise ValueError(
                f"`Spectral`: the kernel at beta = {beta} needs spherical harmonics "
                f"beyond degree {_MAX_DEGREE}; use `Chunked` or `Dense` evaluation."
            )
        order = max(order, int(ok[0]))
    return order


# ------------------------------------------------------------------ run time


def _error_if(x: Array, bad: Array, msg: str) -> Array:
    return eqx.error_if(x, bad, msg)


def _directions(x: Array, r: float) -> Array:
    return r * x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _heads_matrices(field, dt):
    """`(Q, K, query_bias, key_bias)` expanded to the query heads; identity
    heads give `Q = K = None`."""
    Q = getattr(field, "Q", None)
    if Q is None:
        return None, None, None, None
    K = field.K
    h, g = Q.shape[0], K.shape[0]
    Kx = jnp.repeat(K, h // g, axis=0) if g != h else K
    qb, kb = field.query_bias, field.key_bias
    if kb is not None and g != h:
        kb = jnp.repeat(kb, h // g, axis=0)
    cast = lambda a: None if a is None else a.astype(dt)
    return Q.astype(dt), Kx.astype(dt), cast(qb), cast(kb)


class _CircleKernel(eqx.Module):
    """Per-head coefficients `c (h, 2P+1, 2P+1)` and shifts `m (h,)`."""

    Q: Array | None
    K: Array | None
    qb: Array | None
    kb: Array | None
    beta: Array
    r: float = eqx.field(static=True)
    order: int = eqx.field(static=True)

    def project(self, x):  # (n, 2) directions -> queries, keys (h, n, k)
        if self.Q is None:
            return x[None], x[None]
        q = jnp.einsum("hkd,nd->hnk", self.Q, x)
        k = jnp.einsum("hkd,nd->hnk", self.K, x)
        if self.qb is not None:
            q = q + self.qb[:, None]
        if self.kb is not None:
            k = k + self.kb[:, None]
        return q, k

    def grid(self, tol):
        N = 2 * (self.order + _BAND)
        t = jnp.asarray(2 * np.pi * np.arange(N) / N, self.beta.dtype)
        X = self.r * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
        q, k = self.project(X)
        S = self.beta * jnp.einsum("hak,hbk->hab", q, k)
        m = jax.lax.stop_gradient(jnp.max(S, axis=(1, 2)))
        F = jnp.exp(S - m[:, None, None])
        c = jnp.fft.fft2(F) / N**2
        ring = _ring(N)
        band = jnp.sum(jnp.where((ring > self.order)[None], jnp.abs(c), 0), axis=(1, 2))
        ref = jnp.min(jnp.mean(F, axis=2), axis=1)
        eps = jnp.finfo(F.dtype).eps
        bad = jnp.any(band > 10 * tol * ref + 4 * N * _BAND * eps)
        idx = np.arange(-self.order, self.order + 1) % N
        c = c[:, idx][:, :, idx]
        return c, m, bad

    def shifted(self, xq, xk, m):  # exact kernel (h, nq, nk)
        q, _ = self.project(xq)
        _, k = self.project(xk)
        return jnp.exp(self.beta * jnp.einsum("hik,hjk->hij", q, k) - m[:, None, None])


def _powers(w: Array, count: int) -> Array:
    """`w^0, ..., w^count` stacked on a new first axis, by repeated products in a
    scan (relative error about `count` ulps; no transcendental functions, and a
    compact program: an unrolled chain of products compiles slowly)."""

    def step(p, _):
        return p * w, p

    one = jnp.ones_like(w)
    _, out = jax.lax.scan(step, one, None, length=count + 1)
    return out


def _circle_features(x: Array, order: int) -> Array:
    """`e^{ipt}` for `p = -order..order` of the directions `x` `(n, 2)` (any
    radius), shape `(2 order + 1, n)`."""
    w = jax.lax.complex(x[:, 0], x[:, 1])
    w = w / jnp.abs(w).astype(w.dtype)
    pw = _powers(w, order)  # (order + 1, n)
    return jnp.concatenate([jnp.conj(pw[:0:-1]), pw])


def _sphere_features(x: Array, L: int) -> Array:
    """Real spherical harmonics (scaled so that the degree-`l` block sums to
    `P_l(<x, y>)`) of unit vectors `x`, shape `((L + 1)^2, n)`."""
    z = x[:, 2]
    ms = np.arange(L + 1)
    cm = np.cumprod(np.r_[1.0, np.sqrt((2 * ms[1:] - 1) / (2 * ms[1:]))])
    A = np.zeros((L + 1, L + 1))
    B = np.zeros((L + 1, L + 1))
    D = np.zeros((L + 1, L + 1))
    for l in range(L + 1):
        above = ms < l
        A[l, above] = (2 * l - 1) / np.sqrt(l * l - ms[above] ** 2)
        B[l, above] = np.sqrt(np.maximum((l - 1) ** 2 - ms[above] ** 2, 0)) / np.sqrt(
            l * l - ms[above] ** 2
        )
        D[l, l] = cm[l]
    dt = x.dtype

    def step(carry, coef):
        p1, p2 = carry
        a, b, d = (jnp.asarray(c, dt)[:, None] for c in coef)
        new = a * z[None] * p1 - b * p2 + d
        return (new, p1), new

    zero = jnp.zeros((L + 1, x.shape[0]), dt)
    _, R = jax.lax.scan(step, (zero, zero), (A, B, D))  # (l, m, n)
    w = jax.lax.complex(x[:, 0], x[:, 1])
    powers = _powers(w, L)  # (m, n): w^m
    scale = jnp.asarray(np.where(ms == 0, 1.0, math.sqrt(2.0))[:, None], dt)
    re = jnp.real(powers) * scale
    im = jnp.imag(powers) * scale
    lr, mr = np.nonzero(np.tril(np.ones((L + 1, L + 1), bool)))
    li, mi = lr[mr > 0], mr[mr > 0]
    feats = jnp.concatenate([R[lr, mr] * re[mr], R[li, mi] * im[mi]], axis=0)
    return feats


def _sphere_degrees(L: int) -> np.ndarray:
    lr, mr = np.nonzero(np.tril(np.ones((L + 1, L + 1), bool)))
    return np.concatenate([lr, lr[mr > 0]])


class _SphereKernel(eqx.Module):
    R: Array  # (h, 3, 3): kernel exp(bp (<x, R y> - 1))
    bp: Array  # (h,)
    r: float = eqx.field(static=True)
    order: int = eqx.field(static=True)

    @classmethod
    def build(cls, field, beta, r, order, dt):
        Q, K, qb, kb = _heads_matrices(field, dt)
        if Q is None:
            M = jnp.eye(3, dtype=dt)[None]
        else:  # held: derivatives in the matrices enter through `first_order`
            M = jax.lax.stop_gradient(jnp.einsum("hkd,hke->hde", Q, K))
        c = jnp.sqrt(jnp.sum(M * M, axis=(1, 2)) / 3)
        pos = c > 0
        safe = jnp.where(pos, c, 1)
        R = jnp.where(pos[:, None, None], M / safe[:, None, None], jnp.eye(3, dtype=dt))
        dev = jnp.max(
            jnp.abs(jnp.einsum("hij,hkj->hik", R, R) - jnp.eye(3, dtype=dt)),
            axis=(1, 2),
        )
        eps = jnp.finfo(dt).eps
        bad = jnp.any(pos & (dev > 1e3 * eps))
        R = R * jnp.where(beta < 0, -1, 1).astype(dt)
        return cls(R, jnp.abs(beta) * c * r * r, r, order), bad

    def coefficients(self, tol):
        dt = self.bp.dtype
        a = _zonal_coefficients(self.bp, self.order + _BAND, jnp).astype(dt)
        band = jnp.sum(a[:, self.order + 1 :], axis=1)
        bad = jnp.any(band > 10 * tol * a[:, 0])
        return a[:, : self.order + 1], bad

    def shifted(self, xq, xk):
        s = jnp.einsum("id,hde,je->hij", xq, self.R, xk) / (self.r * self.r)
        return jnp.exp(self.bp[:, None, None] * (s - 1))


def _blocks(a: Array, size: int, axis: int) -> Array:
    """Split `axis` (padded with zeros to a multiple of `size`) into blocks,
    moving the block index to the front."""
    n = a.shape[axis]
    nb = -(-n // size)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, nb * size - n)
    a = jnp.pad(a, pad)
    a = a.reshape(a.shape[:axis] + (nb, size) + a.shape[axis + 1 :])
    return jnp.moveaxis(a, axis, 0)


def _pad_tokens(x: Array, size: int) -> Array:
    n = x.shape[0]
    nb = -(-n // size)
    fill = jnp.broadcast_to(x[:1], (nb * size - n, x.shape[1]))
    return jnp.concatenate([x, fill]).reshape(nb, size, x.shape[1])


def _contract_keys(H: Array, u: Array) -> Array:
    """`sum_j H_fj u_je` per head; `H` `(1 or h, F, B)`, `u` `(h, B, e)`."""
    u = u.astype(H.dtype)
    if H.shape[0] == 1 and u.shape[0] != 1:
        return jnp.einsum("fb,hbe->hfe", H[0], u)
    return jnp.einsum("hfb,hbe->hfe", H, u)


def _contract_queries(G: Array, T: Array) -> Array:
    """`Re sum_f G_fi T_fe` per head; `G` `(1 or h, F, B)`, `T` `(h, F, e)`."""
    if G.shape[0] == 1 and T.shape[0] != 1:
        return jnp.real(jnp.einsum("fb,hfe->hbe", G[0], T))
    return jnp.real(jnp.einsum("hfb,hfe->hbe", G, T))


def _full_sum(qfeat, kfeat, apply, xq, xk, u):
    """`Re sum_f qfeat(x_i)_f [apply(sum_j kfeat(x_j)_f u_j)]`, unmasked; `u`
    `(h, nk, e)`; tokens processed in blocks of about `_BLOCK_ELEMENTS` features."""
    H0 = jax.eval_shape(kfeat, xk[:1])
    size = min(max(256, _BLOCK_ELEMENTS // H0.shape[-2]), xk.shape[0])
    xb = _pad_tokens(xk, size)
    ub = _blocks(u, size, axis=1)

    def add(S, blk):
        x, v = blk
        return S + _contract_keys(kfeat(x), v), None

    S0 = jnp.zeros((u.shape[0], H0.shape[-2], u.shape[-1]), H0.dtype)
    S, _ = jax.lax.scan(add, S0, (xb, ub))
    T = apply(S)
    size = min(size, xq.shape[0])
    out = jax.lax.map(
        lambda x: _contract_queries(qfeat(x), T),
        _pad_tokens(xq, size),
    )  # (nb, h, B, e)
    out = jnp.moveaxis(out, 0, 1).reshape(u.shape[0], -1, u.shape[-1])
    return out[:, : xq.shape[0]]


def _causal_sum(qfeat, kfeat, apply, shifted, x, xk, u):
    """Like `_full_sum` with queries `x` and keys `xk` (the same length) and only
    keys `j <= i`: a running separable sum over earlier blocks plus the exact
    kernel `shifted(xq, xk) (h, B, B)` inside a query's own block."""
    size = _CAUSAL_BLOCK
    xb, kb = _pad_tokens(x, size), _pad_tokens(xk, size)
    ub = _blocks(u, size, axis=1)
    tri = jnp.tril(jnp.ones((size, size), bool))

    def step(S, blk):
        xq_, xk_, v = blk
        prev = _contract_queries(qfeat(xq_), apply(S))
        local = jnp.where(tri, shifted(xq_, xk_), 0)
        out = prev + jnp.einsum("hij,hje->hie", local, v)
        return S + _contract_keys(kfeat(xk_), v), out

    H0 = jax.eval_shape(kfeat, x[:1])
    S0 = jnp.zeros((u.shape[0], H0.shape[-2], u.shape[-1]), H0.dtype)
    _, out = jax.lax.scan(step, S0, (xb, kb, ub))
    out = jnp.moveaxis(out, 0, 1).reshape(u.shape[0], -1, u.shape[-1])
    return out[:, : x.shape[0]]


def _circle_parts(field, beta, r, order, dt, tol):
    """Features, coefficient map, exact kernel, log-shift and run-time check on
    the circle."""
    Q, K, qb, kb = _heads_matrices(field, dt)
    kern = _CircleKernel(Q, K, qb, kb, beta, r, order)
    c, shift, bad = kern.grid(tol)

    def feat(xb):
        return _circle_features(xb, order)[None]

    def apply(S):  # (h, F, e) -> (h, F, e): sum_q c_pq S_q
        return jnp.einsum("hpq,hqe->hpe", c, S)

    def shifted(xq, xk):
        return kern.shifted(xq, xk, shift)

    return feat, feat, apply, shifted, shift, bad


def _sphere_parts(field, beta, r, order, dt, tol):
    """The same on the 2-sphere (keys rotated by each head's `R`)."""
    kern, bad_zonal = _SphereKernel.build(field, beta, r, order, dt)
    a, bad = kern.coefficients(tol)
    deg = _sphere_degrees(order)

    def qfeat(xb):
        return _sphere_features(xb / r, order)[None]

    def kfeat(xb):
        rot = jnp.einsum("hde,ne->hnd", kern.R, xb) / r
        return jax.vmap(lambda z: _sphere_features(z, order))(rot)

    def apply(S):
        return a[:, deg, None] * S

    return qfeat, kfeat, apply, kern.shifted, kern.bp, bad | bad_zonal


class Spectral(AbstractEvaluation):
    r"""Attention evaluated by separable series in $O(n)$ on the circle ($d = 2$)
    and the 2-sphere ($d = 3$), exact to a tolerance.

    Supports `Softmax()` and `Unnormalized()`, quadrature `weights`, any value
    and output projections (grouped heads included), and the masks `Causal()`,
    `SlidingWindow(size)` and `KeyMask(mask)`. Differentiable in the tokens,
    `beta` and the matrices (first derivatives exact); float32 and float64.
    Refused with a `ValueError` when the field is built or first evaluated:
    dimensions other than 2 and 3, kernels that are not zonal on the 2-sphere,
    query or key biases on the 2-sphere, `Sinkhorn`, `Hardmax` and user
    normalisations, position parts (`RoPE`), manifolds other than `Sphere`.
    The orders chosen when the field is built are stored in its evaluation
    (`field.evaluation.circle_order`, `field.evaluation.sphere_order`).

    In low dimension the attention kernel is a short series of separable terms, so the
    sums $\sum_j w_j K(x_i, x_j) v_j$ over all keys cost $O(n)$ times the number of
    terms instead of $O(n^2)$.

    **Circle** ($d = 2$, $x = r(\cos t, \sin t)$). For query head $a$ the kernel
    $F_a(t, s) = e^{\beta \langle Q_a x(t) + b^Q_a,\, K_a x(s) + b^K_a\rangle - m_a}$
    (any $Q$, $K$ and biases; $m_a$ its maximum, a shift) is a smooth periodic
    function of $(t, s)$, and

    $$F_a(t, s) = \sum_{p, q \in \mathbb Z} c^a_{pq}\, e^{ipt} e^{iqs},\qquad
    \sum_j w_j F_a(t_i, s_j) v_j \approx
    \mathrm{Re} \sum_{|p|, |q| \le P} c^a_{pq} e^{ipt_i}
    \Big(\sum_j w_j e^{iqs_j} v_j\Big).$$

    The coefficients come from a two-dimensional FFT of $F_a$ on a grid (so they are
    differentiable in $\beta$, $Q$, $K$ and the biases). For GLPR's $Q^\top K = I$ they
    are $c_{p,-p} = I_p(\beta) e^{-\beta}$, the modified Bessel functions.

    **2-sphere** ($d = 3$), zonal kernels $Q_a^\top K_a = c_a R_a$ with $R_a$
    orthogonal. With $\beta' = \beta c_a r^2$, Funk–Hecke and the addition theorem give

    $$e^{\beta'(\langle x, y\rangle - 1)} = \sum_{l \ge 0} a_l(\beta')\, P_l(\langle x,
    y\rangle),\qquad a_l(\beta') = \tfrac{2l+1}{2}\int_{-1}^{1} e^{\beta'(u-1)} P_l(u)\,
    du = (2l+1)\, e^{-\beta'} i_l(\beta'),$$

    $$P_l(\langle x, y\rangle) = \sum_{m=0}^{l} (2 - \delta_{m0})\, \tilde P^m_l(z_x)
    \tilde P^m_l(z_y) \cos m(\phi_x - \phi_y),$$

    ($i_l$ the modified spherical Bessel functions, $\tilde P^m_l$ the Schmidt
    semi-normalised associated Legendre functions), so the kernel is a sum of
    $(L + 1)^2$ products of real spherical harmonics. The $a_l$ are computed by
    Gauss–Legendre quadrature (differentiable in $\beta$ and $c_a$); keys are rotated
    by $R_a$ first.

    **Truncation.** The series converge faster than geometrically once the order
    exceeds about $\beta'$: $I_p(x)/I_0(x) \approx e^{-p^2/(2x)}$ for $p \lesssim x$ and
    $I_p(x) \le (x/2)^p e^{x}/p!$. The order is the smallest $P$ (circle) or $L$
    (sphere) with

    $$\sum_{\max(|p|,|q|) > P} |c^a_{pq}| \le \text{tol}\cdot \min_t \tfrac{1}{2\pi}
    \int F_a(t, s)\, ds,\qquad
    \sum_{l > L} |a_l| \le \text{tol}\cdot a_0 ,$$

    for every head: the truncation error of every numerator and denominator is at most
    `tol` times the mean of the kernel over a row (its value when keys are spread over
    the manifold), and $|P_l| \le 1$, $|e^{ipt}| = 1$ bound the omitted terms by their
    coefficients. For a softmax row whose keys are spread out the relative error is
    then about `tol`; rows whose keys all sit where the kernel is small (large $\beta$,
    strongly anisotropic $Q^\top K$ on the circle) lose accuracy in proportion, and
    rounding is amplified by the same factor. The order is chosen when the field is
    built, from its (concrete) $\beta$ and matrices; every evaluation checks that the
    band just beyond it is still below $10\,\text{tol}$ (it would grow if $\beta$ or
    the matrices are changed afterwards, e.g. by a fit) and raises otherwise.

    **Masks.** `Causal()` and `SlidingWindow(s)` use prefix sums over the token order:
    the tokens are processed in blocks, each block's keys enter a running sum of
    separable terms, and the keys inside a query's own block are summed directly
    (exactly); a sliding window is the difference of two such sums. `KeyMask` and the
    quadrature weights scale the values. Work $O(n(T + B))$, $T$ the number of terms
    and $B = 128$ the block size.

    **Off the manifold.** Tokens enter through their directions $x / |x|$ (times the
    sphere's radius): on the manifold this is the attention field; off it (the stages
    of an explicit solver wrapped in `Retract`) it is the field's degree-0 extension,
    which differs from `Dense()`'s extension at the size of the distance to the
    manifold.

    **Derivatives in the matrices on the 2-sphere.** The zonal factorisation is
    computed from the value of $Q_a^\top K_a$ held constant; the derivatives come
    from the first-order term $K_0(x, y)(1 + \beta\langle x, (M - M_0)\, y\rangle)$
    with $M - M_0 = 0$ in value, a separable sum with values $y_j \otimes v_j$
    (four times the work of `IdentityAttention`, exact first derivatives in every
    direction of $Q$ and $K$, not only the zonal ones).
    """

    tol: float = eqx.field(static=True)
    terms: int | None = eqx.field(static=True)
    circle_order: int | None = eqx.field(static=True)
    sphere_order: int | None = eqx.field(static=True)
    from_tokens: ClassVar[bool] = True

    def __init__(
        self,
        tol: float = 1e-12,
        *,
        terms: int | None = None,
        circle_order: int | None = None,
        sphere_order: int | None = None,
    ):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)):
            raise ValueError(f"`tol` must be a number in (0, 1); got {tol!r}.")
        if not 0 < tol < 1:
            raise ValueError(f"`tol` must lie in (0, 1); got {tol!r}.")
        for name, value in (
            ("terms", terms),
            ("circle_order", circle_order),
            ("sphere_order", sphere_order),
        ):
            if value is not None and (
                isinstance(value, bool) or int(value) != value or value < 0
            ):
                raise ValueError(
                    f"`{name}` must be a non-negative integer; got {value!r}."
                )
        self.tol = float(tol)
        self.terms = None if terms is None else int(terms)
        self.circle_order = self.terms if circle_order is None else int(circle_order)
        self.sphere_order = self.terms if sphere_order is None else int(sphere_order)

    # -- construction -------------------------------------------------------

    def bind(self, field) -> "Spectral":
        """Check `field`'s parts and choose the orders of the series from its
        `beta` and matrices (unless `terms` was given)."""
        norm = field.normalization
        if type(norm) not in (Softmax, Unnormalized):
            raise ValueError(
                "`Spectral` evaluation supports `Softmax()` and `Unnormalized()`; "
                f"got `{type(norm).__name__}` (use `Dense()` or `Chunked(size)`)."
            )
        for m in field.masks:
            if type(m) not in (Causal, SlidingWindow, KeyMask):
                raise ValueError(
                    "`Spectral` evaluation supports the masks `Causal()`, "
                    "`SlidingWindow(size)` and `KeyMask(mask)`; got "
                    f"`{type(m).__name__}`."
                )
        if field.position is not None:
            raise ValueError(
                f"`Spectral` evaluation does not support position parts (got "
                f"`{type(field.position).__name__}`): positions break the kernel's "
                "separability; use `Dense()` or `Chunked(size)`."
            )
        from .._manifold import Sphere

        if type(field.manifold) is not Sphere:
            raise ValueError(
                "`Spectral` evaluation works on `Sphere()` (the circle and the "
                f"2-sphere); got `{type(field.manifold).__name__}`."
            )
        Q = getattr(field, "Q", None)
        dims = (2, 3) if Q is None else (Q.shape[-1],)
        if dims[0] not in (2, 3):
            raise ValueError(
                "`Spectral` evaluation works on the circle (d = 2) and the 2-sphere "
                f"(d = 3); the field has d = {dims[0]} (use `Dense()` or "
                "`Chunked(size)`)."
            )
        if 3 in dims and Q is not None:
            if field.query_bias is not None or field.key_bias is not None:
                raise ValueError(
                    "`Spectral` on the 2-sphere needs a zonal kernel: query and key "
                    "biases are not supported (they are on the circle)."
                )
        circle, sphere = self.circle_order, self.sphere_order
        if self.terms is not None:
            return self
        beta = float(_concrete(field.beta, "`beta`"))
        r = float(field.manifold.radius)
        if Q is None:
            eye2 = np.eye(2)[None]
            circle = _circle_order_np(eye2, eye2, None, None, beta, r, self.tol)
            sphere = _sphere_order_np(np.eye(3)[None], beta, r, self.tol, 0.0)
        else:
            Qn = _concrete(Q, "matrices")
            Kn = _concrete(field.K, "matrices")
            h, g = Qn.shape[0], Kn.shape[0]
            Kn = np.repeat(Kn, h // g, axis=0)
            if dims[0] == 2:
                qb = (
                    None
                    if field.query_bias is None
                    else _concrete(field.query_bias, "biases")
                )
                kb = (
                    None
                    if field.key_bias is None
                    else _concrete(field.key_bias, "biases")
                )
                if kb is not None:
                    kb = np.repeat(kb, h // g, axis=0)
                circle = _circle_order_np(Qn, Kn, qb, kb, beta, r, self.tol)
            else:
                eps = float(max(jnp.finfo(Q.dtype).eps, jnp.finfo(field.K.dtype).eps))
                sphere = _sphere_order_np(
                    np.einsum("hkd,hke->hde", Qn, Kn), beta, r, self.tol, eps
                )
        return Spectral(self.tol, circle_order=circle, sphere_order=sphere)

    def check(self, normalization, d):
        if type(normalization) not in (Softmax, Unnormalized):
            raise ValueError(
                "`Spectral` evaluation supports `Softmax()` and `Unnormalized()`; "
                f"got `{type(normalization).__name__}`."
            )
        if d not in (2, 3):
            raise ValueError(
                "`Spectral` evaluation works on the circle (d = 2) and the 2-sphere "
                f"(d = 3); got tokens of dimension {d}."
            )
        if (self.circle_order if d == 2 else self.sphere_order) is None:
            raise ValueError(
                "this `Spectral()` has not been bound to a field: use it as the "
                "`evaluation` of `SelfAttention`/`IdentityAttention` (or give "
                "`terms=`)."
            )

    def __call__(self, normalization, q, k, v, beta, log_weights, masks, qidx, kidx):
        raise ValueError(
            "`Spectral` evaluates attention from the tokens, not from projected "
            "queries and keys: use it as the `evaluation` of `SelfAttention` or "
            "`IdentityAttention`."
        )

    # -- evaluation -------------------------------------------------------------

    def attend(self, field, y_rows: Array, rows: Array, y: Array, v: Array) -> Array:
        """Attention outputs per query head, `(h, m, e)`, of the query tokens
        `y_rows` (indices `rows`) against all tokens `y` with values `v`
        `(h, n, e)` (already expanded to the query heads)."""
        dt = y.dtype
        d = y.shape[-1]
        self.check(field.normalization, d)
        r = float(field.manifold.radius)
        beta = field.beta.astype(dt)
        n = y.shape[0]
        h = v.shape[0]
        # weights, key masks and the denominator column fold into the values
        w = (
            jnp.full((n,), 1.0 / n, dt)
            if field.weights is None
            else field.weights.astype(dt)
        )
        keep = jnp.ones((h, n), dt)
        window = None
        causal = False
        for m in field.masks:
            if isinstance(m, KeyMask):
                km = m.mask.astype(dt)
                keep = keep * (km if km.ndim == 2 else km[None])
            elif isinstance(m, SlidingWindow):
                window = m.size if window is None else min(window, m.size)
                causal = True
            elif isinstance(m, Causal):
                causal = True
        scale = (w[None] * keep)[..., None]
        softmax = type(field.normalization) is Softmax
        u = v * scale
        if softmax:
            u = jnp.concatenate([u, jnp.broadcast_to(scale, (h, n, 1))], axis=-1)
        x = _directions(y, r)
        first_order = None
        if d == 2:
            order = self.circle_order
            assert order is not None
            qfeat, kfeat, apply, shifted, log_scale, bad = _circle_parts(
                field, beta, r, order, dt, self.tol
            )
        else:
            order = self.sphere_order
            assert order is not None
            qfeat, kfeat, apply, shifted, log_scale, bad = _sphere_parts(
                field, beta, r, order, dt, self.tol
            )
            Q, K, _, _ = _heads_matrices(field, dt)
            if Q is not None:  # first-order term carrying the matrices' derivatives
                M = jnp.einsum("hkd,hke->hde", Q, K)
                first_order = beta * (M - jax.lax.stop_gradient(M))
                e1 = u.shape[-1]
                u = jnp.concatenate(
                    [u, jnp.einsum("nb,hne->hnbe", x, u).reshape(h, n, 3 * e1)], -1
                )
        u = _error_if(
            u,
            bad,
            "`Spectral`: the series truncation chosen when the field was built no "
            "longer meets 10 x `tol` (`beta` or the matrices changed since, or the "
            "kernel on the 2-sphere is no longer zonal); build the field again or "
            "pass a larger `Spectral(tol, terms=...)`.",
        )
        if causal:
            out = _causal_sum(qfeat, kfeat, apply, shifted, x, x, u)
            if window is not None and window < n:
                pad = jnp.broadcast_to(x[:1], (window, d))
                xs = jnp.concatenate([pad, x[: n - window]])
                us = jnp.pad(u[:, : n - window], ((0, 0), (window, 0), (0, 0)))
                out = out - _causal_sum(qfeat, kfeat, apply, shifted, x, xs, us)
            out = out[:, rows]
            xq = x[rows]
        else:
            xq = _directions(y_rows, r)
            out = _full_sum(qfeat, kfeat, apply, xq, x, u)
        if first_order is not None:
            # K(x, y) = K0(x, y) (1 + <x, E y>) to first order in E = beta (M - M0),
            # zero in value: exact first derivatives in Q and K
            e1 = out.shape[-1] // 4
            ext = out[..., e1:].reshape(out.shape[:-1] + (3, e1))
            out = out[..., :e1] + jnp.einsum("ma,hab,hmbe->hme", xq, first_order, ext)
        if softmax:
            return out[..., :-1] / out[..., -1:]
        return out * jnp.exp(log_scale)[:, None, None]


Spectral.__init__.__doc__ = """**Arguments:**

- `tol`: the truncation tolerance, in `(0, 1)` (default `1e-12`; see the bound in
  the module documentation).
- `terms`: the order of the series (Fourier modes `|p|, |q| <= terms` on the
  circle, spherical-harmonic degree `<= terms` on the 2-sphere), overriding the
  choice from `tol`; needed when the field is built with a traced `beta`.
- `circle_order`, `sphere_order`: the orders chosen when a field is built
  (set by the field; not normally given).
"""
