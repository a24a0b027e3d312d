"""Chunkwise mLSTM on TPU: Pallas Mosaic kernels in TFLA's structure, behind a ``jax.custom_vjp``.

The contract is that of ``xlstm_jax.ops.mlstm_chunkwise`` (its slow twin, which the tests compare
against), and so is the decomposition (``xlstm_jax/ops/_chunkwise_fwd.py``, ``_chunkwise_bwd.py``):

* plain JAX, O(S): the stabilizers (``stabilizers``: per-token m_t, per-chunk M_k) and the per-token
  gate vectors the kernels read (cumulative log forget gates, write weights, entering-memory weights);
* Pallas, forward (``tpu_fwd``): the inter-chunk pass over a sequential chunk axis producing the chunk
  states (C, n) (their m is M_k), then the intra-chunk tiled pass combining the intra- and
  inter-chunk terms under the stabilizer m_t;
* Pallas, backward (``tpu_bwd``): recompute the chunk states, walk the chunks in reverse for the
  memory cotangents, then the per-chunk gradients; the stabilizers' own eps and final-scale terms go
  through ``jax.vjp(stabilizers, ...)`` exactly as in the reference.

Memory kept for the backward: q, k, v, the gates, h, the normalizer d and the initial state, i.e.
O(S (DHQK + DHV)) per head; the (NC + 1) chunk states are recomputed.

Precision: gates, stabilizers, states and every accumulator are float32. Matmul operands take the
dtype of q, k and v: float32 inputs run float32 matmuls (``Precision.HIGHEST``), bfloat16 inputs
bfloat16 MXU matmuls with float32 accumulation (the probabilities, q_in, the states and the
cotangents are rounded to bfloat16 as operands). Tolerances (tests): float32, 1e-4 x max|ref| for h
and the state, 1e-3 x max|ref| for gradients; bfloat16 against float64 truth on the same inputs,
1e-2 (h) and 2e-2 (gradients) x max|ref|, the bounds the XLA form meets.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from xlstm_jax.ops import MLSTMState
from xlstm_jax.ops.chunkwise_math import (
    Stabilizers,
    gate_grads,
    normalizer_cotangents,
    pad_to_chunks,
    stabilizer_grads,
    stabilizers,
)
from xlstm_jax.ops.decay import cumulative_forget
from xlstm_jax.ops.mlstm_inputs import check_eps, check_positive_int, prepare

from . import tpu_bwd, tpu_fwd
from .config import MLSTMBlocks, default_blocks


class _Static(NamedTuple):
    """Hashable, non-differentiable arguments of the custom VJP."""

    blocks: MLSTMBlocks
    eps: float
    mm_dtype: Any  # dtype of the matmul operands (q, k, v as passed to the kernels)
    interpret: Any  # False, True or a pltpu.InterpretParams


def _gate_arrays(logf, i, st: Stabilizers, tile: int):
    """Kernel-side gate vectors from chunked gates (B, NH, NC, L) and the stabilizers.

    Returns gate columns (BH, NC, NUM_GATE_COLS, L, 1) and gate rows (BH, NC, L / tile, 4, tile).
    """
    cf = cumulative_forget(logf)
    seg = cf.seg.astype(logf.dtype)
    b = cf.hi + cf.lo
    alpha = jnp.exp(jnp.where(cf.seg == 0, b + st.m_before[..., None] - st.m, -jnp.inf))
    w = jnp.exp(st.a - st.m_after[..., None])
    decay = jnp.broadcast_to(jnp.exp(st.g + st.m_before - st.m_after)[..., None], logf.shape)
    cols = {
        tpu_fwd.HI: cf.hi,
        tpu_fwd.LO: cf.lo,
        tpu_fwd.SEG: seg,
        tpu_fwd.M: st.m,
        tpu_fwd.ALPHA: alpha,
        tpu_fwd.W: w,
        tpu_fwd.DECAY: decay,
    }
    rows = {tpu_fwd.ROW_HI: cf.hi, tpu_fwd.ROW_LO: cf.lo, tpu_fwd.ROW_I: i, tpu_fwd.ROW_SEG: seg}
    gcols = tpu_fwd.gate_columns([cols[j] for j in range(tpu_fwd.NUM_GATE_COLS)])
    grows = tpu_fwd.gate_rows([rows[j] for j in range(tpu_fwd.NUM_GATE_ROWS)], tile)
    return gcols, grows


def _split(x, chunk):
    """(B, NH, S) -> (B, NH, NC, L)."""
    b, nh, s = x.shape
    return x.reshape(b, nh, s // chunk, chunk)


def _merge(x):
    """(B, NH, ...) -> (BH, ...)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _states(k, v, gcols, c0, n0, static: _Static):
    return tpu_fwd.chunk_states(
        _merge(k),
        _merge(v),
        gcols,
        _merge(c0).astype(jnp.float32),
        _merge(n0)[:, None, :].astype(jnp.float32),
        blocks=static.blocks,
        mm_dtype=static.mm_dtype,
        interpret=static.interpret,
    )


def _forward(q, k, v, logf, i, c0, n0, m0, static: _Static):
    b, nh, s, dhqk = q.shape
    dhv = v.shape[-1]
    blocks = static.blocks
    logf_c, i_c = _split(logf, blocks.chunk_size), _split(i, blocks.chunk_size)
    st = stabilizers(logf_c, i_c, m0)
    gcols, grows = _gate_arrays(logf_c, i_c, st, blocks.block_kv)
    c_states, n_states = _states(k, v, gcols, c0, n0, static)
    h, d = tpu_fwd.chunk_outputs(
        _merge(q),
        _merge(k),
        _merge(v),
        c_states,
        n_states,
        gcols,
        grows,
        blocks=blocks,
        eps=static.eps,
        mm_dtype=static.mm_dtype,
        interpret=static.interpret,
    )
    c_final = c_states[:, -1].reshape(b, nh, dhqk, dhv).astype(c0.dtype)
    n_final = n_states[:, -1, 0].reshape(b, nh, dhqk).astype(n0.dtype)
    out = (h.reshape(b, nh, s, dhv), c_final, n_final, st.m_after[..., -1])
    residuals = (q, k, v, logf, i, c0, n0, m0, out[0], d.reshape(b, nh, s))
    return out, residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _chunkwise(q, k, v, logf, i, c0, n0, m0, static: _Static):
    return _forward(q, k, v, logf, i, c0, n0, m0, static)[0]


def _chunkwise_bwd(static: _Static, residuals, cotangents):
    q, k, v, logf, i, c0, n0, m0, h, d = residuals
    dh, dc_final, dn_final, dm_final = cotangents
    b, nh, s, dhqk = q.shape
    dhv = v.shape[-1]
    blocks, eps = static.blocks, static.eps
    chunk = blocks.chunk_size
    nc = s // chunk
    kw = dict(blocks=blocks, mm_dtype=static.mm_dtype, interpret=static.interpret)
    logf_c, i_c = _split(logf, chunk), _split(i, chunk)
    st, pullback = jax.vjp(stabilizers, logf_c, i_c, m0)
    gcols, grows = _gate_arrays(logf_c, i_c, st, chunk)  # one key tile per chunk in the backward
    c_states, n_states = _states(k, v, gcols, c0, n0, static)  # recomputed

    # Per-token cotangent terms of h = num / den (O(S) elementwise).
    d = _split(d, chunk)
    h_dh = _split(jnp.sum(dh.astype(jnp.float32) * h.astype(jnp.float32), axis=-1), chunk).astype(d.dtype)
    den, dd = normalizer_cotangents(d, h_dh, st.m, eps)
    dcols = tpu_fwd.gate_columns([den, dd])

    # Kernels: reverse walk for the memory cotangents, then the per-chunk gradients.
    dh_m = _merge(dh.astype(static.mm_dtype))
    e, en = tpu_bwd.memory_cotangents(
        _merge(q), dh_m, gcols, dcols, _merge(dc_final).astype(jnp.float32), _merge(dn_final)[:, None, :], **kw
    )
    dq, dk, dv, tsums, ssums = tpu_bwd.chunk_grads(
        _merge(q), _merge(k), _merge(v), dh_m, c_states, n_states, e, en, gcols, grows, dcols, **kw
    )

    # Gate gradients from the per-token sums, stabilizers fixed (as _chunkwise_bwd.backward).
    unmerge = lambda x: x.reshape(b, nh, nc, *x.shape[2:]).astype(logf.dtype)
    tsums, ssums = unmerge(tsums[..., 0]), unmerge(ssums)
    rows_dlogd, dlog_alpha, da = (tsums[:, :, :, j] for j in range(3))
    cols_dlogd, dlog_decay = ssums[:, :, :, tpu_bwd.SUM_COLS_OF_DLOGD], ssums[:, :, :, tpu_bwd.DLOG_DECAY, 0]
    dlogf, di, dm0 = gate_grads(rows_dlogd, cols_dlogd, dlog_alpha, da, dlog_decay, logf_c)

    # Stabilizer terms: eps path of every m_t, and the final state's scale.
    final = (c_states[:, -1].reshape(b, nh, dhqk, dhv), n_states[:, -1, 0].reshape(b, nh, dhqk))
    dlogf_m, di_m, dm0_m = stabilizer_grads(
        pullback, st, eps=eps, h_dh=h_dh, den=den, final=final, final_cotangents=(dc_final, dn_final, dm_final)
    )

    seq = lambda x: x.reshape(b, nh, s, *x.shape[4:])
    return (
        dq.reshape(q.shape),
        dk.reshape(k.shape),
        dv.reshape(v.shape),
        seq(dlogf + dlogf_m),
        seq(di + di_m),
        e[:, 0].reshape(c0.shape).astype(c0.dtype),
        en[:, 0, 0].reshape(n0.shape).astype(n0.dtype),
        (dm0 + dm0_m).astype(m0.dtype),
    )


_chunkwise.defvjp(_forward, _chunkwise_bwd)


def choose_blocks(
    dhqk: int, dhv: int, chunk_size: int | None = None, blocks: MLSTMBlocks | None = None, *, interpret=False
) -> MLSTMBlocks:
    """The tiles ``mlstm_chunkwise_tpu`` runs with, validated; raises ``ValueError`` if it cannot run.

    Default: ``config.default_blocks("tpu", dhqk, dhv, chunk_size)``. Checked against Mosaic's tiling
    rules unless ``interpret`` is set (then only that the tiles divide the head dims).
    """
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
    if blocks is None:
        blocks = default_blocks("tpu", dhqk, dhv, chunk_size)
    elif chunk_size is not None and chunk_size != blocks.chunk_size:
        raise ValueError(f"chunk_size={chunk_size} disagrees with blocks.chunk_size={blocks.chunk_size}")
    if not isinstance(blocks, MLSTMBlocks):
        raise ValueError(f"blocks must be an MLSTMBlocks, got {type(blocks).__name__}")
    if interpret is False:
        return blocks.validate_for("tpu", dhqk, dhv)
    for name, dim in (("block_dqk", dhqk), ("block_dv", dhv)):
        if dim % getattr(blocks, name):
            raise ValueError(f"MLSTMBlocks.{name}={getattr(blocks, name)} must divide the head dim {dim}")
    return blocks


def _matmul_dtype(out_dtype, compute_dtype):
    """bf16 MXU operands for bf16 inputs; otherwise the compute dtype (float32)."""
    return jnp.dtype(jnp.bfloat16) if jnp.dtype(out_dtype) == jnp.bfloat16 else jnp.dtype(compute_dtype)


@functools.partial(jax.jit, static_argnames=("chunk_size", "eps", "blocks", "interpret"))
def mlstm_chunkwise_tpu(
    q,
    k,
    v,
    i,
    f,
    *,
    chunk_size: int | None = None,
    initial_state: MLSTMState | None = None,
    eps: float = 1e-6,
    blocks: MLSTMBlocks | None = None,
    interpret=False,
):
    """Chunkwise mLSTM with Pallas TPU (Mosaic) kernels; the contract of ``xlstm_jax.ops.mlstm_chunkwise``.

    Args:
      q, k: (B, NH, S, DHQK); q is scaled by DHQK**-0.5 inside. v: (B, NH, S, DHV).
      i, f: (B, NH, S) input- and forget-gate pre-activations (f = -inf: exact reset).
      chunk_size: chunk length L; None takes it from ``blocks`` (default 128). Must equal
        ``blocks.chunk_size`` when both are given. Any S works: the sequence is padded to a
        multiple of L with tokens that neither write to nor decay the memory.
      initial_state: ``MLSTMState`` c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH); zeros when None.
      eps: added to the normalizer.
      blocks: kernel tiles; None: the default of ``choose_blocks``, which also checks given ones.
      interpret: False (compile for TPU), True (Pallas interpret mode, any backend), or a
        ``pltpu.InterpretParams`` (TPU interpret mode: simulated VMEM/DMAs, race detection).

    Returns:
      ``(h, state)``: h (B, NH, S, DHV) in the dtype of q, k, v; the final ``MLSTMState`` in float32.

    Raises:
      ValueError: bad shapes, dtypes, eps or tiles (the message names the field).
    """
    dhqk, dhv = q.shape[-1], v.shape[-1]
    blocks = choose_blocks(dhqk, dhv, chunk_size, blocks, interpret=interpret)
    eps = check_eps(eps)
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")
    mm_dtype = _matmul_dtype(x.out_dtype, x.q.dtype)
    q_, k_, v_ = (jnp.asarray(a, mm_dtype) for a in (q, k, v))  # not upcast: bf16 stays bf16
    seq_len = q_.shape[2]
    logf, i_ = jax.nn.log_sigmoid(x.f), x.i
    q_, k_, v_, logf, i_ = pad_to_chunks(blocks.chunk_size, q_, k_, v_, logf, i_)
    static = _Static(blocks, eps, mm_dtype, interpret)
    h, c, n, m = _chunkwise(q_, k_, v_, logf, i_, *x.state, static)
    return h[:, :, :seq_len].astype(x.out_dtype), MLSTMState(c, n, m)
