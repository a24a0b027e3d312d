"""Every public op under jax.jit, jax.vmap, jax.grad and jax.jvp, with tiny shapes.

The settings (``chunk_size``, ``eps``) are static: ``jax.jit(op, static_argnames=...)`` or
``functools.partial`` work, and a traced setting gets an error that says so. The two ops with
a hand-written reverse-mode gradient (``mlstm_chunkwise``, ``slstm_scan``) refuse forward mode
with an error naming the alternatives; the others give a jvp equal to their vjp.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close, cast, mlstm_inputs, slstm_inputs
from xlstm_jax.ops import (
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
    slstm_scan,
    slstm_step,
)


def _mlstm_args(seed):
    return cast(mlstm_inputs(seed, b=2, nh=1, s=5, dhqk=2, dhv=3), jnp.float32)


def _slstm_args(seed):
    return cast(slstm_inputs(seed, b=2, s=4, nh=1, dh=2), jnp.float32)


# name: (function of the array arguments -> h, arguments from a seed, vmap in_axes)
OPS = {
    "mlstm_parallel": (mlstm_parallel, _mlstm_args, 0),
    "mlstm_chunkwise": (lambda *a: mlstm_chunkwise(*a, chunk_size=2)[0], _mlstm_args, 0),
    "mlstm_recurrent": (lambda *a: mlstm_recurrent(*a)[0], _mlstm_args, 0),
    "mlstm_step": (lambda *a: mlstm_step(*a, None)[0], lambda s: [x[:, :, 0] for x in _mlstm_args(s)], 0),
    "slstm_scan": (lambda *a: slstm_scan(*a)[0], _slstm_args, (0, None, None)),
    "slstm_step": (
        lambda g, r, b: slstm_step(g, r, b, None)[0],
        lambda s: (_slstm_args(s)[0][:, 0], *_slstm_args(s)[1:]),
        (0, None, None),
    ),
}
REVERSE_MODE_ONLY = {"mlstm_chunkwise", "slstm_scan"}


def _loss(fn, args):
    h = fn(*args)
    cot = jnp.cos(jnp.arange(h.size, dtype=h.dtype)).reshape(h.shape)
    return jnp.sum(h * cot)


def _grads(fn, args):
    return jax.value_and_grad(lambda a: _loss(fn, a))(list(args))


@pytest.mark.parametrize("name", sorted(OPS))
def test_jit_vmap_grad_over_a_leading_axis(name):
    """jit(vmap(value_and_grad)) over a new leading axis equals the per-example results."""
    fn, make_args, in_axes = OPS[name]
    examples = [make_args(seed) for seed in (0, 1)]
    axes = [0] * len(examples[0]) if in_axes == 0 else list(in_axes)  # None: weights shared by the examples
    examples = [[x if ax == 0 else examples[0][j] for j, (x, ax) in enumerate(zip(e, axes))] for e in examples]
    stacked = [jnp.stack([e[j] for e in examples]) if ax == 0 else examples[0][j] for j, ax in enumerate(axes)]
    loss_b, grads_b = jax.jit(jax.vmap(lambda a: _grads(fn, a), in_axes=(axes,)))(stacked)
    for row, example in enumerate(examples):
        loss, grads = _grads(fn, example)
        assert_close(loss_b[row], loss, 1e-6, f"{name} loss[{row}]")
        for j, (g_b, g) in enumerate(zip(grads_b, grads)):
            assert_close(g_b[row], g, 1e-5, f"{name} grad {j} [{row}]")


@pytest.mark.parametrize("name", sorted(OPS))
def test_jvp_equals_vjp_or_names_the_alternative(name):
    fn, make_args, _ = OPS[name]
    args = tuple(make_args(2))
    tangents = tuple(jnp.sin(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape) for a in args)
    if name in REVERSE_MODE_ONLY:
        with pytest.raises(TypeError, match=r"no forward mode.*jax\.jacrev"):
            jax.jvp(fn, args, tangents)
        with pytest.raises(TypeError, match=r"jax\.jacfwd.*jax\.jacrev"):
            jax.jacfwd(lambda a: _loss(fn, [a, *args[1:]]))(args[0])
        return
    _, tangent_out = jax.jvp(lambda *a: _loss(fn, a), args, tangents)
    _, grads = _grads(fn, args)
    assert_close(tangent_out, sum(jnp.sum(g * t) for g, t in zip(grads, tangents)), 1e-5, f"{name} jvp")


def test_static_settings_under_jit():
    args = _mlstm_args(3)
    expected = mlstm_chunkwise(*args, chunk_size=2)[0]
    by_name = jax.jit(mlstm_chunkwise, static_argnames=("chunk_size", "eps"))(*args, chunk_size=2, eps=1e-6)[0]
    by_partial = jax.jit(functools.partial(mlstm_chunkwise, chunk_size=2))(*args)[0]
    assert_close(by_name, expected, 1e-6, "static_argnames")
    assert_close(by_partial, expected, 1e-6, "functools.partial")
    with pytest.raises(TypeError, match=r"chunk_size must be a Python value.*static_argnames=\('chunk_size',\)"):
        jax.jit(mlstm_chunkwise)(*args, chunk_size=2)
    with pytest.raises(TypeError, match=r"mlstm_parallel: eps must be a Python value.*functools.partial"):
        jax.jit(mlstm_parallel)(*args, eps=1e-6)
    with pytest.raises(TypeError, match=r"mlstm_recurrent: eps"):
        jax.jit(mlstm_recurrent)(*args, eps=1e-6)


def test_slstm_resets_accept_lists_tuples_and_numpy():
    args = _slstm_args(4)
    mask = np.array([[False, True, False, False], [False, False, True, True]])
    expected = slstm_scan(*args, resets=jnp.asarray(mask))[0]
    for resets in (mask.tolist(), tuple(map(tuple, mask.tolist())), mask):
        assert_close(slstm_scan(*args, resets=resets)[0], expected, 0.0, f"resets as {type(resets).__name__}")
    assert not np.allclose(slstm_scan(*args)[0], expected)  # the resets did something
    with pytest.raises(ValueError, match=r"resets must be a \(B=2, S=4\) bool array, got shape \(2, 4\) and dtype int"):
        slstm_scan(*args, resets=mask.astype(int).tolist())
