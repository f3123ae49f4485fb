"""The stepping cases recorded in `tests/data/engine_reference.npz`: every way of
running a discrete stack (`transformer` with post-, pre- and no normalisation, with
and without `layer_norms`; `tai_transformer`, Lie and Strang; `TransformerFlow`'s
network, sub-steps and layer maps; MiniLM's hidden states), on tiny float64
inputs. `CASES` maps a name to a function returning the array to compare."""

import pathlib

import jax.numpy as jnp
import numpy as np

import spherejax as sj


sjt = sj.transformers


DATA = pathlib.Path(__file__).parent / "data"


def _stack(manifold, L=3, n=5, d=4, heads=2, seed=0):
    """A `Layerwise` of `Sum(SelfAttention, FeedForward)` on `manifold`, with its
    layers on `[0, 0.25, 0.5, ...]`, and tokens on `manifold`."""
    rng = np.random.default_rng(seed)
    times = 0.25 * np.arange(L + 1.0)
    layers = []
    for _ in range(L):
        Q, K, V = (rng.normal(size=(heads, d, d)) / 2 for _ in range(3))
        att = sj.SelfAttention(Q, K, V, 1.0, manifold=manifold)
        ffn = sj.FeedForward(
            rng.normal(size=(d, d)) / 2,
            rng.normal(size=d) / 2,
            rng.normal(size=(d, d)) / 2,
            rng.normal(size=d) / 2,
            manifold=manifold,
        )
        layers.append(sj.Sum(att, ffn))
    x0 = rng.normal(size=(n, d))
    if not isinstance(manifold, sj.Euclidean):
        x0 = np.asarray(manifold.project(x0))
    return sj.Layerwise(layers, times), x0


def _norms(L=3, d=4, seed=1):
    rng = np.random.default_rng(seed)
    layered = sjt.LayerNorm(
        1 + 0.3 * rng.normal(size=(L, d)), 0.2 * rng.normal(size=(L, d)), 1e-3
    )
    single = sjt.LayerNorm(1 + 0.3 * rng.normal(size=d), 0.2 * rng.normal(size=d), 0.0)
    final = sjt.LayerNorm(1 + 0.3 * rng.normal(size=d), 0.2 * rng.normal(size=d), 1e-5)
    return layered, single, final


def _transformer_cases():
    cases = {}
    sphere, x0 = _stack(sj.Sphere())
    for split in (False, True):
        for tangent in (True, False):
            cases[f"post_split{int(split)}_tangent{int(tangent)}"] = (
                lambda s=split, tg=tangent: sjt.transformer(
                    sphere, x0, 3, 0.25, split=s, tangent=tg
                )
            )
    cases["post_h_inexact"] = lambda: sjt.transformer(sphere, x0, 3, 0.1, t0=0.05)
    cases["post_final"] = lambda: sjt.transformer(
        sphere, x0, 3, 0.25, split=True, final=True
    )
    cases["pre"] = lambda: sjt.transformer(sphere, x0, 3, 0.25, norm="pre")
    cases["pre_split"] = lambda: sjt.transformer(
        sphere, x0, 3, 0.25, norm="pre", split=True
    )
    cases["pre_final"] = lambda: sjt.transformer(
        sphere, x0, 3, 0.25, norm="pre", final=True
    )
    cases["none"] = lambda: sjt.transformer(sphere, x0, 3, 0.25, norm="none")
    cases["none_split"] = lambda: sjt.transformer(
        sphere, x0, 3, 0.25, norm="none", split=True
    )
    lns, x1 = _stack(sj.LayerNormSphere(), seed=2)
    cases["post_layernorm_sphere_split"] = lambda: sjt.transformer(
        lns, x1, 3, 0.25, split=True, tangent=False
    )
    eu, x2 = _stack(sj.Euclidean(), seed=3)
    cases["none_euclidean_final"] = lambda: sjt.transformer(
        eu, x2, 3, 0.25, norm="none", final=True
    )
    layered, single, final = _norms()
    z2 = np.asarray(single.normalize(x2))
    for norm in ("post", "pre"):
        y = z2 if norm == "post" else x2
        cases[f"{norm}_layer_norms_split"] = lambda n=norm, y=y: sjt.transformer(
            eu, y, 3, 0.25, norm=n, split=True, layer_norms=(layered, single)
        )
        cases[f"{norm}_layer_norms_one"] = lambda n=norm, y=y: sjt.transformer(
            eu, y, 3, 0.25, norm=n, layer_norms=(single,), final_norm=final
        )
        cases[f"{norm}_layer_norms_final"] = lambda n=norm, y=y: sjt.transformer(
            eu, y, 3, 0.25, norm=n, split=True, layer_norms=(layered, single),
            final=True, final_norm=final,
        )  # fmt: skip
    return cases


def _tai_model():
    rng = np.random.default_rng(5)
    n, N, heads, L = 4, 4, 2, 2
    times = np.linspace(0.0, 1.0, L + 1)
    atts, ffns = [], []
    for _ in range(L):
        Q, K = rng.normal(size=(2, heads, N // heads, N)) / 2
        V = rng.normal(size=(heads, N, N)) / 2
        atts.append(sj.SelfAttention(Q, K, V, 0.7, manifold=sj.Euclidean()))
        ffns.append(
            sj.FeedForward(
                rng.normal(size=(N, N)) / 2,
                rng.normal(size=N) / 2,
                rng.normal(size=(N, N)) / 2,
                rng.normal(size=N) / 2,
                manifold=sj.Euclidean(),
            )
        )
    con = sjt.MovingLayerNorm(
        mean=lambda t: 0.5 + 0.5 * t, std=lambda t: 1.0 + 0.2 * jnp.sin(2 * t)
    )
    att, ffn = sj.Layerwise(atts, times), sj.Layerwise(ffns, times)
    tai = sjt.TaiTransformer(att, ffn, con)
    residual = sjt.TaiTransformer(att, ffn, con, feedforward_form="residual")
    u0 = np.asarray(con.project(0.0, rng.normal(size=(n, N))))
    return tai, residual, u0


def _tai_cases():
    tai, residual, u0 = _tai_model()
    cases = {}
    for scheme in ("lie", "strang"):
        cases[f"tai_{scheme}"] = lambda s=scheme: sjt.tai_transformer(
            tai, u0, 5, 0.2, scheme=s
        )
        cases[f"tai_{scheme}_residual_final"] = lambda s=scheme: sjt.tai_transformer(
            residual, u0, 5, 0.2, scheme=s, final=True
        )
    cases["tai_lie_h1"] = lambda: sjt.tai_transformer(tai, u0, 2, 1.0)
    return cases


def _model_cases():
    cases = {}
    ids = np.array([[3, 17, 5, 42, 8, 2], [7, 1, 9, 4, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    for name in ("tiny_bert", "tiny_gpt2"):

        def flow(name=name):
            return sj.models.from_huggingface(DATA / name, dtype=jnp.float64)

        cases[f"{name}_states"] = lambda f=flow: f().states(ids, mask)
        for scheme in ("lie", "strang"):
            cases[f"{name}_{scheme}_3"] = lambda f=flow, s=scheme: f().substep_states(
                ids, 3, scheme=s, attention_mask=mask
            )
            cases[f"{name}_{scheme}_maps_2"] = lambda f=flow, s=scheme: (
                lambda m: m.layer_maps(m.states(ids[0]), 2, scheme=s)
            )(f())
    return cases


def _minilm_cases():
    def model_and_ids():
        path = sj.models.minilm_path()
        ids, mask = sj.models.tokenize(path, ["Attention flows cluster tokens."])
        return sj.models.from_huggingface(path, dtype=jnp.float64), ids, mask

    cases = {}
    cases["minilm_hidden_states"] = lambda: (lambda m, i, k: m.hidden_states(i, k))(
        *model_and_ids()
    )
    for scheme in ("lie", "strang"):
        cases[f"minilm_{scheme}_3"] = lambda s=scheme: (
            lambda m, i, k: m.readout(m.substep_states(i, 3, scheme=s,
                                                       attention_mask=k))
        )(*model_and_ids())  # fmt: skip
    return cases


CASES = {**_transformer_cases(), **_tai_cases(), **_model_cases()}
MINILM_CASES = _minilm_cases()
