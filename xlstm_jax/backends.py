"""The one place that chooses how a cell runs.

Models call ``mlstm`` and ``slstm`` here with a backend name from their config;
nothing else in ``xlstm_jax`` picks a cell implementation. Fused kernels plug in
here and are imported lazily, so pure-JAX use never imports kernel or GPU packages.

mLSTM backends:
  ``auto``        Pallas on TPU and GPU, the XLA chunkwise form on CPU.
  ``xla``         the same as ``chunkwise``.
  ``chunkwise``   ``ops.mlstm_chunkwise`` (XLA).
  ``parallel``    ``ops.mlstm_parallel`` (XLA, quadratic; with a state it runs as ``chunkwise``).
  ``recurrent``   ``ops.mlstm_recurrent`` (XLA ``lax.scan``).
  ``pallas_tpu``  ``pallas_kernels.mlstm.tpu`` (Mosaic).
  ``pallas_gpu``  ``pallas_kernels.mlstm.gpu`` (Pallas-Triton).
  ``triton``      the official TFLA Triton kernels of ``mlstm_kernels`` through ``jax_triton`` (GPU only).
sLSTM backends: ``auto``, ``xla`` or ``scan`` (XLA), ``pallas_tpu``, ``pallas_gpu``; on GPU ``auto``
  takes the kernel up to head dim ``pallas_kernels.slstm.config.GPU_AUTO_MAX_DH`` and the scan above.

A Pallas backend on a CPU runs in Pallas interpret mode (slow; for tests). A shape
a kernel cannot tile falls back to the XLA form with a logged reason. Inside a
mesh (``jax.set_mesh``) the kernels run under ``jax.shard_map``: batch over the
``data``/``fsdp`` axes, heads over ``tensor``.
"""

from __future__ import annotations

import logging
import math

import jax
from jax.sharding import PartitionSpec as P

from xlstm_jax import ops

log = logging.getLogger(__name__)

MLSTM_BACKENDS = ("auto", "xla", "chunkwise", "parallel", "recurrent", "pallas_tpu", "pallas_gpu", "triton")
MLSTM_XLA_FORMS = ("chunkwise", "parallel", "recurrent")
SLSTM_BACKENDS = ("auto", "xla", "scan", "pallas_tpu", "pallas_gpu")
_KERNEL_PLATFORM = {"pallas_tpu": "tpu", "pallas_gpu": "gpu", "triton": "gpu"}


def check_mlstm_backend(name: str) -> str:
    if name not in MLSTM_BACKENDS:
        raise ValueError(f"unknown mLSTM backend {name!r}; choose one of {MLSTM_BACKENDS}")
    return name


def check_slstm_backend(name: str) -> str:
    if name not in SLSTM_BACKENDS:
        raise ValueError(f"unknown sLSTM backend {name!r}; choose one of {SLSTM_BACKENDS}")
    return name


def _platform() -> str:
    platform = jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def resolve(name: str, *, xla: str) -> str:
    """``auto`` -> the kernel for this platform, or the XLA form ``xla`` on CPU; ``xla`` -> ``xla``."""
    if name == "xla":
        return xla
    if name != "auto":
        return name
    return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(_platform(), xla)


def _kernel_mode(backend: str):
    """Interpret mode when a kernel meant for another platform runs here (tests on CPU)."""
    platform = _platform()
    if platform == _KERNEL_PLATFORM[backend]:
        return False
    if platform == "cpu" and backend != "triton":
        return True
    raise ValueError(f"backend {backend!r} needs a {_KERNEL_PLATFORM[backend].upper()}; this is a {platform}")


def _mesh_specs(batch: int, heads: int):
    """(batch axes, head axes) of the current mesh, or None when nothing is sharded."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return None
    batch_axes = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1)
    head_axes = tuple(a for a in ("tensor",) if mesh.shape.get(a, 1) > 1)
    if batch % math.prod(mesh.shape[a] for a in batch_axes) or heads % math.prod(mesh.shape[a] for a in head_axes):
        raise ValueError(f"batch {batch} / heads {heads} do not divide the mesh axes {dict(mesh.shape)}")
    return (batch_axes or None), (head_axes or None)


def _shard_map(fn, args: tuple, in_specs: tuple, out_specs):
    """``jax.shard_map(fn)(*args)`` in the current mesh. With Explicit mesh axes (the default of
    ``jax.make_mesh``) the inputs are first resharded to ``in_specs``; Auto axes reshard by themselves."""
    mesh = jax.sharding.get_abstract_mesh()
    if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        args = tuple(
            None if a is None else jax.tree.map(lambda x, p: jax.reshard(x, p), a, spec)
            for a, spec in zip(args, in_specs)
        )
    return jax.shard_map(fn, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)


def _sharded(fn, args, state_in, specs):
    """Run ``fn(*args, state) -> (h, state)`` per shard: inputs, h and the state are (B, NH, ...) arrays."""
    if specs is None:
        return fn(*args, state_in)
    b, h = specs

    def spec(x):
        return P(b, h, *([None] * (x.ndim - 2)))

    in_specs = (*(spec(a) for a in args), jax.tree.map(spec, state_in))
    out_specs = (P(b, h, None, None), jax.tree.map(spec, state_in))  # h (B, NH, S, DHV); the state as it came in
    return _shard_map(fn, (*args, state_in), in_specs, out_specs)


def _mlstm_kernel(backend: str, q, k, v, i, f, chunk_size: int, initial_state, eps: float):
    """(h, state) from a kernel backend, or None when it cannot run this shape (reason logged)."""
    b, nh, _, dhqk = q.shape
    dhv = v.shape[-1]
    interpret = _kernel_mode(backend)
    try:
        specs = _mesh_specs(b, nh)
        if backend == "triton":
            from xlstm_jax.pallas_kernels.mlstm.triton_tfla import mlstm_chunkwise_tfla

            def run(q, k, v, i, f, state):
                return mlstm_chunkwise_tfla(q, k, v, i, f, chunk_size=chunk_size, initial_state=state, eps=eps)
        else:
            if _KERNEL_PLATFORM[backend] == "tpu":
                from xlstm_jax.pallas_kernels.mlstm.config import default_blocks
                from xlstm_jax.pallas_kernels.mlstm.tpu import mlstm_chunkwise_tpu as kernel

                blocks = default_blocks("tpu", dhqk, dhv, chunk_size)
            else:
                from xlstm_jax.pallas_kernels.mlstm.gpu import gpu_blocks
                from xlstm_jax.pallas_kernels.mlstm.gpu import mlstm_chunkwise_gpu as kernel

                blocks = gpu_blocks(dhqk, dhv, chunk_size, interpret=interpret)

            def run(q, k, v, i, f, state):
                return kernel(q, k, v, i, f, initial_state=state, eps=eps, blocks=blocks, interpret=interpret)
    except ValueError as err:
        log.warning("mLSTM backend %r cannot run q %s, v %s (%s); using the XLA chunkwise form", backend,
                    q.shape, v.shape, err)  # fmt: skip
        return None
    if initial_state is None:
        initial_state = ops.MLSTMState.zeros(b, nh, dhqk, dhv, jax.numpy.promote_types(q.dtype, jax.numpy.float32))
    return _sharded(run, (q, k, v, i, f), ops.MLSTMState(*initial_state), specs)


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
    backend = resolve(check_mlstm_backend(backend), xla="chunkwise")
    stateful = initial_state is not None or return_state
    out = None
    if q.shape[2] == 1 and stateful:
        h, state = ops.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], initial_state, eps=eps)
        out = (h[:, :, None], state)
    elif backend in _KERNEL_PLATFORM:
        out = _mlstm_kernel(backend, q, k, v, i, f, chunk_size, initial_state, eps)
    if out is None:
        if backend == "parallel" and not stateful:
            return ops.mlstm_parallel(q, k, v, i, f, eps=eps)
        if backend == "recurrent":
            out = ops.mlstm_recurrent(q, k, v, i, f, initial_state=initial_state, eps=eps)
        else:
            out = ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)
    return out if return_state else out[0]


def _slstm_kernel(backend: str, gates_x, recurrent_kernel, bias, initial_state, resets):
    """(h, state) from a fused sLSTM kernel, or None when it cannot run this shape (reason logged)."""
    b, s, _, nh, dh = gates_x.shape
    interpret = _kernel_mode(backend)
    platform = _KERNEL_PLATFORM[backend]
    try:
        specs = _mesh_specs(b, nh)
        from xlstm_jax.pallas_kernels.slstm.config import default_blocks

        local_b = b // math.prod(jax.sharding.get_abstract_mesh().shape[a] for a in specs[0] or ()) if specs else b
        blocks = default_blocks(platform, local_b, dh)
        if platform == "tpu":
            from xlstm_jax.pallas_kernels.slstm.tpu import check_fits
            from xlstm_jax.pallas_kernels.slstm.tpu import slstm_scan_tpu as kernel

            if not interpret:
                check_fits(blocks, gates_x.shape[1], dh, has_resets=resets is not None)
        else:
            from xlstm_jax.pallas_kernels.slstm.gpu import slstm_scan_gpu as kernel
    except ValueError as err:
        log.warning("sLSTM backend %r cannot run gates %s (%s); using the XLA scan", backend, gates_x.shape, err)
        return None

    def run(gates_x, recurrent_kernel, bias, state, resets):
        return kernel(
            gates_x, recurrent_kernel, bias, initial_state=state, resets=resets, blocks=blocks, interpret=interpret
        )

    if specs is None:
        return run(gates_x, recurrent_kernel, bias, initial_state, resets)
    if initial_state is None:
        initial_state = ops.SLSTMState(*(jax.numpy.zeros((b, nh, dh), jax.numpy.float32) for _ in range(4)))
    bs, hs = specs
    in_specs = (
        P(bs, None, None, hs, None),  # gates_x (B, S, 4, NH, DH)
        P(hs, None, None, None),  # recurrent_kernel (NH, DH, 4, DH)
        P(hs, None, None),  # bias (NH, 4, DH)
        ops.SLSTMState(*(P(bs, hs, None),) * 4),
        None if resets is None else P(bs, None),
    )
    out_specs = (P(bs, None, hs, None), ops.SLSTMState(*(P(bs, hs, None),) * 4))
    return _shard_map(
        run, (gates_x, recurrent_kernel, bias, ops.SLSTMState(*initial_state), resets), in_specs, out_specs
    )


def slstm(
    gates_x,
    recurrent_kernel,
    bias,
    *,
    backend: str = "scan",
    initial_state: ops.SLSTMState | None = None,
    resets=None,
) -> tuple[jax.Array, ops.SLSTMState]:
    """sLSTM over a sequence with the named backend; shapes as ``ops.slstm_scan``.

    A kernel backend runs ``pallas_kernels.slstm`` with its platform's default blocks (inside
    ``jax.shard_map`` under a mesh: batch over data/fsdp, heads over tensor); a shape it cannot tile
    (for example a head dim that is not a multiple of 16 on GPU) runs the XLA scan, with the reason logged.
    """
    asked = check_slstm_backend(backend)
    backend = resolve(asked, xla="scan")
    if asked == "auto" and backend == "pallas_gpu":
        from xlstm_jax.pallas_kernels.slstm.config import GPU_AUTO_MAX_DH

        if gates_x.shape[-1] > GPU_AUTO_MAX_DH:
            log.info(
                "sLSTM backend 'auto' runs the XLA scan for DH=%d on GPU: the kernel's float32 recurrent matmuls "
                "spill registers above DH=%d; backend='pallas_gpu' runs the kernel anyway",
                gates_x.shape[-1],
                GPU_AUTO_MAX_DH,
            )
            backend = "scan"
    out = None
    if backend in _KERNEL_PLATFORM:
        out = _slstm_kernel(backend, gates_x, recurrent_kernel, bias, initial_state, resets)
    if out is None:
        out = ops.slstm_scan(gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets)
    return out
