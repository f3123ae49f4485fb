r"""Running attention flows on many devices with `jax.sharding`.

Two axes can be split across devices:

- the **ensemble** (batch) axis: independent solves, one slice per device
  (`sharded_solve`, `shard_ensemble`);
- the **token** axis, for very large `n`: every device owns `n / p` query tokens;
  the keys/values (`O(n d)`, not `O(n^2)`) are all-gathered inside a `shard_map`
  and each device evaluates attention for its own queries (`TokenSharded`,
  `shard_tokens`).

Meshes are built with `AxisType.Auto` (`make_mesh`): in jax 0.10 `jax.make_mesh`
defaults to Explicit axes, under which diffrax's internal buffers fail sharding
type checks. Multi-host: call `jax.distributed.initialize()` first on every host;
`jax.devices()` then lists the devices of all hosts and the same code runs
(see `docs/scaling.md`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, ArrayLike, Float

from . import _prepare
from ._custom_types import RealScalarLike
from ._ensemble import EnsembleField
from ._field import AbstractField, SelfAttention
from ._integrate import integrate


def make_mesh(num_devices: int | None = None, axis_name: str = "devices") -> Mesh:
    """A one-dimensional mesh over the first `num_devices` devices (default all),
    with an `Auto` axis (needed by anything that calls the solver)."""
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"`num_devices` must be between 1 and {len(devices)}; got {num_devices}."
        )
    return jax.make_mesh(
        (num_devices,),
        (axis_name,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices[:num_devices],
    )


def _axis(mesh: Mesh, axis: str | None) -> str:
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"pass `axis=`; the mesh has axes {mesh.axis_names}.")
        return mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ValueError(
            f"`axis` {axis!r} is not an axis of the mesh {mesh.axis_names}."
        )
    return axis


def _check_divisible(size: int, mesh: Mesh, axis: str, what: str) -> None:
    p = mesh.shape[axis]
    if size % p:
        raise ValueError(
            f"the {what} axis (size {size}) must be divisible by the {p} devices of "
            f"mesh axis {axis!r}."
        )


def shard_ensemble(ys: ArrayLike, mesh: Mesh, axis: str | None = None) -> Array:
    """Place a batch of token sets `(batch, n, d)` with the batch axis split over
    `axis` of `mesh`."""
    ys = jnp.asarray(ys)
    axis = _axis(mesh, axis)
    _check_divisible(ys.shape[0], mesh, axis, "ensemble")
    return jax.device_put(ys, NamedSharding(mesh, P(axis)))


def shard_tokens(y: ArrayLike, mesh: Mesh, axis: str | None = None) -> Array:
    """Place tokens `(n, d)` (or `(batch, n, d)`) with the token axis split over
    `axis` of `mesh`."""
    y = jnp.asarray(y)
    axis = _axis(mesh, axis)
    _check_divisible(y.shape[-2], mesh, axis, "token")
    spec = P(axis, None) if y.ndim == 2 else P(*([None] * (y.ndim - 2)), axis, None)
    return jax.device_put(y, NamedSharding(mesh, spec))


def sharded_solve(
    field: AbstractField,
    y0s: Float[Array, "batch n d"],
    t1: RealScalarLike,
    *,
    mesh: Mesh,
    axis: str | None = None,
    **solve_kwargs,
) -> Float[Array, "batch ..."]:
    """Solve an ensemble `y0s` of shape `(batch, n, d)` with the batch axis split
    over the devices of `mesh`: `jax.vmap` of `solve` (its inputs checked once
    for the whole batch, as in `solve_ensemble`) under sharding constraints that
    keep the batch axis sharded on input and output (XLA's partitioner then runs
    each device's slice of the batched solve locally). Returns the saved states
    `sol.ys` stacked along the batch axis, `(batch, T, n, d)`, sharded the same way.
    Differentiable. Call it inside `jax.jit` (the mesh needs `Auto` axes, see
    `make_mesh`).

    `solve_kwargs` go to `spherejax.solve` (`ts`, `rtol`, `solver`, ...).

    (A `shard_map` over the batch axis runs forward but not in reverse mode: the
    closure conversion of diffrax's checkpointed loop fails inside it in jax 0.10.)
    """
    axis = _axis(mesh, axis)
    if jnp.ndim(y0s) != 3:
        raise ValueError(
            f"`y0s` must have shape `(batch, n, d)`; got {jnp.shape(y0s)}."
        )
    _check_divisible(jnp.shape(y0s)[0], mesh, axis, "ensemble")
    for name in ("y0", "norm", "name"):
        if name in solve_kwargs:
            raise ValueError(f"`{name}` is not an option of `sharded_solve`.")
    # the whole batch is checked once, as `solve_ensemble` does
    p = _prepare.problem(EnsembleField(field), y0s, t1, name="y0s", **solve_kwargs)
    batch = NamedSharding(mesh, P(axis))
    y0s = jax.lax.with_sharding_constraint(p.y0, batch)
    ys = jax.vmap(lambda y0: integrate(p.member(field, y0)).ys)(y0s)
    return jax.lax.with_sharding_constraint(ys, batch)


class TokenSharded(AbstractField):
    """A `SelfAttention` field evaluated with its tokens split over a mesh axis.

    Inside a `shard_map`, each device holds `n / p` tokens (its queries), gathers
    all tokens (keys/values: `n x d` numbers, never an `n x n` array) with
    `lax.all_gather`, and evaluates attention for its own queries, blocked by the
    field's evaluation strategy (`Dense()`: one block of local queries against all
    keys; `Chunked(size)`: blocks).
    Outputs stay token-sharded. Row-local normalisations (softmax, unnormalized,
    hardmax, causal or not) are supported; Sinkhorn's column normalisation would
    need cross-device reductions every iteration and is not.

    Use it as any field: `solve(TokenSharded(field, mesh), shard_tokens(y0, mesh), t1)`.
    """

    field: SelfAttention
    mesh: Mesh = eqx.field(static=True)
    axis: str = eqx.field(static=True)

    def __init__(self, field: SelfAttention, mesh: Mesh, axis: str | None = None):
        if not isinstance(field, SelfAttention):
            raise ValueError(
                f"`field` must be a `SelfAttention`; got {type(field).__name__} "
                "(token-wise fields need no token sharding wrapper)."
            )
        if not field.normalization.row_local:
            name = type(field.normalization).__name__
            raise ValueError(
                f"`TokenSharded` needs a row-local normalisation; `{name}` is not "
                "(sinkhorn's column normalisation would need cross-device "
                "reductions every iteration)."
            )
        self.field = field
        self.mesh = mesh
        self.axis = _axis(mesh, axis)

    @property
    def manifold(self):
        return self.field.manifold

    def check_tokens(self, y):
        self.field.check_tokens(y)
        _check_divisible(y.shape[-2], self.mesh, self.axis, "token")

    def __call__(self, t, y, args=None):
        del args
        self.check_tokens(y)
        field = self.field
        axis = self.axis
        params, static = eqx.partition(field, eqx.is_array)

        def local(params, y_local):
            f = eqx.combine(params, static)
            nl = y_local.shape[0]
            first = jax.lax.axis_index(axis) * nl  # int32, as the index is
            qidx = first + jnp.arange(nl, dtype=first.dtype)
            keys = jax.lax.all_gather(y_local, axis, tiled=True)
            v = f.attention_rows(y_local, qidx, keys)
            return f.manifold.to_tangent(y_local, v)

        run = jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(P(), P(axis, None)),
            out_specs=P(axis, None),
            check_vma=False,
        )
        return run(params, y)
