"""sLSTM: scan vs step, float32 vs float64, state passing, extremes, bfloat16.

Parity with the official vanilla cell is in ``test_parity_official.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close, assert_tree_close, cast, slstm_inputs, slstm_state
from xlstm_jax.ops import SLSTMState, slstm_scan, slstm_step


@jax.jit
def _value_and_grads(args, state, cot_h, cot_state):
    (h, final), pullback = jax.vjp(lambda a, st: slstm_scan(*a, initial_state=st), args, state)
    return (h, final), pullback((cot_h, cot_state))


@pytest.mark.parametrize("scale,with_state", [(1.0, False), (1.0, True), (12.0, True)])
def test_float32_matches_float64(scale, with_state):
    """h, final state and all gradients; scale=12 drives the gates deep into saturation."""
    args = slstm_inputs(0, scale=scale)
    b, _, _, nh, dh = args[0].shape
    state = slstm_state(1, b, nh, dh) if with_state else SLSTMState(*(np.zeros((b, nh, dh)),) * 4)
    rng = np.random.default_rng(2)
    cot_h = rng.normal(size=(b, args[0].shape[1], nh, dh))
    cot_state = SLSTMState(*(rng.normal(size=(b, nh, dh)) for _ in range(4)))
    with jax.enable_x64(True):
        ref = jax.tree.map(np.asarray, _value_and_grads(*cast((args, state, cot_h, cot_state), jnp.float64)))
    out = _value_and_grads(*cast((args, state, cot_h, cot_state), jnp.float32))
    assert out[0][0].dtype == jnp.float32
    assert_tree_close(out[0], ref[0], 1e-4, "outputs")
    (g_args, g_state), (r_args, r_state) = out[1], ref[1]
    for name, g, r in zip(("gates_x", "recurrent_kernel", "bias"), g_args, r_args):
        assert_close(g, r, 1e-3, f"d{name}")
    for name, g, r in zip("hcnm", g_state, r_state):
        # From a zero state the first step sets m = i, so d m0 is exactly 0: give it a scale.
        assert_close(g, r, 1e-3, f"d initial {name}", floor=1.0 if name == "m" else 1e-30)


def test_step_loop_equals_scan():
    args = cast(slstm_inputs(3), jnp.float32)
    state = cast(slstm_state(4), jnp.float32)
    h_seq, final = slstm_scan(*args, initial_state=state)
    hs = []
    for t in range(args[0].shape[1]):
        h_t, state = slstm_step(args[0][:, t], args[1], args[2], state)
        hs.append(h_t)
    assert_close(jnp.stack(hs, axis=1), h_seq, 1e-6, "h")
    assert_tree_close(state, final, 1e-6, "state")


def test_state_passing_pieces_equals_whole():
    args = cast(slstm_inputs(5, s=17), jnp.float32)
    h_whole, final_whole = slstm_scan(*args)
    state, pieces = None, []
    for lo, hi in [(0, 5), (5, 6), (6, 17)]:
        h, state = slstm_scan(args[0][:, lo:hi], args[1], args[2], initial_state=state)
        pieces.append(h)
    assert_close(jnp.concatenate(pieces, axis=1), h_whole, 1e-5, "h")
    assert_tree_close(state, final_whole, 1e-5, "state")


def test_first_step_rule_is_per_element():
    """A row whose normalizer is zero restarts (m = i) while the other rows carry on.

    The official cell decides this for the whole tensor; here each element decides,
    so a half-reset batch equals running the fresh row on its own.
    """
    args = cast(slstm_inputs(6, b=2), jnp.float32)
    carried = cast(slstm_state(7, b=2), jnp.float32)
    zeros = SLSTMState(*(jnp.zeros_like(x) for x in carried))
    mixed = SLSTMState(*(jnp.stack([z[0], c[1]]) for z, c in zip(zeros, carried)))
    h_mixed, _ = slstm_scan(*args, initial_state=mixed)
    h_fresh, _ = slstm_scan(args[0][:1], args[1], args[2])
    h_carried, _ = slstm_scan(args[0][1:], args[1], args[2], initial_state=SLSTMState(*(x[1:] for x in carried)))
    assert_close(h_mixed[:1], h_fresh, 1e-6, "fresh row")
    assert_close(h_mixed[1:], h_carried, 1e-6, "carried row")


def test_gradients_finite_when_first_step_gates_overflow():
    """At the first step m = i; exp(logf + m_prev - i) overflows for i = -100. The
    clamped gate must not turn that into NaN gradients (0 * inf)."""
    gates_x, kernel, bias = cast(slstm_inputs(8), jnp.float32)
    gates_x = gates_x.at[:, 0, 0].set(-100.0)  # input gate at t = 0
    grads = jax.grad(lambda a: jnp.sum(slstm_scan(*a)[0]), argnums=0)((gates_x, kernel, bias))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


def test_bfloat16_inputs():
    """bf16 gates in, bf16 h out, float32 state; within 1e-2 x max|ref| of float64 truth."""
    args = cast(slstm_inputs(9), jnp.bfloat16)
    h, state = slstm_scan(*args)
    assert h.dtype == jnp.bfloat16 and state.c.dtype == jnp.float32
    with jax.enable_x64(True):
        h_ref, _ = slstm_scan(*cast(args, jnp.float64))
    assert_close(h, h_ref, 1e-2, "bf16 h")


def test_scan_gradient_equals_autodiff_of_step_loop():
    """The custom reverse-time scan against its slow twin: autodiff through a Python
    loop of ``slstm_step`` (float64, every input and the initial state)."""
    with jax.enable_x64(True):
        args = cast(slstm_inputs(10, s=7, scale=3.0), jnp.float64)
        state = cast(slstm_state(11), jnp.float64)
        state = state._replace(n=state.n.at[0].set(0.0))  # one row starts fresh: first-step rule

        def loop(args, state):
            gates_x, kernel, bias = args
            hs = []
            for t in range(gates_x.shape[1]):
                h, state = slstm_step(gates_x[:, t], kernel, bias, state)
                hs.append(h)
            return jnp.sum(jnp.stack(hs, 1) ** 2) + jnp.sum(state.c * state.m) + jnp.sum(state.n)

        def scan(args, state):
            h, final = slstm_scan(*args, initial_state=state)
            return jnp.sum(h**2) + jnp.sum(final.c * final.m) + jnp.sum(final.n)

        ref = jax.grad(loop, argnums=(0, 1))(args, state)
        got = jax.grad(scan, argnums=(0, 1))(args, state)
    assert_tree_close(got, ref, 1e-12, "grads")


def test_pointwise_backward_equals_vjp_including_ties():
    """The hand-written step derivative equals jax.vjp of the step, also at the ties
    min(exp(x), 1) meets at x = 0 (every first step) and where i equals logfm."""
    from xlstm_jax.ops.slstm_math import local_jacobian, pointwise, pointwise_backward

    rng = np.random.default_rng(12)
    shape = (3, 5)
    raw = jnp.asarray(rng.normal(size=(4, *shape)))
    prev = SLSTMState(*(jnp.asarray(rng.normal(size=shape)) for _ in range(4)))
    prev = prev._replace(n=prev.n.at[0].set(0.0))  # first steps
    logfm = prev.m + jax.nn.log_sigmoid(raw[1])
    raw = raw.at[0, 1, :2].set(logfm[1, :2])  # i == logfm exactly
    d = SLSTMState(*(jnp.asarray(rng.normal(size=shape)) for _ in range(4)))
    _, pullback = jax.vjp(pointwise, raw, prev)
    d_raw_ref, d_prev_ref = pullback(d)
    d_raw, d_prev = pointwise_backward(local_jacobian(raw, prev), d)
    assert_close(jnp.moveaxis(d_raw, -2, 0), d_raw_ref, 1e-6, "d_raw")
    assert_tree_close(d_prev._replace(h=d_prev_ref.h), d_prev_ref, 1e-6, "d_prev")


def test_resets_make_packed_documents_independent_and_gradients_exact():
    """``resets`` zeroes the state before a document's first token: each document's
    outputs equal running it alone, and the gradient equals autodiff of a step loop
    that zeroes the state by hand (float64)."""
    with jax.enable_x64(True):
        args = cast(slstm_inputs(13, s=12, scale=2.0), jnp.float64)
        state = cast(slstm_state(14), jnp.float64)
        resets = np.zeros((2, 12), bool)
        resets[0, [4, 9]] = True
        resets[1, [0, 5, 6]] = True
        h, _ = slstm_scan(*args, initial_state=state, resets=jnp.asarray(resets))
        for b, (lo, hi) in [(0, (4, 9)), (0, (9, 12)), (1, (6, 12))]:
            h_alone, _ = slstm_scan(args[0][b : b + 1, lo:hi], args[1], args[2])
            assert_close(h[b : b + 1, lo:hi], h_alone, 1e-12, f"row {b} document [{lo}, {hi})")

        def loop(args, state):
            gates_x, kernel, bias = args
            hs = []
            for t in range(gates_x.shape[1]):
                keep = jnp.asarray(~resets[:, t])[:, None, None]
                state = SLSTMState(*(jnp.where(keep, x, 0.0) for x in state))
                h_t, state = slstm_step(gates_x[:, t], kernel, bias, state)
                hs.append(h_t)
            return jnp.sum(jnp.stack(hs, 1) ** 2) + jnp.sum(state.c)

        def scan(args, state):
            h, final = slstm_scan(*args, initial_state=state, resets=jnp.asarray(resets))
            return jnp.sum(h**2) + jnp.sum(final.c)

        assert_tree_close(jax.grad(scan, (0, 1))(args, state), jax.grad(loop, (0, 1))(args, state), 1e-12, "grads")
