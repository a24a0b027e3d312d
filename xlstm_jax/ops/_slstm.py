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

import jax
import jax.numpy as jnp

from ._states import SLSTMState
from ._transforms import reverse_mode_only, static_setting
from .context_parallel import heads_parallel
from .slstm_math import GATES, local_jacobian, pointwise, pointwise_backward, prepare


def _recurrent_step(gates_hg, kernel, state_h: SLSTMState) -> SLSTMState:
    """One step in the scan layout: gates_hg (NH, B, 4, DH); state fields (NH, B, DH)."""
    nh, _, dh = state_h.h.shape
    rec = jnp.einsum("hbd,hdo->hbo", state_h.h, kernel).reshape(nh, -1, GATES, dh)
    raw = jnp.moveaxis(gates_hg + rec, 2, 0)  # (4, NH, B, DH)
    return pointwise(raw, state_h)


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
    gates, kernel, state = prepare(gates_x, recurrent_kernel, bias, state, sequence=False, state_name="state")
    gates = jnp.transpose(gates, (2, 0, 1, 3))  # (NH, B, 4, DH)
    new = _to_heads_first(_recurrent_step(gates, kernel, _to_heads_first(state)))
    return new.h.astype(gates_x.dtype), new


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
    jac = jax.lax.optimization_barrier(local_jacobian(jnp.moveaxis(raw, 3, 0), prev))
    kernel_t = jnp.swapaxes(kernel, 1, 2)  # (NH, 4*DH, DH)

    def body(carry: SLSTMState, xs):
        jac_t, d_out_t, keep_t = xs
        d_raw, d_prev = pointwise_backward(jac_t, jax.tree.map(jnp.add, carry, d_out_t))
        d_h = jnp.einsum("hbo,hod->hbd", d_raw.reshape(nh, -1, GATES * dh), kernel_t)
        return _reset(d_prev._replace(h=d_h), keep_t), d_raw

    d_state0, d_gates = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, state0), (jac, d_states, keep), reverse=True)
    d_kernel = jnp.einsum("shbd,shbo->hdo", prev.h, d_gates.reshape(*d_gates.shape[:3], -1))
    return d_gates, d_kernel, d_state0, None


_scan.defvjp(_scan_fwd, _scan_bwd)


def slstm_scan(
    gates_x,
    recurrent_kernel,
    bias,
    *,
    initial_state: SLSTMState | None = None,
    resets=None,
    context_axis: str | tuple[str, ...] | None = None,
):
    """sLSTM over a sequence with ``lax.scan``.

    The gradient is a custom reverse-time scan (the slow twin it is tested against
    is autodiff through a loop of ``slstm_step``).

    Args:
      gates_x: (B, S, 4, NH, DH) input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel: (NH, DH, 4, DH); ``raw[b, g, h, o] += sum_d h_prev[b, h, d] R[h, d, g, o]``.
      bias: (NH, 4, DH).
      initial_state: ``SLSTMState`` (h, c, n, m), each (B, NH, DH); zeros when None.
      resets: optional (B, S) bool array (or nested lists / numpy); True where the state
        is reset to zeros before the token (the first token of a new document in a packed row).
      context_axis: the mesh axis name (or names) the sequence is split over, in order, when called
        inside ``jax.shard_map`` (context parallelism): S is this device's slice, ``initial_state``
        the state before the whole sequence, and the returned state the one after it, the same on
        every device. The heads are independent, so an ``all_to_all`` switches to head-sharded around
        the scan and back (``ops.context_parallel.heads_parallel``; NH not divisible by the axis size
        gathers the whole sequence instead, logged once). None: the whole sequence is here.

    Returns:
      ``(h, state)``: h (B, S, NH, DH) in the dtype of gates_x, and the final state.

    Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) is not available through the
    custom VJP: use ``jax.jacrev`` / ``jax.vjp``, or a ``lax.scan`` of ``slstm_step``.
    """
    if resets is not None:
        resets = jnp.asarray(resets)  # lists, tuples and numpy arrays as well as jax arrays
    with reverse_mode_only(
        "slstm_scan", "use jax.jacrev, jax.vjp or jax.grad, or a jax.lax.scan of slstm_step for forward mode"
    ):
        if context_axis is not None:
            axis = static_setting("slstm_scan", "context_axis", context_axis)
            run = lambda g, r, b, state, res: _scan_op(g, r, b, initial_state=state, resets=res)
            return heads_parallel(run, gates_x, recurrent_kernel, bias, initial_state, resets, axis)
        return _scan_op(gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets)


@jax.jit
def _scan_op(gates_x, recurrent_kernel, bias, *, initial_state: SLSTMState | None, resets):
    gates, kernel, state = prepare(
        gates_x, recurrent_kernel, bias, initial_state, sequence=True, state_name="initial_state"
    )
    b, s = gates_x.shape[:2]
    if resets is None:
        keep = jnp.ones((s, b), bool)
    else:
        if jnp.shape(resets) != (b, s) or jnp.asarray(resets).dtype != jnp.bool_:
            raise ValueError(
                f"resets must be a (B={b}, S={s}) bool array, got shape {jnp.shape(resets)} and dtype {resets.dtype}"
            )
        keep = jnp.logical_not(resets).T
    gates = jnp.transpose(gates, (1, 3, 0, 2, 4))  # (S, NH, B, 4, DH), bias already added
    states = _scan(gates, kernel, _to_heads_first(state), keep)  # fields (S, NH, B, DH)
    final = SLSTMState(*(jnp.swapaxes(x[-1], 0, 1) for x in states))
    return jnp.transpose(states.h, (2, 0, 1, 3)).astype(gates_x.dtype), final
