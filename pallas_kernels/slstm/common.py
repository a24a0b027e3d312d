"""What the TPU and GPU sLSTM kernels share: the per-step math inside a kernel, and the head-major
layout the kernels read and write.

Kernel layout (one head, one batch tile per program): gates (NH, S, 4, B, DH), recurrent weights
(NH, 4, DH, DH) (``raw[b, g, o] += sum_d h_prev[b, d] R[g, d, o]``), states (NH, B, DH), and the
reset mask as ``keep`` (S, B) float (0 where the state is zeroed before the token).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xlstm_jax.ops import SLSTMState
from xlstm_jax.ops.slstm_math import prepare as prepare_inputs

GATES = 4


def _mm(x, w, dims, dtype):
    """Operands cast to ``dtype`` (float32: IEEE, ``Precision.HIGHEST``, not TF32; bfloat16: the
    tensor cores / MXU's native input), float32 accumulation and result."""
    precision = jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
    return jax.lax.dot_general(
        x.astype(dtype), w.astype(dtype), (dims, ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


def dot(x, w, dtype=jnp.float32):
    """(M, K) x (K, N), operands in ``dtype``, float32 result."""
    return _mm(x, w, ((1,), (0,)), dtype)


def dot_t(x, w, dtype=jnp.float32):
    """(M, N) x (K, N)^T, operands in ``dtype``, float32 result."""
    return _mm(x, w, ((1,), (1,)), dtype)


def cell_backward(jac, d_h, d_c, d_n, d_m):
    """Cotangents of the pre-activations (i, f, z, o) and of the previous (c, n, m) from those of the
    new state; the formulas of ``xlstm_jax.ops.slstm_math.pointwise_backward``, one gate at a time."""
    dc = d_c + d_h * jac.so_n
    dn = d_n - d_h * jac.h_n
    dx_i = (dc * jac.tanh_z + dn) * jac.a_i
    dx_f = (dc * jac.c_prev + dn * jac.n_prev) * jac.a_f
    dm = d_m - dx_i - dx_f
    dlogfm = dx_f + dm * (1.0 - jac.w_i)
    d_raw = (dx_i + dm * jac.w_i, dlogfm * jac.sig_neg_f, dc * jac.a_z, d_h * jac.a_o)
    return d_raw, (dc * jac.gate_f, dn * jac.gate_f, dlogfm)


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def prepare(gates_x, recurrent_kernel, bias, initial_state, resets):
    """The checks and float32 inputs of ``ops.slstm_scan`` (errors name the argument), plus ``resets``.

    Returns (gates (B, S, 4, NH, DH) with the bias added, kernel, state (4 x (B, NH, DH))).
    """
    gates, kernel, state = prepare_inputs(
        gates_x, recurrent_kernel, bias, initial_state, sequence=True, state_name="initial_state"
    )
    b, s = gates_x.shape[:2]
    if resets is not None and (jnp.shape(resets) != (b, s) or jnp.asarray(resets).dtype != jnp.bool_):
        raise ValueError(f"resets must be a (B={b}, S={s}) bool array, got {jnp.shape(resets)} {resets.dtype}")
    return gates, kernel, state


def to_kernel_layout(gates, kernel, state, resets, *, block_b: int, block_t: int):
    """``prepare``'s outputs laid out for the kernels.

    The batch is padded to a multiple of ``block_b`` and the sequence to one of ``block_t``; padded
    rows are independent of the real ones, and padded steps come after the real ones.

    Returns (gates (NH, Sp, 4, Bp, DH), r (NH, 4, DH, DH), state0 (4 x (NH, Bp, DH)),
    keep (Sp, Bp) or None).
    """
    b, s, _, nh, dh = gates.shape
    bp, sp = round_up(b, block_b), round_up(s, block_t)
    gates = jnp.pad(jnp.transpose(gates, (3, 1, 2, 0, 4)), ((0, 0), (0, sp - s), (0, 0), (0, bp - b), (0, 0)))
    r = jnp.transpose(kernel.reshape(nh, dh, GATES, dh), (0, 2, 1, 3))
    state0 = tuple(jnp.pad(jnp.swapaxes(x, 0, 1), ((0, 0), (0, bp - b), (0, 0))) for x in state)
    keep = None
    if resets is not None:
        keep = jnp.logical_not(resets).T.astype(gates.dtype)
        keep = jnp.pad(keep, ((0, sp - s), (0, bp - b)), constant_values=1.0)
    return gates, r, state0, keep


def from_kernel_layout(h, final, b: int, s: int, dtype):
    """h (NH, Sp, Bp, DH) and the final state (4 x (NH, Bp, DH)) -> ``ops.slstm_scan``'s outputs."""
    h = jnp.transpose(h[:, :s, :b], (2, 1, 0, 3)).astype(dtype)
    return h, SLSTMState(*(jnp.swapaxes(x[:, :b], 0, 1) for x in final))


def custom_vjp_scan(forward_call, backward_call):
    """The kernels' ``jax.custom_vjp`` core from a platform's two kernel launchers.

    ``forward_call(st, gates, r, state0, keep, save)`` -> (h, prev, final), where ``prev`` holds the
    state entering each step when ``save``; ``backward_call(st, gates, r, prev, d_h, d_final, keep)``
    -> (d_gates, d_state0). The weights' gradient is one matmul outside the kernels.

    The returned ``scan(st, gates, r, state0, keep)`` takes the kernel layout (``to_kernel_layout``)
    and returns h (NH, Sp, Bp, DH) and the final state 4 x (NH, Bp, DH); ``st`` is static.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def scan(st, gates, r, state0, keep):
        h, _, final = forward_call(st, gates, r, state0, keep, save=False)
        return h, final

    def scan_fwd(st, gates, r, state0, keep):
        h, prev, final = forward_call(st, gates, r, state0, keep, save=True)
        return (h, final), (gates, r, prev, keep)

    def scan_bwd(st, res, cotangents):
        gates, r, prev, keep = res
        d_h, d_final = cotangents
        d_gates, d_state0 = backward_call(st, gates, r, prev, d_h, tuple(d_final), keep)
        d_r = jnp.einsum("hsbd,hsgbo->hgdo", prev[0], d_gates, precision=jax.lax.Precision.HIGHEST)
        return d_gates, d_r, d_state0, None

    scan.defvjp(scan_fwd, scan_bwd)
    return scan
