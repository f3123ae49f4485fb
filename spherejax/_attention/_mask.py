r"""Attention masks: which keys each query may see.

A mask is a boolean function of the query and key token indices,
$m_{ij} \in \{0, 1\}$; the kernel becomes $k_{ij} = w_j m_{ij} e^{s_{ij}}$. Masks
combine by conjunction: a tuple of masks allows a pair only if every mask does.
Because a mask is a function of indices, the dense and the blocked evaluations
build the same mask, the blocked one block by block (never `n x n`).
"""

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from .._misc import is_concrete


class AbstractMask(eqx.Module):
    """A mask $m_{ij}$ of allowed (query `i`, key `j`) pairs.

    Subclasses implement `__call__(qidx, kidx)`, returning a boolean array that
    broadcasts against `(nq, nk)` (or `(h, nq, nk)` for a per-head mask), and may
    implement `check(n, heads)` to validate against the token count.
    """

    @abc.abstractmethod
    def __call__(
        self, qidx: Int[Array, " nq"], kidx: Int[Array, " nk"]
    ) -> Bool[Array, "*h nq nk"]:
        """The allowed pairs for query indices `qidx` and key indices `kidx`."""

    def check(self, n: int, heads: int) -> None:
        """Raise a `ValueError` if this mask cannot act on `n` tokens and `heads`
        query heads."""
        del n, heads

    @property
    def per_head(self) -> bool:
        """Whether the mask differs between heads (shape `(h, nq, nk)`)."""
        return False


class Causal(AbstractMask):
    r"""Causal masking, $m_{ij} = [\,j \le i\,]$: token `i` attends to itself and
    to earlier tokens only (decoders; Karagodin–Polyanskiy–Rigollet's causal
    clustering)."""

    def __call__(self, qidx, kidx):
        return qidx[:, None] >= kidx[None, :]


Causal.__init__.__doc__ = """**Arguments:** None."""


class SlidingWindow(AbstractMask):
    r"""Causal sliding-window masking, $m_{ij} = [\,i - s < j \le i\,]$ with
    window `size` $s$: each token sees itself and the $s - 1$ tokens before it
    (Hugging Face's convention for `sliding_window`, e.g. Mistral, Gemma 2)."""

    size: int = eqx.field(static=True)

    def __init__(self, size: int):
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"`size` must be a positive integer; got {size!r}.")
        self.size = int(size)

    def __call__(self, qidx, kidx):
        q, k = qidx[:, None], kidx[None, :]
        return (k <= q) & (k > q - self.size)


SlidingWindow.__init__.__doc__ = """**Arguments:**

- `size`: the window $s \\ge 1$; key `j` is visible to query `i` iff
  `i - size < j <= i`.
"""


class KeyMask(AbstractMask):
    r"""A mask on keys, $m_{ij} = \mu_j$ (or $\mu^h_j$ per head): keys where
    `mask` is `False` are removed from every row (padding). At least one key must
    remain per row (per head)."""

    mask: Bool[Array, "*h n"]

    def __init__(self, mask: Bool[ArrayLike, "*h n"]):
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"`mask` must be boolean; got dtype {mask.dtype}.")
        if mask.ndim not in (1, 2):
            raise ValueError(
                f"`mask` must have shape `(n,)` or `(h, n)`; got {mask.shape}."
            )
        if is_concrete(mask) and not bool(np.all(np.any(np.asarray(mask), axis=-1))):
            raise ValueError("`mask` must keep at least one key (per head).")
        self.mask = mask

    def __call__(self, qidx, kidx):
        del qidx
        keys = jnp.take(self.mask, kidx, axis=-1, mode="clip")
        return keys[..., None, :]

    @property
    def per_head(self) -> bool:
        return self.mask.ndim == 2

    def check(self, n, heads):
        if self.mask.shape[-1] != n:
            raise ValueError(
                f"`y0` has n={n} tokens but the key mask has "
                f"{self.mask.shape[-1]} entries."
            )
        if self.mask.ndim == 2 and self.mask.shape[0] != heads:
            raise ValueError(
                f"a per-head key mask must have shape `({heads}, n)` for {heads} "
                f"heads; got {self.mask.shape}."
            )


KeyMask.__init__.__doc__ = """**Arguments:**

- `mask`: boolean, shape `(n,)` (every head) or `(h, n)` (per query head).
"""

MaskFn = Callable[[Array, Array], Array]


def as_masks(mask) -> tuple[AbstractMask, ...]:
    """`mask` (`None`, one mask, or a sequence of masks) as a tuple of masks."""
    if mask is None:
        return ()
    if isinstance(mask, AbstractMask):
        return (mask,)
    if isinstance(mask, Sequence) and not isinstance(mask, str):
        masks = tuple(mask)
        for m in masks:
            if not isinstance(m, AbstractMask):
                raise ValueError(
                    "`mask` must be a mask (`Causal()`, `SlidingWindow(size)`, "
                    f"`KeyMask(mask)`) or a tuple of masks; got {m!r}."
                )
        return masks
    raise ValueError(
        "`mask` must be a mask (`Causal()`, `SlidingWindow(size)`, "
        f"`KeyMask(mask)`) or a tuple of masks; got {mask!r}."
    )


def mask_fn(masks: tuple[AbstractMask, ...]) -> MaskFn | None:
    """The conjunction of `masks` as one function of `(qidx, kidx)`; `None` when
    there is no mask."""
    if not masks:
        return None

    def fn(qidx, kidx):
        out = masks[0](qidx, kidx)
        for m in masks[1:]:
            out = out & m(qidx, kidx)
        return out

    return fn
