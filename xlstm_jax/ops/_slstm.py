"""sLSTM cell: scalar memory with exponential gating and a block-diagonal recurrence.

Pointwise step, as the official vanilla cell (docs/design.md §sLSTM)::

    raw[b, g, h, o] = gates_x[b, g, h, o] + sum_d h_prev[b, h, d] R[h, d, g, o] + bias[h, g, o]
    logfm  = m + log_sigmoid(f_raw)
    m_new  = i_raw                if n == 0        (first step)
           = max(i_raw, logfm)    otherwise
    i      = min(exp(i_raw - m_new), 1);   f = min(exp(logfm - m_new), 1)
    c_new  = f c + i tanh(z_raw);   n_new = f n + i;   h_new = sigmoid(o_raw) c_new / n_new

One documented difference: the official cell decides the "first step" rule for
the whole state tensor at once (``torch.all(n == 0)``); here it is decided per
element. Both agree whenever n is zero everywhere (a fresh state) or nowhere; a
state that is zero in some rows only (for example a batch in which some sequences
were reset) is handled per row here, which is what the rule is meant to do.

``min(exp(x), 1)`` is computed as ``exp(min(x, 0))``: the same value, without the
``0 * inf`` that would poison gradients when the first step has ``exp(x)`` overflow.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._checks import check_shapes, compute_dtype
from ._states import SLSTMState

_GATES = 4  # i, f, z, o


def _prepare(gates_x, recurrent_kernel, bias, state, *, sequence: bool, state_name: str):
    gate_dims = ("B", "S", _GATES, "NH", "DH") if sequence else ("B", _GATES, "NH", "DH")
    specs = [
        ("gates_x", gates_x, gate_dims),
        ("recurrent_kernel", recurrent_kernel, ("NH", "DH", _GATES, "DH")),
        ("bias", bias, ("NH", _GATES, "DH")),
    ]
    if state is not None:
        if not isinstance(state, tuple) or len(state) != 4:
            raise ValueError(
                f"{state_name} must be an SLSTMState(h, c, n, m) or an (h, c, n, m) tuple, got {type(state).__name__}"
            )
        state = SLSTMState(*state)
        specs += [(f"{state_name}.{name}", x, ("B", "NH", "DH")) for name, x in state._asdict().items()]
    bound = check_shapes(specs)
    dtype = compute_dtype(gates_x, recurrent_kernel, bias, *(state or ()))
    if state is None:
        state = SLSTMState.zeros(bound["B"], bound["NH"], bound["DH"], dtype)
    state = SLSTMState(*(jnp.asarray(x, dtype) for x in state))
    nh, dh = bound["NH"], bound["DH"]
    kernel = jnp.asarray(recurrent_kernel, dtype).reshape(nh, dh, _GATES * dh)
    # Bias with the input-side gates, in gates_x's (..., gate, head, unit) order.
    gates = jnp.asarray(gates_x, dtype) + jnp.swapaxes(jnp.asarray(bias, dtype), 0, 1)
    return gates, kernel, state


def _pointwise(raw, state: SLSTMState) -> SLSTMState:
    """raw: (4, ...) pre-activations i, f, z, o; state fields (...)."""
    i_raw, f_raw, z_raw, o_raw = raw
    _, c, n, m = state
    logfm = m + jax.nn.log_sigmoid(f_raw)
    m_new = jnp.where(n == 0, i_raw, jnp.maximum(i_raw, logfm))
    gate_i = jnp.exp(jnp.minimum(i_raw - m_new, 0.0))
    gate_f = jnp.exp(jnp.minimum(logfm - m_new, 0.0))
    c_new = gate_f * c + gate_i * jnp.tanh(z_raw)
    n_new = gate_f * n + gate_i
    h_new = jax.nn.sigmoid(o_raw) * c_new / n_new
    return SLSTMState(h_new, c_new, n_new, m_new)


def _recurrent_step(gates_hg, kernel, state_h: SLSTMState) -> SLSTMState:
    """One step in the scan layout: gates_hg (NH, B, 4, DH); state fields (NH, B, DH)."""
    nh, _, dh = state_h.h.shape
    rec = jnp.einsum("hbd,hdo->hbo", state_h.h, kernel).reshape(nh, -1, _GATES, dh)
    raw = jnp.moveaxis(gates_hg + rec, 2, 0)  # (4, NH, B, DH)
    return _pointwise(raw, state_h)


def _to_heads_first(state: SLSTMState) -> SLSTMState:
    return SLSTMState(*(jnp.swapaxes(x, 0, 1) for x in state))


@jax.jit
def slstm_step(gates_x, recurrent_kernel, bias, state: SLSTMState | None):
    """One sLSTM token.

    Args:
      gates_x: (B, 4, NH, DH) input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel: (NH, DH, 4, DH) block-diagonal recurrent weights acting on
        the previous hidden output.
      bias: (NH, 4, DH).
      state: ``SLSTMState`` (h, c, n, m), each (B, NH, DH); zeros when None.

    Returns:
      ``(h, state)``: h (B, NH, DH) in the dtype of gates_x; the state in float32
      (float64 for float64 inputs).
    """
    gates, kernel, state = _prepare(gates_x, recurrent_kernel, bias, state, sequence=False, state_name="state")
    gates = jnp.transpose(gates, (2, 0, 1, 3))  # (NH, B, 4, DH)
    new = _to_heads_first(_recurrent_step(gates, kernel, _to_heads_first(state)))
    return new.h.astype(gates_x.dtype), new


class _LocalJacobian(NamedTuple):
    """Coefficients of the pointwise step's backward that do not depend on the
    incoming cotangent; each field has the shape of one state field."""

    so_n: jax.Array  # sigmoid(o) / n
    h_n: jax.Array  # h / n
    c_prev: jax.Array
    n_prev: jax.Array
    tanh_z: jax.Array
    a_i: jax.Array  # d gate_i / d(i - m)
    a_f: jax.Array  # d gate_f / d(logfm - m)
    w_i: jax.Array  # share of dm that goes to i (the rest goes to logfm)
    sig_neg_f: jax.Array  # d log_sigmoid(f) / df
    a_z: jax.Array  # gate_i * tanh'(z)
    a_o: jax.Array  # (c / n) * sigmoid'(o)
    gate_f: jax.Array


def _tie_weight(x, y):
    """d max(x, y) / dx with JAX's rule for ties: 1, 1/2 or 0."""
    return jnp.where(x > y, 1.0, jnp.where(x == y, 0.5, 0.0))


def _local_jacobian(raw, prev: SLSTMState) -> _LocalJacobian:
    """raw: (4, ...) pre-activations; prev: the state before the step. Vectorized over steps."""
    i_raw, f_raw, z_raw, o_raw = raw
    _, c, n, m = prev
    logfm = m + jax.nn.log_sigmoid(f_raw)
    first = n == 0
    m_new = jnp.where(first, i_raw, jnp.maximum(i_raw, logfm))
    x_i, x_f = i_raw - m_new, logfm - m_new
    gate_i, gate_f = jnp.exp(jnp.minimum(x_i, 0.0)), jnp.exp(jnp.minimum(x_f, 0.0))
    tanh_z, sig_o = jnp.tanh(z_raw), jax.nn.sigmoid(o_raw)
    c_new = gate_f * c + gate_i * tanh_z
    n_new = gate_f * n + gate_i
    return _LocalJacobian(
        so_n=sig_o / n_new,
        h_n=sig_o * c_new / (n_new * n_new),
        c_prev=c,
        n_prev=n,
        tanh_z=tanh_z,
        a_i=gate_i * _tie_weight(0.0, x_i),
        a_f=gate_f * _tie_weight(0.0, x_f),
        w_i=jnp.where(first, 1.0, _tie_weight(i_raw, logfm)),
        sig_neg_f=jax.nn.sigmoid(-f_raw),
        a_z=gate_i * (1.0 - tanh_z * tanh_z),
        a_o=c_new / n_new * sig_o * (1.0 - sig_o),
        gate_f=gate_f,
    )


def _pointwise_backward(jac: _LocalJacobian, d: SLSTMState):
    """Cotangents of (raw, prev state) from those of the new state; the exact
    derivative of ``_pointwise`` (checked against ``jax.vjp`` in the tests).

    Returns d_raw stacked on axis -2 (..., 4, DH) and d_prev (d_prev.h = 0: the
    previous h only enters through the recurrent matmul, added by the caller).
    """
    dc = d.c + d.h * jac.so_n
    dn = d.n - d.h * jac.h_n
    dx_i = (dc * jac.tanh_z + dn) * jac.a_i
    dx_f = (dc * jac.c_prev + dn * jac.n_prev) * jac.a_f
    dm = d.m - dx_i - dx_f
    dlogfm = dx_f + dm * (1.0 - jac.w_i)
    d_raw = jnp.stack([dx_i + dm * jac.w_i, dlogfm * jac.sig_neg_f, dc * jac.a_z, d.h * jac.a_o], axis=-2)
    return d_raw, SLSTMState(jnp.zeros_like(dc), dc * jac.gate_f, dn * jac.gate_f, dlogfm)


def _reset(state: SLSTMState, keep: jax.Array) -> SLSTMState:
    """Zero the state where ``keep`` (B,) is False; fields (NH, B, DH)."""
    return SLSTMState(*(jnp.where(keep[None, :, None], x, jnp.zeros((), x.dtype)) for x in state))


def _scan_forward(gates, kernel, state0: SLSTMState, keep):
    """gates (S, NH, B, 4, DH) with bias; kernel (NH, DH, 4*DH); state0 fields (NH, B, DH);
    keep (S, B) bool, False where the state is reset to zeros before the step.

    Returns every step's state, fields (S, NH, B, DH).
    """

    def body(carry, xs):
        gates_t, keep_t = xs
        new = _recurrent_step(gates_t, kernel, _reset(carry, keep_t))
        return new, new

    return jax.lax.scan(body, state0, (gates, keep), unroll=2)[1]


@jax.custom_vjp
def _scan(gates, kernel, state0: SLSTMState, keep) -> SLSTMState:
    return _scan_forward(gates, kernel, state0, keep)


def _scan_fwd(gates, kernel, state0, keep):
    states = _scan_forward(gates, kernel, state0, keep)
    return states, (gates, kernel, state0, keep, states)


def _scan_bwd(res, d_states: SLSTMState):
    """Reverse-time scan whose body is a few multiply-adds plus one small matmul.

    Everything that does not depend on the incoming cotangent (recurrent
    pre-activations, gate values, transcendental functions) is computed for all
    steps at once before the scan; the kernel's gradient is one matmul after it.
    """
    gates, kernel, state0, keep, states = res
    nh, dh = kernel.shape[0], kernel.shape[1]
    prev = SLSTMState(*(jnp.concatenate([x0[None], x[:-1]]) for x0, x in zip(state0, states)))
    prev = jax.vmap(_reset)(prev, keep)  # the state each step actually started from
    raw = gates + jnp.einsum("shbd,hdo->shbo", prev.h, kernel).reshape(gates.shape)  # (S, NH, B, 4, DH)
    # The barrier materializes the coefficients for all steps at once; without it
    # XLA fuses their transcendental math into the loop body, one step at a time
    # (measured 2x slower on CPU).
    jac = jax.lax.optimization_barrier(_local_jacobian(jnp.moveaxis(raw, 3, 0), prev))
    kernel_t = jnp.swapaxes(kernel, 1, 2)  # (NH, 4*DH, DH)

    def body(carry: SLSTMState, xs):
        jac_t, d_out_t, keep_t = xs
        d_raw, d_prev = _pointwise_backward(jac_t, jax.tree.map(jnp.add, carry, d_out_t))
        d_h = jnp.einsum("hbo,hod->hbd", d_raw.reshape(nh, -1, _GATES * dh), kernel_t)
        return _reset(d_prev._replace(h=d_h), keep_t), d_raw

    d_state0, d_gates = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, state0), (jac, d_states, keep), reverse=True)
    d_kernel = jnp.einsum("shbd,shbo->hdo", prev.h, d_gates.reshape(*d_gates.shape[:3], -1))
    return d_gates, d_kernel, d_state0, None


_scan.defvjp(_scan_fwd, _scan_bwd)


@jax.jit
def slstm_scan(gates_x, recurrent_kernel, bias, *, initial_state: SLSTMState | None = None, resets=None):
    """sLSTM over a sequence with ``lax.scan``.

    The gradient is a custom reverse-time scan (the slow twin it is tested against
    is autodiff through a loop of ``slstm_step``).

    Args:
      gates_x: (B, S, 4, NH, DH) input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel: (NH, DH, 4, DH); ``raw[b, g, h, o] += sum_d h_prev[b, h, d] R[h, d, g, o]``.
      bias: (NH, 4, DH).
      initial_state: ``SLSTMState`` (h, c, n, m), each (B, NH, DH); zeros when None.
      resets: optional (B, S) bool; True where the state is reset to zeros before the
        token (the first token of a new document in a packed row).

    Returns:
      ``(h, state)``: h (B, S, NH, DH) in the dtype of gates_x, and the final state.
    """
    gates, kernel, state = _prepare(
        gates_x, recurrent_kernel, bias, initial_state, sequence=True, state_name="initial_state"
    )
    b, s = gates_x.shape[:2]
    if resets is None:
        keep = jnp.ones((s, b), bool)
    else:
        if jnp.shape(resets) != (b, s) or jnp.asarray(resets).dtype != jnp.bool_:
            raise ValueError(f"resets must be a (B={b}, S={s}) bool array, got {jnp.shape(resets)} {resets.dtype}")
        keep = jnp.logical_not(resets).T
    gates = jnp.transpose(gates, (1, 3, 0, 2, 4))  # (S, NH, B, 4, DH), bias already added
    states = _scan(gates, kernel, _to_heads_first(state), keep)  # fields (S, NH, B, DH)
    final = SLSTMState(*(jnp.swapaxes(x[-1], 0, 1) for x in states))
    return jnp.transpose(states.h, (2, 0, 1, 3)).astype(gates_x.dtype), final
