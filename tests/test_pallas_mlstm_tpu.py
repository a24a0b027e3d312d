"""The TPU (Pallas Mosaic) chunkwise mLSTM kernel equals its slow twin ``xlstm_jax.ops.mlstm_chunkwise``.

On CPU the kernels run in Pallas interpret mode (forward and every gradient, small shapes): chunks
of 16 tokens in query / key tiles of 8, the head dims whole (16, 32) or split into several DHQK / DHV
tiles (interpret mode only checks that tiles divide). One tiny case runs under the TPU interpreter
(simulated VMEM, two cores sharing the "parallel" grid axes, race detection, uninitialized memory
filled with NaN). The production tiles are cross-lowered for TPU (Mosaic), which checks block shapes
and the kernel bodies' lowering without a TPU; compiling and running them needs TPU hardware.

Tolerances as for the XLA forms: float32 forward within 1e-4 x max|ref|, gradients within
1e-3 x max|ref|. bfloat16 inputs (bf16 MXU operands, float32 accumulation): against float64 truth
on the same bf16-rounded inputs, h within 1e-2 and gradients within 2e-2 x max|ref|, the bounds the
XLA chunkwise form meets (``test_mlstm_forms.test_bfloat16_inputs``).
"""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from helpers import assert_close, cast, mlstm_inputs
from mlstm_kernel_cases import (
    BF16_FWD_TOL,
    BF16_GRAD_TOL,
    DHQK,
    DHV,
    FWD_TOL,
    GRAD_TOL,
    case,
    check,
    reference,
    value_and_vjp,
)
from xlstm_jax.ops import MLSTMState
from xlstm_jax.pallas_kernels.mlstm.config import MLSTMBlocks, default_blocks
from xlstm_jax.pallas_kernels.mlstm.tpu import mlstm_chunkwise_tpu

# Chunks of 16 tokens in query / key tiles of 8, whole head dims.
SMALL_TILES = MLSTMBlocks(chunk_size=16, block_q=8, block_kv=8, block_dqk=16, block_dv=32)


@partial(jax.jit, static_argnames=("blocks", "chunk_size", "interpret"))
def _kernel(args, state, cot, blocks=None, chunk_size=None, interpret=True):
    fn = partial(mlstm_chunkwise_tpu, blocks=blocks, chunk_size=chunk_size, interpret=interpret)
    return value_and_vjp(fn, args, state, cot)


@pytest.mark.parametrize("gates", ["normal", "extreme", "resets"])
def test_forward_and_gradients_match_reference(gates):
    """S = 40: three chunks of 16, the last one padded; an initial state; all gradients."""
    args, state, cot = case(gates, 40)
    out, grads = _kernel(args, state, cot, blocks=SMALL_TILES)
    out_ref, grads_ref = reference(args, state, cot, chunk_size=16)
    check(out, grads, out_ref, grads_ref, FWD_TOL, GRAD_TOL, gates)


@pytest.mark.parametrize(
    "blocks,s",
    [
        (MLSTMBlocks(16, 16, 8, 8, 16), 40),  # one query tile over two key tiles; 2 x 2 memory tiles
        pytest.param(MLSTMBlocks(16, 8, 16, 8, 16), 37, marks=pytest.mark.slow),  # key tile wider than query
    ],
)
def test_split_head_dims_and_unequal_tiles(blocks, s):
    """Several DHQK / DHV tiles (the memory carried in bands) and block_q != block_kv (causal tile bounds).

    Not S = 32 with these gates: there d_t nearly cancels at one token, and dq of the float32 reference
    itself is 2e-2 x max|dq| off float64 truth."""
    args, state, cot = case("extreme", s)
    out, grads = _kernel(args, state, cot, blocks=blocks)
    out_ref, grads_ref = reference(args, state, cot, chunk_size=16)
    check(out, grads, out_ref, grads_ref, FWD_TOL, GRAD_TOL, str(blocks))


def test_default_blocks_and_sequence_shorter_than_chunk():
    """blocks=None takes ``default_blocks("tpu", ...)``; S = 5 runs as one chunk of 16, 11 of them padding."""
    assert default_blocks("tpu", DHQK, DHV, 16) == MLSTMBlocks(16, 16, 16, 16, 32)
    args, state, cot = case("resets", 5)
    out, grads = _kernel(args, state, cot, chunk_size=16)
    out_ref, grads_ref = reference(args, state, cot, chunk_size=16)
    check(out, grads, out_ref, grads_ref, FWD_TOL, GRAD_TOL, "short")


def test_bfloat16_inputs_against_float64_truth():
    """bf16 q, k, v: bf16 h and dq, dk, dv; float32 gates and states (tolerance in the module doc)."""
    args, state, cot = case("normal", 40, jnp.bfloat16)
    out, grads = _kernel(args, state, cot, blocks=SMALL_TILES)
    assert out[0].dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads[0][:3])
    with jax.enable_x64(True):
        f64 = lambda t: cast(t, jnp.float64)
        out_ref, grads_ref = jax.tree.map(np.asarray, reference(f64(args), f64(state), f64(cot), chunk_size=16))
    (h, final), (h_ref, final_ref) = out, out_ref
    assert_close(h, h_ref, BF16_FWD_TOL, "bf16 h")
    for name, x, x_ref in zip("cnm", final, final_ref):
        assert_close(x, x_ref, BF16_FWD_TOL, f"bf16 final {name}")
    names = ("q", "k", "v", "i", "f", "initial c", "initial n", "initial m")
    for name, g, g_ref in zip(names, jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        assert_close(g, g_ref, BF16_GRAD_TOL, f"bf16 d{name}")


def test_tpu_interpreter_two_cores_no_races(capfd):
    """TPU interpret mode: simulated VMEM and DMAs, the "parallel" grid axes split over two cores,
    uninitialized memory NaN (a read before a write shows up in the outputs), race detection on."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret  # races_found

    params = pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan", num_cores_or_threads=2)
    blocks = MLSTMBlocks(16, 8, 8, 8, 16)
    args, state, cot = case("resets", 24, nh=1)
    pltpu.reset_tpu_interpret_mode_state()
    try:
        out, grads = jax.block_until_ready(_kernel(args, state, cot, blocks=blocks, interpret=params))
    finally:
        races = tpu_interpret.races
        pltpu.reset_tpu_interpret_mode_state()
    assert races is None or not races.races_found
    assert "RACE DETECTED" not in capfd.readouterr().out
    out_ref, grads_ref = reference(args, state, cot, chunk_size=16)
    check(out, grads, out_ref, grads_ref, FWD_TOL, GRAD_TOL, "tpu interpret")


def test_rejects_bad_blocks():
    """Tiles Mosaic cannot use are ValueErrors naming the field (the TPU rules apply when compiling)."""
    q, k, v, i, f = cast(mlstm_inputs(0, b=1, nh=1, s=8, dhqk=16, dhv=32), jnp.float32)
    cases = [
        (dict(blocks=MLSTMBlocks(16, 8, 8, 16, 32), chunk_size=32, interpret=True), "blocks.chunk_size"),
        (dict(blocks=MLSTMBlocks(16, 8, 8, 16, 12), interpret=True), "block_dv=12 must divide the head dim 32"),
        (dict(blocks=MLSTMBlocks(16, 8, 8, 8, 32)), "block_dqk=8 must be a multiple of 128 or all of 16"),
        (dict(blocks=MLSTMBlocks(12, 4, 4, 16, 32)), "chunk_size=12 must be a multiple of 8"),
        (dict(blocks=MLSTMBlocks(16, 4, 8, 16, 32)), "block_q=4 must be a multiple of 8"),
        (dict(blocks=(16, 8, 8, 16, 32), interpret=True), "blocks must be an MLSTMBlocks"),
        (dict(chunk_size=0, interpret=True), "chunk_size"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=re.escape(match)):
            mlstm_chunkwise_tpu(q, k, v, i, f, **kwargs)
    with pytest.raises(ValueError, match=re.escape("block_kv=12 must divide chunk_size=16")):
        MLSTMBlocks(16, 8, 12, 16, 32)


# --------------------------------------------------------------------------- cross-lowering for TPU

_KERNELS_FWD = {"mlstm_tpu_chunk_states", "mlstm_tpu_chunk_outputs"}
_KERNELS_BWD = _KERNELS_FWD | {"mlstm_tpu_memory_cotangents", "mlstm_tpu_chunk_grads"}


@pytest.mark.parametrize("dtype,s", [(jnp.bfloat16, 1024), (jnp.float32, 2048)])
def test_production_tiles_lower_for_tpu(dtype, s):
    """B=1, NH=2, DHQK=128, DHV=256 with ``default_blocks("tpu", 128, 256)``: forward and VJP lower
    through Mosaic (block shapes, kernel bodies). Compiling them needs a TPU."""
    b, nh, dhqk, dhv = 1, 2, 128, 256
    sds = jax.ShapeDtypeStruct
    args = (
        sds((b, nh, s, dhqk), dtype),
        sds((b, nh, s, dhqk), dtype),
        sds((b, nh, s, dhv), dtype),
        sds((b, nh, s), jnp.float32),
        sds((b, nh, s), jnp.float32),
    )
    state = MLSTMState(sds((b, nh, dhqk, dhv), jnp.float32), sds((b, nh, dhqk), jnp.float32), sds((b, nh), jnp.float32))
    blocks = default_blocks("tpu", dhqk, dhv)
    assert blocks == MLSTMBlocks(128, 128, 128, 128, 128)
    run = lambda a, st: mlstm_chunkwise_tpu(*a, initial_state=st, blocks=blocks)

    def vjp(a, st):
        out, pullback = jax.vjp(run, a, st)
        return pullback(jax.tree.map(jnp.ones_like, out))

    for fn, kernels in ((run, _KERNELS_FWD), (vjp, _KERNELS_BWD)):
        text = jax.jit(fn).trace(args, state).lower(lowering_platforms=("tpu",)).as_text()
        assert "tpu_custom_call" in text
        assert set(re.findall(r"(mlstm_tpu_\w+)", text)) == kernels
