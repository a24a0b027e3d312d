"""Cumulative forget gates without cancellation, shared by the parallel and chunkwise forms.

The log decay between positions s < t is ``sum_{r=s+1..t} logf[r] = F[t] - F[s]`` for
the cumulative sum ``F``. In float32, once ``|F|`` is large (long sequences, or
forget-gate pre-activations of -30) the plain difference cancels catastrophically:
``|F| = 2000`` leaves an absolute error of 2e-4 in the log weights. We keep ``F`` as
an unevaluated sum ``hi + lo`` of two floats (a compensated, "double-float" cumulative
sum), so that ``(hi[t] - hi[s]) + (lo[t] - lo[s])`` is accurate to the precision of
the *difference*, at the cost of a few elementwise operations per entry instead of a
masked cumulative sum over a whole (L, L) matrix.

A forget-gate pre-activation of -inf is an exact reset of the memory (document
boundaries in packed training rows); ``CumulativeForget`` handles it without ever
subtracting infinities. ``cumulative_forget(logf, resets=False)`` is the same object for gates
known to hold no reset: no segments, so every mask below is the plain causal one (the fast path of
the chunkwise form, which checks for resets once per call and traces both).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

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


@jax.custom_jvp
def cumsum_hi_lo(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inclusive cumulative sum along the last axis as ``hi + lo``.

    ``hi`` carries the exact gradient of ``cumsum(x)``; ``lo`` is a rounding
    correction of magnitude <= ulp(hi) and carries no gradient.

    The gradient is a JVP rule rather than ``hi + (cumsum(x) - stop_gradient(cumsum(x)))``: that
    zero term stayed in the compiled forward, and XLA:CPU fused it, with the scan's last level, into
    every (L, L) matrix built from ``hi`` (the decay matrix of the S=4096 chunkwise forward took 0.86
    instead of 0.17 ms per call on one core; ``benchmarks/RESULTS.md``, session 31).
    """
    return jax.lax.associative_scan(_combine, (x, jnp.zeros_like(x)), axis=x.ndim - 1)


@cumsum_hi_lo.defjvp
def _cumsum_hi_lo_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    hi, lo = cumsum_hi_lo(x)
    return (hi, lo), (jnp.cumsum(t, axis=-1), jnp.zeros_like(lo))


class CumulativeForget(NamedTuple):
    """Cumulative log forget gates along the last axis, with exact resets.

    A forget gate of exactly 0 (pre-activation -inf, log gate -inf) erases the
    memory: nothing before it reaches it or anything after it. Such positions
    count as 0 in ``hi + lo`` and start a new segment in ``seg``, so no infinity
    ever enters a difference.
    """

    hi: jax.Array  # (..., L) cumulative finite log forget gates: hi + lo (see cumsum_hi_lo)
    lo: jax.Array
    seg: jax.Array | None  # (..., L) int32: number of resets at or before each position; None: no resets
    reset: jax.Array | None  # (..., L) bool: log forget gate is -inf here; None: no resets


def cumulative_forget(logf: jax.Array, resets: bool = True) -> CumulativeForget:
    """``resets=False`` promises that no ``logf`` is -inf (a -inf then breaks the sums: the caller
    checks); the result has ``seg = reset = None`` and every function below skips the segments."""
    if not resets:
        return CumulativeForget(*cumsum_hi_lo(logf), None, None)
    reset = jnp.isneginf(logf)
    hi, lo = cumsum_hi_lo(jnp.where(reset, jnp.zeros((), logf.dtype), logf))
    return CumulativeForget(hi, lo, jnp.cumsum(reset, axis=-1, dtype=jnp.int32), reset)


def by_resets(fn, logf: jax.Array, *operands):
    """``fn(*operands, resets=...)`` with ``resets`` static: True only when some ``logf`` is -inf.

    Both variants are traced (a ``lax.cond``; under ``vmap`` with a batched ``logf`` both run), so
    gates without a reset, the common case, skip every segment mask and the segmented scans.
    """
    has_reset = jnp.any(jnp.isneginf(logf))
    return jax.lax.cond(has_reset, partial(fn, resets=True), partial(fn, resets=False), *operands)


def running_max(x: jax.Array, cf: CumulativeForget) -> jax.Array:
    """Running max of x along the last axis, restarting at every reset of ``cf``."""
    if cf.reset is None:
        return jax.lax.cummax(x, axis=x.ndim - 1)
    return segment_cummax(x, cf.reset)


def first_segment(cf: CumulativeForget, x: jax.Array) -> jax.Array:
    """x (..., L) where no reset lies at or before t (what entered the chunk still reaches t), else -inf."""
    return x if cf.seg is None else jnp.where(cf.seg == 0, x, -jnp.inf)


def last_segment(cf: CumulativeForget, x: jax.Array) -> jax.Array:
    """x (..., L) where no reset lies after t (t still reaches the end of the chunk), else -inf."""
    return x if cf.seg is None else jnp.where(cf.seg == cf.seg[..., -1:], x, -jnp.inf)


def same_segment(cf: CumulativeForget, mask: jax.Array) -> jax.Array:
    """``mask`` (..., L, L) [target t, source s], False where a reset lies in (s, t]."""
    return mask if cf.seg is None else mask & (cf.seg[..., :, None] == cf.seg[..., None, :])


def segment_cummax(x: jax.Array, starts: jax.Array) -> jax.Array:
    """Running max along the last axis that restarts where ``starts`` is True."""

    def combine(a, b):
        return jnp.where(b[1], b[0], jnp.maximum(a[0], b[0])), a[1] | b[1]

    return jax.lax.associative_scan(combine, (x, starts), axis=x.ndim - 1)[0]


def causal_mask(length: int) -> jax.Array:
    """(L, L) boolean, True where source s <= target t."""
    return jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]


def log_decay_matrix(cf: CumulativeForget, i: jax.Array) -> jax.Array:
    """``logD[..., t, s] = sum_{r=s+1..t} logf[r] + i[s]`` for s <= t, else -inf.

    Also -inf where a reset lies in (s, t].

    Args:
      cf: (..., L) cumulative log forget gates from ``cumulative_forget``.
      i: (..., L) input-gate pre-activations.

    Returns:
      (..., L, L), rows t (targets), columns s (sources). No buffer of a fixed
      size is involved: any L works.
    """
    hi, lo = cf.hi, cf.lo
    diff = (hi[..., :, None] - hi[..., None, :]) + (lo[..., :, None] - lo[..., None, :])
    valid = same_segment(cf, causal_mask(hi.shape[-1]))
    return jnp.where(valid, diff + i[..., None, :], -jnp.inf)
