"""Cumulative forget gates without cancellation, shared by the parallel and chunkwise forms.

The log decay between positions s < t is ``sum_{r=s+1..t} logf[r] = F[t] - F[s]`` for
the cumulative sum ``F``. In float32, once ``|F|`` is large (long sequences, or
forget-gate pre-activations of -30) the plain difference cancels catastrophically:
``|F| = 2000`` leaves an absolute error of 2e-4 in the log weights. We keep ``F`` as
an unevaluated sum ``hi + lo`` of two floats (a compensated, "double-float" cumulative
sum), so that ``(hi[t] - hi[s]) + (lo[t] - lo[s])`` is accurate to the precision of
the *difference*, at the cost of a few elementwise operations per entry instead of a
masked cumulative sum over a whole (L, L) matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _two_sum(a, b):
    """a + b = s + err exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    err = (a - (s - b_virtual)) + (b - b_virtual)
    return s, err


def _combine(p, q):
    s, err = _two_sum(p[0], q[0])
    err = err + (p[1] + q[1])
    hi = s + err
    return hi, err - (hi - s)


def cumsum_hi_lo(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inclusive cumulative sum along the last axis as ``hi + lo``.

    ``hi`` carries the exact gradient of ``cumsum(x)``; ``lo`` is a rounding
    correction of magnitude <= ulp(hi) and carries no gradient.
    """
    hi, lo = jax.lax.associative_scan(_combine, (x, jnp.zeros_like(x)), axis=x.ndim - 1)
    plain = jnp.cumsum(x, axis=-1)
    hi = jax.lax.stop_gradient(hi) + (plain - jax.lax.stop_gradient(plain))  # value hi, gradient of cumsum
    return hi, jax.lax.stop_gradient(lo)


def causal_mask(length: int) -> jax.Array:
    """(L, L) boolean, True where source s <= target t."""
    return jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]


def log_decay_matrix(hi: jax.Array, lo: jax.Array, i: jax.Array) -> jax.Array:
    """``logD[..., t, s] = sum_{r=s+1..t} logf[r] + i[s]`` for s <= t, else -inf.

    Args:
      hi, lo: (..., L) cumulative log forget gates from ``cumsum_hi_lo``.
      i: (..., L) input-gate pre-activations.

    Returns:
      (..., L, L), rows t (targets), columns s (sources). No buffer of a fixed
      size is involved: any L works.
    """
    diff = (hi[..., :, None] - hi[..., None, :]) + (lo[..., :, None] - lo[..., None, :])
    return jnp.where(causal_mask(hi.shape[-1]), diff + i[..., None, :], -jnp.inf)
