"""Choosing the next token from logits; every setting is a traced value (no recompiles)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """logits (B, V) with the tokens outside the top-k, then outside the nucleus top-p, set to -inf.

    ``top_k`` int32 scalar (0: off), ``top_p`` float32 scalar in (0, 1] (1: off). Thresholds
    on values: tokens tied with the last kept one are kept too. The most likely token is
    always kept.
    """
    vocab = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)  # (B, V) largest first
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    in_top_k = jnp.arange(vocab) < k
    desc = jnp.where(in_top_k, desc, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
    keep = in_top_k & ((before < top_p) | (top_p >= 1))
    last = jnp.sum(keep, axis=-1, keepdims=True) - 1  # >= 0: the first entry is always kept
    threshold = jnp.take_along_axis(desc, last, axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sample(logits: jax.Array, key: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """logits (B, V) float32 -> token ids (B,) int32: argmax for ``temperature == 0``, else a draw
    from ``softmax(filter_logits(logits) / temperature)``. All settings are traced scalars."""
    temperature = jnp.asarray(temperature, jnp.float32)

    def greedy():
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw():
        filtered = jax.lax.cond((top_k > 0) | (top_p < 1), filter_logits, lambda x, *_: x, logits, top_k, top_p)
        scaled = filtered / jnp.maximum(temperature, jnp.finfo(jnp.float32).tiny)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature == 0, greedy, draw)
