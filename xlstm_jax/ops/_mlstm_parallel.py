"""mLSTM parallel (quadratic) form: the stabilized attention-like formulation.

Same function as ``mlstm_kernels`` ``parallel--native_stablef``: O(S^2) time and
memory, exact gradients by autodiff. Used as a reference and for short sequences.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._checks import check_eps
from ._transforms import static_setting
from .decay import cumulative_forget, log_decay_matrix
from .mlstm_inputs import isolate_nonfinite, normalizer_floor, prepare


def mlstm_parallel(q, k, v, i, f, *, eps: float = 1e-6) -> jax.Array:
    """Stabilized quadratic mLSTM::

        logD[t, s] = sum_{r=s+1..t} log_sigmoid(f[r]) + i[s]   (s <= t)
        m[t]       = max_s logD[t, s]
        P          = (q k^T / sqrt(DHQK)) * exp(logD - m)
        h          = P v / (max(|rowsum P|, exp(-m)) + eps)

    Unlike the chunkwise and recurrent forms there is no initial state, and m has
    no ``m_0 = 0`` term: h agrees with them except where the ``exp(-m)`` floor is
    active (float64 differences of order 1e-6 relative, as in the official code).
    A NaN or inf in k or v at step s makes h NaN from s on and not before, as in
    the recurrent form (``mlstm_inputs.isolate_nonfinite``).

    Args:
      q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S) pre-activations.
      eps: added to the normalizer.

    Returns:
      h: (B, NH, S, DHV) in the dtype of q, k, v.
    """
    return _parallel(q, k, v, i, f, eps=check_eps(static_setting("mlstm_parallel", "eps", eps)))


@partial(jax.jit, static_argnames=("eps",))
def _parallel(q, k, v, i, f, *, eps: float) -> jax.Array:
    x = prepare(q, k, v, i, f, None, sequence=True, state_name="initial_state")
    log_d = log_decay_matrix(cumulative_forget(jax.nn.log_sigmoid(x.f)), x.i)  # (B, NH, S, S)
    m = jnp.max(log_d, axis=-1)  # (B, NH, S)
    k, v, reached = isolate_nonfinite(x.k, x.v)
    scores = jnp.einsum("bhtd,bhsd->bhts", x.q * (x.q.shape[-1] ** -0.5), k)
    p = scores * jnp.exp(log_d - m[..., None])
    den = jnp.maximum(jnp.abs(jnp.sum(p, axis=-1)), normalizer_floor(m)) + eps
    h = jnp.einsum("bhts,bhsd->bhtd", p / den[..., None], v)
    return reached.h(h).astype(x.out_dtype)
