"""What the chunkwise mLSTM kernel tests (TPU and GPU) share: the cases, the reference and the check.

A case is (args, initial state, output cotangents) at DHQK=16, DHV=32, b=1; a kernel is compared
with ``xlstm_jax.ops.mlstm_chunkwise`` on h, the final state and every gradient (VJP with the
case's cotangents).
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from helpers import assert_close, cast, mlstm_inputs, mlstm_state
from xlstm_jax.ops import MLSTMState, mlstm_chunkwise

FWD_TOL, GRAD_TOL = 1e-4, 1e-3
BF16_FWD_TOL, BF16_GRAD_TOL = 1e-2, 2e-2
DHQK, DHV = 16, 32


def value_and_vjp(fn, args, state, cot):
    """((h, final state), (d args, d initial state)) of ``fn(*args, initial_state=state)``."""
    (h, final), pullback = jax.vjp(lambda a, s: fn(*a, initial_state=s), args, state)
    return (h, final), pullback(cot)


@partial(jax.jit, static_argnames=("chunk_size",))
def reference(args, state, cot, chunk_size):
    return value_and_vjp(partial(mlstm_chunkwise, chunk_size=chunk_size), args, state, cot)


@functools.cache
def case(gates: str, s: int, dtype=jnp.float32, nh: int = 2):
    """Inputs (b=1), an initial state and output cotangents, q, k, v in ``dtype`` (the rest float32)."""
    args = cast(mlstm_inputs(1, b=1, nh=nh, s=s, dhqk=DHQK, dhv=DHV, gates=gates), jnp.float32)
    args = (*cast(args[:3], dtype), *args[3:])
    state = cast(mlstm_state(2, b=1, nh=nh, dhqk=DHQK, dhv=DHV), jnp.float32)
    rng = np.random.default_rng(3)
    cot = (
        jnp.asarray(rng.normal(size=(1, nh, s, DHV)), dtype),
        MLSTMState(*(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in state)),
    )
    return args, state, cot


def check(out, grads, out_ref, grads_ref, fwd_tol, grad_tol, label):
    """Assert every output and gradient is close; return the largest relative errors (fwd, grad)."""
    (h, final), (h_ref, final_ref) = out, out_ref
    assert h.dtype == h_ref.dtype and h.shape == h_ref.shape
    fwd = [assert_close(h, h_ref, fwd_tol, f"{label} h")]
    for name, x, x_ref in zip("cnm", final, final_ref):
        assert x.dtype == jnp.float32 and x.shape == x_ref.shape
        fwd.append(assert_close(x, x_ref, fwd_tol, f"{label} final {name}"))
    (grads_args, grads_state), (ref_args, ref_state) = grads, grads_ref
    grad = []
    for name, g, g_ref in zip("qkvif", grads_args, ref_args):
        assert g.dtype == g_ref.dtype
        grad.append(assert_close(g, g_ref, grad_tol, f"{label} d{name}"))
    for name, g, g_ref in zip("cnm", grads_state, ref_state):
        grad.append(assert_close(g, g_ref, grad_tol, f"{label} d initial {name}"))
    return max(fwd), max(grad)
