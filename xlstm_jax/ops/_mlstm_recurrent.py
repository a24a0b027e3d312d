"""mLSTM recurrent form: one step, and a ``lax.scan`` of it over a sequence.

The step is the definition every other form is checked against
(docs/design.md §mLSTM recurrent)::

    logf_t = log_sigmoid(f_t)
    m_t    = max(logf_t + m_{t-1}, i_t)
    C_t    = exp(logf_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T
    n_t    = exp(logf_t + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t
    h_t    = (q_t/sqrt(DHQK))^T C_t / (max(|(q_t/sqrt(DHQK)) . n_t|, exp(-m_t)) + eps)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._checks import check_eps
from ._states import MLSTMState
from ._transforms import static_setting
from .mlstm_inputs import normalizer_floor, prepare


def _step(q, k, v, i, f, state: MLSTMState, eps: float):
    """Unchecked step on compute-dtype arrays; shapes as in ``mlstm_step``."""
    c, n, m = state
    logf = jax.nn.log_sigmoid(f)
    m_new = jnp.maximum(logf + m, i)  # (B, NH)
    decay = jnp.exp(logf + m - m_new)
    gate_in = jnp.exp(i - m_new)
    c_new = decay[..., None, None] * c + gate_in[..., None, None] * (k[..., :, None] * v[..., None, :])
    n_new = decay[..., None] * n + gate_in[..., None] * k
    q_scaled = q * (q.shape[-1] ** -0.5)
    num = jnp.einsum("bhd,bhde->bhe", q_scaled, c_new)
    qn = jnp.einsum("bhd,bhd->bh", q_scaled, n_new)
    den = jnp.maximum(jnp.abs(qn), normalizer_floor(m_new)) + eps
    return num / den[..., None], MLSTMState(c_new, n_new, m_new)


def mlstm_step(q, k, v, i, f, state: MLSTMState | None, *, eps: float = 1e-6):
    """One mLSTM token.

    Args:
      q, k: (B, NH, DHQK). q is scaled by DHQK**-0.5 inside.
      v: (B, NH, DHV).
      i, f: (B, NH) input- and forget-gate pre-activations.
      state: ``MLSTMState`` with c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH);
        zeros when None.
      eps: added to the normalizer.

    Returns:
      ``(h, state)``: h (B, NH, DHV) in the dtype of q, k, v; the new state in float32
      (float64 for float64 inputs).
    """
    return _step_op(q, k, v, i, f, state, eps=check_eps(static_setting("mlstm_step", "eps", eps)))


@partial(jax.jit, static_argnames=("eps",))
def _step_op(q, k, v, i, f, state: MLSTMState | None, *, eps: float):
    x = prepare(q, k, v, i, f, state, sequence=False, state_name="state")
    h, new_state = _step(x.q, x.k, x.v, x.i, x.f, x.state, eps)
    return h.astype(x.out_dtype), new_state


def mlstm_recurrent(q, k, v, i, f, *, initial_state: MLSTMState | None = None, eps: float = 1e-6):
    """mLSTM over a sequence by a ``lax.scan`` of the step (O(S) time, O(1) state).

    The slow, obviously-correct twin of ``mlstm_chunkwise``; its gradient stores
    one (DHQK, DHV) state per token.

    Args:
      q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S) pre-activations.
      initial_state: ``MLSTMState`` or None (zeros).

    Returns:
      ``(h, state)``: h (B, NH, S, DHV) in the dtype of q, k, v, and the final state.
    """
    eps = check_eps(static_setting("mlstm_recurrent", "eps", eps))
    return _recurrent(q, k, v, i, f, initial_state=initial_state, eps=eps)


@partial(jax.jit, static_argnames=("eps",))
def _recurrent(q, k, v, i, f, *, initial_state: MLSTMState | None, eps: float):
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")

    def body(state, xs):
        h, state = _step(*xs, state, eps)
        return state, h

    seq_first = lambda a: jnp.moveaxis(a, 2, 0)
    final, h = jax.lax.scan(body, x.state, tuple(map(seq_first, (x.q, x.k, x.v, x.i, x.f))))
    return jnp.moveaxis(h, 0, 2).astype(x.out_dtype), final
