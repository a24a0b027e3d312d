"""Chunkwise mLSTM on GPU: Pallas-Triton kernels behind a ``jax.custom_vjp``.

The contract is exactly that of ``xlstm_jax.ops.mlstm_chunkwise`` (its slow twin, which the tests
compare against), and so is the decomposition:

* plain JAX, O(S): the stabilizers (``ops.chunkwise_math.stabilizers``) and the per-token gate
  table the kernels read; in the backward, the gate gradients and ``jax.vjp(stabilizers, ...)``
  for the stabilizers' eps and final-state terms (``ops._chunkwise_bwd``);
* Pallas-Triton (``gpu_fwd``, ``gpu_bwd``): the inter-chunk state pass over a sequential chunk
  axis, the tiled intra-chunk pass, and in the backward the recomputed states, the reverse walk
  over chunks for the memory's cotangent and the dq / dk / dv passes.

The backward keeps O(S (DHQK + DHV)) per head (inputs, h, the normalizer d) and recomputes the
chunk states, as TFLA does. Matmul operands are in the input dtype (bfloat16 inputs: bfloat16
tensor-core matmuls with float32 accumulation; float32 inputs: IEEE float32), everything else
float32.

The Pallas-Triton backend runs on jax 0.10 and 0.11 (where lowering it warns that the backend is
deprecated in favour of Mosaic GPU); a Mosaic GPU (``plgpu.kernel``) port is the durable path.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from xlstm_jax.ops import MLSTMState
from xlstm_jax.ops.chunkwise_math import (
    gate_grads,
    normalizer_cotangents,
    pad_to_chunks,
    stabilizer_grads,
    stabilizers,
)
from xlstm_jax.ops.mlstm_inputs import check_eps, prepare

from . import gpu_bwd, gpu_fwd
from .config import MLSTMBlocks, default_blocks
from .token_table import token_table

MATMUL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
MIN_TILE = 16  # Triton's tl.dot needs M, N, K >= 16


def padded_dim(dim: int) -> int:
    """The head dim the kernels run with: ``dim`` rounded up to a power of 2 (the kernels load whole
    (tile, DHQK) and (tile, DHV) rows, and Triton tensors have power-of-2 shapes)."""
    return 1 << (dim - 1).bit_length()


def choose_blocks(
    dhqk: int, dhv: int, chunk_size: int | None = None, blocks: MLSTMBlocks | None = None, *, interpret: bool = False
) -> MLSTMBlocks:
    """The tiles ``mlstm_chunkwise_gpu`` runs with, validated; raises ``ValueError`` if it cannot run.

    Default: ``config.default_blocks("gpu", DHQK', DHV', chunk_size)`` for the padded head dims
    (``padded_dim``). On hardware (``interpret=False``) every tile must be at least 16 (Triton's ``tl.dot``).
    """
    dhqk, dhv = padded_dim(dhqk), padded_dim(dhv)
    if blocks is None:
        blocks = default_blocks("gpu", dhqk, dhv, chunk_size)
    elif chunk_size is not None and chunk_size != blocks.chunk_size:
        raise ValueError(f"chunk_size={chunk_size} contradicts blocks.chunk_size={blocks.chunk_size}")
    blocks.validate_for("gpu", dhqk, dhv)
    if not interpret:
        for name in ("chunk_size", "block_q", "block_kv", "block_dqk", "block_dv"):
            if getattr(blocks, name) < MIN_TILE:
                raise ValueError(
                    f"MLSTMBlocks.{name}={getattr(blocks, name)} must be >= {MIN_TILE} on GPU (Triton dot)"
                )
    return blocks


def _forward(q, k, v, logf, i, c0, n0, m0, blocks: MLSTMBlocks, eps: float, interpret: bool):
    """On inputs padded to a multiple of the chunk: ((h, c, n, m), residuals)."""
    b, nh, s, dhqk = q.shape
    dhv = v.shape[-1]
    chunked = lambda x: x.reshape(b, nh, s // blocks.chunk_size, blocks.chunk_size)
    flat = lambda x: x.reshape(b * nh, *x.shape[2:])
    st = stabilizers(chunked(logf), chunked(i), m0)
    tok, decay = token_table(chunked(logf), chunked(i), st)
    qf, kf, vf = flat(q), flat(k), flat(v)
    c_before, n_before, c_final, n_final = gpu_fwd.chunk_states(
        kf, vf, tok, decay, flat(c0), flat(n0), blocks, interpret
    )
    h, d = gpu_fwd.chunk_outputs(qf, kf, vf, tok, c_before, n_before, blocks, eps, interpret)
    out = (
        h.reshape(b, nh, s, dhv),
        c_final.reshape(b, nh, dhqk, dhv),
        n_final.reshape(b, nh, dhqk),
        st.m_after[..., -1],
    )
    return out, (q, k, v, logf, i, c0, n0, m0, h, d)


def _backward(blocks: MLSTMBlocks, eps: float, interpret: bool, res, cotangents):
    """Gradients wrt (q, k, v, logf, i, c0, n0, m0); the math of ``ops._chunkwise_bwd.backward``."""
    q, k, v, logf, i, c0, n0, m0, h, d = res
    dh, dc_final, dn_final, dm_final = cotangents
    b, nh, s, dhqk = q.shape
    nc, length = s // blocks.chunk_size, blocks.chunk_size
    chunked = lambda x: x.reshape(b, nh, nc, length)
    flat = lambda x: x.reshape(b * nh, *x.shape[2:])
    logf_c = chunked(logf)
    st, pullback = jax.vjp(stabilizers, logf_c, chunked(i), m0)
    tok, decay = token_table(logf_c, chunked(i), st)
    qf, kf, vf, dhf = flat(q), flat(k), flat(v), flat(dh).astype(v.dtype)

    # The forward's chunk states, recomputed.
    c_before, n_before, c_final, n_final = gpu_fwd.chunk_states(
        kf, vf, tok, decay, flat(c0), flat(n0), blocks, interpret
    )

    # Normalizer, stabilizers fixed: h = num / den, den = max(|d|, exp(-m)) + eps.
    h_dh = jnp.sum(dhf.astype(jnp.float32) * h.astype(jnp.float32), axis=-1)  # (BH, S)
    den, dd = normalizer_cotangents(d, h_dh, st.m.reshape(b * nh, s), eps)
    tokb = jnp.stack([1.0 / den, dd], axis=1)  # rows gpu_bwd.RDEN, gpu_bwd.DD

    dc_after, dn_after, dc0, dn0 = gpu_bwd.memory_cotangents(
        qf, dhf, tok, tokb, decay, flat(dc_final), flat(dn_final), blocks, interpret
    )
    dq, gates_q = gpu_bwd.grad_q(qf, kf, vf, dhf, tok, tokb, c_before, n_before, blocks, interpret)
    dk, gates_k = gpu_bwd.grad_k(qf, kf, vf, dhf, tok, tokb, dc_after, dn_after, blocks, interpret)
    dv = gpu_bwd.grad_v(qf, kf, vf, dhf, tok, tokb, dc_after, blocks, interpret)

    # Gate gradients (B, NH, NC, L), stabilizers fixed.
    row_sum, dlog_alpha = chunked(gates_q[:, gpu_bwd.ROW_SUM]), chunked(gates_q[:, gpu_bwd.DLOG_ALPHA])
    col_sum, da = chunked(gates_k[:, gpu_bwd.COL_SUM]), chunked(gates_k[:, gpu_bwd.DA])
    dlog_decay = decay * (jnp.sum(dc_after * c_before, axis=(-2, -1)) + jnp.sum(dn_after * n_before, axis=-1))
    dlog_decay = dlog_decay.reshape(b, nh, nc)
    dlogf, di, dm0 = gate_grads(row_sum, col_sum, dlog_alpha, da, dlog_decay, logf_c)

    # Stabilizer terms: eps path of every m_t, and the final state's scale.
    dlogf_m, di_m, dm0_m = stabilizer_grads(
        pullback,
        st,
        eps=eps,
        h_dh=chunked(h_dh),
        den=chunked(den),
        final=(c_final.reshape(dc_final.shape), n_final.reshape(dn_final.shape)),
        final_cotangents=(dc_final, dn_final, dm_final),
    )

    seq = lambda x: x.reshape(b, nh, s)
    return (
        dq.reshape(q.shape),
        dk.reshape(k.shape),
        dv.reshape(v.shape),
        seq(dlogf + dlogf_m),
        seq(di + di_m),
        dc0.reshape(c0.shape),
        dn0.reshape(n0.shape),
        dm0 + dm0_m,
    )


@partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _mlstm(q, k, v, logf, i, c0, n0, m0, blocks, eps, interpret):
    return _forward(q, k, v, logf, i, c0, n0, m0, blocks, eps, interpret)[0]


_mlstm.defvjp(_forward, _backward)


@partial(jax.jit, static_argnames=("chunk_size", "eps", "blocks", "interpret"))
def mlstm_chunkwise_gpu(
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
    interpret: bool = False,
):
    """Chunkwise mLSTM with Pallas-Triton kernels; the contract of ``xlstm_jax.ops.mlstm_chunkwise``.

    Args:
      q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); bfloat16, float16 or float32 (matmul operands
        take their common dtype). q is scaled by DHQK**-0.5 inside. A head dim that is not a power of 2
        runs zero-padded to the next one (``padded_dim``) at the padded dim's cost: the same results up
        to one more rounding of q (pre-scaled by sqrt(padded / DHQK), since the kernels scale by the
        padded dim).
      i, f: (B, NH, S) input- and forget-gate pre-activations (f = -inf: exact memory reset).
      chunk_size: chunk length L; None: ``blocks.chunk_size``. Any S works: the sequence is padded
        to a multiple of L with tokens that neither write to nor decay the memory.
      initial_state: ``MLSTMState`` c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH); zeros if None.
      eps: added to the normalizer.
      blocks: tiles and launch parameters; None: ``config.default_blocks("gpu", DHQK', DHV', chunk_size)``
        for the padded head dims.
        Checked by ``choose_blocks``.
      interpret: run the kernels in Pallas interpret mode (CPU tests).

    Returns:
      ``(h, state)``: h (B, NH, S, DHV) in the common dtype of q, k, v; the final state in float32.
    """
    eps = check_eps(eps)
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")
    if x.i.dtype != jnp.float32:
        raise ValueError(f"the GPU mLSTM kernel computes gates and states in float32, got inputs giving {x.i.dtype}")
    dtype = jnp.dtype(x.out_dtype)
    if dtype not in MATMUL_DTYPES:
        raise ValueError(f"q, k, v must be bfloat16, float16 or float32 for the GPU mLSTM kernel, got {dtype}")
    _, _, seq_len, dhqk = x.q.shape
    dhv = x.v.shape[-1]
    blocks = choose_blocks(dhqk, dhv, chunk_size, blocks, interpret=interpret)
    q_, k_, v_ = (jnp.asarray(a, dtype) for a in (q, k, v))
    c0, n0, m0 = x.state
    pq, pv = padded_dim(dhqk), padded_dim(dhv)
    if (pq, pv) != (dhqk, dhv):  # zero columns: q k^T, h and the state are unchanged, only wider
        if pq != dhqk:  # the kernels scale q k^T by pq**-0.5
            q_ = (q_.astype(jnp.float32) * (pq / dhqk) ** 0.5).astype(dtype)
        q_, k_, v_, c0, n0 = _pad_heads(q_, k_, v_, c0, n0, pq, pv)
    logf, i_ = jax.nn.log_sigmoid(x.f), x.i
    q_, k_, v_, logf, i_ = pad_to_chunks(blocks.chunk_size, q_, k_, v_, logf, i_)
    h, c, n, m = _mlstm(q_, k_, v_, logf, i_, c0, n0, m0, blocks, eps, interpret)
    return h[:, :, :seq_len, :dhv], MLSTMState(c[..., :dhqk, :dhv], n[..., :dhqk], m)


def _pad_to(x, axis: int, width: int):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, width - x.shape[axis])
    return jnp.pad(x, pad)


def _pad_heads(q, k, v, c0, n0, pq: int, pv: int):
    """Zero-pad the head dims of q, k (and c0's rows, n0) to ``pq`` and of v (and c0's columns) to ``pv``."""
    c0 = _pad_to(_pad_to(c0, -1, pv), -2, pq)
    return _pad_to(q, -1, pq), _pad_to(k, -1, pq), _pad_to(v, -1, pv), c0, _pad_to(n0, -1, pq)
