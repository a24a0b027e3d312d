"""The gated feed-forward network of the sLSTM blocks (official ``components/feedforward.py``).

y = proj_down(act(gate) * up),   [gate | up] = proj_up(x),   x (B, S, D), gate, up (B, S, P)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import nn

from ._config import FeedForwardConfig, required_width

ACTIVATIONS = {
    "gelu": partial(jax.nn.gelu, approximate=False),  # torch's default gelu is the exact erf form
    "relu": jax.nn.relu,
    "relu^2": lambda x: jnp.square(jax.nn.relu(x)),
    "sigmoid": jax.nn.sigmoid,
    "swish": jax.nn.silu,
    "selu": jax.nn.selu,
}


class GatedFeedForward(nnx.Module):
    """The gated FFN; ``GatedFeedForward(FeedForwardConfig(embedding_dim=D, ...), rngs=...)`` on its own."""

    def __init__(self, config: FeedForwardConfig, *, rngs: nnx.Rngs):
        ff, d = config, required_width(config, "feedforward")
        p = ff.hidden_dim(d)
        kw = dict(use_bias=ff.bias, dtype=jnp.dtype(ff.dtype), param_dtype=jnp.dtype(ff.param_dtype), rngs=rngs)
        self.proj_up = nn.Linear(d, 2 * p, kernel_init=nn.small_init(d), names=("embed", "mlp"), **kw)
        self.proj_down = nn.Linear(p, d, kernel_init=nn.wang_init(d, ff.num_blocks), names=("mlp", "embed"), **kw)
        self.act_fn = ff.act_fn

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, S, D) -> (B, S, D)."""
        gate, up = jnp.split(self.proj_up(x), 2, axis=-1)
        return self.proj_down(ACTIVATIONS[self.act_fn](gate) * up)
