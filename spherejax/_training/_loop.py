r"""`train`: mini-batch training of a `FlowModel` with Optax, the kinetic and Jacobian
regularisers, periodic evaluation and resumable checkpoints; `evaluate`.

The objective of a batch $B$ is

$$\frac{1}{|B|}\sum_{b \in B} \Big(\ell(\text{outputs}_b, \text{labels}_b)
+ \lambda_k E_b(T) + \lambda_J J_b(T)\Big)$$

with $E$, $J$ the kinetic and Hutchinson-Jacobian terms of `forward`.
"""

import io
import json
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from ._model import FlowModel, forward


_MAGIC = b"SPHEREJAX-TRAIN-1\n"


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean cross-entropy (nats) of integer `labels` under `logits` (last axis the
    classes; any leading axes, e.g. a sequence, are averaged)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(losses)


def accuracy(logits: Array, labels: Array) -> Array:
    """The fraction of `labels` that are the argmax of `logits`."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype))


# ---------------------------------------------------------------------------------
# input checks


def _check_arrays(name: str, data, model: FlowModel) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"`{name}` must be a pair `(inputs, labels)` of arrays (or, for "
            f"`data`, an iterable of such pairs); got {type(data).__name__}."
        )
    inputs, labels = (np.asarray(a) for a in data)
    if inputs.ndim == 0 or labels.ndim == 0:
        raise ValueError(f"`{name}`: inputs and labels need a leading example axis.")
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`{name}`: {inputs.shape[0]} inputs but {labels.shape[0]} labels; "
            "they must have the same length."
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"`{name}` is empty: at least one example is needed.")
    if np.issubdtype(inputs.dtype, np.floating) and not np.all(np.isfinite(inputs)):
        bad = np.flatnonzero(~np.all(np.isfinite(inputs.reshape(len(inputs), -1)), 1))
        raise ValueError(
            f"`{name}`: inputs contain NaN or inf (examples {bad[:5].tolist()}"
            f"{'...' if len(bad) > 5 else ''}); clean or drop them."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`{name}`: labels must be integers (class or byte indices); got "
            f"{labels.dtype}."
        )
    classes = _num_classes(model, inputs[0])
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"`{name}`: labels must lie in [0, {classes}) (the readout's "
            f"{classes} outputs); got values in [{labels.min()}, {labels.max()}]."
        )
    return inputs, labels


def _num_classes(model: FlowModel, x) -> int:
    shape = jax.eval_shape(
        lambda m, x: m.readout(m.embedding(x)), model, jnp.asarray(x)
    ).shape
    return shape[-1]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value}.")
    return int(value)


def _check_lambda(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be finite and non-negative; got {value}.")
    return value


# ---------------------------------------------------------------------------------
# checkpoints


def _write_atomic(path: str, payload: bytes) -> None:
    """Write `payload` to `path` so that a kill at any instant leaves either the old
    file or the new one: a temporary file in the same folder, flushed and fsynced,
    then `os.replace` (atomic on POSIX), then the folder fsynced."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(path: str, meta: dict, state) -> None:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, state)
    header = json.dumps(meta).encode()
    payload = _MAGIC + len(header).to_bytes(8, "little") + header + buf.getvalue()
    _write_atomic(path, payload)


def load_checkpoint(path: str, like) -> tuple[dict, Any]:
    """Read a checkpoint written by `train`: `(meta, state)` with `state` shaped
    like `like` (the `(params, opt_state)` pair of the run)."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + 8:
        raise ValueError(f"`{path}` is not a spherejax training checkpoint.")
    n = int.from_bytes(raw[len(_MAGIC) : len(_MAGIC) + 8], "little")
    start = len(_MAGIC) + 8
    try:
        meta = json.loads(raw[start : start + n].decode())
        state = eqx.tree_deserialise_leaves(io.BytesIO(raw[start + n :]), like)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(
            f"the checkpoint `{path}` cannot be read ({type(e).__name__}: {e}); "
            "delete it to start afresh."
        ) from e
    return meta, state


# ---------------------------------------------------------------------------------
# the loop


class Training(eqx.Module):
    """The result of `train`."""

    model: FlowModel
    history: dict
    step: int = eqx.field(static=True)


def _batches_from_arrays(inputs, labels, batch_size: int, key: PRNGKeyArray):
    """The batch of every step: step `s` is batch `s % m` of the permutation of
    epoch `s // m` (`m = len // batch_size`, the remainder dropped), a function of
    `(key, s)` only, so a resumed run sees the same batches."""
    per_epoch = len(inputs) // batch_size

    def batch(step: int):
        epoch, i = divmod(step, per_epoch)
        perm = np.asarray(jr.permutation(jr.fold_in(key, epoch), len(inputs)))
        idx = perm[i * batch_size : (i + 1) * batch_size]
        return inputs[idx], labels[idx]

    return batch


def _fingerprint(**config) -> dict:
    return {
        k: (repr(v) if not isinstance(v, int | float | str) else v)
        for k, v in config.items()
    }


def train(
    model: FlowModel,
    data,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    key: PRNGKeyArray,
    batch_size: int | None = None,
    loss: Callable[[Array, Array], Array] = cross_entropy,
    lambda_kinetic: float = 0.0,
    lambda_jacobian: float = 0.0,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    dt0: float | None = None,
    max_steps: int = 4096,
    eval_data=None,
    eval_every: int | None = None,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
    progress: bool = False,
) -> Training:
    r"""Train `model` on `data` with `optimizer`: loss = task loss + `lambda_kinetic`
    x kinetic action + `lambda_jacobian` x Hutchinson-Jacobian term, both
    integrated in the same solve as the tokens (see `forward`).

    **Arguments:**

    - `model`: a `FlowModel`; every inexact array in it is trained.
    - `data`: a pair `(inputs, labels)` of arrays with a leading example axis
      (mini-batches of `batch_size` drawn without replacement, reshuffled every
      epoch, the remainder dropped), or an iterable of such pairs, one per step
      (iterated afresh from its start when a run resumes, the batches already used
      skipped: it must give the same batches again, e.g. a list).
    - `optimizer`: an Optax gradient transformation.
    - `steps`: the number of optimiser steps.
    - `key`: a JAX random key: the shuffling of epoch `e` uses `fold_in(key, e)`
      and the Hutchinson vectors of step `s` `fold_in(key, s)`, so a run is a
      function of its arguments only.
    - `batch_size`: the mini-batch size with array data.
    - `loss`: the task loss of one example, `loss(outputs, labels) -> scalar`
      (default `cross_entropy`).
    - `lambda_kinetic`, `lambda_jacobian`: the regularisation weights
      ($\lambda_k$, $\lambda_J \ge 0$).
    - `solver`, `rtol`, `atol`, `dt0`, `max_steps`: the solve of `forward`.
    - `eval_data`, `eval_every`: a held-out pair `(inputs, labels)` evaluated
      (`evaluate`) every `eval_every` steps and at the end.
    - `checkpoint`: a file path. When it exists the run resumes from it (its
      configuration must match); it is written every `checkpoint_every` steps and
      at the end, atomically (a temporary file, fsync, `os.replace`): a run
      killed at any instant and restarted with the same arguments ends with the
      same parameters, bit for bit, as an uninterrupted one.
    - `progress`: show a progress bar (tqdm, if installed).

    **Returns:** a `Training` with the trained `model`, the `history` (per step:
    `loss`, `task_loss`, `kinetic`, `jacobian`, `nfe` (mean per example); per
    evaluation: `eval_step`, `eval_loss`, `eval_accuracy`, `eval_nfe`) and `step`.

    **Raises:** `ValueError` before any step on bad input (NaN inputs, labels out
    of the readout's range, inputs and labels of different lengths, an empty data
    set, a non-positive `batch_size`, a negative `lambda_*`, a checkpoint of
    another run); `FloatingPointError` when the loss or the updated parameters
    stop being finite (or the solve fails), leaving the last good checkpoint in
    place.
    """
    if not isinstance(model, FlowModel):
        raise ValueError(f"`model` must be a FlowModel; got {type(model).__name__}.")
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"`steps` must be non-negative; got {steps}.")
    lambda_kinetic = _check_lambda("lambda_kinetic", lambda_kinetic)
    lambda_jacobian = _check_lambda("lambda_jacobian", lambda_jacobian)
    checkpoint_every = _check_positive_int("checkpoint_every", checkpoint_every)
    if eval_every is not None:
        eval_every = _check_positive_int("eval_every", eval_every)
    if isinstance(data, tuple | list) and len(data) == 2 and hasattr(data[0], "shape"):
        if batch_size is None:
            raise ValueError("`batch_size` is needed with array `data`.")
        batch_size = _check_positive_int("batch_size", batch_size)
        inputs, labels = _check_arrays("data", data, model)
        if batch_size > len(inputs):
            raise ValueError(
                f"`batch_size` ({batch_size}) exceeds the {len(inputs)} examples of "
                "`data`."
            )
        batch_of = _batches_from_arrays(inputs, labels, batch_size, key)
        iterator = None
    elif isinstance(data, Iterable):
        if batch_size is not None:
            _check_positive_int("batch_size", batch_size)
        batch_of, iterator = None, data
    else:
        raise ValueError(
            "`data` must be a pair `(inputs, labels)` of arrays or an iterable of "
            f"such pairs; got {type(data).__name__}."
        )
    if eval_data is not None:
        eval_data = _check_arrays("eval_data", eval_data, model)

    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    solve_kw: dict[str, Any] = dict(
        solver=solver, rtol=rtol, atol=atol, dt0=dt0, max_steps=max_steps
    )
    lambdas = jnp.asarray([lambda_kinetic, lambda_jacobian])
    config = (optimizer, loss, lambda_jacobian > 0, solve_kw)

    history: dict[str, list] = {
        k: []
        for k in (
            "loss",
            "task_loss",
            "kinetic",
            "jacobian",
            "nfe",
            "eval_step",
            "eval_loss",
            "eval_accuracy",
            "eval_nfe",
        )
    }
    start = 0
    fingerprint = _fingerprint(
        steps=steps,
        batch_size=batch_size,
        lambda_kinetic=lambda_kinetic,
        lambda_jacobian=lambda_jacobian,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        key=np.asarray(jr.key_data(key) if _is_typed_key(key) else key).tolist(),
    )
    if checkpoint is not None and os.path.exists(checkpoint):
        meta, (params, opt_state) = load_checkpoint(checkpoint, (params, opt_state))
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"the checkpoint `{checkpoint}` is of another run (saved with "
                f"{meta.get('fingerprint')}, now {fingerprint}); pass another path "
                "or delete it."
            )
        start, history = int(meta["step"]), meta["history"]

    def save(step):
        if checkpoint is not None:
            _save(
                checkpoint,
                {"step": step, "history": history, "fingerprint": fingerprint},
                (params, opt_state),
            )

    def run_eval(step):
        r = evaluate(eqx.combine(params, static), eval_data, loss=loss, **solve_kw)
        history["eval_step"].append(step)
        for name in ("loss", "accuracy", "nfe"):
            history[f"eval_{name}"].append(float(r[name]))

    bar = _bar(steps, start, progress)
    batches = iter(iterator) if iterator is not None else None
    if batches is not None:
        for _ in range(start):
            next(batches)
    last_saved = start
    for s in range(start, steps):
        if batch_of is not None:
            x, y = batch_of(s)
        else:
            try:
                x, y = _check_arrays(f"batch {s} of `data`", next(batches), model)  # type: ignore
            except StopIteration:
                raise ValueError(
                    f"`data` ran out after {s} batches; `steps` is {steps}."
                ) from None
        new = _step(
            params,
            static,
            opt_state,
            jnp.asarray(x),
            jnp.asarray(y),
            jr.fold_in(key, s),
            lambdas,
            config,
        )
        new_params, new_state, total, aux, finite = new
        if not bool(finite):
            where = (
                f"; the last good checkpoint (step {last_saved}) is kept in "
                f"`{checkpoint}`"
                if checkpoint is not None
                else ""
            )
            raise FloatingPointError(
                f"training stopped at step {s}: the loss ({float(total)}) or the "
                f"updated parameters are not finite (a diverging step, a failed "
                f"solve, or NaN from the loss){where}. Lower the learning rate or "
                "the tolerances."
            )
        params, opt_state = new_params, new_state
        for name, value in zip(
            ("loss", "task_loss", "kinetic", "jacobian", "nfe"), (total, *aux)
        ):
            history[name].append(float(value))
        done = s + 1
        if eval_data is not None and eval_every is not None and done % eval_every == 0:
            run_eval(done)
        if done % checkpoint_every == 0 or done == steps:
            save(done)
            last_saved = done
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(total):.4g}", nfe=f"{float(aux[3]):.0f}")
    if bar is not None:
        bar.close()
    if eval_data is not None and (
        not history["eval_step"] or history["eval_step"][-1] != steps
    ):
        run_eval(steps)
    return Training(eqx.combine(params, static), history, steps)


def _objective(params, static, x, y, keys, lambdas, config):
    _, loss, use_jac, solve_kw = config
    m = eqx.combine(params, static)
    out = jax.vmap(lambda x, k: forward(m, x, key=k, jacobian=use_jac, **solve_kw))(
        x, keys
    )
    task = jnp.mean(jax.vmap(loss)(out.outputs, y))
    kin, jac = jnp.mean(out.kinetic), jnp.mean(out.jacobian)
    total = task + lambdas[0] * kin + lambdas[1] * jac
    total = jnp.where(jnp.all(out.ok), total, jnp.nan)
    return total, (task, kin, jac, jnp.mean(out.nfe.astype(kin.dtype)))


@eqx.filter_jit
def _step(params, static, opt_state, x, y, key, lambdas, config):
    """One optimiser step (compiled once per model structure and configuration;
    the regularisation weights are traced)."""
    optimizer = config[0]
    keys = jr.split(key, x.shape[0])
    (total, aux), grads = jax.value_and_grad(_objective, has_aux=True)(
        params, static, x, y, keys, lambdas, config
    )
    updates, new_state = optimizer.update(grads, opt_state, params)
    new_params = eqx.apply_updates(params, updates)
    leaves = jax.tree_util.tree_leaves(new_params)
    finite = jnp.isfinite(total) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves])
    )
    return new_params, new_state, total, aux, finite


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key)


def _bar(steps: int, start: int, enabled: bool):
    if not enabled:
        return None
    try:
        import tqdm
    except ImportError:
        return None
    return tqdm.tqdm(total=steps, initial=start, desc="train")


def evaluate(
    model: FlowModel,
    data,
    *,
    loss: Callable[[Array, Array], Array] = cross_entropy,
    batch_size: int = 256,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    dt0: float | None = None,
    max_steps: int = 4096,
) -> dict:
    """Mean task loss, accuracy, field evaluations (NFE) and kinetic action per
    example of `model` on `data = (inputs, labels)`, solved at `rtol`, `atol`.

    **Returns:** a dict with `loss`, `accuracy`, `nfe` and `kinetic` (floats).

    **Raises:** `ValueError` on bad data (as `train`) or a failed solve.
    """
    inputs, labels = _check_arrays("data", data, model)
    batch_size = _check_positive_int("batch_size", batch_size)
    kw = dict(solver=solver, rtol=rtol, atol=atol, dt0=dt0, max_steps=max_steps)
    sums = np.zeros(5)
    for i in range(0, len(inputs), batch_size):
        x, y = (
            jnp.asarray(inputs[i : i + batch_size]),
            jnp.asarray(labels[i : i + batch_size]),
        )
        sums += np.asarray(_eval_batch(model, x, y, loss, kw), dtype=float)
    if sums[4] != len(inputs):
        raise ValueError(
            f"{len(inputs) - int(sums[4])} of the {len(inputs)} solves failed "
            "(non-finite state or step budget exhausted)."
        )
    n = len(inputs)
    return {
        "loss": float(sums[0] / n),
        "accuracy": float(sums[1] / n),
        "nfe": float(sums[2] / n),
        "kinetic": float(sums[3] / n),
    }


@eqx.filter_jit
def _eval_batch(model, x, y, loss, kw):
    out = jax.vmap(lambda x: forward(model, x, **kw))(x)
    losses = jax.vmap(loss)(out.outputs, y)
    acc = jax.vmap(accuracy)(out.outputs, y)
    return jnp.stack(
        [
            jnp.sum(losses),
            jnp.sum(acc),
            jnp.sum(out.nfe).astype(losses.dtype),
            jnp.sum(out.kinetic),
            jnp.sum(out.ok).astype(losses.dtype),
        ]
    )
