"""Run a stack of residual blocks: a ``lax.scan`` over stacked parameters or a Python loop.

Both language models call ``run_stack``; it owns the choices that used to be written once per
model: scan or loop, ``jax.checkpoint`` with a named remat policy, per-block recurrent states in
and out, the document resets every block sees, and the per-block outputs for
``output_hidden_states``.

A block is an ``nnx.Module`` called as ``block(x, state, return_state=..., resets=...) -> (x, state)``
with x (B, S, D). A stack of L blocks comes in one of two layouts:

* a sequence of L modules with the same structure (the NeurIPS model keeps one parameter subtree
  per block, as the official checkpoints name them); the scan stacks their parameters on each call;
* one module whose parameters carry a leading (L,) axis (built with ``nnx.vmap``; the 7B model
  stores its blocks this way); the loop slices block ``i`` out of them.

The scan traces one block (compile time constant in depth); the loop unrolls L blocks. A stack of
one block always runs as the loop. Both run the same arithmetic per block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .. import backends
from .remat import remat

# The residual stream's logical dims: under a mesh each block's input and output stay split over
# the batch (and sequence) axes, so GSPMD gathers fsdp-sharded weights, not activations.
RESIDUAL = ("batch", "length", None)

__all__ = ["run_stack"]


def _stack(trees: Sequence) -> Any:
    """L pytrees of the same structure -> one pytree whose leaves have a leading (L,) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree: Any, depth: int) -> list:
    """A pytree with a leading (L,) axis on every leaf -> L pytrees (the inverse of ``_stack``)."""
    return [jax.tree.map(itemgetter(idx), tree) for idx in range(depth)]


def _block_fn(graphdef: nnx.GraphDef, resets, return_state: bool, remat_policy: str | None) -> Callable:
    """``(params, x, state) -> (x, state)``: one block as a pure function of its parameters."""

    def apply(params, x, state):
        x = backends.constrain(x, RESIDUAL)
        y, state = nnx.merge(graphdef, params)(x, state, return_state=return_state, resets=resets)
        return backends.constrain(y, RESIDUAL), state

    return apply if remat_policy is None else remat(apply, remat_policy)


def run_stack(
    blocks: nnx.Module | Sequence[nnx.Module],
    x: jax.Array,
    states: Sequence | None = None,
    *,
    resets: jax.Array | None = None,
    return_state: bool = False,
    scan: bool = True,
    remat_policy: str | None = None,
    collect: bool = False,
) -> tuple[jax.Array, tuple | None, tuple[jax.Array, ...] | None]:
    """x (B, S, D) through L blocks in order.

    Args:
      blocks: L modules of one structure, or one module with a leading (L,) parameter axis.
      x: (B, S, D) the residual stream entering the first block.
      states: None (every block starts from zero) or L per-block states (pytrees, batch first).
      resets: (B, S) bool document starts passed to every block, or None.
      return_state: ask every block for its final state.
      scan: one ``lax.scan`` over the L blocks (parameters and states stacked) instead of a loop.
      remat_policy: None, or a name in ``nn.REMAT_POLICIES``: ``jax.checkpoint`` around each block.
      collect: also return every block's output.

    Returns:
      ``(x, states, outputs)``: x (B, S, D) after the last block; the L new states if
      ``return_state`` else None; the L block outputs, each (B, S, D), if ``collect`` else None.
    """
    if isinstance(blocks, nnx.Module):
        graphdef, stacked = nnx.split(blocks)
        depth, per_block = jax.tree.leaves(stacked)[0].shape[0], None
    else:
        graphdef, stacked = nnx.split(blocks[0])[0], None
        depth, per_block = len(blocks), [nnx.split(block)[1] for block in blocks]
    if states is not None and len(states) != depth:
        raise ValueError(f"states must have one entry per block ({depth}), got {len(states)}")
    apply = _block_fn(graphdef, resets, return_state, remat_policy)

    if scan and depth > 1:
        params = _stack(per_block) if stacked is None else stacked

        def body(carry, block):
            block_params, block_state = block
            y, state = apply(block_params, carry, block_state)
            return y, (state, y if collect else None)

        x, (new_states, outputs) = jax.lax.scan(body, x, (params, None if states is None else _stack(states)))
        new_states = tuple(_unstack(new_states, depth)) if return_state else None
        return x, new_states, (tuple(outputs[idx] for idx in range(depth)) if collect else None)

    params = _unstack(stacked, depth) if per_block is None else per_block
    new_states, outputs = [], []
    for idx in range(depth):
        x, state = apply(params[idx], x, None if states is None else states[idx])
        new_states.append(state)
        outputs.append(x)
    return x, (tuple(new_states) if return_state else None), (tuple(outputs) if collect else None)
