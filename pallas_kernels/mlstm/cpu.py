"""Chunkwise mLSTM on the CPU: a C++ forward kernel (XLA FFI, ``cpu_fwd.cc``) behind a ``jax.custom_vjp``.

The contract is exactly that of ``xlstm_jax.ops.mlstm_chunkwise`` (its slow twin, which the tests
compare against): the same input checks, padding and guard against a non-finite k or v
(``ops.kernel_contract.chunkwise_with``), and the same decomposition as the GPU kernels:

* plain JAX, O(S): the stabilizers (``ops.chunkwise_math.stabilizers``) and the per-token gate
  table (``token_table``);
* C++ (``cpu_fwd.cc``): for every head, a walk over its chunks that computes the intra-chunk
  output and the memory entering the next chunk while the chunk's matrices are in cache. It skips
  the masked upper triangle of the (L, L) products and spreads the heads over XLA's thread pool.

The backward is the XLA form's analytic backward (``ops.kernel_contract.backward``) on the residuals the
kernel writes (the memory entering every chunk, h and the normalizer d); a call without gradient
skips writing those memories. Float32 only (the compute dtype of float32, bfloat16 and float16
inputs); in float64 (x64) mode use the XLA form. The kernel is compiled on first use
(``pallas_kernels.native``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xlstm_jax.ops import MLSTMState
from xlstm_jax.ops.chunkwise_math import stabilizers
from xlstm_jax.ops.kernel_contract import Residuals, backward, chunkwise_with
from xlstm_jax.ops.mlstm_inputs import check_eps, check_positive_int

from .. import native
from .token_table import token_table

SOURCE = Path(__file__).with_name("cpu_fwd.cc")
TARGET = "xlstm_mlstm_chunkwise_fwd_cpu"


def load() -> None:
    """Build (once per machine) and register the kernel; ``native.NativeBuildError`` if it cannot."""
    native.register(SOURCE, "XlstmMlstmChunkwiseFwd", TARGET)


def choose_blocks(dhqk: int, dhv: int, chunk_size: int | None = None, *, interpret: bool = False) -> None:
    """The backends' check before a run: ``ValueError`` (with the compiler's reason) if the kernel
    cannot be built here. Any head dims and chunk size run (no tiling constraints), so no blocks."""
    try:
        load()
    except native.NativeBuildError as err:
        raise ValueError(f"the CPU kernel is not available: {err}") from err


def chunk_pass(q, k, v, tok, decay, c0, n0, *, chunk_size: int, eps: float, keep_states: bool):
    """The kernel call on flattened heads.

    Args:
      q, k: (BH, S, DHQK); v: (BH, S, DHV); tok (BH, TOK_ROWS, S) and decay (BH, NC) from
        ``token_table``; c0 (BH, DHQK, DHV), n0 (BH, DHQK). All float32; S a multiple of ``chunk_size``.
      keep_states: also return the memory entering every chunk (for the backward).

    Returns:
      ``(h, d, c_before, n_before, c_final, n_final)``: h (BH, S, DHV), d (BH, S), c_before
      (BH, NC, DHQK, DHV) and n_before (BH, NC, DHQK) (NC = 0 without ``keep_states``), c_final, n_final.
    """
    load()
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    nc = s // chunk_size if keep_states else 0
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    out = (f32(bh, s, dhv), f32(bh, s), f32(bh, nc, dhqk, dhv), f32(bh, nc, dhqk), f32(bh, dhqk, dhv), f32(bh, dhqk))
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(q, k, v, tok, decay, c0, n0, chunk_size=np.int64(chunk_size), eps=np.float32(eps))


def _forward(q, k, v, logf, i, c0, n0, m0, chunk_size: int, eps: float, keep_states: bool = True):
    """On inputs padded to a multiple of the chunk: ((h, c, n, m), ``Residuals`` of the XLA form)."""
    b, nh, s, dhqk = q.shape
    dhv = v.shape[-1]
    nc = s // chunk_size
    chunked = lambda x: x.reshape(b, nh, nc, chunk_size, *x.shape[3:])
    flat = lambda x: x.reshape(b * nh, *x.shape[2:])
    st = stabilizers(chunked(logf), chunked(i), m0)
    tok, decay = token_table(chunked(logf), chunked(i), st)
    h, d, c_before, n_before, c_final, n_final = chunk_pass(
        flat(q), flat(k), flat(v), tok, decay, flat(c0), flat(n0), chunk_size=chunk_size, eps=eps,
        keep_states=keep_states,
    )  # fmt: skip
    c_final, n_final = c_final.reshape(c0.shape), n_final.reshape(n0.shape)
    out = (h.reshape(b, nh, s, dhv), c_final, n_final, st.m_after[..., -1])
    if not keep_states:
        return out, None
    res = Residuals(
        *map(chunked, (q, k, v, logf, i)), m0, st,
        c_before.reshape(b, nh, nc, dhqk, dhv), n_before.reshape(b, nh, nc, dhqk),
        h.reshape(b, nh, nc, chunk_size, dhv), d.reshape(b, nh, nc, chunk_size), c_final, n_final,
    )  # fmt: skip
    return out, res


@partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _core(q, k, v, logf, i, c0, n0, m0, chunk_size, eps):
    """The ``core`` of ``ops.kernel_contract.chunkwise_with``, forward in C++."""
    return _forward(q, k, v, logf, i, c0, n0, m0, chunk_size, eps, keep_states=False)[0]


def _core_bwd(chunk_size, eps, res: Residuals, cotangents):
    return backward(res, cotangents, eps)


_core.defvjp(_forward, _core_bwd)


@partial(jax.jit, static_argnames=("chunk_size", "eps"))
def mlstm_chunkwise_cpu(q, k, v, i, f, *, chunk_size: int = 64, initial_state: MLSTMState | None = None,
                        eps: float = 1e-6):  # fmt: skip
    """Chunkwise mLSTM with the C++ CPU kernel; the contract of ``xlstm_jax.ops.mlstm_chunkwise``.

    Args:
      q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); float32, bfloat16 or float16 (computed in float32).
        q is scaled by DHQK**-0.5 inside.
      i, f: (B, NH, S) input- and forget-gate pre-activations (f = -inf: exact memory reset).
      chunk_size: chunk length L (any positive integer; S need not be a multiple).
      initial_state: ``MLSTMState`` c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH); zeros if None.
      eps: added to the normalizer.

    Returns:
      ``(h, state)``: h (B, NH, S, DHV) in the common dtype of q, k, v; the final state in float32.

    Raises:
      ValueError: float64 inputs (x64 mode), or the kernel cannot be built here (no C++ compiler).
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    eps = check_eps(eps)
    dtype = jnp.result_type(q, k, v, i, f, jnp.float32)
    if dtype != jnp.float32:
        raise ValueError(f"the CPU mLSTM kernel computes in float32, got inputs giving {dtype}; use the XLA form")
    choose_blocks(q.shape[-1], v.shape[-1], chunk_size)
    return chunkwise_with(_core, q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)
