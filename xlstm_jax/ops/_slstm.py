"""sLSTM cell: scalar memory with exponential gating and a block-diagonal recurrence.

Pointwise step, as the official vanilla cell (xlstm-reference.md part B 6.2)::

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


@jax.jit
def slstm_scan(gates_x, recurrent_kernel, bias, *, initial_state: SLSTMState | None = None):
    """sLSTM over a sequence with ``lax.scan``.

    Args:
      gates_x: (B, S, 4, NH, DH) input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel: (NH, DH, 4, DH); ``raw[b, g, h, o] += sum_d h_prev[b, h, d] R[h, d, g, o]``.
      bias: (NH, 4, DH).
      initial_state: ``SLSTMState`` (h, c, n, m), each (B, NH, DH); zeros when None.

    Returns:
      ``(h, state)``: h (B, S, NH, DH) in the dtype of gates_x, and the final state.
    """
    gates, kernel, state = _prepare(
        gates_x, recurrent_kernel, bias, initial_state, sequence=True, state_name="initial_state"
    )
    gates = jnp.transpose(gates, (1, 3, 0, 2, 4))  # (S, NH, B, 4, DH), bias already added

    def body(carry, gates_t):
        new = _recurrent_step(gates_t, kernel, carry)
        return new, new.h

    final, h = jax.lax.scan(body, _to_heads_first(state), gates)  # h: (S, NH, B, DH)
    return jnp.transpose(h, (2, 0, 1, 3)).astype(gates_x.dtype), _to_heads_first(final)
