"""Backward Mosaic kernels of the chunkwise mLSTM: the same math as ``xlstm_jax.ops._chunkwise_bwd``.

With every stabilizer held fixed (their eps and final-scale terms are added in plain JAX by
``tpu.py``), the backward is two ``pallas_call``s after the chunk states are recomputed by
``tpu_fwd.chunk_states``:

* ``memory_cotangents``: the reverse walk over chunks. Grid (BH, DHQK / block_dqk, NC + 1,
  DHV / block_dv), chunk axis sequential ("arbitrary") and visited last to first. A float32 VMEM
  scratch carries the cotangent G of the memory: it starts at dC_final and, at chunk c,
  G <- decay_c G + q_in_c^T (dh_c / den_c). Step c writes the cotangent of the memory entering
  chunk c; index 0 is the cotangent of the initial memory.
* ``chunk_grads``: grid (BH, NC, DHV / block_dv), DHV axis a reduction ("arbitrary"). Per chunk it
  recomputes P = (q k^T / sqrt(DHQK)) * D on the whole (L, L) chunk, accumulates
  dP = dnum v^T, dq_in = dnum C^T and v dC^T over the DHV tiles in float32 VMEM scratch, writes dv
  per DHV tile, and at the last DHV tile dq, dk and the per-token sums the gate gradients need.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .tpu_fwd import (
    ALPHA,
    DECAY,
    NN,
    NT,
    NUM_GATE_COLS,
    NUM_GATE_ROWS,
    TN,
    W,
    compiler_params,
    decay_matrix,
    dot,
)

# Columns of the cotangent array (BH, NC, NUM_COT_COLS, L, 1).
DEN, DD = range(2)
NUM_COT_COLS = 2
# Per-token sums returned by ``chunk_grads``: columns (BH, NC, 3, L, 1) and rows (BH, NC, 2, L).
SUM_ROWS_OF_DLOGD, DLOG_ALPHA, DA = range(3)
SUM_COLS_OF_DLOGD, DLOG_DECAY = range(2)


# --------------------------------------------------------------------------- reverse walk over chunks


def _memory_cot_kernel(
    q_ref, dh_ref, gcol_ref, dcol_ref, dc_ref, dn_ref, e_out, en_out, e_scr, en_scr, *, scale, mm_dtype
):
    r, jv = pl.program_id(2), pl.program_id(3)

    @pl.when(r == 0)
    def _():
        e_scr[jv] = dc_ref[...].astype(jnp.float32)

        @pl.when(jv == 0)
        def _():
            en_scr[...] = dn_ref[...].astype(jnp.float32)

    @pl.when(r > 0)  # chunk NC - r reads the memory entering it
    def _():
        decay = gcol_ref[DECAY, 0:1, :]  # (1, 1)
        q_in = (q_ref[...].astype(jnp.float32) * scale) * gcol_ref[ALPHA]  # (L, block_dqk)
        dnum = dh_ref[...].astype(jnp.float32) / dcol_ref[DEN]  # (L, block_dv)
        e_scr[jv] = decay * e_scr[jv] + dot(q_in, dnum, TN, mm_dtype)

        @pl.when(jv == 0)
        def _():
            en_scr[...] = decay * en_scr[...] + jnp.sum(q_in * dcol_ref[DD], axis=0, keepdims=True)

    e_out[...] = e_scr[jv]

    @pl.when(jv == 0)
    def _():
        en_out[...] = en_scr[...]


def memory_cotangents(q, dh, gcols, dcols, dc_final, dn_final, *, blocks, mm_dtype, interpret):
    """Cotangents of the memory entering every chunk, float32.

    Args:
      q: (BH, S, DHQK); dh: (BH, S, DHV); gcols: (BH, NC, NUM_GATE_COLS, L, 1) (uses ALPHA, DECAY);
      dcols: (BH, NC, NUM_COT_COLS, L, 1); dc_final: (BH, DHQK, DHV); dn_final: (BH, 1, DHQK).

    Returns:
      e (BH, NC + 1, DHQK, DHV), en (BH, NC + 1, 1, DHQK): index c is the cotangent of the memory
      entering chunk c (index 0: of the initial memory; index NC: dc_final, dn_final).
    """
    bh, s, dhqk = q.shape
    dhv = dh.shape[-1]
    chunk, bdqk, bdv = blocks.chunk_size, blocks.block_dqk, blocks.block_dv
    nc = s // chunk
    read = lambda r: nc - jnp.maximum(r, 1)  # chunk folded in at step r
    grid = (bh, dhqk // bdqk, nc + 1, dhv // bdv)
    return pl.pallas_call(
        functools.partial(_memory_cot_kernel, scale=dhqk**-0.5, mm_dtype=mm_dtype),
        grid=grid,
        in_specs=[
            pl.BlockSpec((None, chunk, bdqk), lambda b, iqk, r, jv: (b, read(r), iqk)),
            pl.BlockSpec((None, chunk, bdv), lambda b, iqk, r, jv: (b, read(r), jv)),
            pl.BlockSpec((None, None, NUM_GATE_COLS, chunk, 1), lambda b, iqk, r, jv: (b, read(r), 0, 0, 0)),
            pl.BlockSpec((None, None, NUM_COT_COLS, chunk, 1), lambda b, iqk, r, jv: (b, read(r), 0, 0, 0)),
            pl.BlockSpec((None, bdqk, bdv), lambda b, iqk, r, jv: (b, iqk, jv)),
            pl.BlockSpec((None, 1, bdqk), lambda b, iqk, r, jv: (b, 0, iqk)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, bdqk, bdv), lambda b, iqk, r, jv: (b, nc - r, iqk, jv)),
            pl.BlockSpec((None, None, 1, bdqk), lambda b, iqk, r, jv: (b, nc - r, 0, iqk)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bh, nc + 1, dhqk, dhv), jnp.float32),
            jax.ShapeDtypeStruct((bh, nc + 1, 1, dhqk), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((dhv // bdv, bdqk, bdv), jnp.float32), pltpu.VMEM((1, bdqk), jnp.float32)],
        compiler_params=compiler_params("parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=interpret,
        name="mlstm_tpu_memory_cotangents",
    )(q, dh, gcols, dcols, dc_final, dn_final)


# --------------------------------------------------------------------------- per-chunk gradients


def _chunk_grads_kernel(
    q_ref,
    k_ref,
    v_ref,
    dh_ref,
    c_ref,
    n_ref,
    e_ref,
    en_ref,
    gcol_ref,
    grow_ref,
    dcol_ref,
    dq_out,
    dk_out,
    dv_out,
    tsum_out,
    ssum_out,
    p_scr,
    decay_scr,
    dp_scr,
    dqin_scr,
    dkw_scr,
    dlogdecay_scr,
    *,
    scale,
    mm_dtype,
):
    jv, nv = pl.program_id(2), pl.num_programs(2)
    chunk = q_ref.shape[0]
    q, k = q_ref[...], k_ref[...]
    col = lambda j: gcol_ref[j]

    @pl.when(jv == 0)
    def _():
        row = lambda r: grow_ref[0, r : r + 1, :]
        decay = decay_matrix(col, row, 0, 0, (chunk, chunk))
        decay_scr[...] = decay
        p_scr[...] = dot(q, k, NT, mm_dtype) * scale * decay
        dp_scr[...] = jnp.zeros_like(dp_scr)
        dqin_scr[...] = jnp.zeros_like(dqin_scr)
        dkw_scr[...] = jnp.zeros_like(dkw_scr)
        dlogdecay_scr[...] = jnp.zeros_like(dlogdecay_scr)

    # This DHV tile's share: dv, and the partial sums over DHV of dP, dq_in, v dC^T, <dC, C>.
    v, c_before, dc_after = v_ref[...], c_ref[...], e_ref[...]
    dnum = dh_ref[...].astype(jnp.float32) / dcol_ref[DEN]  # (L, block_dv)
    dv = dot(p_scr[...], dnum, TN, mm_dtype) + col(W) * dot(k, dc_after, NN, mm_dtype)
    dv_out[...] = dv.astype(dv_out.dtype)
    dp_scr[...] += dot(dnum, v, NT, mm_dtype)
    dqin_scr[...] += dot(dnum, c_before, NT, mm_dtype)
    dkw_scr[...] += dot(v, dc_after, NT, mm_dtype)
    dlogdecay_scr[...] += jnp.sum(jnp.sum(dc_after * c_before, axis=1, keepdims=True), axis=0, keepdims=True)

    @pl.when(jv == nv - 1)
    def _():
        dd, alpha, w = dcol_ref[DD], col(ALPHA), col(W)  # (L, 1)
        n_before, dn_after = n_ref[...], en_ref[...]  # (1, DHQK)
        qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)
        q_in = (qf * scale) * alpha
        dq_in = dqin_scr[...] + dd * n_before
        dp = dp_scr[...] + dd
        ds = dp * decay_scr[...]
        dq = (dq_in * alpha + dot(ds, k, NN, mm_dtype)) * scale
        dk_write = w * (dkw_scr[...] + dn_after)
        dk = dot(ds, q, TN, mm_dtype) * scale + dk_write
        dq_out[...] = dq.astype(dq_out.dtype)
        dk_out[...] = dk.astype(dk_out.dtype)
        dlog_d = dp * p_scr[...]
        tsum_out[SUM_ROWS_OF_DLOGD] = jnp.sum(dlog_d, axis=1, keepdims=True)
        tsum_out[DLOG_ALPHA] = jnp.sum(dq_in * q_in, axis=1, keepdims=True)
        tsum_out[DA] = jnp.sum(dk_write * kf, axis=1, keepdims=True)
        ssum_out[SUM_COLS_OF_DLOGD : SUM_COLS_OF_DLOGD + 1, :] = jnp.sum(dlog_d, axis=0, keepdims=True)
        n_term = jnp.sum(dn_after * n_before, axis=1, keepdims=True)  # (1, 1)
        dlog_decay = gcol_ref[DECAY, 0:1, :] * (dlogdecay_scr[...] + n_term)
        ssum_out[DLOG_DECAY : DLOG_DECAY + 1, :] = jnp.broadcast_to(dlog_decay, (1, chunk))


def chunk_grads(q, k, v, dh, c_states, n_states, e, en, gcols, grows, dcols, *, blocks, mm_dtype, interpret):
    """dq, dk (BH, S, DHQK), dv (BH, S, DHV) in the dtype of q, and per-token sums for the gates.

    Args:
      c_states, n_states: from ``tpu_fwd.chunk_states``; e, en: from ``memory_cotangents``.
      grows: (BH, NC, 1, NUM_GATE_ROWS, L) (one tile per chunk).

    Returns:
      ``(dq, dk, dv, tsums, ssums)``: tsums (BH, NC, 3, L, 1) holds, per token t, the row sums
      sum_s dlogD[t, s], dlog_alpha_t and da_t; ssums (BH, NC, 2, L) the column sums
      sum_t dlogD[t, s] and (broadcast over L) the chunk's d/d log decay.
    """
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunk, bdv = blocks.chunk_size, blocks.block_dv
    nc = s // chunk
    grid = (bh, nc, dhv // bdv)
    seq = lambda width: pl.BlockSpec((None, chunk, width), lambda b, c, jv: (b, c, 0))
    seq_v = pl.BlockSpec((None, chunk, bdv), lambda b, c, jv: (b, c, jv))
    return pl.pallas_call(
        functools.partial(_chunk_grads_kernel, scale=dhqk**-0.5, mm_dtype=mm_dtype),
        grid=grid,
        in_specs=[
            seq(dhqk),
            seq(dhqk),
            seq_v,
            seq_v,
            pl.BlockSpec((None, None, dhqk, bdv), lambda b, c, jv: (b, c, 0, jv)),
            pl.BlockSpec((None, None, 1, dhqk), lambda b, c, jv: (b, c, 0, 0)),
            pl.BlockSpec((None, None, dhqk, bdv), lambda b, c, jv: (b, c + 1, 0, jv)),
            pl.BlockSpec((None, None, 1, dhqk), lambda b, c, jv: (b, c + 1, 0, 0)),
            pl.BlockSpec((None, None, NUM_GATE_COLS, chunk, 1), lambda b, c, jv: (b, c, 0, 0, 0)),
            pl.BlockSpec((None, None, 1, NUM_GATE_ROWS, chunk), lambda b, c, jv: (b, c, 0, 0, 0)),
            pl.BlockSpec((None, None, NUM_COT_COLS, chunk, 1), lambda b, c, jv: (b, c, 0, 0, 0)),
        ],
        out_specs=[
            seq(dhqk),
            seq(dhqk),
            seq_v,
            pl.BlockSpec((None, None, 3, chunk, 1), lambda b, c, jv: (b, c, 0, 0, 0)),
            pl.BlockSpec((None, None, 2, chunk), lambda b, c, jv: (b, c, 0, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bh, s, dhqk), q.dtype),
            jax.ShapeDtypeStruct((bh, s, dhqk), k.dtype),
            jax.ShapeDtypeStruct((bh, s, dhv), v.dtype),
            jax.ShapeDtypeStruct((bh, nc, 3, chunk, 1), jnp.float32),
            jax.ShapeDtypeStruct((bh, nc, 2, chunk), jnp.float32),
        ],
        scratch_shapes=[
            pltpu.VMEM((chunk, chunk), jnp.float32),  # P
            pltpu.VMEM((chunk, chunk), jnp.float32),  # D
            pltpu.VMEM((chunk, chunk), jnp.float32),  # dP
            pltpu.VMEM((chunk, dhqk), jnp.float32),  # dq_in
            pltpu.VMEM((chunk, dhqk), jnp.float32),  # v dC^T
            pltpu.VMEM((1, 1), jnp.float32),  # <dC, C>
        ],
        compiler_params=compiler_params("parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="mlstm_tpu_chunk_grads",
    )(q, k, v, dh, c_states, n_states, e, en, gcols, grows, dcols)
