"""Numerically stable log decay matrix shared by the parallel and chunkwise forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_decay_matrix(logf: jax.Array, i: jax.Array) -> jax.Array:
    """``logD[..., t, s] = sum_{r=s+1..t} logf[r] + i[s]`` for s <= t, else -inf.

    Built as a *masked* cumulative sum: each entry sums exactly the forget gates
    between s and t. The shortcut ``F[t] - F[s]`` of one cumulative sum ``F``
    cancels catastrophically once ``|F|`` is large (long sequences, forget-gate
    pre-activations of -30), which this construction avoids. No buffer of a
    fixed size is involved: any length works.

    Args:
      logf: (..., L) log forget gates.
      i: (..., L) input-gate pre-activations.

    Returns:
      (..., L, L) log decay matrix, rows t (targets), columns s (sources).
    """
    length = logf.shape[-1]
    t = jnp.arange(length)[:, None]
    s = jnp.arange(length)[None, :]
    # terms[..., r, s] = logf[r] if r > s: summing rows r <= t gives the entry (t, s).
    terms = jnp.where(t > s, logf[..., :, None], jnp.zeros((), logf.dtype))
    cum = jnp.cumsum(terms, axis=-2)
    return jnp.where(t >= s, cum + i[..., None, :], -jnp.inf)
