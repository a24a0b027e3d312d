"""Recurrent state containers of the mLSTM and sLSTM cells.

Both are NamedTuples, hence JAX pytrees: they pass through ``jit``, ``scan``,
``vmap`` and ``grad`` unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MLSTMState(NamedTuple):
    """mLSTM memory in the convention of ``mlstm_kernels`` (q is scaled, k is not).

    Attributes:
      c: (B, NH, DHQK, DHV) matrix memory, stabilized by ``exp(-m)``.
      n: (B, NH, DHQK) normalizer, stabilized by ``exp(-m)``.
      m: (B, NH) log-space stabilizer.
    """

    c: jax.Array
    n: jax.Array
    m: jax.Array

    @classmethod
    def zeros(cls, batch: int, num_heads: int, dhqk: int, dhv: int, dtype=jnp.float32) -> MLSTMState:
        return cls(
            c=jnp.zeros((batch, num_heads, dhqk, dhv), dtype),
            n=jnp.zeros((batch, num_heads, dhqk), dtype),
            m=jnp.zeros((batch, num_heads), dtype),
        )


class SLSTMState(NamedTuple):
    """sLSTM state, each field (B, NH, DH).

    Attributes:
      h: hidden output of the previous step (feeds the recurrent kernel).
      c: cell state, stabilized by ``exp(-m)``.
      n: normalizer state, stabilized by ``exp(-m)``.
      m: log-space stabilizer.
    """

    h: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array

    @classmethod
    def zeros(cls, batch: int, num_heads: int, head_dim: int, dtype=jnp.float32) -> SLSTMState:
        z = jnp.zeros((batch, num_heads, head_dim), dtype)
        return cls(h=z, c=z, n=z, m=z)
