"""The chunkwise mLSTM math shared by the XLA form (``mlstm_chunkwise``) and the Pallas kernels.

Everything here is plain JAX and O(S) (no (L, L) or DHQK x DHV work), so one copy serves the XLA
reference and every kernel, and a kernel differs from its slow twin only in the heavy matmul passes:

* ``pad_to_chunks``: pad the sequence to a multiple of the chunk length with tokens that neither
  write to nor decay the memory (input gate -inf, log forget gate 0), which leaves h and the final
  state exactly unchanged;
* ``stabilizers``: the per-chunk memory scales M_k and the per-token output stabilizer m_t
  (differentiable; the backward pulls its eps and final-scale terms back through it);
* ``normalizer_cotangents``, ``gate_grads``, ``stabilizer_grads``: the backward's per-token algebra
  from the sums the heavy pass produces.

Shapes: the sequence axis is axis 2, (B, NH, S, ...); chunked arrays are (B, NH, NC, L, ...).
The derivation is in ``_chunkwise_fwd`` (forward) and ``_chunkwise_bwd`` (backward).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .decay import cumulative_forget, first_segment, last_segment, running_max


def pad_to_chunks(chunk_size: int, q, k, v, logf, i, *, logf_fill: float = 0.0):
    """Pad (B, NH, S, ...) q, k, v, log forget gates and input gates along S to a multiple of ``chunk_size``.

    Padded tokens have ``i = -inf`` (no write) and ``logf = logf_fill``; the default 0 is a log forget
    gate of 0 (no decay). A caller that passes forget-gate pre-activations instead passes
    ``logf_fill=inf`` (``log_sigmoid(inf) = 0``). Returns the five padded arrays.
    """
    pad = -q.shape[2] % chunk_size
    if not pad:
        return q, k, v, logf, i

    def pad_seq(a, value=0.0):
        return jnp.pad(a, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 3), constant_values=value)

    return pad_seq(q), pad_seq(k), pad_seq(v), pad_seq(logf, logf_fill), pad_seq(i, -jnp.inf)


class Stabilizers(NamedTuple):
    """Log scales chosen by the forward pass; all (B, NH, NC[, L])."""

    a: jax.Array  # (..., NC, L) log weight of token t in the memory after its chunk (-inf: reset after t)
    g: jax.Array  # (..., NC) log decay of the entering memory across the chunk (-inf: reset in the chunk)
    m_before: jax.Array  # (..., NC) memory scale entering chunk k (M_{k-1}); [..., 0] = m0
    m_after: jax.Array  # (..., NC) memory scale after chunk k (M_k); [..., -1] = final m
    m: jax.Array  # (..., NC, L) per-token output stabilizer


def _then(earlier, later):
    """The chunk maps x -> max(g + x, a) as pairs (g, a): ``earlier`` composed with ``later`` (applied
    after it) is max(g1 + g2 + x, max(g2 + a1, a2)). Associative; -inf entries stay -inf (no inf - inf)."""
    (g1, a1), (g2, a2) = earlier, later
    return g1 + g2, jnp.maximum(g2 + a1, a2)


def memory_scales(g, a_max, m0):
    """The memory scale after every chunk, M_k = max(g_k + M_{k-1}, a_max_k) with M_{-1} = m0.

    One ``associative_scan`` over the chunk axis (log depth): a sequential ``lax.scan`` is one loop
    iteration per chunk, which on a GPU costs more than the kernels themselves at long sequences
    (benchmarks/RESULTS.md, "The kernels on an H200"). Summation order differs from the loop's
    (``tests/test_chunkwise_math.py`` compares the two).

    Args:
      g: (..., NC) log decay across each chunk; a_max: (..., NC) the chunk's largest write weight;
        m0: (...) the scale entering the first chunk.

    Returns:
      M (..., NC).
    """
    g_all, a_all = jax.lax.associative_scan(_then, (g, a_max), axis=g.ndim - 1)
    return jnp.maximum(g_all + m0[..., None], a_all)


def stabilizers(logf, i, m0, resets: bool = True) -> Stabilizers:
    """logf, i: (B, NH, NC, L); m0: (B, NH). Differentiable (used for the backward's m-path).

    ``resets=False``: the caller knows no ``logf`` is -inf (``decay.cumulative_forget``).
    """
    cf = cumulative_forget(logf, resets)
    b = cf.hi + cf.lo
    a = last_segment(cf, ((cf.hi[..., -1:] - cf.hi) + (cf.lo[..., -1:] - cf.lo)) + i)
    g = first_segment(cf, b)[..., -1]

    m_after = memory_scales(g, jnp.max(a, axis=-1), m0)
    m_before = jnp.concatenate([m0[..., None], m_after[..., :-1]], axis=-1)
    entering = first_segment(cf, jnp.broadcast_to(m_before[..., None], b.shape))  # the entering memory reaches t
    m = b + jnp.maximum(entering, running_max(i - b, cf))
    return Stabilizers(a, g, m_before, m_after, m)


def _inner_dot(a, b):
    return jnp.einsum("...e,...e->...", a, b, precision=jax.lax.Precision.HIGHEST)


def _inner_sum(a, b):
    return jnp.sum(a * b, axis=-1)


def inner(a, b):
    """``sum(a * b, axis=-1)``. On the CPU it is written as a dot (exact float32): XLA:CPU compiles the
    reduction of a product over the last axis into a YNNPACK fusion about 10x slower than the dot
    ((1, 4, 64, 64, 64) float32: 3.5-4.6 ms against 0.3-0.4 ms; ``benchmarks/RESULTS.md``, session 32).
    Elsewhere the plain reduction (a HIGHEST-precision dot would cost MXU passes on a TPU)."""
    return jax.lax.platform_dependent(a, b, cpu=_inner_dot, default=_inner_sum)


def normalizer_cotangents(d, h_dh, m, eps: float):
    """``den`` and the cotangent of the normalizer d, stabilizers fixed.

    h = num / den with den = max(|d|, exp(-m)) + eps. ``h_dh`` is sum_e h * dh per token.
    All (..., L) per token. Returns (den, dd).
    """
    floor = jnp.exp(-m)
    den = jnp.maximum(jnp.abs(d), floor) + eps
    dd = jnp.where(jnp.abs(d) > floor, -h_dh / den * jnp.sign(d), 0.0)
    return den, dd


def gate_grads(rows_dlogd, cols_dlogd, dlog_alpha, da, dlog_decay, logf):
    """Gate gradients with the stabilizers fixed, from per-token sums of the heavy pass.

    Args (all (B, NH, NC, L) except dlog_decay (B, NH, NC)):
      rows_dlogd, cols_dlogd: row and column sums of d/d logD, logD[t, s] = b_t - b_s + i_s.
      dlog_alpha: d/d log alpha_t (the entering memory's weight of token t).
      da: d/d a_t, a_t = g - b_t + i_t (the inter-chunk write weight of token t).
      dlog_decay: d/d log of each chunk's memory decay.
      logf: log forget gates (f = -inf resets get no gradient).

    Returns (dlogf (B, NH, NC, L), di (B, NH, NC, L), dm0 (B, NH)).
    """
    di = cols_dlogd + da  # logD[t, s] and a_s both hold +i_s
    db = rows_dlogd - cols_dlogd + dlog_alpha - da  # d/d b, b = cumsum(logf) within the chunk
    dg = jnp.sum(da, axis=-1) + dlog_decay  # g = b[L-1] (when finite)
    dm0 = jnp.sum(dlog_alpha[:, :, 0], axis=-1) + dlog_decay[:, :, 0]
    dlogf = jnp.flip(jnp.cumsum(jnp.flip(db, -1), axis=-1), -1) + dg[..., None]
    dlogf = jnp.where(jnp.isneginf(logf), 0.0, dlogf)  # a reset's gate has no gradient
    return dlogf, di, dm0


def stabilizer_grads(pullback, st: Stabilizers, *, eps: float, h_dh, den, final, final_cotangents):
    """Step 2 of the ``_chunkwise_bwd`` docstring: gradients through the stabilizers themselves.

    ``st, pullback = jax.vjp(stabilizers, logf, i, m0)``; h_dh, den (B, NH, NC, L); ``final`` =
    (c_final, n_final) and ``final_cotangents`` = (dc_final, dn_final, dm_final) of the returned state.
    Returns (dlogf, di, dm0) to add to those of ``gate_grads``.
    """
    (c_final, n_final), (dc_final, dn_final, dm_final) = final, final_cotangents
    dm_final_scale = dm_final - jnp.sum(dc_final * c_final, axis=(-2, -1)) - jnp.sum(dn_final * n_final, -1)
    zeros_nc = jnp.zeros_like(st.m_after)
    cotangent = Stabilizers(
        a=jnp.zeros_like(st.a),
        g=zeros_nc,
        m_before=zeros_nc,
        m_after=zeros_nc.at[..., -1].set(dm_final_scale.astype(zeros_nc.dtype)),
        m=(-eps * h_dh / den).astype(st.m.dtype),
    )
    return pullback(cotangent)
