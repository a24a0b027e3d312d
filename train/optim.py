"""Optax optimizer: AdamW, warmup + decay schedule, global-norm clipping, weight-decay
mask, and skipping (and counting) of steps whose gradients are not finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .config import OptimConfig


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``cfg.lr``, then cosine, linear or constant to the end."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def decay_mask(params, cfg: OptimConfig):
    """True for parameters that get weight decay.

    As the official xLSTM recipe: matrices named ``kernel`` or ``weight`` decay;
    norms, biases and other vectors do not (unless ``decay_norms_and_biases``); the
    embedding does not (unless ``decay_embeddings``). Recurrent kernels and gate
    biases of the sLSTM are not named ``kernel``/``weight`` and never decay.
    """

    def rule(path, leaf) -> bool:
        keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        if keys and keys[-1] == "value" and len(keys) > 1:  # an nnx.Variable's value: the name is the key above it
            keys = keys[:-1]
        name = keys[-1]
        if name == "embedding":
            return cfg.decay_embeddings
        if jnp.ndim(leaf) < 2:
            return cfg.decay_norms_and_biases and name in ("kernel", "weight", "bias")
        return name in ("kernel", "weight")

    return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(cfg: OptimConfig, total_steps: int, params) -> optax.GradientTransformation:
    """The full update rule; ``params`` fixes the weight-decay mask's structure."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(
            schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask(params, cfg),
        )
    )
    # A step with a non-finite gradient is skipped (parameters and moments untouched)
    # and counted in the state; never give up (large max_consecutive_errors).
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=1 << 30)


def skipped_steps(opt_state) -> jax.Array:
    """Total number of steps skipped for non-finite gradients."""
    return opt_state.total_notfinite
