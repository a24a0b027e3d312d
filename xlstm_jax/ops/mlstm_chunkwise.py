"""mLSTM chunkwise form: linear cost in S, the XLA twin of the TFLA kernels.

The sequence is cut into NC chunks of length L. Two phases (xlstm-reference.md 2.3):

1. Inter-chunk: a ``lax.scan`` over chunks carries the memory (C, n, m) from
   chunk to chunk. Each chunk's own contribution ``sum_t exp(a_t) k_t v_t^T`` is
   computed for all chunks at once by a batched matmul before the scan, so the
   scan body is elementwise and compile time does not grow with NC.
2. Intra-chunk: for every chunk in parallel, the output combines the
   contribution of the memory entering the chunk with a causal, decay-weighted
   attention inside the chunk, under one per-token max stabilizer.

``jax.custom_vjp`` keeps only the inputs as residuals and recomputes the rest in
the backward pass, so the memory kept for backward is O(S (DHQK + DHV)) per head,
and O((S/L) DHQK DHV) is needed transiently for the chunk states.

Any S works: the sequence is padded to a multiple of L with tokens that neither
write to nor decay the memory (i = -inf, log forget gate = 0), which leaves h
and the final state exactly unchanged.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._checks import check_eps, check_positive_int
from ._decay import log_decay_matrix
from ._mlstm_inputs import prepare
from .states import MLSTMState


def _chunk_states(k, v, logf, i, state: MLSTMState):
    """Phase 1: the memory entering every chunk, and the final memory.

    Args:
      k: (B, NH, NC, L, DHQK); v: (B, NH, NC, L, DHV); logf, i: (B, NH, NC, L).
      state: initial memory.

    Returns:
      ``(entering, final)``: ``entering`` holds (B, NH, NC, ...) stacked states,
      entry c being the memory before chunk c; ``final`` the memory after the last.
    """
    # a[t] = sum_{r>t} logf[r] + i[t]: log weight of token t in the chunk's end state.
    # A reverse exclusive cumulative sum, which never subtracts large partial sums.
    after = jnp.flip(jnp.cumsum(jnp.flip(logf, -1), axis=-1), -1)  # sum_{r>=t}
    after = jnp.concatenate([after[..., 1:], jnp.zeros_like(after[..., :1])], axis=-1)
    a = after + i
    a_max = jnp.max(a, axis=-1)  # (B, NH, NC)
    w = jnp.exp(a - a_max[..., None])  # (B, NH, NC, L), <= 1
    kv = jnp.einsum("bhcld,bhcle->bhcde", k * w[..., None], v)  # (B, NH, NC, DHQK, DHV)
    ksum = jnp.einsum("bhcld,bhcl->bhcd", k, w)  # (B, NH, NC, DHQK)
    g = jnp.sum(logf, axis=-1)  # (B, NH, NC) log decay across a whole chunk

    def body(carry: MLSTMState, xs):
        c, n, m = carry
        g_c, a_max_c, kv_c, ksum_c = xs
        m_new = jnp.maximum(g_c + m, a_max_c)
        decay = jnp.exp(g_c + m - m_new)
        scale = jnp.exp(a_max_c - m_new)
        c_new = decay[..., None, None] * c + scale[..., None, None] * kv_c
        n_new = decay[..., None] * n + scale[..., None] * ksum_c
        return MLSTMState(c_new, n_new, m_new), carry

    chunk_first = lambda x: jnp.moveaxis(x, 2, 0)  # noqa: E731
    final, entering = jax.lax.scan(body, state, tuple(map(chunk_first, (g, a_max, kv, ksum))))
    entering = MLSTMState(*(jnp.moveaxis(x, 0, 2) for x in entering))
    return entering, final


def _chunk_outputs(q, k, v, logf, i, entering: MLSTMState, eps: float):
    """Phase 2: h for every chunk in parallel.

    Args:
      q, k: (B, NH, NC, L, DHQK); v: (B, NH, NC, L, DHV); logf, i: (B, NH, NC, L).
      entering: memory before each chunk, c (B, NH, NC, DHQK, DHV), n (B, NH, NC, DHQK),
        m (B, NH, NC).

    Returns:
      h: (B, NH, NC, L, DHV).
    """
    c_prev, n_prev, m_prev = entering
    log_d = log_decay_matrix(logf, i)  # (B, NH, NC, L, L)
    m_inter = jnp.cumsum(logf, axis=-1) + m_prev[..., None]  # (B, NH, NC, L)
    m_comb = jnp.maximum(m_inter, jnp.max(log_d, axis=-1))
    q = q * (q.shape[-1] ** -0.5)
    p = jnp.einsum("bhctd,bhcsd->bhcts", q, k) * jnp.exp(log_d - m_comb[..., None])
    q_inter = q * jnp.exp(m_inter - m_comb)[..., None]
    num = jnp.einsum("bhctd,bhcde->bhcte", q_inter, c_prev) + jnp.einsum("bhcts,bhcse->bhcte", p, v)
    den = jnp.einsum("bhctd,bhcd->bhct", q_inter, n_prev) + jnp.sum(p, axis=-1)
    den = jnp.maximum(jnp.abs(den), jnp.exp(-m_comb)) + eps
    return num / den[..., None]


def _forward(q, k, v, logf, i, c0, n0, m0, chunk_size: int, eps: float):
    """Chunkwise mLSTM on padded inputs (S a multiple of ``chunk_size``)."""
    b, nh, s, _ = q.shape
    nc = s // chunk_size
    split = lambda x: x.reshape(b, nh, nc, chunk_size, *x.shape[3:])  # noqa: E731
    q, k, v, logf, i = map(split, (q, k, v, logf, i))
    entering, final = _chunk_states(k, v, logf, i, MLSTMState(c0, n0, m0))
    h = _chunk_outputs(q, k, v, logf, i, entering, eps)
    return (h.reshape(b, nh, s, -1), *final)


@partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _chunkwise(q, k, v, logf, i, c0, n0, m0, chunk_size, eps):
    return _forward(q, k, v, logf, i, c0, n0, m0, chunk_size, eps)


def _chunkwise_fwd(q, k, v, logf, i, c0, n0, m0, chunk_size, eps):
    out = _forward(q, k, v, logf, i, c0, n0, m0, chunk_size, eps)
    return out, (q, k, v, logf, i, c0, n0, m0)


def _chunkwise_bwd(chunk_size, eps, residuals, cotangents):
    # Recompute the chunk states and the intra-chunk activations instead of
    # keeping them alive between the forward and the backward pass.
    _, pullback = jax.vjp(partial(_forward, chunk_size=chunk_size, eps=eps), *residuals)
    return pullback(cotangents)


_chunkwise.defvjp(_chunkwise_fwd, _chunkwise_bwd)


@partial(jax.jit, static_argnames=("chunk_size", "eps"))
def mlstm_chunkwise(
    q,
    k,
    v,
    i,
    f,
    *,
    chunk_size: int = 64,
    initial_state: MLSTMState | None = None,
    eps: float = 1e-6,
):
    """Chunkwise-parallel mLSTM, linear in S (the form to train with on XLA).

    Args:
      q, k: (B, NH, S, DHQK). q is scaled by DHQK**-0.5 inside.
      v: (B, NH, S, DHV).
      i, f: (B, NH, S) input- and forget-gate pre-activations.
      chunk_size: chunk length L (any positive integer; S need not be a multiple).
        Sequences shorter than L run as one chunk of length S.
      initial_state: ``MLSTMState`` with c (B, NH, DHQK, DHV), n (B, NH, DHQK),
        m (B, NH); zeros when None.
      eps: added to the normalizer.

    Returns:
      ``(h, state)``: h (B, NH, S, DHV) in the dtype of q, k, v; the final state in
      float32 (float64 for float64 inputs). Equal to ``mlstm_recurrent`` up to
      floating-point rounding.
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    eps = check_eps(eps)
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")
    seq_len = x.q.shape[2]
    chunk_size = min(chunk_size, seq_len)
    pad = -seq_len % chunk_size
    logf = jax.nn.log_sigmoid(x.f)
    q_, k_, v_, logf, i_ = x.q, x.k, x.v, logf, x.i
    if pad:
        pad_seq = lambda a, value=0.0: jnp.pad(  # noqa: E731
            a, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 3), constant_values=value
        )
        q_, k_, v_, logf = map(pad_seq, (q_, k_, v_, logf))
        i_ = pad_seq(i_, -jnp.inf)
    h, c, n, m = _chunkwise(q_, k_, v_, logf, i_, *x.state, chunk_size, eps)
    return h[:, :, :seq_len].astype(x.out_dtype), MLSTMState(c, n, m)
