r"""`ReplayAdjoint`: reverse mode through a solve from stored Runge–Kutta stages.

diffrax's default `RecursiveCheckpointAdjoint` stores the loop state at
checkpoints and, in the backward pass, re-runs every step forward before pulling
cotangents through it. For an attention field one evaluation costs two `n x n x d`
products and its pullback four, so that adjoint costs at least
`1 (forward) + 1 (recomputation) + 2 (pullback) = 4` forward solves, plus the loop.

`ReplayAdjoint` instead keeps what the forward pass computed anyway. The forward
pass is an ordinary `diffrax.diffeqsolve` with `SaveAt(dense=True)`, whose dense
output holds, for every *accepted* step $k$, the step's start $y_k$ and its stage
increments $K_i = h_k f(t_k + c_i h_k, X_i)$ (with $X_i = y_k + \sum_{j<i} a_{ij} K_j$).
The backward pass walks the accepted steps in reverse, through the discrete
equations of the explicit Runge–Kutta step followed by the retraction
$y_{k+1} = R_{y_k}(\tilde y_{k+1} - y_k)$, $\tilde y_{k+1} = y_k + \sum_i b_i K_i$:

$$\bar{\tilde y} = \partial_{\tilde y} R^{\top}\bar y_{k+1},\quad
\bar F_i \mathrel{+}= h_k b_i \bar{\tilde y},\quad
\bar X_i = \partial_x f(X_i)^{\top} \bar F_i\ (i = s-1, \dots, 0),\quad
\bar F_j \mathrel{+}= h_k a_{ij} \bar X_i,$$

with the first-same-as-last stage's cotangent handed to the previous step. Rejected
steps cost nothing in the backward pass, and no step is re-run.

Each stage's pullback $\partial_x f(X_i)^\top \bar F_i$ is `jax.vjp` of the field
in general (one re-evaluation plus the pullback). For `SelfAttention` on a
`Sphere` whose normalisation has a reverse rule (`supports_replay`: `Softmax`,
`Unnormalized`; dense evaluation, any number of heads, causal or not, weighted or
not, no biases or positions) in float64 the pullback reuses the stored stage
output (in float32 it measured slower than recomputation on CPU, so it is not
used there): the
field is $f = v - \langle x, v\rangle x / R^2$ with
$v_i = \sum_h \sum_j A^h_{ij} V_h x_j$, and the only part of $v$ that $f$ loses,
the radial component $r_i = \langle x_i, v_i\rangle$, is integrated along as an
extra (unobserved, not error-controlled) state component so that its stage values
are stored too. The projection's pullback is then written out,

$$\bar v = \bar F - x\,\langle x, \bar F\rangle / R^2,\qquad
\bar x \mathrel{+}= -\langle x, \bar F\rangle\, v / R^2 - r\, \bar F / R^2,$$

and the attention's is autodiff of the formula through the normalisation's
attention matrix (`SelfAttention.attention_via_matrix`) with its output unused, so
the product $A (V x)$ is never formed: the scores plus four `n x n x d` products,
against six for re-evaluation plus autodiff.

**Gradients.** diffrax's `PIDController` stops gradients through its step-size
choice, so the gradients of `RecursiveCheckpointAdjoint` are those of the accepted
steps with their sizes held fixed, which is exactly what this adjoint computes: the
two agree to rounding (tested to `1e-11` relative in float64). The benchmark
`benchmarks/grad_cost.py` measures the cost.

**Memory.** The dense buffers hold `max_steps x (s + 2)` copies of the state
(`s` stages; Tsit5: 7), allocated up front: `max_steps` must bound the number of
steps *taken* (accepted and rejected), and is the adjoint's own parameter (the
`max_steps` of `solve` or `diffeqsolve` is ignored).
"""

from collections.abc import Callable
from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._attention import Chunked, Dense
from ._field import AbstractField, SelfAttention
from ._manifold import Sphere
from ._solver.retract import Retract, RetractFirst
from ._step_size import FiniteAdaptiveSteps, FiniteSteps, guard_nonfinite


class ReplayAdjoint(diffrax.AbstractAdjoint):
    """Reverse-mode adjoint that replays the accepted steps from their stored
    stages instead of re-running them (see the module docstring, also on the API
    page "Integrate and adjoints").

    A `diffrax.AbstractAdjoint`: pass it as
    `spherejax.solve(..., adjoint=spherejax.ReplayAdjoint(max_steps=...))` or as
    `diffrax.diffeqsolve(..., adjoint=spherejax.ReplayAdjoint(...))`; the two give
    the same gradients.

    Supported: `Retract` around an explicit diffrax Runge–Kutta solver (`Tsit5`,
    the default, `Dopri5`, `Dopri8`, `Bosh3`, `Heun`, `spherejax.RK4`, ...) with a
    `diffrax.PIDController` (tolerances) or a constant step; one `diffrax.ODETerm`;
    saving at `t1` or at `ts` (adaptive steps are made to end on every `ts`, so the
    saved states are step ends, not interpolants); `t0 < t1`; fields without jump
    times; no events. Reverse mode only (`jax.grad`, `jax.vjp`); gradients flow to
    the term (the field's arrays) and `y0`, not to `args`. Anything else raises a
    `ValueError`.
    """

    max_steps: int = eqx.field(static=True, default=256)

    def __check_init__(self):
        if int(self.max_steps) != self.max_steps or self.max_steps < 1:
            raise ValueError(
                f"`max_steps` must be a positive integer; got {self.max_steps}."
            )

    def loop(
        self,
        *,
        args,
        terms,
        solver,
        stepsize_controller,
        event,
        saveat,
        t0,
        t1,
        dt0,
        max_steps,
        throw,
        init_state,
        passed_solver_state,
        passed_controller_state,
        progress_meter,
    ):
        del max_steps, throw, passed_solver_state, passed_controller_state
        del progress_meter
        if event is not None:
            raise ValueError("`ReplayAdjoint` does not support events.")
        field = _find_field(terms)
        if isinstance(field, AbstractField) and field.jump_times() is not None:
            raise ValueError(
                "`ReplayAdjoint` does not support fields with jump times (layer-wise "
                "fields); use the default adjoint."
            )
        if not isinstance(solver, Retract):
            raise ValueError(
                "`ReplayAdjoint` needs `Retract` around an explicit Runge–Kutta "
                f"solver; got {type(solver).__name__}."
            )
        _tableau(solver.solver)  # validates
        # diffrax runs the loop forward in time (t0 < t1), flipping the term's sign
        # for backward solves: not supported here
        ts = eqx.error_if(
            _save_times(saveat, t1),
            terms.contr(jnp.zeros_like(t0), jnp.ones_like(t0)) != 1,
            "`ReplayAdjoint` needs `t0 < t1`.",
        )
        static = _Static(
            solver=RetractFirst(solver.solver, solver._require_manifold()),
            controller=_controller(stepsize_controller, ts),
            t0=t0,
            t1=t1,
            ts=ts,
            dt0=dt0,
            args=args,
            max_steps=self.max_steps,
        )
        ys, sol = _replay((field, init_state.y), static)
        return _final_state(init_state, saveat, ts, ys, sol), {}


def _is_ode_term(x) -> bool:
    return isinstance(x, diffrax.ODETerm)


def _find_field(terms):
    found = [x for x in jax.tree.leaves(terms, is_leaf=_is_ode_term)]
    found = [x for x in found if _is_ode_term(x)]
    if len(found) != 1:
        raise ValueError("`ReplayAdjoint` needs one `diffrax.ODETerm`.")
    return found[0].vector_field


def _save_times(saveat: diffrax.SaveAt, t1: Array) -> Array:
    """The save times of a `SaveAt` that saves `t1` or `ts` (and nothing else)."""
    sub = saveat.subs
    if (
        not isinstance(sub, diffrax.SubSaveAt)
        or sub.steps
        or saveat.dense
        or (sub.ts is None) == (not sub.t1)
        or sub.t0
        or getattr(sub.fn, "__name__", None) != "save_y"
    ):
        raise ValueError(
            "`ReplayAdjoint` saves at `t1` or at `ts` only (one `SaveAt(ts=...)` or "
            "`SaveAt(t1=True)`)."
        )
    return jnp.asarray(t1)[None] if sub.t1 else jnp.asarray(sub.ts)


def _controller(controller, ts):
    """The replay's controller: the error norm sees the tokens only (not the radial
    component), so the steps are those of the plain solve; every save time is a
    step end. A controller wrapped by `solve`'s non-finite guard keeps its guard."""
    if isinstance(controller, (FiniteSteps, FiniteAdaptiveSteps)):
        return guard_nonfinite(_controller(controller.controller, ts))
    if isinstance(controller, (diffrax.PIDController, diffrax.ClipStepSizeController)):
        extra = None
        if isinstance(controller, diffrax.ClipStepSizeController):
            if controller.jump_ts is not None:
                raise ValueError("`ReplayAdjoint` does not support `jump_ts`.")
            extra, controller = controller.step_ts, controller.controller
        if not isinstance(controller, diffrax.PIDController):
            raise ValueError(
                "`ReplayAdjoint` supports `diffrax.PIDController` and constant steps; "
                f"got {type(controller).__name__}."
            )
        step_ts = (
            ts if extra is None else jnp.concatenate([jnp.asarray(extra, ts.dtype), ts])
        )
        return diffrax.ClipStepSizeController(
            eqx.tree_at(lambda c: c.norm, controller, _TokensNorm(controller.norm)),
            step_ts=jnp.sort(step_ts),
        )
    if isinstance(controller, diffrax.ConstantStepSize):
        if ts.shape != (1,):
            raise ValueError(
                "`ReplayAdjoint` with a constant step saves the final state only; "
                "use adaptive steps (tolerances) to save at `ts`."
            )
        return controller
    raise ValueError(
        "`ReplayAdjoint` supports `diffrax.PIDController` and constant steps; "
        f"got {type(controller).__name__}."
    )


def _final_state(init_state, saveat, ts, ys, sol):
    """diffrax's loop state after the solve: the saved `ys` (with the replay's
    reverse-mode rule), the statistics and result of the forward pass."""
    # the statistics, result and final state carry no gradient (the saved `ys` do)
    sol = jax.tree.map(jax.lax.stop_gradient, sol)
    n_saved = ts.shape[0]
    save_state = init_state.save_state
    save_state = eqx.tree_at(
        lambda s: (s.ts, s.ys, s.save_index, s.saveat_ts_index),
        save_state,
        (
            ts.astype(save_state.ts.dtype),
            ys.astype(save_state.ys.dtype),
            jnp.asarray(n_saved, jnp.asarray(save_state.save_index).dtype),
            jnp.asarray(
                0 if saveat.subs.t1 else n_saved,
                jnp.asarray(save_state.saveat_ts_index).dtype,
            ),
        ),
    )
    t1 = sol.t1
    return eqx.tree_at(
        lambda s: (
            s.y,
            s.tprev,
            s.tnext,
            s.result,
            s.num_steps,
            s.num_accepted_steps,
            s.num_rejected_steps,
            s.save_state,
        ),
        init_state,
        (
            cast(tuple, sol.ys)[0][-1],
            jnp.asarray(t1, jnp.asarray(init_state.tprev).dtype),
            jnp.asarray(t1, jnp.asarray(init_state.tnext).dtype),
            sol.result,
            sol.stats["num_steps"],
            sol.stats["num_accepted_steps"],
            sol.stats["num_rejected_steps"],
            save_state,
        ),
    )


def _fast_path(field: AbstractField, y0: Array) -> bool:
    # float32: the recomputing pullback measured faster on CPU (gradient/forward
    # 3.7-3.9 against 4.2-4.4, benchmarks/grad_cost.py); float64: the stored-output
    # pullback (3.0-3.2 against 3.6-3.7)
    if not (
        jnp.finfo(y0.dtype).bits >= 64
        and type(field) is SelfAttention
        and type(field.manifold) is Sphere
    ):
        return False
    field = cast(SelfAttention, field)
    evaluation = field.evaluation
    dense = type(evaluation) is Dense or (
        type(evaluation) is Chunked and evaluation.size >= y0.shape[0]
    )
    return (
        field.normalization.supports_replay
        and dense
        and not field.has_extras  # biases, masks, positions: the generic pullback
    )


class _WithRadial(eqx.Module):
    """The field on the state `(x, z)`: `(f(t, x), r)` with `r_i = <x_i, v_i>` on
    the fast path (zeros otherwise). `z` is never read."""

    field: AbstractField
    fast: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        x, _ = y
        if not self.fast:
            return self.field(t, x, args), jnp.zeros(x.shape[:-1], x.dtype)
        field = cast(SelfAttention, self.field)
        v = field.attention(x)
        return field.manifold.to_tangent(x, v), jnp.sum(x * v, axis=-1)


class _TokensNorm(eqx.Module):
    """The controller's norm applied to the tokens of the state `(x, z)`."""

    norm: Callable

    def __call__(self, y):
        return self.norm(y[0])


def _tableau(solver: diffrax.AbstractSolver):
    tab = getattr(solver, "tableau", None)
    if not isinstance(solver, diffrax.AbstractERK) or not isinstance(
        tab, diffrax.ButcherTableau
    ):
        raise ValueError(
            "`ReplayAdjoint` needs `Retract` around an explicit Runge–Kutta solver "
            f"(Tsit5, Dopri5, ...); got {type(solver).__name__}."
        )
    s = tab.num_stages
    a = [[0.0] * s for _ in range(s)]
    for i, row in enumerate(tab.a_lower):
        for j, aij in enumerate(row):
            a[i + 1][j] = float(aij)
    b = [float(x) for x in tab.b_sol]
    c = [float(tab.c1 or 0.0)] + [float(x) for x in tab.c]
    return a, b, c, bool(tab.fsal)


def _attention_pullback(params, static, x, f, r, fbar):
    """`(params_bar, x_bar)` of `x -> field(t, x)` at `x` against `fbar`, given the
    output `f` and the radial component `r = <x, v>` (five `n x n x d` products)."""
    field = cast(SelfAttention, eqx.combine(params, static))
    dt = x.dtype
    R2 = jnp.asarray(cast(Sphere, field.manifold).radius, dt) ** 2
    # tangent projection f = v - <x, v> x / R^2
    xo = jnp.sum(x * fbar, axis=-1, keepdims=True)
    vbar = fbar - xo * x / R2
    v = f + (r[:, None] / R2) * x
    xbar = -(xo / R2) * v - (r[:, None] / R2) * fbar
    # attention v = sum_h A^h (V_h x): autodiff of the formula through the
    # normalisation's attention matrix (softmax as a whole, so its pullback needs A
    # only); the product A (V x) itself is never used, so XLA drops it and the
    # pullback costs the scores plus four products.

    def attention(p, x):
        return cast(SelfAttention, eqx.combine(p, static)).attention_via_matrix(x)

    _, pullback = jax.vjp(attention, params, x)
    pbar, xbar_att = pullback(vbar)
    return pbar, xbar + xbar_att


def _stage_pullback(params, static, fast, t, x, f, r, fbar, args):
    """Cotangents `(params_bar, x_bar)` of one field evaluation."""
    if fast:
        return _attention_pullback(params, static, x, f, r, fbar)

    def fn(p, x):
        return eqx.combine(p, static)(t, x, args)

    _, pullback = jax.vjp(fn, params, x)
    return pullback(fbar)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class _Static(eqx.Module):
    solver: RetractFirst
    controller: diffrax.AbstractStepSizeController
    t0: Array
    t1: Array
    ts: Array
    dt0: Array | None
    args: object
    max_steps: int = eqx.field(static=True)


def _forward(field, y0, static: _Static):
    fast = _fast_path(field, y0)
    z0 = jnp.zeros(y0.shape[:-1], y0.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_WithRadial(field, fast)),
        static.solver,
        static.t0,
        static.t1,
        static.dt0,
        (y0, z0),
        args=static.args,
        saveat=diffrax.SaveAt(t1=True, dense=True),
        stepsize_controller=static.controller,
        max_steps=static.max_steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=1),
    )
    interp = cast(diffrax.DenseInterpolation, sol.interpolation)
    n_steps = interp.ts_size - 1
    step_ts = interp.ts  # step k runs from step_ts[k] to step_ts[k + 1]
    # every saved time is a step end (or t0): where in the step list?
    idx = jnp.searchsorted(step_ts, static.ts, side="left")
    found = jnp.take(step_ts, jnp.minimum(idx, static.max_steps)) == static.ts
    idx = eqx.error_if(
        idx, ~jnp.all(found), "`ReplayAdjoint`: a save time is not a step end."
    )
    x_final = cast(tuple, sol.ys)[0][-1]
    starts = interp.infos["y0"][0]
    xs = jnp.where(
        (idx == n_steps)[:, None, None],
        x_final,
        jnp.take(starts, jnp.minimum(idx, static.max_steps - 1), axis=0),
    )
    stats_sol = eqx.tree_at(lambda s: s.interpolation, sol, None)
    return xs, stats_sol, (step_ts, n_steps, interp.infos, idx, fast)


@eqx.filter_custom_vjp
def _replay(vjp_arg, static: _Static):
    field, y0 = vjp_arg
    xs, sol, _ = _forward(field, y0, static)
    return xs, sol


@_replay.def_fwd
def _replay_fwd(perturbed, vjp_arg, static):
    del perturbed
    field, y0 = vjp_arg
    xs, sol, res = _forward(field, y0, static)
    return (xs, sol), res


@_replay.def_bwd
def _replay_bwd(res, grad_obj, perturbed, vjp_arg, static):
    del perturbed
    field, y0 = vjp_arg
    step_ts, n_steps, infos, idx, fast = res
    ys_bar = grad_obj[0]
    if ys_bar is None:
        ys_bar = jnp.zeros((static.ts.shape[0],) + y0.shape, y0.dtype)
    a, b, c, fsal = _tableau(static.solver.solver)
    s = len(b)
    manifold = static.solver.manifold
    params, nondiff = eqx.partition(field, eqx.is_inexact_array)
    args = static.args

    def saved_bar(k):  # cotangent of the states saved at step end k
        hit = (idx == k)[:, None, None]
        return jnp.sum(jnp.where(hit, ys_bar, 0), axis=0)

    def pull(p_bar, t, x, f, r, fb):
        pb, xb = _stage_pullback(params, nondiff, fast, t, x, f, r, fb, args)
        return _add(p_bar, pb), xb

    def body(carry):
        k, y_bar, f_carry, p_bar = carry
        t_k = step_ts[k]
        h = step_ts[k + 1] - t_k
        y = infos["y0"][0][k]
        y_tilde = infos["y1"][0][k]
        ks = infos["k"][0][k]  # (s, n, d): h * f(X_i)
        rs = infos["k"][1][k]  # (s, n): h * r(X_i)
        y_bar = y_bar + saved_bar(k + 1)
        _, retract_vjp = jax.vjp(lambda u, w: manifold.retract(u, w - u), y, y_tilde)
        y_bar, yt_bar = retract_vjp(y_bar)
        y_bar = y_bar + yt_bar
        f_bar = [h * b[i] * yt_bar for i in range(s)]
        if fsal:
            f_bar[s - 1] = f_bar[s - 1] + f_carry
        last = 1 if fsal else 0  # with FSAL stage 0 was evaluated by the previous step
        for i in range(s - 1, last - 1, -1):
            x_i = y
            for j in range(i):
                if a[i][j] != 0.0:
                    x_i = x_i + a[i][j] * ks[j]
            p_bar, x_bar = pull(
                p_bar, t_k + c[i] * h, x_i, ks[i] / h, rs[i] / h, f_bar[i]
            )
            y_bar = y_bar + x_bar
            for j in range(i):
                if a[i][j] != 0.0:
                    f_bar[j] = f_bar[j] + h * a[i][j] * x_bar
        f_carry = f_bar[0] if fsal else jnp.zeros_like(y)
        return k - 1, y_bar, f_carry, p_bar

    p_bar0 = jax.tree.map(jnp.zeros_like, params)
    _, y_bar, f_carry, p_bar = jax.lax.while_loop(
        lambda carry: carry[0] >= 0,
        body,
        (n_steps - 1, jnp.zeros_like(y0), jnp.zeros_like(y0), p_bar0),
    )
    y_bar = y_bar + saved_bar(0)
    if fsal:  # the first stage of the first step: f(t0, y0), evaluated by `init`
        h0 = step_ts[1] - step_ts[0]
        h0 = jnp.where(h0 == 0, 1, h0)  # no step taken (t0 == t1): f_carry is zero
        f0 = infos["k"][0][0][0] / h0
        r0 = infos["k"][1][0][0] / h0
        p_bar, x_bar = pull(p_bar, step_ts[0], y0, f0, r0, f_carry)
        y_bar = y_bar + x_bar
    return p_bar, y_bar
