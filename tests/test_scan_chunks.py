"""``_chunkwise_fwd.scan_chunks`` (the recurrence over chunks, written out inline or as a
``lax.scan``) against its slow twin, one step per chunk in NumPy float64, in both directions;
gradients of the inline form against the scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close
from xlstm_jax.ops._chunkwise_fwd import scan_chunks


def _inputs(nc: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    decay = rng.uniform(0.0, 1.0, size=(2, 3, nc))
    xs = (rng.normal(size=(2, 3, nc, 4, 5)), rng.normal(size=(2, 3, nc, 4)))
    init = (rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4)))
    return decay, xs, init


def _loop(decay, xs, init, reverse):
    carry, before = [c.copy() for c in init], [np.empty_like(x) for x in xs]
    for k in reversed(range(decay.shape[2])) if reverse else range(decay.shape[2]):
        for n, x in enumerate(xs):
            before[n][:, :, k] = carry[n]
            d = decay[:, :, k].reshape(decay.shape[:2] + (1,) * (x.ndim - 3))
            carry[n] = d * carry[n] + x[:, :, k]
    return tuple(carry), tuple(before)


# (nc, inline_chunks): inline, also at the limit; the scan
@pytest.mark.parametrize("nc, inline_chunks", [(1, 32), (5, 32), (4, 4), (11, 3)])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_the_loop_in_float64(nc, inline_chunks, reverse):
    decay, xs, init = _inputs(nc)
    truth = _loop(decay, xs, init, reverse)
    with jax.enable_x64(True):
        got = scan_chunks(jnp.asarray(decay), tuple(map(jnp.asarray, xs)), tuple(map(jnp.asarray, init)),
                          reverse=reverse, inline_chunks=inline_chunks)  # fmt: skip
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(truth)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_match_lax_scan(reverse):
    decay, xs, init = _inputs(10, seed=1)
    args = (jnp.asarray(decay, jnp.float32), tuple(jnp.asarray(x, jnp.float32) for x in xs),
            tuple(jnp.asarray(c, jnp.float32) for c in init))  # fmt: skip
    ct = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32),
                      scan_chunks(*args, reverse=reverse))  # fmt: skip

    def with_scan(decay, xs, init):
        def body(carry, step):
            d, x = step
            return tuple(d.reshape(d.shape + (1,) * (c.ndim - 2)) * c + xk for c, xk in zip(carry, x)), carry

        first = lambda x: jnp.moveaxis(x, 2, 0)
        final, before = jax.lax.scan(body, init, (first(decay), tuple(map(first, xs))), reverse=reverse)
        return final, tuple(jnp.moveaxis(b, 0, 2) for b in before)

    def loss(f, *a):
        return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(f(*a)), jax.tree.leaves(ct)))

    ours = jax.grad(lambda *a: loss(lambda *b: scan_chunks(*b, reverse=reverse), *a), argnums=(0, 1, 2))(*args)
    ref = jax.grad(lambda *a: loss(with_scan, *a), argnums=(0, 1, 2))(*args)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert_close(a, b, 1e-5, "gradient")
