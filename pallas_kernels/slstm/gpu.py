"""Fused sLSTM on GPU (Pallas Triton): the whole time loop in one program per (head, batch tile).

Grid (NH, B / block_b); each program walks all S tokens in a ``fori_loop`` with the state (h, c, n, m)
in registers as DH / block_dh column tiles of (block_b, block_dh). Per token and gate, output tile j
of the recurrent pre-activation is sum_k h[k] @ R[g, tile k, tile j]: (block_b, block_dh) x
(block_dh, block_dh) ``tl.dot``s, then the pointwise cell per tile (it is elementwise in the head dim).
Tiling bounds the registers and shared memory of each dot at any DH; whole (DH, DH) float32 weight
tiles did not fit an H100 (benchmarks/RESULTS.md). With ``resident_weights`` the weight tiles are
loaded once, before the loop (kept on chip as Triton allocates them: registers, spilling when they
do not fit); without it they are re-read every step (from L2, where a head's weights stay hot).

The backward program walks time in reverse: recomputes the recurrent pre-activations from the saved
previous states, applies the exact step derivative of ``xlstm_jax.ops.slstm_scan`` (same
``local_jacobian``: min/max tie rules, per-element first-step rule), and back-propagates the hidden
cotangent through the transposed weight tiles. The weights' gradient is one matmul outside the kernel.

Triton needs power-of-2 tensors and dots of at least 16 in every dim: block_b and block_dh are powers
of 2 >= 16 (the batch is padded) and DH a multiple of block_dh. Matmuls in float32 with IEEE
precision (``Precision.HIGHEST``; not TF32), or with ``recurrent_dtype="bfloat16"`` bfloat16
operands on the tensor cores with float32 accumulation.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from xlstm_jax.ops import SLSTMState
from xlstm_jax.ops.slstm_math import local_jacobian, pointwise

from .common import GATES, cell_backward, custom_vjp_scan, dot, dot_t, from_kernel_layout, prepare, to_kernel_layout
from .config import SLSTMBlocks, default_blocks


class _Static(NamedTuple):
    """Hashable static arguments of the custom_vjp core."""

    blocks: SLSTMBlocks
    interpret: object


def _tiles(dh: int, block_dh: int) -> list:
    """The column slices of the head dim, ``block_dh`` wide."""
    return [pl.ds(j * block_dh, block_dh) for j in range(dh // block_dh)]


def _weights(r_ref, dh: int, blocks: SLSTMBlocks):
    """(the head dim's column tiles, ``w``): ``w(g, k, j)`` is the (block_dh, block_dh) weight tile of
    gate g from input tile k to output tile j in ``blocks.recurrent_dtype``, loaded now (resident
    weights) or at each use."""
    tiles = _tiles(dh, blocks.block_dh)
    dtype = jnp.dtype(blocks.recurrent_dtype)
    index = [(g, k, j) for g in range(GATES) for k in range(len(tiles)) for j in range(len(tiles))]
    if blocks.resident_weights:
        loaded = {(g, k, j): r_ref[g, tiles[k], tiles[j]].astype(dtype) for g, k, j in index}
        return tiles, lambda g, k, j: loaded[g, k, j]
    return tiles, lambda g, k, j: r_ref[g, tiles[k], tiles[j]].astype(dtype)


def _recurrent(g_ref, t, h, w, tiles):
    """raw[g][j] = gates[t, g, :, tile j] + sum_k h[k] @ R[g, tile k, tile j]; h: tuple of (bb, bd) tiles."""
    raw = []
    for g in range(GATES):
        row = []
        for j, cols in enumerate(tiles):
            acc = g_ref[t, g, :, cols]
            for k in range(len(tiles)):
                wt = w(g, k, j)  # already in the recurrent dtype
                acc = acc + dot(h[k], wt, wt.dtype)
            row.append(acc)
        raw.append(row)
    return raw


def _split(x_ref, index, tiles):
    return tuple(x_ref[(*index, slice(None), cols)] for cols in tiles)


def _fwd_kernel(*refs, seq_len: int, blocks: SLSTMBlocks, has_keep: bool, save: bool):
    """refs: gates (S, 4, bb, DH), weights (4, DH, DH), h0 c0 n0 m0 (bb, DH), [keep (S, bb)];
    outputs h (S, bb, DH), [prev h c n m (S, bb, DH)], final h c n m (bb, DH).

    The carried state is four tuples of (bb, block_dh) column tiles."""
    g_ref, r_ref, *refs = refs
    init_refs, refs = refs[:4], refs[4:]
    keep_ref = refs.pop(0) if has_keep else None
    h_ref, refs = refs[0], refs[1:]
    prev_refs, final_refs = (refs[:4], refs[4:]) if save else ((), refs)
    tiles, w = _weights(r_ref, h_ref.shape[-1], blocks)

    def step(t, state):
        if keep_ref is not None:  # reset to zeros before the token
            keep = (keep_ref[t] > 0)[:, None]
            state = tuple(tuple(jnp.where(keep, x, 0.0) for x in field) for field in state)
        for ref, field in zip(prev_refs, state):
            for cols, x in zip(tiles, field):
                ref[t, :, cols] = x
        raw = _recurrent(g_ref, t, state[0], w, tiles)
        new = [
            pointwise([raw[g][j] for g in range(GATES)], SLSTMState(*(f[j] for f in state))) for j in range(len(tiles))
        ]
        for cols, x in zip(tiles, new):
            h_ref[t, :, cols] = x.h
        return tuple(tuple(x[f] for x in new) for f in range(4))

    init = tuple(_split(ref, (), tiles) for ref in init_refs)
    final = jax.lax.fori_loop(0, seq_len, step, init, unroll=blocks.unroll)
    for ref, field in zip(final_refs, final):
        for cols, x in zip(tiles, field):
            ref[:, cols] = x


def _bwd_kernel(*refs, seq_len: int, blocks: SLSTMBlocks, has_keep: bool):
    """Reverse time. refs: gates (S, 4, bb, DH), weights (4, DH, DH), prev h c n m (S, bb, DH),
    d h (S, bb, DH), d final h c n m (bb, DH), [keep (S, bb)];
    outputs d gates (S, 4, bb, DH), d initial h c n m (bb, DH). The carried cotangents are four
    tuples of (bb, block_dh) column tiles."""
    g_ref, r_ref, *refs = refs
    prev_refs, dh_ref, dfinal_refs, refs = refs[:4], refs[4], refs[5:9], refs[9:]
    keep_ref = refs.pop(0) if has_keep else None
    dg_ref, d0_refs = refs[0], refs[1:]
    tiles, w = _weights(r_ref, dh_ref.shape[-1], blocks)
    n_tiles = len(tiles)

    def step(tt, carry):
        t = seq_len - 1 - tt
        prev = [_split(ref, (t,), tiles) for ref in prev_refs]
        raw = _recurrent(g_ref, t, prev[0], w, tiles)
        d_raw, d_c, d_n, d_m = [], [], [], []
        for j, cols in enumerate(tiles):
            jac = local_jacobian([raw[g][j] for g in range(GATES)], SLSTMState(*(f[j] for f in prev)))
            d_new_h = carry[0][j] + dh_ref[t, :, cols]
            dr, (dc, dn, dm) = cell_backward(jac, d_new_h, carry[1][j], carry[2][j], carry[3][j])
            for g in range(GATES):
                dg_ref[t, g, :, cols] = dr[g]
            d_raw.append(dr)
            d_c.append(dc)
            d_n.append(dn)
            d_m.append(dm)
        d_h = []
        for k in range(n_tiles):
            acc = None
            for g in range(GATES):
                for j in range(n_tiles):
                    wt = w(g, k, j)
                    part = dot_t(d_raw[j][g], wt, wt.dtype)
                    acc = part if acc is None else acc + part
            d_h.append(acc)
        new = (tuple(d_h), tuple(d_c), tuple(d_n), tuple(d_m))
        if keep_ref is not None:
            keep = (keep_ref[t] > 0)[:, None]
            new = tuple(tuple(jnp.where(keep, x, 0.0) for x in field) for field in new)
        return new

    init = tuple(_split(ref, (), tiles) for ref in dfinal_refs)
    d0 = jax.lax.fori_loop(0, seq_len, step, init, unroll=blocks.unroll)
    for ref, field in zip(d0_refs, d0):
        for cols, x in zip(tiles, field):
            ref[:, cols] = x


def _specs(st: _Static, gates, keep):
    nh, s, _, bp, dh = gates.shape
    bb = st.blocks.block_b
    seq = pl.BlockSpec((None, s, bb, dh), lambda h, b: (h, 0, b, 0))
    gate = pl.BlockSpec((None, s, GATES, bb, dh), lambda h, b: (h, 0, 0, b, 0))
    weights = pl.BlockSpec((None, GATES, dh, dh), lambda h, b: (h, 0, 0, 0))
    state = pl.BlockSpec((None, bb, dh), lambda h, b: (h, b, 0))
    keep_spec = [] if keep is None else [pl.BlockSpec((s, bb), lambda h, b: (0, b))]
    return seq, gate, weights, state, keep_spec, (nh, bp // bb)


def _forward_call(st: _Static, gates, r, state0, keep, *, save: bool):
    nh, s, _, bp, dh = gates.shape
    seq, gate, weights, state, keep_spec, grid = _specs(st, gates, keep)
    n_seq = 5 if save else 1
    kernel = functools.partial(_fwd_kernel, seq_len=s, blocks=st.blocks, has_keep=keep is not None, save=save)
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((nh, s, bp, dh), gates.dtype)] * n_seq
        + [jax.ShapeDtypeStruct((nh, bp, dh), gates.dtype)] * 4,
        grid=grid,
        in_specs=[gate, weights, *[state] * 4, *keep_spec],
        out_specs=[seq] * n_seq + [state] * 4,
        compiler_params=pltr.CompilerParams(num_warps=st.blocks.num_warps, num_stages=1),
        interpret=st.interpret,
        name="slstm_fwd_gpu",
    )(gates, r, *state0, *([] if keep is None else [keep]))
    return outs[0], tuple(outs[1:n_seq]), tuple(outs[n_seq:])


def _backward_call(st: _Static, gates, r, prev, d_h, d_final, keep):
    nh, s, _, bp, dh = gates.shape
    seq, gate, weights, state, keep_spec, grid = _specs(st, gates, keep)
    kernel = functools.partial(_bwd_kernel, seq_len=s, blocks=st.blocks, has_keep=keep is not None)
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(gates.shape, gates.dtype)]
        + [jax.ShapeDtypeStruct((nh, bp, dh), gates.dtype)] * 4,
        grid=grid,
        in_specs=[gate, weights, *[seq] * 5, *[state] * 4, *keep_spec],
        out_specs=[gate] + [state] * 4,
        compiler_params=pltr.CompilerParams(num_warps=st.blocks.num_warps, num_stages=1),
        interpret=st.interpret,
        name="slstm_bwd_gpu",
    )(gates, r, *prev, d_h, *d_final, *([] if keep is None else [keep]))
    return outs[0], tuple(outs[1:])


_scan = custom_vjp_scan(_forward_call, _backward_call)


def choose_blocks(
    batch: int, seq_len: int, dh: int, blocks: SLSTMBlocks | None = None, *, has_resets: bool = False, interpret=False
) -> SLSTMBlocks:
    """The tiles ``slstm_scan_gpu`` runs with: ``config.default_blocks("gpu", batch, dh)`` when None,
    checked against the platform's tiling rules; raises ``ValueError`` if it cannot run."""
    blocks = (blocks or default_blocks("gpu", batch, dh)).validate_for("gpu", dh)
    return blocks


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def slstm_scan_gpu(
    gates_x,
    recurrent_kernel,
    bias,
    *,
    initial_state: SLSTMState | None = None,
    resets=None,
    blocks: SLSTMBlocks | None = None,
    interpret=False,
):
    """sLSTM over a sequence as fused GPU (Triton) kernels; the contract of ``xlstm_jax.ops.slstm_scan``.

    Args:
      gates_x: (B, S, 4, NH, DH) input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel: (NH, DH, 4, DH); ``raw[b, g, h, o] += sum_d h_prev[b, h, d] R[h, d, g, o]``.
      bias: (NH, 4, DH).
      initial_state: ``SLSTMState`` (h, c, n, m), each (B, NH, DH); zeros when None.
      resets: optional (B, S) bool; True where the state is reset to zeros before the token.
      blocks: ``SLSTMBlocks``; None: the default of ``choose_blocks``, which also checks given ones.
      interpret: run the kernels in the Pallas interpreter.

    Returns:
      ``(h, state)``: h (B, S, NH, DH) in the dtype of gates_x, and the final state (float32).
    """
    inputs = prepare(gates_x, recurrent_kernel, bias, initial_state, resets)
    b, s, _, nh, dh = gates_x.shape
    blocks = choose_blocks(b, s, dh, blocks, has_resets=resets is not None, interpret=interpret)
    st = _Static(blocks, interpret)
    gates, r, state0, keep = to_kernel_layout(*inputs, resets, block_b=blocks.block_b, block_t=1)

    h, final = _scan(st, gates, r, state0, keep)
    return from_kernel_layout(h, final, b, s, gates_x.dtype)
