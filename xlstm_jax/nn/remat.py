"""Rematerialization policies for ``jax.checkpoint`` around model blocks."""

from __future__ import annotations

from collections.abc import Callable

import jax

REMAT_POLICIES = {
    "full": None,  # keep only the block's inputs; recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep every matmul output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
}


def check_remat_policy(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={name!r} is not supported; choose one of {tuple(REMAT_POLICIES)}")
    return name


def remat(fn: Callable, policy: str) -> Callable:
    """``jax.checkpoint(fn)`` with the named policy."""
    return jax.checkpoint(fn, policy=REMAT_POLICIES[check_remat_policy(policy)])
