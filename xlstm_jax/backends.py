"""The one place that chooses how a cell runs.

Models call ``mlstm`` and ``slstm`` here with a backend name from their config;
nothing else in ``xlstm_jax`` picks a cell implementation. Fused kernels plug in
here (imported lazily, so pure-JAX use never imports GPU packages).
"""

from __future__ import annotations

import jax

from xlstm_jax import ops

MLSTM_BACKENDS = ("chunkwise", "parallel", "recurrent")
SLSTM_BACKENDS = ("scan",)


def check_mlstm_backend(name: str) -> str:
    if name not in MLSTM_BACKENDS:
        raise ValueError(f"unknown mLSTM backend {name!r}; choose one of {MLSTM_BACKENDS}")
    return name


def check_slstm_backend(name: str) -> str:
    if name not in SLSTM_BACKENDS:
        raise ValueError(f"unknown sLSTM backend {name!r}; choose one of {SLSTM_BACKENDS}")
    return name


def mlstm(
    q,
    k,
    v,
    i,
    f,
    *,
    backend: str = "chunkwise",
    chunk_size: int = 64,
    initial_state: ops.MLSTMState | None = None,
    return_state: bool = False,
    eps: float = 1e-6,
):
    """mLSTM over a sequence with the named backend.

    Shapes as in ``xlstm_jax.ops``: q, k (B, NH, S, DHQK), v (B, NH, S, DHV), i, f (B, NH, S).
    A single token with a state runs ``ops.mlstm_step`` whatever the backend (the
    same function, without the sequence machinery). The parallel form has no state:
    with ``initial_state`` or ``return_state`` it runs as ``chunkwise`` (the same
    function), so a model configured for parallel training can still generate.

    Returns:
      h (B, NH, S, DHV), or ``(h, state)`` if ``return_state``.
    """
    check_mlstm_backend(backend)
    stateful = initial_state is not None or return_state
    if q.shape[2] == 1 and stateful:
        h, state = ops.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], initial_state, eps=eps)
        h = h[:, :, None]
    elif backend == "parallel" and not stateful:
        return ops.mlstm_parallel(q, k, v, i, f, eps=eps)
    elif backend in ("chunkwise", "parallel"):
        h, state = ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)
    else:
        h, state = ops.mlstm_recurrent(q, k, v, i, f, initial_state=initial_state, eps=eps)
    return (h, state) if return_state else h


def slstm(
    gates_x,
    recurrent_kernel,
    bias,
    *,
    backend: str = "scan",
    initial_state: ops.SLSTMState | None = None,
    resets=None,
) -> tuple[jax.Array, ops.SLSTMState]:
    """sLSTM over a sequence with the named backend; shapes as ``ops.slstm_scan``."""
    check_slstm_backend(backend)
    return ops.slstm_scan(gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets)
