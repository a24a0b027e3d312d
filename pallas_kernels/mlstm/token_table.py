"""The per-token gate table the GPU and CPU forward kernels read, built in plain JAX.

Rows of ``tok`` (BH, TOK_ROWS, S), all float32, from the O(S) stabilizers of
``xlstm_jax.ops.chunkwise_math.stabilizers``; the kernels never take a running max: the per-token
stabilizer m_t already combines the intra-chunk maximum and the entering memory.
"""

from __future__ import annotations

import jax.numpy as jnp

from xlstm_jax.ops.chunkwise_math import Stabilizers
from xlstm_jax.ops.decay import cumulative_forget

HI, LO = 0, 1  # b = hi + lo: cumulative finite log forget gates within the chunk (compensated sum)
IGATE = 2  # input-gate pre-activation i (-inf on padding)
SEG = 3  # resets at or before the token within its chunk (a small integer, exact in float32)
M = 4  # per-token output stabilizer m_t
ALPHA = 5  # exp(b_t + M_{k-1} - m_t): weight of the entering memory at t (0 after a reset)
W = 6  # exp(a_t - M_k): weight of token t in the memory after its chunk
TOK_ROWS = 7


def token_table(logf, i, st: Stabilizers):
    """The per-token float32 table (BH, TOK_ROWS, S) and the per-chunk memory decay (BH, NC).

    logf, i: (B, NH, NC, L); st: the stabilizers of these gates.
    """
    b, nh, nc, length = logf.shape
    cf = cumulative_forget(logf)
    rows = {
        HI: cf.hi,
        LO: cf.lo,
        IGATE: i,
        SEG: cf.seg.astype(jnp.float32),
        M: st.m,
        ALPHA: jnp.exp(jnp.where(cf.seg == 0, (cf.hi + cf.lo) + st.m_before[..., None] - st.m, -jnp.inf)),
        W: jnp.exp(st.a - st.m_after[..., None]),
    }
    tok = jnp.stack([rows[r] for r in range(TOK_ROWS)], axis=2)  # (B, NH, R, NC, L)
    decay = jnp.exp(st.g + st.m_before - st.m_after)
    return tok.reshape(b * nh, TOK_ROWS, nc * length), decay.reshape(b * nh, nc)
