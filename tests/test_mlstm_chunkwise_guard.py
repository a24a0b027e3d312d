"""The chunkwise form skips its non-finite guard when k and v are finite (``_guard_when_nonfinite``).

The skip rests on one claim: a non-finite entry anywhere in k or v makes the unguarded pass's
final c or n non-finite, so a finite final state proves there was nothing to guard. These tests
check the claim where it could fail (a write weight of exactly 0, a reset after the bad step, the
padded last chunk, an input gate so low its weight underflows), and that the skipped and the
guarded pass give the same outputs, for the primal call and for gradients.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_jax.ops import mlstm_chunkwise, mlstm_recurrent
from xlstm_jax.ops._mlstm_chunkwise import _run

B, NH, S, DHQK, DHV, CHUNK = 1, 2, 13, 4, 3, 4  # S is not a multiple of CHUNK: the last chunk is padded


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(B, NH, S, DHQK)).astype(np.float32) for _ in range(2))
    v = rng.normal(size=(B, NH, S, DHV)).astype(np.float32)
    i, f = (rng.normal(size=(B, NH, S)).astype(np.float32) for _ in range(2))
    return [q, k, v, i, f]


def _state(args):
    zeros = lambda *s: jnp.zeros((B, NH, *s), jnp.float32)  # noqa: E731
    return zeros(DHQK, DHV), zeros(DHQK), zeros()


# (array, value, step, what else is set at that step): 1 = k, 2 = v.
CASES = {
    "nan_v_first": (2, np.nan, 0, None),
    "inf_k_middle": (1, np.inf, 6, None),
    "neg_inf_v_last_padded_chunk": (2, -np.inf, S - 1, None),
    "nan_k_write_weight_zero": (1, np.nan, 5, "i=-inf"),
    "inf_v_write_weight_zero": (2, np.inf, 5, "i=-inf"),
    "inf_k_weight_underflows": (1, np.inf, 5, "i=-1e4"),
    "nan_v_then_reset": (2, np.nan, 5, "reset after"),
    "inf_k_reset_at_same_step": (1, np.inf, 5, "reset here"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_nonfinite_key_or_value_always_reaches_the_unguarded_final_state(case):
    arg, value, step, extra = CASES[case]
    args = _inputs()
    args[arg][0, 0, step, 1] = value
    if extra == "i=-inf":
        args[3][0, 0, step] = -np.inf
    elif extra == "i=-1e4":
        args[3][0, 0, step] = -1e4
    elif extra == "reset after":
        args[4][0, 0, step + 1] = -np.inf
    elif extra == "reset here":
        args[4][0, 0, step] = -np.inf
    run = jax.jit(partial(_run, chunk_size=CHUNK, eps=1e-6, guard=False))
    _, c, n, _ = run(*map(jnp.asarray, args), *_state(args))
    assert not (np.isfinite(np.asarray(c)).all() and np.isfinite(np.asarray(n)).all()), case


@pytest.mark.parametrize("bad", [False, True], ids=["finite", "nan_in_v"])
def test_the_primal_call_equals_the_guarded_pass(bad):
    args = _inputs(1)
    if bad:
        args[2][0, 1, 7, 0] = np.nan
    x = list(map(jnp.asarray, args))
    h, state = jax.jit(partial(mlstm_chunkwise, chunk_size=CHUNK))(*x)
    guarded = jax.jit(partial(_run, chunk_size=CHUNK, eps=1e-6, guard=True))(*x, *_state(args))
    for name, got, want in zip("hcnm", (h, *state), guarded):
        # the same operations on the same values (measured bit-identical); 1e-6 leaves XLA room to fuse
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=0, err_msg=name)
    h_rec = np.asarray(mlstm_recurrent(*x)[0])
    np.testing.assert_array_equal(np.isnan(np.asarray(h)), np.isnan(h_rec))
    np.testing.assert_allclose(np.nan_to_num(np.asarray(h)), np.nan_to_num(h_rec), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("bad", [False, True], ids=["finite", "inf_in_k"])
def test_gradients_equal_the_guarded_pass(bad):
    """Gradients through the skip (finite inputs: the unguarded pass's pullback; a non-finite k:
    the guarded pass recomputed in the backward) equal those of the guarded pass itself."""
    args = _inputs(4)
    if bad:
        args[1][0, 1, 3, 2] = np.inf
    x = list(map(jnp.asarray, args))
    cot = [jnp.asarray(np.random.default_rng(5 + j).normal(size=np.shape(t)), jnp.float32)
           for j, t in enumerate((args[2], *_state(args)))]  # fmt: skip

    def loss(form, *a):  # NaN outputs (from the inf in k) are left out of the loss
        return sum(jnp.sum(jnp.where(jnp.isfinite(o), o, 0.0) * ct) for o, ct in zip(form(*a), cot))

    chunkwise = jax.jit(lambda *a: (lambda h, st: (h, *st))(*mlstm_chunkwise(*a, chunk_size=CHUNK)))
    guarded = partial(_run, chunk_size=CHUNK, eps=1e-6, guard=True)
    argnums = (0, 1, 2, 3, 4)
    got = jax.jit(jax.grad(partial(loss, chunkwise), argnums=argnums))(*x)
    want = jax.jit(jax.grad(lambda *a: loss(guarded, *a, *_state(args)), argnums=argnums))(*x)
    for name, g, w in zip("qkvif", got, want):
        assert np.isfinite(np.asarray(g)).all(), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7, err_msg=name)
    if bad:
        assert float(got[1][0, 1, 3, 2]) == 0.0


def test_gradients_run_the_guarded_pass():
    """Under ``jax.grad`` the guarded pass is differentiated: with a NaN in one value entry, the
    gradients are those of the same inputs with that entry zeroed (what the guard does) and the
    NaN outputs left out of the loss, which autodiff of the recurrent form gives on finite inputs;
    the bad entry itself gets 0."""
    args = _inputs(2)
    cot = jnp.asarray(np.random.default_rng(3).normal(size=(B, NH, S, DHV)), jnp.float32)
    zeroed = [jnp.asarray(a) for a in args]
    args[2][0, 0, 9, 2] = np.nan
    bad = list(map(jnp.asarray, args))
    h_bad = mlstm_chunkwise(*bad, chunk_size=CHUNK)[0]
    reached = jnp.isnan(h_bad)
    assert bool(reached[0, 0, 9:, 2].all()) and int(reached.sum()) == S - 9

    def loss(form, *a):
        h = form(*a)[0]
        return jnp.sum(jnp.where(reached, 0.0, h) * cot)

    argnums = (0, 1, 2, 3, 4)
    grads = jax.grad(partial(loss, partial(mlstm_chunkwise, chunk_size=CHUNK)), argnums=argnums)(*bad)
    zeroed[2] = zeroed[2].at[0, 0, 9, 2].set(0.0)
    ref = jax.grad(partial(loss, mlstm_recurrent), argnums=argnums)(*zeroed)
    for name, g, r in zip("qkvif", grads, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=2e-5, err_msg=name)
    assert float(grads[2][0, 0, 9, 2]) == 0.0
