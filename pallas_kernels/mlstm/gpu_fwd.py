"""Pallas-Triton forward kernels of the chunkwise mLSTM, and the tile helpers the backward shares.

Layout: heads flattened, BH = B * NH; q, k (BH, S, DHQK), v, h (BH, S, DHV), S = NC * L.
Per-token gate quantities travel in one float32 table ``tok`` (BH, TOK_ROWS, S), rows named in
``token_table``, built there in plain JAX from the O(S) stabilizers of
``xlstm_jax.ops.chunkwise_math.stabilizers``; the kernels never take a running max: the
per-token stabilizer m_t already combines the intra-chunk maximum and the entering memory.

Two kernels (TFLA's structure, docs/design.md §Kernel contract):

* ``chunk_states``: the inter-chunk recurrence, grid (BH, DHQK / block_dqk, DHV / block_dv),
  each program walking the NC chunks in order with one (block_dqk, block_dv) memory tile in
  registers; it writes the memory entering every chunk and the final memory.
* ``chunk_outputs``: the intra-chunk pass, grid (BH, NC, L / block_q, DHV / block_dv): a
  causal loop over key tiles up to the diagonal, then the entering memory's term.

Matmuls take operands in the input dtype (bfloat16 or float32) and accumulate in float32;
gates, stabilizers, normalizers and states are float32 throughout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from .config import MLSTMBlocks
from .token_table import ALPHA, HI, IGATE, LO, SEG, TOK_ROWS, M, W  # rows of the per-token table


def mm(a, b, dtype, *, trans_a: bool = False, trans_b: bool = False):
    """a @ b with operands cast to ``dtype`` and a float32 accumulator.

    float32 operands ask for ``Precision.HIGHEST``: the Triton lowering maps the default precision
    to TF32 (10-bit mantissa) and HIGHEST to IEEE float32; 16-bit operands take the tensor cores as is.
    """
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    precision = lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
    return lax.dot_general(
        a.astype(dtype), b.astype(dtype), dims, precision=precision, preferred_element_type=jnp.float32
    )


def decay_tile(tok_t_ref, t_rows, t0, tok_s_ref, s_cols, s0):
    """exp(logD[t, s] - m_t) on a (len t, len s) tile, zero where s > t or a reset lies in (s, t].

    ``t0``, ``s0``: positions of the tiles' first tokens inside the chunk (for the causal mask).
    """
    hi_t, lo_t, seg_t, m_t = (tok_t_ref[r, t_rows] for r in (HI, LO, SEG, M))
    hi_s, lo_s, seg_s, i_s = (tok_s_ref[r, s_cols] for r in (HI, LO, SEG, IGATE))
    log_d = (hi_t[:, None] - hi_s[None, :]) + (lo_t[:, None] - lo_s[None, :]) + i_s[None, :]
    t_pos = t0 + lax.broadcasted_iota(jnp.int32, (hi_t.shape[0], hi_s.shape[0]), 0)
    s_pos = s0 + lax.broadcasted_iota(jnp.int32, (hi_t.shape[0], hi_s.shape[0]), 1)
    valid = (s_pos <= t_pos) & (seg_t[:, None] == seg_s[None, :])
    return jnp.exp(jnp.where(valid, log_d - m_t[:, None], -jnp.inf))


def qk_tile(q_ref, q_rows, k_ref, k_rows, dhqk: int, block_dqk: int, dtype):
    """(q k^T) on a tile, contracting DHQK in ``block_dqk`` slices (unscaled)."""
    acc = None
    for a in range(dhqk // block_dqk):
        cols = pl.ds(a * block_dqk, block_dqk)
        part = mm(q_ref[q_rows, cols], k_ref[k_rows, cols], dtype, trans_b=True)
        acc = part if acc is None else acc + part
    return acc


def compiler_params(blocks: MLSTMBlocks):
    return pltriton.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def chunk_rows(idx, length: int):
    """The ``length`` rows starting at ``idx * length`` (aligned)."""
    return pl.ds(pl.multiple_of(idx * length, length), length)


# --------------------------------------------------------------------------- inter-chunk states


def _states_kernel(k_ref, v_ref, tok_ref, decay_ref, c0_ref, n0_ref, c_ref, n_ref, cf_ref, nf_ref, *, nc, chunk, dtype):
    """k (S, bdqk), v (S, bdv), tok (R, S), decay (NC,), c0 (bdqk, bdv), n0 (bdqk,) ->
    c (NC, bdqk, bdv) and n (NC, bdqk) entering each chunk, cf / nf after the last one.

    n is computed by every DHV tile (a cheap vector sum) and stored by the first.
    """
    first_dv = pl.program_id(2) == 0

    def body(kc, carry):
        c, n = carry
        c_ref[kc] = c

        @pl.when(first_dv)
        def _():
            n_ref[kc] = n

        rows = chunk_rows(kc, chunk)
        kw = k_ref[rows, :].astype(jnp.float32) * tok_ref[W, rows][:, None]
        decay = decay_ref[kc]
        c = decay * c + mm(kw, v_ref[rows, :], dtype, trans_a=True)
        n = decay * n + jnp.sum(kw, axis=0)
        return c, n

    c, n = lax.fori_loop(0, nc, body, (c0_ref[...], n0_ref[...]))
    cf_ref[...] = c

    @pl.when(first_dv)
    def _():
        nf_ref[...] = n


def chunk_states(k, v, tok, decay, c0, n0, blocks: MLSTMBlocks, interpret: bool):
    """Memory entering every chunk and after the last.

    Args:
      k: (BH, S, DHQK); v: (BH, S, DHV); tok: (BH, TOK_ROWS, S); decay: (BH, NC)
        exp(g_k + M_{k-1} - M_k); c0 (BH, DHQK, DHV), n0 (BH, DHQK) float32.

    Returns:
      c_before (BH, NC, DHQK, DHV), n_before (BH, NC, DHQK), c_final, n_final; float32.
    """
    bh, s, dhqk = k.shape
    dhv = v.shape[-1]
    nc = decay.shape[-1]
    bq, bv = blocks.block_dqk, blocks.block_dv
    f32 = jnp.float32
    kernel = functools.partial(_states_kernel, nc=nc, chunk=blocks.chunk_size, dtype=k.dtype)
    return pl.pallas_call(
        kernel,
        grid=(bh, dhqk // bq, dhv // bv),
        in_specs=[
            pl.BlockSpec((None, s, bq), lambda b, a, j: (b, 0, a)),
            pl.BlockSpec((None, s, bv), lambda b, a, j: (b, 0, j)),
            pl.BlockSpec((None, TOK_ROWS, s), lambda b, a, j: (b, 0, 0)),
            pl.BlockSpec((None, nc), lambda b, a, j: (b, 0)),
            pl.BlockSpec((None, bq, bv), lambda b, a, j: (b, a, j)),
            pl.BlockSpec((None, bq), lambda b, a, j: (b, a)),
        ],
        out_specs=[
            pl.BlockSpec((None, nc, bq, bv), lambda b, a, j: (b, 0, a, j)),
            pl.BlockSpec((None, nc, bq), lambda b, a, j: (b, 0, a)),
            pl.BlockSpec((None, bq, bv), lambda b, a, j: (b, a, j)),
            pl.BlockSpec((None, bq), lambda b, a, j: (b, a)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bh, nc, dhqk, dhv), f32),
            jax.ShapeDtypeStruct((bh, nc, dhqk), f32),
            jax.ShapeDtypeStruct((bh, dhqk, dhv), f32),
            jax.ShapeDtypeStruct((bh, dhqk), f32),
        ],
        compiler_params=compiler_params(blocks),
        interpret=interpret,
        name="mlstm_chunk_states",
    )(k, v, tok, decay, c0, n0)


# --------------------------------------------------------------------------- intra-chunk outputs


def _outputs_kernel(q_ref, k_ref, v_ref, tok_q_ref, tok_ref, c_ref, n_ref, h_ref, d_ref, *, blocks, eps, dtype):
    """q (bq, DHQK) tile; k (L, DHQK), v (L, bdv), tok (R, L) of the chunk; tok_q (R, bq);
    c (DHQK, bdv), n (DHQK,) entering the chunk -> h (bq, bdv), d (bq,) (stored by DHV tile 0)."""
    bq, bkv, bdqk = blocks.block_q, blocks.block_kv, blocks.block_dqk
    dhqk = q_ref.shape[-1]
    scale = dhqk**-0.5
    tq = pl.program_id(2)
    t0 = tq * bq
    all_q = pl.ds(0, bq)

    def body(ks, carry):
        num, d = carry
        cols = chunk_rows(ks, bkv)
        qk = qk_tile(q_ref, all_q, k_ref, cols, dhqk, bdqk, dtype)
        p = qk * scale * decay_tile(tok_q_ref, all_q, t0, tok_ref, cols, ks * bkv)
        return num + mm(p, v_ref[cols, :], dtype), d + jnp.sum(p, axis=1)

    num_kv = lax.div((tq + 1) * bq + bkv - 1, bkv)  # key tiles up to the diagonal
    zeros = (jnp.zeros((bq, h_ref.shape[-1]), jnp.float32), jnp.zeros((bq,), jnp.float32))
    num, d = lax.fori_loop(0, num_kv, body, zeros)

    # The entering memory, read at scale alpha_t / sqrt(DHQK).
    q_scale = scale * tok_q_ref[ALPHA, all_q]
    for a in range(dhqk // bdqk):
        cols = pl.ds(a * bdqk, bdqk)
        q_in = q_ref[:, cols].astype(jnp.float32) * q_scale[:, None]
        num = num + mm(q_in, c_ref[cols, :], dtype)
        d = d + jnp.sum(q_in * n_ref[cols][None, :], axis=1)

    den = jnp.maximum(jnp.abs(d), jnp.exp(-tok_q_ref[M, all_q])) + eps
    h_ref[...] = (num / den[:, None]).astype(h_ref.dtype)

    @pl.when(pl.program_id(3) == 0)
    def _():
        d_ref[...] = d


def chunk_outputs(q, k, v, tok, c_before, n_before, blocks: MLSTMBlocks, eps: float, interpret: bool):
    """h (BH, S, DHV) in the dtype of v and the signed normalizer d (BH, S) float32 before its floor."""
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunk, bq, bv = blocks.chunk_size, blocks.block_q, blocks.block_dv
    nc, nq = s // chunk, chunk // bq
    kernel = functools.partial(_outputs_kernel, blocks=blocks, eps=eps, dtype=q.dtype)
    return pl.pallas_call(
        kernel,
        grid=(bh, nc, nq, dhv // bv),
        in_specs=[
            pl.BlockSpec((None, bq, dhqk), lambda b, c, t, j: (b, c * nq + t, 0)),
            pl.BlockSpec((None, chunk, dhqk), lambda b, c, t, j: (b, c, 0)),
            pl.BlockSpec((None, chunk, bv), lambda b, c, t, j: (b, c, j)),
            pl.BlockSpec((None, TOK_ROWS, bq), lambda b, c, t, j: (b, 0, c * nq + t)),
            pl.BlockSpec((None, TOK_ROWS, chunk), lambda b, c, t, j: (b, 0, c)),
            pl.BlockSpec((None, None, dhqk, bv), lambda b, c, t, j: (b, c, 0, j)),
            pl.BlockSpec((None, None, dhqk), lambda b, c, t, j: (b, c, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, bv), lambda b, c, t, j: (b, c * nq + t, j)),
            pl.BlockSpec((None, bq), lambda b, c, t, j: (b, c * nq + t)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bh, s, dhv), v.dtype),
            jax.ShapeDtypeStruct((bh, s), jnp.float32),
        ],
        compiler_params=compiler_params(blocks),
        interpret=interpret,
        name="mlstm_chunk_outputs",
    )(q, k, v, tok, tok, c_before, n_before)
