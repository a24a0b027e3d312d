"""Forward pass of the chunkwise mLSTM: linear cost in S, the XLA twin of the TFLA kernels.

The sequence is cut into NC chunks of length L (docs/design.md §mLSTM chunkwise). Per chunk,
with ``b`` the cumulative log forget gates inside the chunk and ``g = b[L-1]``:

* Stabilizers (``stabilizers``, O(S) work): the memory's log scale after each chunk,
  ``M_k = max(g_k + M_{k-1}, max_t a_t)`` with ``a_t = g - b_t + i_t`` and ``M_0 = m0``,
  and the per-token output stabilizer ``m_t = b_t + max(M_{k-1}, max_{s<=t} (i_s - b_s))``.
* Inter-chunk (``chunk_states``): the memory entering every chunk,
  ``C_k = exp(g_k + M_{k-1} - M_k) C_{k-1} + sum_t exp(a_t - M_k) k_t v_t^T`` (same for n).
  The per-chunk sums are one batched matmul; the recurrence over chunks (``scan_chunks``) does
  only elementwise work: written out inline up to ``INLINE_CHUNKS`` chunks, a loop beyond, so
  compile time does not grow with NC.
* Intra-chunk (``chunk_outputs``): for all chunks in parallel, the memory's
  contribution plus a causal, decay-weighted attention inside the chunk.

The stabilizers only rescale: every h depends on them through eps alone (the floor
``exp(-m)`` is the constant 1 before stabilization). That is what makes the analytic
backward in ``_chunkwise_bwd`` short: it differentiates with the stabilizers
held fixed, then adds their exact eps and final-state terms.

Any S works: the sequence is padded to a multiple of L with tokens that neither
write to nor decay the memory (i = -inf, log forget gate = 0), which leaves h
and the final state exactly unchanged. A forget-gate pre-activation of -inf is an
exact reset (``decay.CumulativeForget``): the masks above drop every path
across it, without infinities in any difference.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .chunkwise_math import Stabilizers, stabilizers
from .decay import by_resets, cumulative_forget, first_segment, log_decay_matrix


def chunk_states(k, v, logf, st: Stabilizers, c0, n0):
    """Memory entering every chunk, and the final memory.

    Args:
      k: (B, NH, NC, L, DHQK); v: (B, NH, NC, L, DHV); logf: (B, NH, NC, L).
      c0, n0: initial memory (B, NH, DHQK, DHV), (B, NH, DHQK), at scale ``st.m_before[..., 0]``.

    Returns:
      ``(c_before, n_before, c_final, n_final)``; the ``_before`` arrays are stacked
      over chunks: (B, NH, NC, DHQK, DHV) and (B, NH, NC, DHQK).
    """
    w = jnp.exp(st.a - st.m_after[..., None])  # (B, NH, NC, L), <= 1
    kv = jnp.einsum("bhcld,bhcle->bhcde", k * w[..., None], v)
    ksum = jnp.einsum("bhcld,bhcl->bhcd", k, w)
    decay = jnp.exp(st.g + st.m_before - st.m_after)  # (B, NH, NC)

    (c_final, n_final), (c_before, n_before) = scan_chunks(decay, (kv, ksum), (c0, n0))
    return c_before, n_before, c_final, n_final


INLINE_CHUNKS = 32


def scan_chunks(decay, xs, init, *, reverse: bool = False, inline_chunks: int = INLINE_CHUNKS):
    """The linear recurrence over chunks: ``carry_k = decay_k * carry_{k-1} + xs_k``, elementwise.

    Args:
      decay: (B, NH, NC), broadcast over each carry's trailing axes.
      xs: a tuple of arrays (B, NH, NC, ...), one per carry; ``init`` the matching tuple (B, NH, ...).
      reverse: run from the last chunk to the first.

    Returns:
      ``(final, before)``: the carries after the last chunk, and the carry before each chunk stacked
      on axis 2 (the shapes of ``xs``).

    Up to ``inline_chunks`` chunks are written out inline. More run as a ``lax.fori_loop`` that reads
    chunk k of ``xs`` and writes the carry into chunk k of the output in place, on axis 2 as the
    arrays lie: a ``lax.scan`` needs the chunk axis first, and its transposes of ``xs`` and of the
    output cost the S=4096 forward 9% of its time on one CPU core (``benchmarks/RESULTS.md``,
    session 31). Against the inline form, that scan made the training step's chunkwise forward
    (8 chunks) 1.8x slower (session 29); at 64 chunks the inline form is the slower one (1.18x over
    two devices) and compiles longer (sessions 29 and 31).
    """
    nc = decay.shape[2]

    def step(carry, d, x):
        return tuple(d.reshape(d.shape + (1,) * (c.ndim - 2)) * c + xk for c, xk in zip(carry, x))

    if nc > inline_chunks:
        chunk = lambda a, k: jax.lax.dynamic_index_in_dim(a, k, axis=2, keepdims=False)

        def body(n, state):
            carry, before = state
            k = nc - 1 - n if reverse else n
            before = tuple(jax.lax.dynamic_update_index_in_dim(b, c, k, axis=2) for b, c in zip(before, carry))
            return step(carry, chunk(decay, k), tuple(chunk(x, k) for x in xs)), before

        return jax.lax.fori_loop(0, nc, body, (tuple(init), tuple(map(jnp.zeros_like, xs))))
    carry, before = tuple(init), [None] * nc
    for k in reversed(range(nc)) if reverse else range(nc):
        before[k] = carry
        carry = step(carry, decay[:, :, k], tuple(x[:, :, k] for x in xs))
    return carry, tuple(jnp.stack([b[n] for b in before], axis=2) for n in range(len(xs)))


class IntraChunk(NamedTuple):
    """Intra-chunk quantities recomputed by the forward and the backward pass."""

    q_scaled: jax.Array  # (..., L, DHQK) q / sqrt(DHQK)
    decay: jax.Array  # (..., L, L) exp(logD - m), zero above the diagonal
    p: jax.Array  # (..., L, L) (q_scaled k^T) * decay
    alpha: jax.Array  # (..., L) exp(b + M_{k-1} - m): weight of the entering memory


def intra_chunk(q, k, logf, i, st: Stabilizers, resets: bool = True) -> IntraChunk:
    """``resets=False``: no ``logf`` is -inf (``decay.cumulative_forget``)."""
    cf = cumulative_forget(logf, resets)
    decay = jnp.exp(log_decay_matrix(cf, i) - st.m[..., None])
    q_scaled = q * (q.shape[-1] ** -0.5)
    p = jnp.einsum("bhctd,bhcsd->bhcts", q_scaled, k) * decay
    alpha = jnp.exp(first_segment(cf, (cf.hi + cf.lo) + st.m_before[..., None] - st.m))
    return IntraChunk(q_scaled, decay, p, alpha)


def chunk_outputs(v, intra: IntraChunk, c_before, n_before, m, eps: float):
    """h (B, NH, NC, L, DHV) and the signed normalizer d (B, NH, NC, L) before its floor."""
    q_in = intra.q_scaled * intra.alpha[..., None]
    num = jnp.einsum("bhctd,bhcde->bhcte", q_in, c_before) + jnp.einsum("bhcts,bhcse->bhcte", intra.p, v)
    d = jnp.einsum("bhctd,bhcd->bhct", q_in, n_before) + jnp.sum(intra.p, axis=-1)
    den = jnp.maximum(jnp.abs(d), jnp.exp(-m)) + eps
    return num / den[..., None], d


class Residuals(NamedTuple):
    """Everything the backward pass keeps: O(S (DHQK + DHV) + NC DHQK DHV) per head."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    logf: jax.Array
    i: jax.Array
    m0: jax.Array
    st: Stabilizers
    c_before: jax.Array
    n_before: jax.Array
    h: jax.Array
    d: jax.Array
    c_final: jax.Array
    n_final: jax.Array


def forward(q, k, v, logf, i, c0, n0, m0, chunk_size: int, eps: float, *, check_resets: bool):
    """Chunkwise mLSTM on inputs padded to a multiple of ``chunk_size``.

    ``check_resets``: look for resets at run time and run the reset-free math when there are none
    (``decay.by_resets``). The primal (no gradient) call does; the forward of the VJP does not: the
    ``lax.cond`` would keep XLA from sharing the intra-chunk matrices between the forward and the
    backward, which recomputes them (measured: fwd+bwd 13% slower with it).

    Returns ``((h, c, n, m), residuals)`` with h (B, NH, S, DHV).
    """
    b, nh, s, _ = q.shape
    split = lambda x: x.reshape(b, nh, s // chunk_size, chunk_size, *x.shape[3:])
    q, k, v, logf, i = map(split, (q, k, v, logf, i))
    math = partial(_forward_chunks, eps=eps)
    operands = (q, k, v, logf, i, c0, n0, m0)
    st, c_before, n_before, h, d, c_final, n_final = (
        by_resets(math, logf, *operands) if check_resets else math(*operands, resets=True)
    )
    res = Residuals(q, k, v, logf, i, m0, st, c_before, n_before, h, d, c_final, n_final)
    return (h.reshape(b, nh, s, -1), c_final, n_final, st.m_after[..., -1]), res


def _forward_chunks(q, k, v, logf, i, c0, n0, m0, *, eps: float, resets: bool):
    """The forward on chunked inputs (B, NH, NC, L, ...); ``resets`` as in ``decay.by_resets``.

    Returns the computed fields of ``Residuals``: (st, c_before, n_before, h, d, c_final, n_final).
    """
    st = stabilizers(logf, i, m0, resets)
    c_before, n_before, c_final, n_final = chunk_states(k, v, logf, st, c0, n0)
    h, d = chunk_outputs(v, intra_chunk(q, k, logf, i, st, resets), c_before, n_before, st.m, eps)
    return st, c_before, n_before, h, d, c_final, n_final
