"""The sLSTM step math shared by the XLA scan (``slstm_scan``) and the Pallas kernels.

One copy of the pointwise cell and its exact derivative, so that every implementation applies the
same rules (the per-element first-step rule ``n == 0 -> m = i``, the tie rules of max/min):

* ``prepare``: check shapes and dtypes, add the bias to the input-side gates, and flatten the
  recurrent kernel to (NH, DH, 4 * DH);
* ``pointwise``: one step from the pre-activations (i, f, z, o) and the previous state;
* ``local_jacobian`` and ``pointwise_backward``: that step's backward, split into the coefficients
  that do not depend on the incoming cotangent (computed for all steps at once) and the few
  multiply-adds that do (the body of a reverse-time scan).

The formulas are in the docstring of ``xlstm_jax.ops._slstm``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._checks import check_shapes, compute_dtype, match_varying
from ._states import SLSTMState

GATES = 4  # i, f, z, o


def prepare(gates_x, recurrent_kernel, bias, state, *, sequence: bool, state_name: str):
    gate_dims = ("B", "S", GATES, "NH", "DH") if sequence else ("B", GATES, "NH", "DH")
    specs = [
        ("gates_x", gates_x, gate_dims),
        ("recurrent_kernel", recurrent_kernel, ("NH", "DH", GATES, "DH")),
        ("bias", bias, ("NH", GATES, "DH")),
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
    kernel = jnp.asarray(recurrent_kernel, dtype).reshape(nh, dh, GATES * dh)
    # Bias with the input-side gates, in gates_x's (..., gate, head, unit) order.
    gates = jnp.asarray(gates_x, dtype) + jnp.swapaxes(jnp.asarray(bias, dtype), 0, 1)
    return match_varying((gates, kernel, state))


def pointwise(raw, state: SLSTMState) -> SLSTMState:
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


class LocalJacobian(NamedTuple):
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


def local_jacobian(raw, prev: SLSTMState) -> LocalJacobian:
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
    return LocalJacobian(
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


def pointwise_backward(jac: LocalJacobian, d: SLSTMState):
    """Cotangents of (raw, prev state) from those of the new state; the exact
    derivative of ``pointwise`` (checked against ``jax.vjp`` in the tests).

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
