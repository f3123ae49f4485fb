"""Shared test utilities: independent float64 references and finite differences."""

import contextlib

import jax
import jaxtyping
import numpy as np
import optax
import scipy.integrate


def standard_promotion(optimizer):
    """`optimizer` (an Optax one) with its `update` under standard dtype promotion:
    Optax's Adam and schedules mix the int32 step count with float constants, which
    the tests' strict promotion refuses; spherejax's own code stays strict."""

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return optimizer.update(updates, state, params)

    return optax.GradientTransformation(optimizer.init, update)


@contextlib.contextmanager
def unchecked():
    """Switch the jaxtyping runtime checks off (the tests run with them on): for
    tests of the library's own `ValueError`s on input of the wrong type, which a
    user without runtime checks meets."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


def np_attention_velocity(
    x, Q, K, V, beta, normalization="softmax", causal=False, w=None
):
    """Plain-numpy SA/USA velocity for Q, K: (h, k, d), V: (h, d, d) on the unit
    sphere (an independent reference for the JAX field)."""
    x = np.asarray(x, float)
    n, d = x.shape
    w = np.full(n, 1.0 / n) if w is None else np.asarray(w, float)
    out = np.zeros_like(x)
    for h in range(Q.shape[0]):
        s = beta * (x @ Q[h].T) @ (x @ K[h].T).T
        k = w[None, :] * np.exp(s)
        if causal:
            k = np.tril(k)
        if normalization == "softmax":
            A = k / k.sum(axis=1, keepdims=True)
        elif normalization == "unnormalized":
            A = k
        else:
            raise ValueError(normalization)
        out += A @ (x @ V[h].T)
    return out - np.sum(out * x, axis=1, keepdims=True) * x / np.sum(
        x * x, axis=1, keepdims=True
    )


def scipy_reference(
    x0, t1, Q, K, V, beta, ts=None, normalization="softmax", causal=False
):
    """DOP853 at rtol=atol=1e-13 on the numpy field (float64 reference)."""
    x0 = np.asarray(x0, float)
    shape = x0.shape

    def rhs(t, y):
        return np_attention_velocity(
            y.reshape(shape), Q, K, V, beta, normalization, causal
        ).ravel()

    sol = scipy.integrate.solve_ivp(
        rhs,
        (0.0, t1),
        x0.ravel(),
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
        t_eval=ts if ts is not None else [t1],
    )
    assert sol.success
    return sol.y.T.reshape(-1, *shape)


def central_difference(f, x, eps=1e-6):
    """Central finite-difference gradient of a scalar function of a numpy array."""
    x = np.asarray(x, float)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
    return g


def slope(hs, errs):
    """Least-squares slope of log(err) against log(h)."""
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]
