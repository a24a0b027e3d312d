"""Pallas-Triton backward kernels of the chunkwise mLSTM (stabilizers held fixed).

They compute the bulk of ``xlstm_jax.ops._chunkwise_bwd.backward`` (same names, same math);
the O(S) gate and stabilizer terms stay in plain JAX (``gpu._backward``). Layouts as in
``gpu_fwd``; per-token backward inputs travel in ``tokb`` (BH, TOKB_ROWS, S) float32:

* ``RDEN`` 1 / (max(|d_t|, exp(-m_t)) + eps), so dnum_t = dh_t * RDEN_t;
* ``DD`` the cotangent of the signed normalizer d_t.

Kernels (TFLA's split, docs/design.md §Kernel contract):

* ``memory_cotangents``: the reverse walk over chunks, grid (BH, DHQK / block_dqk, DHV / block_dv):
  cotangent of the memory after every chunk, and of the initial memory.
* ``grad_q``: grid (BH, NC, L / block_q); causal loop over key tiles; also the row sums of
  dp * p and d log(alpha).
* ``grad_k``: grid (BH, NC, L / block_kv); loop over query tiles from the diagonal; also the
  column sums of dp * p and the writes' d a.
* ``grad_v``: grid (BH, NC, L / block_kv, DHV / block_dv); loop over query tiles from the diagonal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .config import MLSTMBlocks
from .gpu_fwd import chunk_rows, compiler_params, decay_tile, mm, qk_tile
from .token_table import ALPHA, TOK_ROWS, W

RDEN, DD = 0, 1
TOKB_ROWS = 2
# Rows of the per-token gate outputs (BH, 2, S) of grad_q and grad_k.
ROW_SUM, DLOG_ALPHA = 0, 1  # grad_q: sum_s dp[t, s] p[t, s]; d log alpha_t
COL_SUM, DA = 0, 1  # grad_k: sum_t dp[t, s] p[t, s]; d a_s


def _f32(x):
    return x.astype(jnp.float32)


# --------------------------------------------------------------------------- inter-chunk, reversed


def _memory_cot_kernel(
    q_ref,
    dh_ref,
    tok_ref,
    tokb_ref,
    decay_ref,
    dcf_ref,
    dnf_ref,
    dca_ref,
    dna_ref,
    dc0_ref,
    dn0_ref,
    *,
    nc,
    chunk,
    scale,
    dtype,
):
    """q (S, bdqk), dh (S, bdv), tok (R, S), tokb (2, S), decay (NC,), dcf (bdqk, bdv), dnf (bdqk,) ->
    dca (NC, bdqk, bdv), dna (NC, bdqk): cotangents of the memory after each chunk; dc0, dn0."""
    first_dv = pl.program_id(2) == 0

    def body(idx, carry):
        kc = nc - 1 - idx
        dc, dn = carry
        dca_ref[kc] = dc

        @pl.when(first_dv)
        def _():
            dna_ref[kc] = dn

        rows = chunk_rows(kc, chunk)
        q_in = _f32(q_ref[rows, :]) * (scale * tok_ref[ALPHA, rows])[:, None]
        dnum = _f32(dh_ref[rows, :]) * tokb_ref[RDEN, rows][:, None]
        decay = decay_ref[kc]
        dc = decay * dc + mm(q_in, dnum, dtype, trans_a=True)
        dn = decay * dn + jnp.sum(q_in * tokb_ref[DD, rows][:, None], axis=0)
        return dc, dn

    dc, dn = lax.fori_loop(0, nc, body, (dcf_ref[...], dnf_ref[...]))
    dc0_ref[...] = dc

    @pl.when(first_dv)
    def _():
        dn0_ref[...] = dn


def memory_cotangents(q, dh, tok, tokb, decay, dc_final, dn_final, blocks: MLSTMBlocks, interpret: bool):
    """Reverse scan over chunks: (dc_after (BH, NC, DHQK, DHV), dn_after (BH, NC, DHQK), dc0, dn0), float32."""
    bh, s, dhqk = q.shape
    dhv = dh.shape[-1]
    nc = decay.shape[-1]
    bq, bv = blocks.block_dqk, blocks.block_dv
    f32 = jnp.float32
    kernel = functools.partial(_memory_cot_kernel, nc=nc, chunk=blocks.chunk_size, scale=dhqk**-0.5, dtype=q.dtype)
    return pl.pallas_call(
        kernel,
        grid=(bh, dhqk // bq, dhv // bv),
        in_specs=[
            pl.BlockSpec((None, s, bq), lambda b, a, j: (b, 0, a)),
            pl.BlockSpec((None, s, bv), lambda b, a, j: (b, 0, j)),
            pl.BlockSpec((None, TOK_ROWS, s), lambda b, a, j: (b, 0, 0)),
            pl.BlockSpec((None, TOKB_ROWS, s), lambda b, a, j: (b, 0, 0)),
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
        name="mlstm_memory_cotangents",
    )(q, dh, tok, tokb, decay, dc_final, dn_final)


# --------------------------------------------------------------------------- intra-chunk gradients


def _dp_tile(dh_ref, rows, rden, dd, v_ref, v_rows, dhv: int, block_dv: int, dtype):
    """dp[t, s] = dnum_t . v_s + dd_t on a tile, contracting DHV in ``block_dv`` slices."""
    acc = dd[:, None]
    for j in range(dhv // block_dv):
        cols = pl.ds(j * block_dv, block_dv)
        acc = acc + mm(_f32(dh_ref[rows, cols]) * rden[:, None], v_ref[v_rows, cols], dtype, trans_b=True)
    return acc


def _dq_kernel(
    q_ref, k_ref, v_ref, dh_ref, tok_q_ref, tok_ref, tokb_q_ref, c_ref, n_ref, dq_ref, g_ref, *, blocks, dtype
):
    """q (bq, DHQK), dh (bq, DHV), tok_q (R, bq), tokb_q (2, bq) of the query tile; k (L, DHQK),
    v (L, DHV), tok (R, L) of the chunk; c (DHQK, DHV), n (DHQK,) entering it -> dq (bq, DHQK), g (2, bq).

    dq is accumulated in DHQK slices of ``block_dqk`` (a tuple of tiles), so that no operand is
    larger than (block, block_dqk) or (block_dqk, block_dv).
    """
    bq, bkv, bdqk, bdv = blocks.block_q, blocks.block_kv, blocks.block_dqk, blocks.block_dv
    dhqk, dhv = q_ref.shape[-1], v_ref.shape[-1]
    qk_slices = [pl.ds(a * bdqk, bdqk) for a in range(dhqk // bdqk)]
    v_slices = [pl.ds(j * bdv, bdv) for j in range(dhv // bdv)]
    scale = dhqk**-0.5
    tq = pl.program_id(2)
    all_q = pl.ds(0, bq)
    rden, dd = tokb_q_ref[RDEN, all_q], tokb_q_ref[DD, all_q]

    def body(ks, carry):
        dq, row_sum = carry
        cols = chunk_rows(ks, bkv)
        decay = decay_tile(tok_q_ref, all_q, tq * bq, tok_ref, cols, ks * bkv)
        ds = _dp_tile(dh_ref, all_q, rden, dd, v_ref, cols, dhv, bdv, dtype) * decay
        # sum(dp * p) with p = qk * scale * decay, without keeping p alive next to ds: fewer spills
        # when compiled for sm_90 (benchmarks/RESULTS.md)
        row_sum = row_sum + scale * jnp.sum(ds * qk_tile(q_ref, all_q, k_ref, cols, dhqk, bdqk, dtype), axis=1)
        dq = tuple(acc + mm(ds, k_ref[cols, a], dtype) for acc, a in zip(dq, qk_slices))
        return dq, row_sum

    num_kv = lax.div((tq + 1) * bq + bkv - 1, bkv)
    zeros = (tuple(jnp.zeros((bq, bdqk), jnp.float32) for _ in qk_slices), jnp.zeros((bq,), jnp.float32))
    dq, row_sum = lax.fori_loop(0, num_kv, body, zeros)

    # The entering memory: q_in = q alpha / sqrt(DHQK) read C and n.
    alpha = tok_q_ref[ALPHA, all_q]
    dlog_alpha = jnp.zeros((bq,), jnp.float32)
    for acc, a in zip(dq, qk_slices):
        dq_in = dd[:, None] * n_ref[a][None, :]
        for j in v_slices:
            dq_in = dq_in + mm(_f32(dh_ref[:, j]) * rden[:, None], c_ref[a, j], dtype, trans_b=True)
        q_in = _f32(q_ref[:, a]) * (scale * alpha)[:, None]
        dlog_alpha = dlog_alpha + jnp.sum(dq_in * q_in, axis=1)
        dq_ref[:, a] = (scale * (alpha[:, None] * dq_in + acc)).astype(dq_ref.dtype)
    g_ref[ROW_SUM, :] = row_sum
    g_ref[DLOG_ALPHA, :] = dlog_alpha


def grad_q(q, k, v, dh, tok, tokb, c_before, n_before, blocks: MLSTMBlocks, interpret: bool):
    """dq (BH, S, DHQK) in the dtype of q; (BH, 2, S) float32 rows ROW_SUM, DLOG_ALPHA."""
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunk, bq = blocks.chunk_size, blocks.block_q
    nc, nq = s // chunk, chunk // bq
    kernel = functools.partial(_dq_kernel, blocks=blocks, dtype=q.dtype)
    tile = lambda b, c, t: (b, c * nq + t, 0)
    whole_chunk = lambda b, c, t: (b, c, 0)
    return pl.pallas_call(
        kernel,
        grid=(bh, nc, nq),
        in_specs=[
            pl.BlockSpec((None, bq, dhqk), tile),
            pl.BlockSpec((None, chunk, dhqk), whole_chunk),
            pl.BlockSpec((None, chunk, dhv), whole_chunk),
            pl.BlockSpec((None, bq, dhv), tile),
            pl.BlockSpec((None, TOK_ROWS, bq), lambda b, c, t: (b, 0, c * nq + t)),
            pl.BlockSpec((None, TOK_ROWS, chunk), lambda b, c, t: (b, 0, c)),
            pl.BlockSpec((None, TOKB_ROWS, bq), lambda b, c, t: (b, 0, c * nq + t)),
            pl.BlockSpec((None, None, dhqk, dhv), lambda b, c, t: (b, c, 0, 0)),
            pl.BlockSpec((None, None, dhqk), lambda b, c, t: (b, c, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, dhqk), tile),
            pl.BlockSpec((None, 2, bq), lambda b, c, t: (b, 0, c * nq + t)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bh, 2, s), jnp.float32)],
        compiler_params=compiler_params(blocks),
        interpret=interpret,
        name="mlstm_grad_q",
    )(q, k, v, dh, tok, tok, tokb, c_before, n_before)


def _dk_kernel(
    q_ref, k_ref, v_ref, dh_ref, tok_ref, tok_kv_ref, tokb_ref, dca_ref, dna_ref, dk_ref, g_ref, *, blocks, dtype
):
    """k (bkv, DHQK), v (bkv, DHV), tok_kv (R, bkv) of the key tile; q (L, DHQK), dh (L, DHV),
    tok (R, L), tokb (2, L) of the chunk; dca (DHQK, DHV), dna (DHQK,) after it -> dk (bkv, DHQK), g (2, bkv).

    dk is accumulated in DHQK slices of ``block_dqk``, as dq in ``_dq_kernel``.
    """
    bq, bkv, bdqk, bdv = blocks.block_q, blocks.block_kv, blocks.block_dqk, blocks.block_dv
    dhqk, dhv = q_ref.shape[-1], v_ref.shape[-1]
    qk_slices = [pl.ds(a * bdqk, bdqk) for a in range(dhqk // bdqk)]
    v_slices = [pl.ds(j * bdv, bdv) for j in range(dhv // bdv)]
    scale = dhqk**-0.5
    s0 = pl.program_id(2) * bkv
    all_kv = pl.ds(0, bkv)

    def body(tq, carry):
        dk, col_sum = carry
        rows = chunk_rows(tq, bq)
        decay = decay_tile(tok_ref, rows, tq * bq, tok_kv_ref, all_kv, s0)
        ds = _dp_tile(dh_ref, rows, tokb_ref[RDEN, rows], tokb_ref[DD, rows], v_ref, all_kv, dhv, bdv, dtype) * decay
        # sum(dp * p) with p = qk * scale * decay, without keeping p alive next to ds (as in _dq_kernel)
        col_sum = col_sum + scale * jnp.sum(ds * qk_tile(q_ref, rows, k_ref, all_kv, dhqk, bdqk, dtype), axis=0)
        dk = tuple(acc + mm(ds, q_ref[rows, a], dtype, trans_a=True) for acc, a in zip(dk, qk_slices))
        return dk, col_sum

    zeros = (tuple(jnp.zeros((bkv, bdqk), jnp.float32) for _ in qk_slices), jnp.zeros((bkv,), jnp.float32))
    dk, col_sum = lax.fori_loop(lax.div(s0, bq), q_ref.shape[0] // bq, body, zeros)

    # Writes into the memory after the chunk: k_s w_s v_s^T and k_s w_s.
    w = tok_kv_ref[W, all_kv]
    da = jnp.zeros((bkv,), jnp.float32)
    for acc, a in zip(dk, qk_slices):
        dk_write = dna_ref[a][None, :]
        for j in v_slices:
            dk_write = dk_write + mm(v_ref[:, j], dca_ref[a, j], dtype, trans_b=True)
        dk_write = w[:, None] * dk_write
        da = da + jnp.sum(dk_write * _f32(k_ref[:, a]), axis=1)
        dk_ref[:, a] = (scale * acc + dk_write).astype(dk_ref.dtype)
    g_ref[COL_SUM, :] = col_sum
    g_ref[DA, :] = da


def grad_k(q, k, v, dh, tok, tokb, dc_after, dn_after, blocks: MLSTMBlocks, interpret: bool):
    """dk (BH, S, DHQK) in the dtype of k; (BH, 2, S) float32 rows COL_SUM, DA."""
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunk, bkv = blocks.chunk_size, blocks.block_kv
    nc, nk = s // chunk, chunk // bkv
    kernel = functools.partial(_dk_kernel, blocks=blocks, dtype=q.dtype)
    tile = lambda b, c, t: (b, c * nk + t, 0)
    whole_chunk = lambda b, c, t: (b, c, 0)
    return pl.pallas_call(
        kernel,
        grid=(bh, nc, nk),
        in_specs=[
            pl.BlockSpec((None, chunk, dhqk), whole_chunk),
            pl.BlockSpec((None, bkv, dhqk), tile),
            pl.BlockSpec((None, bkv, dhv), tile),
            pl.BlockSpec((None, chunk, dhv), whole_chunk),
            pl.BlockSpec((None, TOK_ROWS, chunk), lambda b, c, t: (b, 0, c)),
            pl.BlockSpec((None, TOK_ROWS, bkv), lambda b, c, t: (b, 0, c * nk + t)),
            pl.BlockSpec((None, TOKB_ROWS, chunk), lambda b, c, t: (b, 0, c)),
            pl.BlockSpec((None, None, dhqk, dhv), lambda b, c, t: (b, c, 0, 0)),
            pl.BlockSpec((None, None, dhqk), lambda b, c, t: (b, c, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bkv, dhqk), tile),
            pl.BlockSpec((None, 2, bkv), lambda b, c, t: (b, 0, c * nk + t)),
        ],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct((bh, 2, s), jnp.float32)],
        compiler_params=compiler_params(blocks),
        interpret=interpret,
        name="mlstm_grad_k",
    )(q, k, v, dh, tok, tok, tokb, dc_after, dn_after)


def _dv_kernel(q_ref, k_ref, dh_ref, tok_ref, tok_kv_ref, tokb_ref, dca_ref, dv_ref, *, blocks, dtype):
    """k (bkv, DHQK), tok_kv (R, bkv) of the key tile; q (L, DHQK), dh (L, bdv), tok (R, L), tokb (2, L)
    of the chunk; dca (DHQK, bdv) after it -> dv (bkv, bdv)."""
    bq, bkv, bdqk = blocks.block_q, blocks.block_kv, blocks.block_dqk
    dhqk = q_ref.shape[-1]
    scale = dhqk**-0.5
    s0 = pl.program_id(2) * bkv
    all_kv = pl.ds(0, bkv)

    def body(tq, dv):
        rows = chunk_rows(tq, bq)
        decay = decay_tile(tok_ref, rows, tq * bq, tok_kv_ref, all_kv, s0)
        p = qk_tile(q_ref, rows, k_ref, all_kv, dhqk, bdqk, dtype) * scale * decay
        dnum = _f32(dh_ref[rows, :]) * tokb_ref[RDEN, rows][:, None]
        return dv + mm(p, dnum, dtype, trans_a=True)

    dv = lax.fori_loop(lax.div(s0, bq), q_ref.shape[0] // bq, body, jnp.zeros(dv_ref.shape, jnp.float32))

    # Writes into the memory after the chunk: k_s w_s v_s^T.
    write = None
    for a in range(dhqk // bdqk):
        cols = pl.ds(a * bdqk, bdqk)
        part = mm(k_ref[:, cols], dca_ref[cols, :], dtype)
        write = part if write is None else write + part
    dv_ref[...] = (dv + tok_kv_ref[W, all_kv][:, None] * write).astype(dv_ref.dtype)


def grad_v(q, k, v, dh, tok, tokb, dc_after, blocks: MLSTMBlocks, interpret: bool):
    """dv (BH, S, DHV) in the dtype of v."""
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunk, bkv, bv = blocks.chunk_size, blocks.block_kv, blocks.block_dv
    nc, nk = s // chunk, chunk // bkv
    kernel = functools.partial(_dv_kernel, blocks=blocks, dtype=q.dtype)
    return pl.pallas_call(
        kernel,
        grid=(bh, nc, nk, dhv // bv),
        in_specs=[
            pl.BlockSpec((None, chunk, dhqk), lambda b, c, t, j: (b, c, 0)),
            pl.BlockSpec((None, bkv, dhqk), lambda b, c, t, j: (b, c * nk + t, 0)),
            pl.BlockSpec((None, chunk, bv), lambda b, c, t, j: (b, c, j)),
            pl.BlockSpec((None, TOK_ROWS, chunk), lambda b, c, t, j: (b, 0, c)),
            pl.BlockSpec((None, TOK_ROWS, bkv), lambda b, c, t, j: (b, 0, c * nk + t)),
            pl.BlockSpec((None, TOKB_ROWS, chunk), lambda b, c, t, j: (b, 0, c)),
            pl.BlockSpec((None, None, dhqk, bv), lambda b, c, t, j: (b, c, 0, j)),
        ],
        out_specs=pl.BlockSpec((None, bkv, bv), lambda b, c, t, j: (b, c * nk + t, j)),
        out_shape=jax.ShapeDtypeStruct(v.shape, v.dtype),
        compiler_params=compiler_params(blocks),
        interpret=interpret,
        name="mlstm_grad_v",
    )(q, k, dh, tok, tok, tokb, dc_after)
