"""Activation functions by their `transformers` config names (`hidden_act`)."""

from collections.abc import Callable

import jax


def _silu(x):
    return jax.nn.silu(x)


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _relu(x):
    return jax.nn.relu(x)


ACTIVATIONS: dict[str, Callable] = {
    "silu": _silu,
    "swish": _silu,
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": _relu,
}
"""Activations by their `transformers` config names."""
