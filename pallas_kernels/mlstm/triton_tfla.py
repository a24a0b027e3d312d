"""The official TFLA Triton kernels (``mlstm_kernels``, ``chunkwise--triton_xl_chunk``) through
``jax_triton``, with the contract of ``xlstm_jax.ops.mlstm_chunkwise``.

An alternative GPU backend and a benchmark baseline. It needs a CUDA GPU with the optional
``jax_triton`` and ``mlstm_kernels`` packages (``pip install "xlstm-jax[gpu]" mlstm_kernels``); both
are imported only when this function runs, and their absence is reported with that command.
Not run on hardware yet.

Differences handled here: the official kernel needs S to be a multiple of its chunk size (a power
of 2, at least 16), so S is padded with tokens that neither write to nor decay the memory
(i = -inf, f = +inf), which leaves h and the final state unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp

from xlstm_jax.ops import MLSTMState
from xlstm_jax.ops.chunkwise_math import pad_to_chunks
from xlstm_jax.ops.mlstm_inputs import check_eps, check_positive_int, prepare


def _official_kernel():
    try:
        import jax_triton  # noqa: F401 - the official JAX kernels call through it
        from mlstm_kernels.jax.chunkwise.triton_xl_chunk.fwbw import mlstm_chunkwise__xl_chunk
    except ImportError as err:
        raise ImportError(
            "mLSTM backend 'triton' needs jax_triton and mlstm_kernels on a CUDA GPU: "
            f'pip install "xlstm-jax[gpu]" mlstm_kernels ({err})'
        ) from err
    return mlstm_chunkwise__xl_chunk


def mlstm_chunkwise_tfla(q, k, v, i, f, *, chunk_size: int = 128, initial_state=None, eps: float = 1e-6):
    """(h (B, NH, S, DHV), MLSTMState) from the official TFLA kernels; shapes as ``ops.mlstm_chunkwise``."""
    kernel = _official_kernel()
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of 2 >= 16 for the TFLA kernels, got {chunk_size}")
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")
    seq_len = x.q.shape[2]
    q_, k_, v_, f_, i_ = pad_to_chunks(chunk_size, x.q, x.k, x.v, x.f, x.i, logf_fill=jnp.inf)
    h, (c, n, m) = kernel(
        q_, k_, v_, i_, f_, *x.state, return_last_states=True, eps=check_eps(eps), chunk_size=chunk_size
    )
    return h[:, :, :seq_len].astype(x.out_dtype), MLSTMState(c, n, m)
