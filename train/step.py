"""The jitted training and evaluation steps.

Parameters travel as a plain pytree (``nnx.State`` of ``nnx.Param``); the rest of the
model (its graph definition and any non-parameter state) is merged back inside the
step, tree-mode clean. The global batch is split into ``grad_accum_steps``
micro-batches summed by a ``lax.scan``: the loss is the token-weighted mean over the
whole global batch, so it does not depend on the split (or on the device mesh).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from .flops import program_flops


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar
    params: nnx.State
    opt_state: optax.OptState


def _token_losses(graphdef, params, rest, batch):
    """Summed masked cross entropy, the mask's sum, and the number of correct tokens."""
    model = nnx.merge(graphdef, params, rest)
    logits = model(batch["inputs"], segment_ids=batch["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    correct = (jnp.argmax(logits, axis=-1) == batch["targets"]) * mask
    return jnp.sum(ce * mask), jnp.sum(mask), correct


def model_flops(graphdef, rest, params, batch) -> float:
    """Model FLOPs of one training step on ``batch``, for MFU: three times the matmul FLOPs of the
    forward pass and loss (the backward does two matmuls per forward one), counted on the forward's
    jaxpr with every loop as often as it runs (``flops.program_flops``). Remat's recomputation is not
    counted: a step with remat does more work than this (MFU's convention, not HFU's)."""
    forward = jax.jit(lambda p, b: _token_losses(graphdef, p, rest, b)[0])
    return 3.0 * program_flops(forward.trace(params, batch).jaxpr)


def _split_micro(batch, accum: int):
    return jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, accum: int):
    """``(state, batch) -> (state, metrics)``; jit it with shardings and donation."""

    def loss_and_grads(params, micro):
        def summed(p):
            loss_sum, count, _ = _token_losses(graphdef, p, rest, micro)
            return loss_sum, count

        (loss_sum, count), grads = jax.value_and_grad(summed, has_aux=True)(params)
        return loss_sum, count, grads

    def step(state: TrainState, batch):
        def body(carry, micro):
            loss_sum, count, grads = loss_and_grads(state.params, micro)
            return jax.tree.map(jnp.add, carry, (loss_sum, count, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
        (loss_sum, count, grads), _ = jax.lax.scan(body, zeros, _split_micro(batch, accum))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum / count,
            "grad_norm": optax.global_norm(grads),
            "tokens": count,
            "skipped_steps": opt_state.total_notfinite,  # non-finite steps so far (skipped)
            "nonfinite_run": opt_state.notfinite_count,  # consecutive non-finite steps up to this one
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def jit_train_step(graphdef, rest, tx: optax.GradientTransformation, accum: int, state_sharding, batch_sharding):
    """The trainer's jitted step: the state laid out as ``state_sharding`` (a ``TrainState`` of
    shardings) and donated, the batch as ``batch_sharding``, the metrics replicated.

    ``.lower(state, batch).compile()`` on ``jax.ShapeDtypeStruct`` inputs compiles it without
    allocating anything (``benchmarks/pod_compile_report.py`` does so for TPU topologies).
    """
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        make_train_step(graphdef, rest, tx, accum),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def abstract_train_state(tx: optax.GradientTransformation, abstract_params, param_shardings) -> TrainState:
    """The train state as ``jax.ShapeDtypeStruct`` leaves with shardings; nothing is allocated.

    The optimizer's copies of the parameters (Adam's moments) take the parameters' shardings and
    every other leaf (step counts) is replicated: the layout ``tx.init`` gives eagerly under the
    mesh, which is what the trainer does.
    """
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: replicated
    )
    params = jax.tree.map(with_sharding, abstract_params, param_shardings)
    opt_state = jax.tree.map(with_sharding, abstract_opt, opt_shardings)
    return TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params, opt_state)


def make_eval_step(graphdef, rest):
    """``(params, batch) -> sums`` of loss, scored tokens, correct tokens and correct sequences."""

    def step(params, batch):
        loss_sum, count, correct = _token_losses(graphdef, params, rest, batch)
        mask = batch["loss_mask"]
        scored_rows = jnp.sum(mask, axis=-1) > 0
        row_ok = jnp.all((correct == mask), axis=-1) & scored_rows
        return {
            "loss_sum": loss_sum,
            "tokens": count,
            "correct_tokens": jnp.sum(correct),
            "correct_sequences": jnp.sum(row_ok),
            "sequences": jnp.sum(scored_rows),
        }

    return step
