"""Parameters with logical sharding names, and the initializers of the official code.

Every parameter carries logical axis names (``out_sharding`` metadata) that the
trainer maps to mesh axes. Eager sharding is off, so modules build with no mesh:
``Model(cfg, rngs=nnx.Rngs(0))`` works anywhere.

Logical axis names used across the models:
  ``vocab``   vocabulary
  ``embed``   model width D
  ``heads``   per-head features (q/k/v/inner dims, split by head)
  ``mlp``     feed-forward hidden width
  ``None``    not sharded (gate outputs, conv taps, stacked gates)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Init = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(rngs: nnx.Rngs | None, init: Init, shape: Sequence[int], names: Sequence[str | None], dtype) -> nnx.Param:
    """An ``nnx.Param`` with logical axis names; ``rngs`` may be None for constant inits."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match the parameter shape {tuple(shape)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


def normal(std: float) -> Init:
    return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def small_init(dim: int) -> Init:
    """N(0, sqrt(2 / (5 dim))), the official ``small_init_init_``."""
    return normal(math.sqrt(2.0 / (5.0 * dim)))


def wang_init(dim: int, num_blocks: int) -> Init:
    """N(0, 2 / num_blocks / sqrt(dim)), the official ``wang_init_`` (std, not variance)."""
    return normal(2.0 / num_blocks / math.sqrt(dim))


def constant(value: float) -> Init:
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


def zeros(key, shape, dtype) -> jax.Array:
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype) -> jax.Array:
    return jnp.ones(shape, dtype)


def linspace(start: float, stop: float) -> Init:
    """``linspace(start, stop, n)`` for a 1-D parameter of size n."""
    return lambda key, shape, dtype: jnp.linspace(start, stop, shape[0], dtype=dtype).reshape(shape)


def uniform(bound: float) -> Init:
    """U(-bound, bound): PyTorch's default Linear/Conv init has bound 1/sqrt(fan_in)."""
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
