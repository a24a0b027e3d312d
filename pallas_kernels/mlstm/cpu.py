"""Chunkwise mLSTM on the CPU: C++ forward and backward kernels (XLA FFI custom calls, ``cpu_fwd.cc``
and ``cpu_bwd.cc``) behind a ``jax.custom_vjp``.

The contract is exactly that of ``xlstm_jax.ops.mlstm_chunkwise`` (its slow twin, which the tests
compare against): the same input checks, padding and guard against a non-finite k or v
(``ops.kernel_contract.chunkwise_with``), and the same decomposition as the GPU kernels:

* plain JAX, O(S): the stabilizers (``ops.chunkwise_math.stabilizers``), the per-token gate
  table (``token_table``), and in the backward the normalizer's cotangents, the gate gradients from
  the kernel's per-token sums and the stabilizers' own terms (``ops.chunkwise_math``);
* C++ forward: for every head, a walk over its chunks that computes the intra-chunk output and the
  memory entering the next chunk while the chunk's matrices are in cache;
* C++ backward (stabilizers fixed, the math of ``ops._chunkwise_bwd.backward``): for every head,
  a reverse walk over its chunks carrying the memory's cotangent, recomputing the chunk's (L, L)
  matrices and writing dq, dk, dv and the gates' per-token sums.

Both skip the masked upper triangle of the (L, L) products and spread the heads over XLA's thread
pool. The residuals are the XLA form's (``ops.kernel_contract.Residuals``: the memory entering every
chunk, h, the normalizer d); a call without gradient skips writing those memories. Float32 only (the
compute dtype of float32, bfloat16 and float16 inputs); in float64 (x64) mode use the XLA form. The
kernels are compiled on first use (``pallas_kernels.native``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xlstm_jax.ops import MLSTMState
from xlstm_jax.ops.chunkwise_math import gate_grads, inner, normalizer_cotangents, stabilizer_grads, stabilizers
from xlstm_jax.ops.kernel_contract import FORWARD_MODE_ALTERNATIVES, Residuals, chunkwise_with, reverse_mode_only
from xlstm_jax.ops.mlstm_inputs import check_eps, check_positive_int

from .. import native
from .token_table import token_table

# (source, exported handler, custom-call target) of each kernel.
KERNELS = {
    "fwd": (Path(__file__).with_name("cpu_fwd.cc"), "XlstmMlstmChunkwiseFwd", "xlstm_mlstm_chunkwise_fwd_cpu"),
    "bwd": (Path(__file__).with_name("cpu_bwd.cc"), "XlstmMlstmChunkwiseBwd", "xlstm_mlstm_chunkwise_bwd_cpu"),
}
GATE_ROWS = ("row_sum", "dlog_alpha", "col_sum", "da")  # rows of the backward's ``gates`` (BH, 4, S)


def load() -> None:
    """Build (once per machine) and register both kernels; ``native.NativeBuildError`` if they cannot."""
    for source, symbol, target in KERNELS.values():
        native.register(source, symbol, target)


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
    call = jax.ffi.ffi_call(KERNELS["fwd"][2], out, vmap_method="sequential")
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


def chunk_grads(q, k, v, dh, tok, tokb, decay, c_before, n_before, dc_final, dn_final, *, chunk_size: int):
    """The backward kernel call on flattened heads (stabilizers fixed).

    Args:
      q, k: (BH, S, DHQK); v, dh: (BH, S, DHV); tok (BH, TOK_ROWS, S) and decay (BH, NC) from
        ``token_table``; tokb (BH, 2, S): 1 / den and the normalizer's cotangent dd; c_before
        (BH, NC, DHQK, DHV), n_before (BH, NC, DHQK): the memory entering every chunk; dc_final
        (BH, DHQK, DHV), dn_final (BH, DHQK). All float32.

    Returns:
      ``(dq, dk, dv, gates, dlog_decay, dc0, dn0)``: gates (BH, 4, S) with rows ``GATE_ROWS``,
      dlog_decay (BH, NC), the rest shaped as their primals.
    """
    load()
    bh, s, dhqk = q.shape
    dhv = v.shape[-1]
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    out = (f32(bh, s, dhqk), f32(bh, s, dhqk), f32(bh, s, dhv), f32(bh, len(GATE_ROWS), s), f32(*decay.shape),
           f32(bh, dhqk, dhv), f32(bh, dhqk))  # fmt: skip
    call = jax.ffi.ffi_call(KERNELS["bwd"][2], out, vmap_method="sequential")
    return call(q, k, v, dh, tok, tokb, decay, c_before, n_before, dc_final, dn_final, chunk_size=np.int64(chunk_size))


def _backward(res: Residuals, cotangents, eps: float):
    """Gradients wrt (q, k, v, logf, i, c0, n0, m0); the math of ``ops._chunkwise_bwd.backward``."""
    dh, dc_final, dn_final, dm_final = cotangents
    b, nh, nc, length, dhqk = res.q.shape
    dhv, s = res.v.shape[-1], nc * length
    flat = lambda x: x.reshape(b * nh, *x.shape[2:])
    seq = lambda x: x.reshape(b * nh, s, *x.shape[4:])  # (B, NH, NC, L, ...) -> (BH, S, ...)
    st, pullback = jax.vjp(stabilizers, res.logf, res.i, res.m0)
    tok, decay = token_table(res.logf, res.i, st)
    dh = dh.reshape(res.h.shape).astype(jnp.float32)
    h_dh = inner(dh, res.h)  # (B, NH, NC, L)
    den, dd = normalizer_cotangents(res.d, h_dh, st.m, eps)
    tokb = jnp.stack([1.0 / den, dd], axis=2).reshape(b * nh, 2, s)
    dq, dk, dv, gates, dlog_decay, dc0, dn0 = chunk_grads(
        seq(res.q), seq(res.k), seq(res.v), seq(dh), tok, tokb, decay, flat(res.c_before), flat(res.n_before),
        flat(dc_final), flat(dn_final), chunk_size=length,
    )  # fmt: skip
    row = lambda name: gates[:, GATE_ROWS.index(name)].reshape(b, nh, nc, length)
    dlogf, di, dm0 = gate_grads(row("row_sum"), row("col_sum"), row("dlog_alpha"), row("da"),
                                dlog_decay.reshape(b, nh, nc), res.logf)  # fmt: skip
    dlogf_m, di_m, dm0_m = stabilizer_grads(
        pullback, st, eps=eps, h_dh=h_dh, den=den, final=(res.c_final, res.n_final),
        final_cotangents=(dc_final, dn_final, dm_final),
    )  # fmt: skip
    return (
        dq.reshape(b, nh, s, dhqk),
        dk.reshape(b, nh, s, dhqk),
        dv.reshape(b, nh, s, dhv),
        (dlogf + dlogf_m).reshape(b, nh, s),
        (di + di_m).reshape(b, nh, s),
        dc0.reshape(dc_final.shape),
        dn0.reshape(dn_final.shape),
        dm0 + dm0_m,
    )


@partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _core(q, k, v, logf, i, c0, n0, m0, chunk_size, eps):
    """The ``core`` of ``ops.kernel_contract.chunkwise_with``, forward and backward in C++."""
    return _forward(q, k, v, logf, i, c0, n0, m0, chunk_size, eps, keep_states=False)[0]


def _core_bwd(chunk_size, eps, res: Residuals, cotangents):
    return _backward(res, cotangents, eps)


_core.defvjp(_forward, _core_bwd)


@partial(jax.jit, static_argnames=("chunk_size", "eps"))
def _chunkwise_cpu(q, k, v, i, f, *, chunk_size: int, initial_state: MLSTMState | None, eps: float):
    return chunkwise_with(_core, q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)


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
      TypeError: forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) through it, with the alternatives.
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    eps = check_eps(eps)
    dtype = jnp.result_type(q, k, v, i, f, jnp.float32)
    if dtype != jnp.float32:
        raise ValueError(f"the CPU mLSTM kernel computes in float32, got inputs giving {dtype}; use the XLA form")
    choose_blocks(q.shape[-1], v.shape[-1], chunk_size)
    with reverse_mode_only("mlstm_chunkwise_cpu", FORWARD_MODE_ALTERNATIVES):
        return _chunkwise_cpu(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)
