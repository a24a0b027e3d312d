"""Analytic backward pass of the chunkwise mLSTM.

Stabilizers only rescale. Each intermediate chunk scale M_k enters once as +M_k and
once as -M_k, so the output does not depend on it at all. A token's output
stabilizer m_t enters h only through eps, since before stabilization the floor
``exp(-m)`` is the constant 1:

    h_t = num_t / (max(|d_t|, exp(-m_t)) + eps),  so  dh_t/dm_t = -h_t eps / den_t.

The exact gradient is therefore:

1. the gradient with every stabilizer held fixed (the bulk of the work: recompute the
   intra-chunk matrices of the forward pass, then batched matmuls, plus a reverse
   ``lax.scan`` over chunks for the memory's cotangent); and
2. the stabilizer terms: the eps term above, and the final state's scale, since
   (c, n) are returned at scale ``m_final``. Both are pulled back through the
   stabilizers' own max recurrences by ``jax.vjp`` of the O(S) function
   ``stabilizers``.

The initial m0 is a genuine input (it sets the scale of c0 and n0). It enters step 1
through the first chunk's decay and inter-chunk weights.

Shapes: q, k (B, NH, NC, L, DHQK); v, h (B, NH, NC, L, DHV); logf, i, m, d (B, NH, NC, L).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._chunkwise_fwd import Residuals, intra_chunk, scan_chunks
from .chunkwise_math import gate_grads, inner, normalizer_cotangents, stabilizer_grads, stabilizers


def _memory_cotangents(decay, dc_before, dn_before, dc_final, dn_final):
    """Reverse scan: cotangent of the memory after each chunk, and of the initial memory.

    ``C_k = decay_k C_{k-1} + (chunk k's writes)``, and chunk k+1 also reads C_k
    directly (``dc_before[k+1]``).
    """
    (dc0, dn0), (dc_after, dn_after) = scan_chunks(decay, (dc_before, dn_before), (dc_final, dn_final), reverse=True)
    return dc_after, dn_after, dc0, dn0


def backward(res: Residuals, cotangents, eps: float):
    """Gradients wrt (q, k, v, logf, i, c0, n0, m0), q..i in (B, NH, S, ...) layout."""
    dh, dc_final, dn_final, dm_final = cotangents
    q, k, v, logf, i, st = res.q, res.k, res.v, res.logf, res.i, res.st
    b, nh, nc, length, _ = q.shape
    dh = dh.reshape(res.h.shape)

    # Intra-chunk outputs, stabilizers fixed.
    intra = intra_chunk(q, k, logf, i, st)
    h_dh = inner(dh, res.h)  # (B, NH, NC, L)
    den, dd = normalizer_cotangents(res.d, h_dh, st.m, eps)
    dnum = dh / den[..., None]
    dp = jnp.einsum("bhcte,bhcse->bhcts", dnum, v) + dd[..., None]
    q_in = intra.q_scaled * intra.alpha[..., None]
    dv = jnp.einsum("bhcts,bhcte->bhcse", intra.p, dnum)
    dq_in = jnp.einsum("bhcte,bhcde->bhctd", dnum, res.c_before) + dd[..., None] * res.n_before[..., None, :]
    dc_before = jnp.einsum("bhctd,bhcte->bhcde", q_in, dnum)
    dn_before = jnp.einsum("bhctd,bhct->bhcd", q_in, dd)
    dlog_alpha = inner(dq_in, q_in)
    ds = dp * intra.decay
    dq_scaled = dq_in * intra.alpha[..., None] + jnp.einsum("bhcts,bhcsd->bhctd", ds, k)
    dk = jnp.einsum("bhcts,bhctd->bhcsd", ds, intra.q_scaled)
    dlog_d = dp * intra.p  # d/d logD[t, s], logD = b_t - b_s + i_s

    # Inter-chunk memory, stabilizers fixed.
    decay = jnp.exp(st.g + st.m_before - st.m_after)
    dc_after, dn_after, dc0, dn0 = _memory_cotangents(decay, dc_before, dn_before, dc_final, dn_final)
    dlog_decay = decay * (jnp.sum(dc_after * res.c_before, axis=(-2, -1)) + inner(dn_after, res.n_before))
    w = jnp.exp(st.a - st.m_after[..., None])
    dk_write = w[..., None] * (jnp.einsum("bhcle,bhcde->bhcld", v, dc_after) + dn_after[..., None, :])
    dv = dv + w[..., None] * jnp.einsum("bhcld,bhcde->bhcle", k, dc_after)
    dk = dk + dk_write
    da = inner(dk_write, k)  # a_t = g - b_t + i_t
    dlogf, di, dm0 = gate_grads(jnp.sum(dlog_d, axis=-1), jnp.sum(dlog_d, axis=-2), dlog_alpha, da, dlog_decay, logf)

    # Stabilizer terms: eps path of every m_t, and the final state's scale.
    _, pullback = jax.vjp(stabilizers, logf, i, res.m0)
    dlogf_m, di_m, dm0_m = stabilizer_grads(
        pullback,
        st,
        eps=eps,
        h_dh=h_dh,
        den=den,
        final=(res.c_final, res.n_final),
        final_cotangents=(dc_final, dn_final, dm_final),
    )

    seq = lambda x: x.reshape(b, nh, nc * length, *x.shape[4:])
    dq = dq_scaled * (q.shape[-1] ** -0.5)
    return (
        seq(dq),
        seq(dk),
        seq(dv),
        seq(dlogf + dlogf_m),
        seq(di + di_m),
        dc0,
        dn0,
        dm0 + dm0_m,
    )
