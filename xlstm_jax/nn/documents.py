"""Packed training rows: where documents start."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def document_starts(segment_ids: jax.Array | None, shape: tuple[int, int]) -> jax.Array | None:
    """(B, S) bool, True where ``segment_ids`` changes (a packed document starts); None if no ids."""
    if segment_ids is None:
        return None
    segment_ids = jnp.asarray(segment_ids)
    if segment_ids.shape != tuple(shape) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"segment_ids must be an integer array of shape {tuple(shape)}, got {segment_ids.dtype} "
                         f"{segment_ids.shape}")  # fmt: skip
    return jnp.concatenate(
        [jnp.zeros_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
