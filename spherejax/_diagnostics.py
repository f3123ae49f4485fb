"""Diagnostics of token configurations: cosines, clusters, and GLPR's equiangular
reference ODE."""

from typing import cast

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from ._misc import is_concrete, safe_norm


def pairwise_cosines(x: Float[ArrayLike, "n d"]) -> Float[Array, "n n"]:
    """Matrix of cosines `<x_i, x_j> / (|x_i| |x_j|)` (works for any radius)."""
    x = jnp.asarray(x)
    u = x / safe_norm(x, keepdims=True)
    return u @ jnp.swapaxes(u, -1, -2)


def _checked_tokens(x) -> np.ndarray:
    x_np = np.asarray(x)
    if x_np.ndim != 2:
        raise ValueError(f"`x` must have shape `(n, d)`; got {x_np.shape}.")
    if not np.all(np.isfinite(x_np)):
        bad = np.unique(np.argwhere(~np.isfinite(x_np))[:, 0])
        raise ValueError(f"`x` contains NaN or inf (tokens {bad.tolist()[:10]}).")
    zero = np.flatnonzero(~np.any(x_np != 0, axis=-1))
    if zero.size:
        raise ValueError(
            f"`x` has zero tokens (rows {zero.tolist()[:10]}): their direction, "
            "hence their cluster, is undefined."
        )
    return x_np.astype(np.float64)


def clusters(
    x: Float[ArrayLike, "n d"], tol: float = 1e-2, *, separation: float = 1.0
) -> np.ndarray:
    r"""Cluster labels `0..c-1` of `n` tokens (in order of first appearance).

    Tokens are compared by direction only: $\theta_{ij} = \arccos \frac{\langle
    x_i, x_j\rangle}{|x_i|\,|x_j|}$. A group $G$ of tokens has the diameter
    $\operatorname{diam} G = \max_{i, j \in G} \theta_{ij}$, and two groups the gap
    $\operatorname{gap}(A, B) = \min_{i \in A,\, j \in B} \theta_{ij}$.

    **Criterion.** Merge groups in order of increasing gap (single linkage, i.e.
    along the minimum spanning tree of the angles). When the gap between two groups
    $A$ and $B$ is reached, they stay apart if it is both

    - *wide*: $1 - \cos\operatorname{gap}(A, B) > \mathtt{tol}$, and
    - *empty*: $\operatorname{gap}(A, B) > \mathtt{separation} \cdot
      \max\big(w(A), w(B)\big)$, where $w(G)$ is the largest diameter among the
      clusters $G$ holds so far (0 for one token);

    otherwise all of $A \cup B$ becomes one cluster. So tokens closer than `tol`
    are always together, and clusters are groups separated by gaps that are wider
    than `tol` *and* wider than the clusters themselves: a spread-out group
    without such a gap is one cluster, however wide it is.

    What this counts (default `tol=1e-2`, a gap of $8.1°$; `separation=1`):

    - $k$ groups, each narrower than the gaps between them (the metastable and
      final states of the attention dynamics): $k$.
    - A contracting group: 1 once its nearest-neighbour gaps are below `tol`,
      e.g. 256 tokens in $\mathbb{R}^{64}$ whose cosines are all $\geq 0.994$
      (gaps $\leq 6.3°$), although no two of them are within $2.6°$.
    - A uniform sample that is dense at the scale of `tol` (e.g. 128 i.i.d.
      angles on the circle, mean spacing $2.8°$): 1, because the gaps wider than
      `tol` are narrower than the arcs they would separate. It has no cluster
      structure, and a dense random initial condition counts 1, then more when
      separated clusters form, then fewer as they merge.
    - Tokens sparser than `tol` (e.g. 32 random tokens on $S^2$ at `tol=1e-3`,
      nearest neighbours $\sim 20°$ apart): about $n$, each token on its own.
    - `separation=0`: single linkage alone, the connected components of the graph
      linking $i, j$ when $1 - \cos\theta_{ij} \leq \mathtt{tol}$ (on the
      circle: a new cluster at every angular gap wider than $\arccos(1 -
      \mathtt{tol})$). It chains and splits at random gaps: 128 uniform angles
      read about 50 clusters at `tol=1e-3`.

    The count is never larger than with `separation=0` at the same `tol`. Cost:
    $O(n^2 d)$ time, $O(n^2)$ memory (the matrix of cosines).

    **Arguments:**

    - `x`: tokens, shape `(n, d)`, nonzero norms (only directions are used).
    - `tol`: the narrowest gap that separates clusters, as $1 - \cos$ of its angle
      (`1e-2`: $8.1°$; `1e-3`: $2.6°$; `1e-6`: $0.08°$). Non-negative.
    - `separation`: how many times wider than the clusters on either side a gap
      must be. Finite and non-negative; `0.0` gives single linkage.

    **Returns:** integer labels of shape `(n,)`.

    Non-finite or zero tokens raise `ValueError` (their cluster is undefined).
    """
    if not tol >= 0:
        raise ValueError(f"`tol` must be non-negative; got {tol}.")
    if not (separation >= 0 and np.isfinite(separation)):
        raise ValueError(
            f"`separation` must be finite and non-negative; got {separation}."
        )
    x_np = _checked_tokens(x)
    n = x_np.shape[0]
    if n == 0:
        return np.zeros(0, dtype=int)
    u = x_np / np.linalg.norm(x_np, axis=-1, keepdims=True)
    cos = np.clip(u @ u.T, -1.0, 1.0)
    one_minus = 1.0 - cos  # the tol test on the cosines, as before
    angle = np.arccos(cos)

    # Prim's algorithm: minimum spanning tree of the angles (n - 1 edges).
    parent = np.zeros(n, dtype=int)
    best = angle[0].copy()
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best[0] = np.inf
    edges = []
    for _ in range(n - 1):
        j = int(np.argmin(np.where(in_tree, np.inf, best)))
        edges.append((int(parent[j]), j))
        in_tree[j] = True
        closer = ~in_tree & (angle[j] < best)
        best[closer] = angle[j][closer]
        parent[closer] = j

    # Single-linkage dendrogram (Kruskal on the tree's edges, shortest first), with
    # each node's members and angular diameter. Node ids: tokens 0..n-1, then merges.
    order = sorted(edges, key=lambda e: angle[e[0], e[1]])
    root_of = list(range(n))  # union-find over tokens, pointing to a node id

    def find(i: int) -> int:
        while root_of[i] != i:
            root_of[i] = root_of[root_of[i]]
            i = root_of[i]
        return i

    members: list[np.ndarray] = [np.array([i]) for i in range(n)]
    diam: list[float] = [0.0] * n
    children: list[tuple[int, int, int, int]] = []  # (left node, right node, i, j)
    rep_node = list(range(n))  # union-find root token -> its current node id
    for i, j in order:
        ri, rj = find(i), find(j)
        a, b = rep_node[ri], rep_node[rj]
        cross = float(angle[np.ix_(members[a], members[b])].max())
        members.append(np.concatenate([members[a], members[b]]))
        diam.append(max(diam[a], diam[b], cross))
        children.append((a, b, i, j))
        root_of[rj] = ri
        rep_node[ri] = len(members) - 1

    # Bottom-up along the dendrogram: each node keeps its parts apart when the gap
    # between them is wide and empty, and is one cluster otherwise.
    keep: list[list[int]] = [[i] for i in range(n)]  # each node's clusters (node ids)
    width: list[float] = [0.0] * n  # largest diameter among them
    for a, b, i, j in children:
        if one_minus[i, j] > tol and angle[i, j] > separation * max(width[a], width[b]):
            keep.append(keep[a] + keep[b])
            width.append(max(width[a], width[b]))
        else:
            keep.append([len(keep)])
            width.append(diam[len(width)])
    labels = np.empty(n, dtype=int)
    for k, node in enumerate(keep[-1]):
        labels[members[node]] = k
    # in order of first appearance
    _, first = np.unique(labels, return_index=True)
    return np.argsort(np.argsort(first))[labels]


def cluster_count(
    x: Float[ArrayLike, "n d"], tol: float = 1e-2, *, separation: float = 1.0
) -> int:
    r"""Number of clusters that [`clusters`][spherejax.clusters] finds.

    **Arguments:** as for [`clusters`][spherejax.clusters]: tokens `x` of shape
    `(n, d)`, the smallest separating gap `tol` (as $1 - \cos$) and `separation`.

    **Returns:** the number of clusters, a Python `int` (`0` for no tokens).
    """
    labels = clusters(x, tol, separation=separation)
    return int(labels.max()) + 1 if labels.size else 0


def equiangular(
    ts: Float[ArrayLike, " T"],
    beta: float | Real[ArrayLike, ""],
    n: int,
    rho0: float,
    normalization: str = "softmax",
    *,
    rtol: float = 1e-12,
    atol: float = 1e-14,
) -> Float[Array, " T"]:
    r"""Common inner product `rho(t)` of an equiangular configuration (GLPR Thm 6.8).

    With `Q = K = V = I`, `n` tokens with `<x_i, x_j> = rho` for all `i != j` stay
    equiangular, and

    - SA: $\rho' = \dfrac{2 e^{\beta\rho}(1-\rho)((n-1)\rho+1)}
      {e^\beta + (n-1)e^{\beta\rho}}$,
    - USA: $\rho' = \tfrac{2}{n} e^{\beta\rho}(1-\rho)((n-1)\rho+1)$.

    Solved with `diffrax.Dopri8` at tight tolerances from `ts[0]`. `ts` must be
    concrete, finite and non-decreasing, `n >= 2`, `beta` finite and
    `-1/(n-1) <= rho0 <= 1` (the Gram matrix of equiangular unit vectors is positive
    semi-definite exactly then); otherwise `ValueError`.
    """
    ts = jnp.asarray(ts, dtype=jnp.result_type(float))
    ts_np = np.asarray(ts)
    if ts_np.ndim != 1 or ts_np.size == 0:
        raise ValueError(f"`ts` must be a non-empty 1-d array; got shape {ts.shape}.")
    if not (np.all(np.isfinite(ts_np)) and np.all(np.diff(ts_np) >= 0)):
        raise ValueError("`ts` must be finite and non-decreasing.")
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"`n` must be an integer >= 2; got {n!r}.")
    rho0_message = (
        f"`rho0` must lie in [-1/(n - 1), 1] = [{-1 / (n - 1):.4g}, 1] (the "
        f"inner products of {n} equiangular unit vectors); got {{}}."
    )
    if is_concrete(beta):
        if not np.isfinite(float(np.asarray(beta))):
            raise ValueError(f"`beta` must be finite; got {beta}.")
    else:  # traced (jit, vmap over beta): checked at run time
        beta = eqx.error_if(beta, ~jnp.isfinite(beta), "`beta` must be finite.")
    if is_concrete(rho0):
        if not -1 / (n - 1) <= float(rho0) <= 1:
            raise ValueError(rho0_message.format(rho0))
    else:
        rho0 = eqx.error_if(
            rho0,
            ~((-1 / (n - 1) <= rho0) & (rho0 <= 1)),
            rho0_message.format("a traced value outside"),
        )
    beta_t = jnp.asarray(beta, ts.dtype)
    if normalization == "softmax":

        def rhs(t, rho, args):
            e = jnp.exp(beta_t * rho)
            return (
                2
                * e
                * (1 - rho)
                * ((n - 1) * rho + 1)
                / (jnp.exp(beta_t) + (n - 1) * e)
            )

    elif normalization == "unnormalized":

        def rhs(t, rho, args):
            return 2 / n * jnp.exp(beta_t * rho) * (1 - rho) * ((n - 1) * rho + 1)

    else:
        raise ValueError(
            "`normalization` must be 'softmax' or 'unnormalized'; got "
            f"{normalization!r}."
        )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        diffrax.Dopri8(),
        ts[0],
        ts[-1],
        None,
        jnp.asarray(rho0, ts.dtype),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=100_000,
    )
    return cast(Array, sol.ys)
