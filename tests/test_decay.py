"""The cumulative forget gates behind every decay matrix stay accurate where a plain
difference of cumulative sums cancels catastrophically."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from helpers import assert_close
from xlstm_jax.ops.decay import cumsum_hi_lo, cumulative_forget, log_decay_matrix


def _adversarial_gates(length=64):
    """Strong forgetting first (|cumsum| grows to ~1000), then gates near 1: the late
    decay entries are tiny differences of two huge partial sums."""
    rng = np.random.default_rng(0)
    logf = np.concatenate([np.full(length // 2, -30.0), -rng.uniform(0, 1e-2, length - length // 2)])
    i = rng.normal(size=length)
    return logf, i


def test_log_decay_matrix_matches_float64():
    logf, i = _adversarial_gates()
    exact = np.tril(np.cumsum(logf)[:, None] - np.cumsum(logf)[None, :]) + i[None, :]
    exact = np.where(np.tril(np.ones_like(exact, bool)), exact, -np.inf)
    logf32, i32 = jnp.asarray(logf, jnp.float32), jnp.asarray(i, jnp.float32)
    ours = np.asarray(log_decay_matrix(cumulative_forget(logf32), i32))
    naive = np.cumsum(logf32)[:, None] - np.cumsum(logf32)[None, :] + i32[None, :]
    late = np.s_[40:, 36:40]  # targets and sources after the forgetting run
    naive_err = np.max(np.abs(naive[late] - exact[late]))
    ours_err = np.max(np.abs(ours[late] - exact[late]))
    assert naive_err > 1e-5, "the case must defeat the plain difference of cumulative sums"
    assert ours_err < 1e-6, ours_err
    assert np.all(np.isneginf(ours[np.triu_indices(len(logf), 1)]))
    finite = np.isfinite(exact)
    assert np.max(np.abs(ours[finite] - exact[finite]) / np.maximum(1.0, np.abs(exact[finite]))) < 1e-6


def test_cumsum_hi_lo_value_and_gradient():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 50)) * 100, jnp.float32)
    hi, lo = cumsum_hi_lo(x)
    exact = np.cumsum(np.asarray(x, np.float64), axis=-1)
    assert_close(np.asarray(hi, np.float64) + np.asarray(lo, np.float64), exact, 1e-12, "hi + lo")
    w = jnp.arange(50.0)
    grad = jax.grad(lambda a: jnp.sum(cumsum_hi_lo(a)[0] * w))(x)
    np.testing.assert_allclose(grad, np.broadcast_to(np.cumsum(w[::-1])[::-1], (3, 50)), rtol=1e-6)
