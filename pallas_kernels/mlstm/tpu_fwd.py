"""Forward Mosaic kernels of the chunkwise mLSTM (TFLA structure), and the layouts they share.

Two ``pallas_call``s, both on (BH, S, D) arrays (batch and heads merged), chunk length L:

* ``chunk_states`` (TFLA's "recurrent" kernel): grid (BH, DHQK / block_dqk, NC + 1, DHV / block_dv),
  the chunk axis sequential ("arbitrary"). A float32 VMEM scratch carries one (block_dqk, DHV) row
  band of the memory C (and its n) from chunk to chunk; step c writes the memory entering chunk c,
  step NC the final memory. C_c = decay_{c-1} C_{c-1} + (k w)^T v with the chunk's write weights w.
* ``chunk_outputs`` (TFLA's "parallel" kernel): grid (BH, NC, L / block_q, DHV / block_dv). Per query
  tile: the entering memory's term q_in C + the causal, decay-weighted attention over the key tiles
  at or below the diagonal, accumulated in float32 VMEM scratch, then h = num / (max(|d|, exp(-m)) + eps).

The per-token stabilizers (m_t, M_k) come from ``xlstm_jax.ops.chunkwise_math.stabilizers`` (plain
JAX, O(S)): with the row max m_t known in advance, the key tiles accumulate without the online
rescaling of flash attention.

Per-token gate vectors reach the kernels in two orientations, so that no kernel transposes a vector:
* "columns" (BH, NC, NV, L, 1): one value per query row (sublanes), read as (rows, 1);
* "rows" (BH, NC, L / tile, NV, tile): one value per key column (lanes), read as (1, tile).
Both satisfy Mosaic's block rule: a column block is (rows, 1) with rows a multiple of 8 (block_q)
or all of L, and 1 the whole last dim; a row block's last two dims (NV, tile) are the array's.
A column's lane dim of 1 is padded to 128 lanes in VMEM (and, with XLA's default TPU tiling, in
HBM): simple and legal, but 128x the bytes of the vectors themselves (unmeasured on hardware).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Columns of the gate array (BH, NC, NUM_GATE_COLS, L, 1).
HI, LO, SEG, M, ALPHA, W, DECAY = range(7)
NUM_GATE_COLS = 7
# Rows of the source-side array (BH, NC, L / tile, NUM_GATE_ROWS, tile).
ROW_HI, ROW_LO, ROW_I, ROW_SEG = range(4)
NUM_GATE_ROWS = 4

NN = (((1,), (0,)), ((), ()))  # a @ b
NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b


def dot(a, b, dims, mm_dtype):
    """Matmul on the MXU: operands in ``mm_dtype`` (bf16 for bf16 inputs), float32 accumulation."""
    a, b = a.astype(mm_dtype), b.astype(mm_dtype)
    precision = lax.Precision.HIGHEST if jnp.dtype(mm_dtype).itemsize >= 4 else None
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def gate_columns(vectors):
    """(B, NH, NC, L) vectors -> (BH, NC, len(vectors), L, 1)."""
    x = jnp.stack(vectors, axis=3)  # (B, NH, NC, NV, L)
    b, nh, nc, nv, chunk = x.shape
    return x.reshape(b * nh, nc, nv, chunk, 1)


def gate_rows(vectors, tile: int):
    """(B, NH, NC, L) vectors -> (BH, NC, L / tile, len(vectors), tile)."""
    x = jnp.stack(vectors, axis=3)  # (B, NH, NC, NV, L)
    b, nh, nc, nv, chunk = x.shape
    x = x.reshape(b * nh, nc, nv, chunk // tile, tile)
    return jnp.swapaxes(x, 2, 3)


def decay_matrix(col, row, t0, s0, shape):
    """exp(logD[t, s] - m_t) on one (target, source) tile, 0 where s > t or a reset lies in (s, t].

    col: (NUM_GATE_COLS, rows) accessor of (bq, 1) vectors; row: (1, bkv) accessor; t0, s0: tile
    offsets in the chunk. Same arithmetic as ``xlstm_jax.ops.decay.log_decay_matrix``.
    """
    hi_t, lo_t, seg_t, m_t = col(HI), col(LO), col(SEG), col(M)
    hi_s, lo_s, i_s, seg_s = row(ROW_HI), row(ROW_LO), row(ROW_I), row(ROW_SEG)
    t = lax.broadcasted_iota(jnp.int32, shape, 0) + t0
    s = lax.broadcasted_iota(jnp.int32, shape, 1) + s0
    valid = (s <= t) & (seg_t == seg_s)
    log_d = ((hi_t - hi_s) + (lo_t - lo_s)) + i_s
    return jnp.exp(jnp.where(valid, log_d - m_t, -jnp.inf))


def compiler_params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


# --------------------------------------------------------------------------- inter-chunk states


def _states_kernel(k_ref, v_ref, gcol_ref, c0_ref, n0_ref, c_out, n_out, c_scr, n_scr, *, mm_dtype):
    c, jv = pl.program_id(2), pl.program_id(3)

    @pl.when(c == 0)
    def _():
        c_scr[jv] = c0_ref[...].astype(jnp.float32)

        @pl.when(jv == 0)
        def _():
            n_scr[...] = n0_ref[...].astype(jnp.float32)

    @pl.when(c > 0)  # fold in chunk c - 1
    def _():
        decay = gcol_ref[DECAY, 0:1, :]  # (1, 1)
        kw = k_ref[...].astype(jnp.float32) * gcol_ref[W]  # (L, block_dqk)
        c_scr[jv] = decay * c_scr[jv] + dot(kw, v_ref[...], TN, mm_dtype)

        @pl.when(jv == 0)
        def _():
            n_scr[...] = decay * n_scr[...] + jnp.sum(kw, axis=0, keepdims=True)

    c_out[...] = c_scr[jv]

    @pl.when(jv == 0)
    def _():
        n_out[...] = n_scr[...]


def chunk_states(k, v, gcols, c0, n0, *, blocks, mm_dtype, interpret):
    """Memory entering every chunk, and the final memory, in float32.

    Args:
      k: (BH, S, DHQK); v: (BH, S, DHV); gcols: (BH, NC, NUM_GATE_COLS, L, 1) (uses W, DECAY);
      c0: (BH, DHQK, DHV); n0: (BH, 1, DHQK).

    Returns:
      c_states (BH, NC + 1, DHQK, DHV), n_states (BH, NC + 1, 1, DHQK): index c is the memory
      entering chunk c, index NC the final memory.
    """
    bh, s, dhqk = k.shape
    dhv = v.shape[-1]
    chunk, bdqk, bdv = blocks.chunk_size, blocks.block_dqk, blocks.block_dv
    nc = s // chunk
    prev = lambda c: jnp.maximum(c - 1, 0)
    grid = (bh, dhqk // bdqk, nc + 1, dhv // bdv)
    return pl.pallas_call(
        functools.partial(_states_kernel, mm_dtype=mm_dtype),
        grid=grid,
        in_specs=[
            pl.BlockSpec((None, chunk, bdqk), lambda b, iqk, c, jv: (b, prev(c), iqk)),
            pl.BlockSpec((None, chunk, bdv), lambda b, iqk, c, jv: (b, prev(c), jv)),
            pl.BlockSpec((None, None, NUM_GATE_COLS, chunk, 1), lambda b, iqk, c, jv: (b, prev(c), 0, 0, 0)),
            pl.BlockSpec((None, bdqk, bdv), lambda b, iqk, c, jv: (b, iqk, jv)),
            pl.BlockSpec((None, 1, bdqk), lambda b, iqk, c, jv: (b, 0, iqk)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, bdqk, bdv), lambda b, iqk, c, jv: (b, c, iqk, jv)),
            pl.BlockSpec((None, None, 1, bdqk), lambda b, iqk, c, jv: (b, c, 0, iqk)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bh, nc + 1, dhqk, dhv), jnp.float32),
            jax.ShapeDtypeStruct((bh, nc + 1, 1, dhqk), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((dhv // bdv, bdqk, bdv), jnp.float32), pltpu.VMEM((1, bdqk), jnp.float32)],
        compiler_params=compiler_params("parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=interpret,
        name="mlstm_tpu_chunk_states",
    )(k, v, gcols, c0, n0)


# --------------------------------------------------------------------------- intra-chunk outputs


def _outputs_kernel(
    q_ref, k_ref, v_ref, c_ref, n_ref, gcol_ref, grow_ref, h_ref, d_ref, acc_scr, d_scr, *, scale, eps, mm_dtype
):
    iq = pl.program_id(2)
    bq = q_ref.shape[0]
    bkv = grow_ref.shape[-1]
    q = q_ref[...]
    col = lambda j: gcol_ref[j]

    # The entering memory's contribution.
    q_in = (q.astype(jnp.float32) * scale) * col(ALPHA)  # (bq, DHQK)
    acc_scr[...] = dot(q_in, c_ref[...], NN, mm_dtype)
    d_scr[...] = jnp.sum(q_in * n_ref[...], axis=1, keepdims=True)

    # Causal attention inside the chunk: key tiles at or below the diagonal.
    for j in range(grow_ref.shape[0]):

        @pl.when(j * bkv < (iq + 1) * bq)
        def _(j=j):
            sl = slice(j * bkv, (j + 1) * bkv)
            row = lambda r: grow_ref[j, r : r + 1, :]
            decay = decay_matrix(col, row, iq * bq, j * bkv, (bq, bkv))
            p = dot(q, k_ref[sl, :], NT, mm_dtype) * scale * decay
            acc_scr[...] += dot(p, v_ref[sl, :], NN, mm_dtype)
            d_scr[...] += jnp.sum(p, axis=1, keepdims=True)

    d = d_scr[...]
    den = jnp.maximum(jnp.abs(d), jnp.exp(-col(M))) + eps
    h_ref[...] = (acc_scr[...] / den).astype(h_ref.dtype)
    d_ref[...] = d


def chunk_outputs(q, k, v, c_states, n_states, gcols, grows, *, blocks, eps, mm_dtype, interpret):
    """h (BH, S, DHV) in the dtype of q, and the signed normalizer d (BH, S, 1) in float32.

    grows: (BH, NC, L / block_kv, NUM_GATE_ROWS, block_kv).
    """
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunk, bq, bkv, bdv = blocks.chunk_size, blocks.block_q, blocks.block_kv, blocks.block_dv
    nc, nq = s // chunk, chunk // bq
    grid = (bh, nc, nq, dhv // bdv)
    kernel = functools.partial(_outputs_kernel, scale=dhqk**-0.5, eps=eps, mm_dtype=mm_dtype)
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec((None, bq, dhqk), lambda b, c, iq, jv: (b, c * nq + iq, 0)),
            pl.BlockSpec((None, chunk, dhqk), lambda b, c, iq, jv: (b, c, 0)),
            pl.BlockSpec((None, chunk, bdv), lambda b, c, iq, jv: (b, c, jv)),
            pl.BlockSpec((None, None, dhqk, bdv), lambda b, c, iq, jv: (b, c, 0, jv)),
            pl.BlockSpec((None, None, 1, dhqk), lambda b, c, iq, jv: (b, c, 0, 0)),
            pl.BlockSpec((None, None, NUM_GATE_COLS, bq, 1), lambda b, c, iq, jv: (b, c, 0, iq, 0)),
            pl.BlockSpec((None, None, chunk // bkv, NUM_GATE_ROWS, bkv), lambda b, c, iq, jv: (b, c, 0, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, bdv), lambda b, c, iq, jv: (b, c * nq + iq, jv)),
            pl.BlockSpec((None, bq, 1), lambda b, c, iq, jv: (b, c * nq + iq, 0)),
        ],
        out_shape=[jax.ShapeDtypeStruct((bh, s, dhv), q.dtype), jax.ShapeDtypeStruct((bh, s, 1), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((bq, bdv), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32)],
        # d is rewritten (same value) for every DHV tile: the DHV axis stays on one core.
        compiler_params=compiler_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="mlstm_tpu_chunk_outputs",
    )(q, k, v, c_states, n_states, gcols, grows)
