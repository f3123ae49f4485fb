r"""`UnrolledERK`: an explicit Runge–Kutta method with its stages written out.

diffrax's `AbstractERK` runs the stages of a step in a loop over a buffer of
stage derivatives `k` of shape `(s, *y.shape)` and forms every stage input
$y_0 + \sum_j a_{ij} k_j$ as one product with that buffer. Under `jax.vmap` (an
ensemble of independent solves) the buffer becomes `(b, s, *y.shape)` and each
such product first copies it into stage-major order: `s` copies of `s` states a
step, about as much memory traffic as the field evaluations themselves for small
token sets. Written out stage by stage (the tableau is known when tracing), each
stage input is one fused sum over the nonzero coefficients only, and nothing is
copied.

Same tableau, same error estimate, same dense output as the wrapped method, so the
same steps are accepted (up to rounding in the order of the sums).
"""

from typing import ClassVar, cast

import diffrax
import equinox.internal as eqxi
import jax.numpy as jnp
from jax import lax


def _combine(y0, pairs):
    """`y0 + sum(coeff * k)` over the `(coeff, k)` pairs with a nonzero
    coefficient (`y0=None`: the sum alone)."""
    out = y0
    for coeff, k in pairs:
        if coeff != 0.0:
            out = coeff * k if out is None else out + coeff * k
    return out


def supports(method) -> bool:
    """Whether `UnrolledERK(method)` applies: an explicit diffrax Runge–Kutta method
    with a single Butcher tableau and an embedded error estimate."""
    if not isinstance(method, diffrax.AbstractERK):
        return False
    tab = getattr(method, "tableau", None)
    return (
        isinstance(tab, diffrax.ButcherTableau)
        and not tab.implicit
        and tab.b_error is not None
        and (not tab.fsal or tab.ssal)
    )


class UnrolledERK(diffrax.AbstractAdaptiveSolver):
    """An explicit diffrax Runge–Kutta method (`Tsit5`, `Dopri5`, ...) stepped with
    its stages written out (no stage loop, no stage buffer).

    Only for a single `diffrax.ODETerm`; first-same-as-last methods keep the last
    stage's derivative as the next step's first (recomputed after a jump).
    """

    method: diffrax.AbstractERK
    term_structure: ClassVar = diffrax.ODETerm

    def __check_init__(self):
        if not supports(self.method):
            raise ValueError(
                "`UnrolledERK` needs an explicit diffrax Runge-Kutta method with one "
                f"Butcher tableau and an error estimate; got {self.method!r}."
            )

    @property
    def interpolation_cls(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.method.interpolation_cls

    @property
    def _tableau(self) -> diffrax.ButcherTableau:
        return cast(diffrax.ButcherTableau, self.method.tableau)

    def order(self, terms):
        return self.method.order(terms)

    def error_order(self, terms):
        return self.method.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        if self._tableau.fsal:
            return terms.vf(t0, y0, args)
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self._tableau
        control = terms.contr(t0, t1)
        h = t1 - t0
        if tab.fsal:
            f0 = solver_state
            if made_jump is not False:
                # after a jump the stored derivative is stale: re-evaluate (once for
                # the whole batch under `jax.vmap`, kept where a member jumped)
                f0 = lax.cond(
                    eqxi.unvmap_any(made_jump),
                    lambda: jnp.where(made_jump, terms.vf(t0, y0, args), f0),
                    lambda: f0,
                )
        else:
            f0 = terms.vf(t0 + float(tab.c1) * h, y0, args)
        ks = [terms.prod(f0, control)]
        f_last = f0
        yi = y0
        for a_row, c in zip(tab.a_lower, tab.c):
            yi = _combine(y0, zip((float(a) for a in a_row), ks))
            f_last = terms.vf(t0 + float(c) * h, yi, args)
            ks.append(terms.prod(f_last, control))
        if tab.ssal:
            y1 = yi
        else:
            y1 = _combine(y0, zip((float(b) for b in tab.b_sol), ks))
        y_error = _combine(None, zip((float(e) for e in tab.b_error), ks))
        dense_info = dict(y0=y0, y1=y1, k=jnp.stack(ks))
        state = f_last if tab.fsal else None
        result: diffrax.RESULTS = diffrax.RESULTS.successful  # pyright: ignore
        return y1, y_error, dense_info, state, result
