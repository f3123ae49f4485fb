"""Figures of the subcommands (matplotlib, Agg backend)."""

import numpy as np


def _spread(count: int, most: int) -> np.ndarray:
    """At most `most` indices spread evenly over `range(count)`."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, most).round().astype(int))


def _edges(centres) -> np.ndarray:
    """Cell edges around increasing `centres`: midpoints, and half a gap beyond
    each end (so unevenly spaced betas are drawn where they lie)."""
    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def plot_simulation(ts, ys, energy, d, beta, max_curves: int = 200):
    """Trajectories (at most `max_curves` tokens or pairs) and energy vs time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig = plt.figure(figsize=(10, 4.5))
    if d == 3:
        ax = fig.add_subplot(1, 2, 1, projection="3d")
        u, v = np.mgrid[0 : 2 * np.pi : 40j, 0 : np.pi : 20j]
        ax.plot_wireframe(
            np.cos(u) * np.sin(v),
            np.sin(u) * np.sin(v),
            np.cos(v),
            color="0.85",
            lw=0.4,
        )
        for i in _spread(ys.shape[1], max_curves):
            ax.plot(*ys[:, i].T, lw=1.0)
        ax.scatter(*ys[0].T, s=10, c="k", label="t = 0")
        ax.scatter(*ys[-1].T, s=40, c="r", marker="*", label=f"t = {ts[-1]:g}")
        ax.set_box_aspect((1, 1, 1))
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax = fig.add_subplot(1, 2, 1)
        n = ys.shape[1]
        if n > 1:
            pairs = _spread(n * (n - 1), max_curves)  # off-diagonal (i, j)
            i = pairs // (n - 1)
            j = pairs % (n - 1)
            j = j + (j >= i)
            cos = np.einsum("tkd,tkd->tk", ys[:, i], ys[:, j])
            ax.plot(ts, cos, lw=0.5, color="C0")
        ax.set_xlabel("t")
        ax.set_ylabel("<x_i, x_j>")
    ax.set_title(f"tokens on S^{d - 1}, beta = {beta:g}")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(ts, energy)
    ax2.set_xlabel("t")
    ax2.set_ylabel("interaction energy E_beta")
    ax2.set_title("energy vs time")
    fig.tight_layout()
    return fig


def plot_losses(losses, name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{name} loss")
    ax.set_title("spherejax fit")
    fig.tight_layout()
    return fig


def equiangular_boundary(betas, n: int, eps: float, t1: float, normalization="softmax"):
    r"""For each `beta`, the first time `t <= t1` (on a grid of 2001 times) at which
    GLPR's equiangular reference $\gamma_\beta(t)$ (`spherejax.equiangular`, started
    from $\rho_0 = 0$) reaches `1 - eps` (`nan` if it does not by `t1`).

    One solve for all betas: `spherejax.equiangular` vmapped over `beta` (it checks
    its times on the host, so it is vmapped, not jitted: the solve inside is
    compiled once for the whole batch)."""
    import jax

    import spherejax as sj

    ts = np.linspace(0.0, t1, 2001)

    def one(beta):
        return sj.equiangular(ts, beta, n, 0.0, normalization, rtol=1e-6, atol=1e-9)

    rho = np.asarray(jax.vmap(one)(np.asarray(betas, dtype=float)))
    above = rho >= 1 - eps
    return np.where(above.any(axis=1), ts[np.argmax(above, axis=1)], np.nan)


def plot_sweep(options, cells, final):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts, betas = final["ts"], np.array(options["beta"])
    first = [
        k
        for k, c in enumerate(cells)
        if (c["n"], c["d"]) == (cells[0]["n"], cells[0]["d"])
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(first) > 1:
        order = np.argsort(betas)  # rows of the grid in increasing beta
        p, betas = final["p_close"][first][order], betas[order]
        im = ax.pcolormesh(_edges(ts), _edges(betas), p, vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(im, ax=ax, label=f"P(<x1, x2> >= 1 - {options['eps']:g})")
        if (
            options["value"] == "identity"
            and options["normalization"]
            in (
                "softmax",
                "unnormalized",
            )
            and not options["causal"]
        ):
            fine = np.linspace(betas[0], betas[-1], 60)
            curve = equiangular_boundary(
                fine, cells[0]["n"], options["eps"], ts[-1], options["normalization"]
            )
            ax.plot(
                curve, fine, "r-", lw=2, label="equiangular gamma_beta(t) = 1 - eps"
            )
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("t")
        ax.set_ylabel("beta")
    else:
        for k in first:
            ax.plot(ts, final["p_close"][k], label=f"beta = {cells[k]['beta']:g}")
        ax.set_xlabel("t")
        ax.set_ylabel("P(<x1, x2> >= 1 - eps)")
        ax.legend(fontsize=8)
    ax.set_title(f"n = {cells[0]['n']}, d = {cells[0]['d']}, {options['seeds']} seeds")
    fig.tight_layout()
    return fig
