"""``chunkwise_math.memory_scales`` (a log-depth ``associative_scan``) against its slow twin, the
sequential recurrence M_k = max(g_k + M_{k-1}, a_max_k): values in float64, gradients with a loop;
``chunkwise_math.inner`` (a dot on the CPU) against the plain reduction it replaces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close
from xlstm_jax.ops.chunkwise_math import inner, memory_scales


def _inputs(seed: int, nc: int):
    rng = np.random.default_rng(seed)
    g = -np.abs(rng.normal(size=(2, 3, nc))) * 5  # log decays are <= 0
    a_max = rng.normal(size=(2, 3, nc)) * 10
    g[0, 0, nc // 3] = -np.inf  # a reset inside a chunk
    a_max[1, 2, : nc // 2] = -np.inf  # chunks that write nothing (padding: input gates -inf)
    m0 = rng.uniform(-1, 1, size=(2, 3))
    return g, a_max, m0


def _loop(g, a_max, m0):
    """The slow twin: one step per chunk."""

    def body(m_prev, xs):
        g_k, a_k = xs
        m_next = jnp.maximum(g_k + m_prev, a_k)
        return m_next, m_next

    first = lambda x: jnp.moveaxis(x, -1, 0)
    return jnp.moveaxis(jax.lax.scan(body, m0, (first(g), first(a_max)))[1], 0, -1)


@pytest.mark.parametrize("nc", [1, 5, 64, 511])
def test_matches_the_recurrence(nc):
    g, a_max, m0 = _inputs(nc, nc)
    truth = np.empty_like(g)
    m = m0.copy()
    for k in range(nc):
        m = np.maximum(g[..., k] + m, a_max[..., k])
        truth[..., k] = m
    fast = memory_scales(*(jnp.asarray(x, jnp.float32) for x in (g, a_max, m0)))
    assert fast.dtype == jnp.float32
    assert_close(fast, truth, 1e-6, "M")


def test_gradients_match_the_loop():
    g, a_max, m0 = (jnp.asarray(x, jnp.float32) for x in _inputs(1, 37))
    g = jnp.where(jnp.isinf(g), -3.0, g)  # finite everywhere: the loop's gradient has no -inf paths
    w = jax.random.normal(jax.random.key(0), g.shape)
    grads = [
        jax.grad(lambda *x, f=f: jnp.sum(w * f(*x)), argnums=(0, 1, 2))(g, a_max, m0) for f in (memory_scales, _loop)
    ]
    for name, fast, slow in zip(("g", "a_max", "m0"), *grads):
        assert_close(fast, slow, 1e-6, f"d{name}")


def test_inner_is_the_sum_of_products_and_a_dot_on_the_cpu():
    rng = np.random.default_rng(3)
    a, b = (jnp.asarray(rng.normal(size=(2, 3, 5, 7, 33)), jnp.float32) for _ in range(2))
    with jax.enable_x64(True):
        truth = np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64), axis=-1)
    assert_close(inner(a, b), truth, 1e-6, "inner vs float64")
    assert_close(jax.jit(inner)(a, b), truth, 1e-6, "jitted inner vs float64")
    hlo = jax.jit(inner).lower(a, b).as_text()
    assert "dot_general" in hlo and "precision = [HIGHEST, HIGHEST]" in hlo  # the CPU branch, exact float32
    ga, gb = jax.grad(lambda a, b: jnp.sum(jnp.sin(inner(a, b))), argnums=(0, 1))(a, b)
    ra, rb = jax.grad(lambda a, b: jnp.sum(jnp.sin(jnp.sum(a * b, -1))), argnums=(0, 1))(a, b)
    assert_close(ga, ra, 1e-5, "d a")
    assert_close(gb, rb, 1e-5, "d b")
