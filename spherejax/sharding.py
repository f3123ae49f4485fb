"""Running attention flows on many devices with `jax.sharding`: a mesh, ensembles
split along the batch axis, and very large token sets split along the token axis."""

from ._sharding import (
    TokenSharded as TokenSharded,
    make_mesh as make_mesh,
    shard_ensemble as shard_ensemble,
    shard_tokens as shard_tokens,
    sharded_solve as sharded_solve,
)
