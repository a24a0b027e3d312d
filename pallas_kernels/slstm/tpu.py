"""Fused sLSTM on TPU (Mosaic): the whole time loop in one kernel per (head, batch tile).

Forward grid (NH, B / block_b, S / block_t), the last axis sequential ("arbitrary"):

* the head's recurrent weights, (4, DH, DH), have a block index that is constant over the batch and
  time axes, so they are copied into VMEM once per head and stay there for the whole sequence;
* the state (h, c, n, m) lives in the final-state output blocks, which are revisited by every time
  step of the grid and so stay in VMEM from the first token to the last;
* gate tiles (block_t, 4, block_b, DH) and output tiles stream through VMEM (double-buffered by
  the Pallas pipeline) while an inner ``fori_loop`` walks the block_t tokens of a tile: per token
  four (block_b, DH) x (DH, DH) matmuls plus the pointwise cell.

The backward kernel walks the same grid with time reversed, the weights again resident, and
recomputes the recurrent pre-activations from the saved previous states (one matmul per gate and
step), then applies the exact step derivative of ``xlstm_jax.ops.slstm_scan`` (its min/max tie rules
and the per-element first-step rule n == 0 -> m = i come from the same ``local_jacobian``), and
back-propagates the hidden-state cotangent through the weights. The weights' gradient is one
matmul outside the kernel, as in the reference.

Numerics: gates, states and matmuls in float32 (``Precision.HIGHEST``); bfloat16 inputs are cast
up (the contract of the reference). Padded batch rows and padded time steps (S rounded up to a
multiple of block_t) never touch the real rows, and padded steps leave the state unchanged.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from xlstm_jax.ops import SLSTMState
from xlstm_jax.ops.slstm_math import local_jacobian, pointwise

from .common import GATES, cell_backward, custom_vjp_scan, dot, dot_t, from_kernel_layout, prepare, to_kernel_layout
from .config import SLSTMBlocks, default_blocks

_DIMS = ("parallel", "parallel", "arbitrary")


class _Static(NamedTuple):
    """Hashable static arguments of the custom_vjp core."""

    block_b: int
    block_t: int
    seq_len: int  # the real (unpadded) sequence length
    unroll: int
    recurrent_dtype: str
    interpret: object


# ----------------------------------------------------------------------------------------------- kernels


def _fwd_kernel(*refs, block_t: int, seq_len: int, unroll: int, has_keep: bool, save: bool, dtype):
    """refs: gates (T, 4, bb, DH), weights (4, DH, DH), h0 c0 n0 m0 (bb, DH), [keep (T, bb, 1)];
    outputs h (T, bb, DH), [prev h c n m (T, bb, DH)], final h c n m (bb, DH) (the carried state)."""
    g_ref, r_ref, *refs = refs
    init_refs, refs = refs[:4], refs[4:]
    keep_ref = refs.pop(0) if has_keep else None
    h_ref, refs = refs[0], refs[1:]
    prev_refs, final_refs = (refs[:4], refs[4:]) if save else ((), refs)
    t_blk = pl.program_id(2)

    @pl.when(t_blk == 0)
    def _init():
        for dst, src in zip(final_refs, init_refs):
            dst[...] = src[...]

    def step(j, carry):
        state = carry
        if keep_ref is not None:  # reset to zeros before the token
            keep = keep_ref[j] > 0
            state = tuple(jnp.where(keep, x, 0.0) for x in state)
        for ref, x in zip(prev_refs, state):
            ref[j] = x
        raw = [g_ref[j, g] + dot(state[0], r_ref[g], dtype) for g in range(GATES)]
        new = tuple(pointwise(raw, SLSTMState(*state)))
        h_ref[j] = new[0]
        if seq_len % block_t:  # padded steps at the end leave the state unchanged
            valid = t_blk * block_t + j < seq_len
            new = tuple(jnp.where(valid, a, b) for a, b in zip(new, carry))
        return new

    carry = jax.lax.fori_loop(0, block_t, step, tuple(ref[...] for ref in final_refs), unroll=unroll)
    for ref, x in zip(final_refs, carry):
        ref[...] = x


def _bwd_kernel(*refs, block_t: int, seq_len: int, num_t: int, unroll: int, has_keep: bool, dtype):
    """Reverse time. refs: gates (T, 4, bb, DH), weights (4, DH, DH), prev h c n m (T, bb, DH),
    d h (T, bb, DH), d final h c n m (bb, DH), [keep (T, bb, 1)];
    outputs d gates (T, 4, bb, DH), d initial h c n m (bb, DH) (the carried cotangent)."""
    g_ref, r_ref, *refs = refs
    prev_refs, dh_ref, dfinal_refs, refs = refs[:4], refs[4], refs[5:9], refs[9:]
    keep_ref = refs.pop(0) if has_keep else None
    dg_ref, d0_refs = refs[0], refs[1:]
    t_blk = pl.program_id(2)
    t_base = (num_t - 1 - t_blk) * block_t

    @pl.when(t_blk == 0)
    def _init():
        for dst, src in zip(d0_refs, dfinal_refs):
            dst[...] = src[...]

    def step(jj, carry):
        j = block_t - 1 - jj
        prev = SLSTMState(*(ref[j] for ref in prev_refs))
        raw = [g_ref[j, g] + dot(prev.h, r_ref[g], dtype) for g in range(GATES)]
        jac = local_jacobian(raw, prev)
        d_raw, (d_c, d_n, d_m) = cell_backward(jac, carry[0] + dh_ref[j], *carry[1:])
        d_h = dot_t(d_raw[0], r_ref[0], dtype)
        for g in range(1, GATES):
            d_h = d_h + dot_t(d_raw[g], r_ref[g], dtype)
        new = (d_h, d_c, d_n, d_m)
        if keep_ref is not None:
            keep = keep_ref[j] > 0
            new = tuple(jnp.where(keep, x, 0.0) for x in new)
        if seq_len % block_t:
            valid = t_base + j < seq_len
            new = tuple(jnp.where(valid, a, b) for a, b in zip(new, carry))
            d_raw = tuple(jnp.where(valid, x, 0.0) for x in d_raw)
        for g in range(GATES):
            dg_ref[j, g] = d_raw[g]
        return new

    carry = jax.lax.fori_loop(0, block_t, step, tuple(ref[...] for ref in d0_refs), unroll=unroll)
    for ref, x in zip(d0_refs, carry):
        ref[...] = x


# ------------------------------------------------------------------------------------------ pallas_calls


# The step body's temporaries, in (block_b, DH) float32 tiles: Mosaic's register-allocator spill
# slots took 8.96 MiB at (16, 512) tiles (~290 tiles) when the backward was compiled for TPU v4
# (benchmarks/tpu_compile_report.py; with this estimate DH=256 fits v4's 16 MiB and compiles there,
# DH=512 does not and did not).
_STEP_TILES = 290


def _vmem_need(block_bytes: int, tile: int) -> int:
    """VMEM bytes of a kernel: double-buffered blocks, the step's temporaries and headroom."""
    return 2 * block_bytes + _STEP_TILES * tile + (2 << 20)


def _vmem_limit(need: int) -> int | None:
    """The scoped VMEM limit to ask for; None (Mosaic's default, 16 MiB) when that is enough."""
    return None if need <= (16 << 20) else need


def _block_bytes(bb: int, bt: int, dh: int, *, n_seq: int, has_keep: bool) -> tuple[int, int]:
    """(bytes of one set of blocks, bytes of one (bb, DH) tile) of a kernel moving ``n_seq``
    (bt, bb, DH) sequence blocks besides the resident weights and the state."""
    tile = _tile_bytes(bb, dh)
    return bt * tile * (n_seq + has_keep) + GATES * _tile_bytes(dh, dh) + 8 * tile, tile


def vmem_need(blocks: SLSTMBlocks, seq_len: int, dh: int, *, has_resets: bool) -> int:
    """Bytes of VMEM the larger of the training forward and the backward kernel needs."""
    bb, bt = blocks.block_b, min(blocks.block_t, seq_len)
    fwd = _block_bytes(bb, bt, dh, n_seq=GATES + 5, has_keep=has_resets)
    bwd = _block_bytes(bb, bt, dh, n_seq=3 * GATES + 1, has_keep=has_resets)
    return max(_vmem_need(*fwd), _vmem_need(*bwd))


def check_fits(blocks: SLSTMBlocks, seq_len: int, dh: int, *, has_resets: bool) -> None:
    """Raise ``ValueError`` when the kernels need more VMEM than this TPU's TensorCore has.

    The TPU is the default device, or the abstract device of the current abstract mesh (compiling
    ahead of time for a topology). Lowering for TPU on another machine without one checks nothing.
    """
    need = vmem_need(blocks, seq_len, dh, has_resets=has_resets)
    try:
        info = pltpu.get_tpu_info()
    except ValueError:  # "Unsupported TPU device kind: cpu": no TPU to measure against
        return
    if need > info.vmem_capacity_bytes:
        raise ValueError(
            f"the TPU sLSTM kernel needs {need / 2**20:.1f} MiB of VMEM at DH={dh}, block_b={blocks.block_b}, "
            f"block_t={blocks.block_t}; a {info.chip_version.name} TensorCore has {info.vmem_capacity_bytes >> 20} MiB"
        )


def _tile_bytes(rows: int, cols: int, itemsize: int = 4) -> int:
    """VMEM bytes of a (rows, cols) float32 tile after (8, 128) padding."""
    return -(-rows // 8) * 8 * (-(-cols // 128) * 128) * itemsize


def _forward_call(st: _Static, gates, r, state0, keep, *, save: bool):
    nh, sp, _, bp, dh = gates.shape
    bb, bt = st.block_b, st.block_t
    num_t = sp // bt
    dtype = gates.dtype
    seq_spec = pl.BlockSpec((None, bt, bb, dh), lambda h, b, t: (h, t, b, 0))
    state_spec = pl.BlockSpec((None, bb, dh), lambda h, b, t: (h, b, 0))
    in_specs = [
        pl.BlockSpec((None, bt, GATES, bb, dh), lambda h, b, t: (h, t, 0, b, 0)),
        pl.BlockSpec((None, GATES, dh, dh), lambda h, b, t: (h, 0, 0, 0)),
        *[state_spec] * 4,
    ]
    args = [gates, r, *state0]
    if keep is not None:
        in_specs.append(pl.BlockSpec((bt, bb, 1), lambda h, b, t: (t, b, 0)))
        args.append(keep)
    n_seq = 5 if save else 1
    out_shape = [jax.ShapeDtypeStruct((nh, sp, bp, dh), dtype)] * n_seq + [
        jax.ShapeDtypeStruct((nh, bp, dh), dtype)
    ] * 4
    out_specs = [seq_spec] * n_seq + [state_spec] * 4
    need = _vmem_need(*_block_bytes(bb, bt, dh, n_seq=GATES + n_seq, has_keep=keep is not None))
    kernel = functools.partial(
        _fwd_kernel,
        block_t=bt,
        seq_len=st.seq_len,
        unroll=st.unroll,
        has_keep=keep is not None,
        save=save,
        dtype=jnp.dtype(st.recurrent_dtype),
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(nh, bp // bb, num_t),
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=_DIMS, vmem_limit_bytes=_vmem_limit(need)),
        cost_estimate=pl.CostEstimate(
            flops=2 * nh * sp * bp * GATES * dh * dh,
            transcendentals=7 * nh * sp * bp * dh,
            bytes_accessed=4 * nh * sp * bp * dh * (GATES + n_seq),
        ),
        interpret=st.interpret,
        name="slstm_fwd_tpu",
    )(*args)
    return outs[0], tuple(outs[1:n_seq]), tuple(outs[n_seq:])


def _backward_call(st: _Static, gates, r, prev, d_h, d_final, keep):
    nh, sp, _, bp, dh = gates.shape
    bb, bt = st.block_b, st.block_t
    num_t = sp // bt
    rev = lambda t: num_t - 1 - t
    seq_spec = pl.BlockSpec((None, bt, bb, dh), lambda h, b, t: (h, rev(t), b, 0))
    gate_spec = pl.BlockSpec((None, bt, GATES, bb, dh), lambda h, b, t: (h, rev(t), 0, b, 0))
    state_spec = pl.BlockSpec((None, bb, dh), lambda h, b, t: (h, b, 0))
    in_specs = [gate_spec, pl.BlockSpec((None, GATES, dh, dh), lambda h, b, t: (h, 0, 0, 0))]
    in_specs += [seq_spec] * 5 + [state_spec] * 4
    args = [gates, r, *prev, d_h, *d_final]
    if keep is not None:
        in_specs.append(pl.BlockSpec((bt, bb, 1), lambda h, b, t: (rev(t), b, 0)))
        args.append(keep)
    need = _vmem_need(*_block_bytes(bb, bt, dh, n_seq=3 * GATES + 1, has_keep=keep is not None))
    kernel = functools.partial(
        _bwd_kernel,
        block_t=bt,
        seq_len=st.seq_len,
        num_t=num_t,
        unroll=st.unroll,
        has_keep=keep is not None,
        dtype=jnp.dtype(st.recurrent_dtype),
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(gates.shape, gates.dtype)]
        + [jax.ShapeDtypeStruct((nh, bp, dh), gates.dtype)] * 4,
        grid=(nh, bp // bb, num_t),
        in_specs=in_specs,
        out_specs=[gate_spec] + [state_spec] * 4,
        compiler_params=pltpu.CompilerParams(dimension_semantics=_DIMS, vmem_limit_bytes=_vmem_limit(need)),
        cost_estimate=pl.CostEstimate(
            flops=4 * nh * sp * bp * GATES * dh * dh,
            transcendentals=9 * nh * sp * bp * dh,
            bytes_accessed=4 * nh * sp * bp * dh * (3 * GATES + 1),
        ),
        interpret=st.interpret,
        name="slstm_bwd_tpu",
    )(*args)
    return outs[0], tuple(outs[1:])


# ---------------------------------------------------------------------------------------------- custom_vjp


_scan = custom_vjp_scan(_forward_call, _backward_call)


def choose_blocks(
    batch: int, seq_len: int, dh: int, blocks: SLSTMBlocks | None = None, *, has_resets: bool = False, interpret=False
) -> SLSTMBlocks:
    """The tiles ``slstm_scan_tpu`` runs with: ``config.default_blocks("tpu", batch, dh)`` when None,
    checked against the platform's tiling rules and, unless ``interpret``, that the
    kernels fit this TPU's VMEM (``check_fits``); raises ``ValueError`` if it cannot run."""
    blocks = (blocks or default_blocks("tpu", batch, dh)).validate_for("tpu", dh)
    if not interpret:
        check_fits(blocks, seq_len, dh, has_resets=has_resets)
    return blocks


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def slstm_scan_tpu(
    gates_x,
    recurrent_kernel,
    bias,
    *,
    initial_state: SLSTMState | None = None,
    resets=None,
    blocks: SLSTMBlocks | None = None,
    interpret=False,
):
    """sLSTM over a sequence as fused TPU kernels; the contract of ``xlstm_jax.ops.slstm_scan``.

    Args:
      gates_x: (B, S, 4, NH, DH) input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel: (NH, DH, 4, DH); ``raw[b, g, h, o] += sum_d h_prev[b, h, d] R[h, d, g, o]``.
      bias: (NH, 4, DH).
      initial_state: ``SLSTMState`` (h, c, n, m), each (B, NH, DH); zeros when None.
      resets: optional (B, S) bool; True where the state is reset to zeros before the token.
      blocks: ``SLSTMBlocks``; None: the default of ``choose_blocks``, which also checks given ones.
      interpret: run the kernels in the Pallas interpreter (True or ``pltpu.InterpretParams()``).
        Otherwise ``choose_blocks`` raises ``ValueError`` when the kernels need more VMEM than the TPU has.

    Returns:
      ``(h, state)``: h (B, S, NH, DH) in the dtype of gates_x, and the final state (float32).
    """
    inputs = prepare(gates_x, recurrent_kernel, bias, initial_state, resets)
    b, s, _, nh, dh = gates_x.shape
    blocks = choose_blocks(b, s, dh, blocks, has_resets=resets is not None, interpret=interpret)
    bb, bt = blocks.block_b, min(blocks.block_t, s)
    st = _Static(bb, bt, s, blocks.unroll, blocks.recurrent_dtype, interpret)
    gates, r, state0, keep = to_kernel_layout(*inputs, resets, block_b=bb, block_t=bt)
    keep = None if keep is None else keep[..., None]  # (Sp, Bp, 1): the batch on sublanes

    h, final = _scan(st, gates, r, state0, keep)
    return from_kernel_layout(h, final, b, s, gates_x.dtype)
