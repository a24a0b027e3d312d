"""The one place that chooses how a cell runs.

Models call ``mlstm`` and ``slstm`` here with a backend name from their config; nothing else in
``xlstm_jax`` picks a cell implementation. Every implementation is one entry of ``IMPLEMENTATIONS``
(name, cell, platform, ``run``, ``choose_blocks``), with one calling convention per cell:

  mLSTM  ``run(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks, interpret) -> (h, state)``
  sLSTM  ``run(gates_x, recurrent_kernel, bias, *, initial_state, resets, blocks, interpret) -> (h, state)``

(the parallel mLSTM form has no state: its ``run`` returns ``(h, None)``). Kernels are imported
lazily, inside ``run`` and ``choose_blocks``, so pure-JAX use never imports kernel or GPU packages.

mLSTM backends:
  ``auto``        Pallas on TPU and GPU (on GPU for power-of-2 head dims), ``cpu_ffi`` on a CPU for inputs
                  computed in float32 where it builds, the XLA chunkwise form otherwise.
  ``xla``         the same as ``chunkwise``.
  ``chunkwise``   ``ops.mlstm_chunkwise`` (XLA).
  ``parallel``    ``ops.mlstm_parallel`` (XLA, quadratic; with a state it runs as ``chunkwise``).
  ``recurrent``   ``ops.mlstm_recurrent`` (XLA ``lax.scan``).
  ``pallas_tpu``  ``pallas_kernels.mlstm.tpu`` (Mosaic).
  ``pallas_gpu``  ``pallas_kernels.mlstm.gpu`` (Pallas-Triton; other head dims zero-padded to a power of 2).
  ``triton``      the official TFLA Triton kernels of ``mlstm_kernels`` through ``jax_triton`` (GPU only).
  ``cpu_ffi``     ``pallas_kernels.mlstm.cpu``: C++ forward and backward kernels (XLA FFI custom calls,
                  compiled on first use; CPU only, float32).
sLSTM backends: ``auto``, ``xla`` or ``scan`` (XLA), ``pallas_tpu``, ``pallas_gpu``; on GPU ``auto``
  runs the XLA scan (measured faster for training on an H200, see ``slstm``).

A Pallas backend on a CPU runs in Pallas interpret mode (slow; for tests). A shape a kernel cannot
tile, or a CPU kernel that cannot be built here (no C++ compiler), falls back to the XLA form with a
logged reason. Inside a mesh (``jax.set_mesh``) the kernels
run under ``jax.shard_map`` with specs from logical-axis rules (``axis_rules``): ``batch`` and
``heads`` name the mesh axes the batch and the heads are split over, ``length`` those of the
sequence (context parallelism: then every backend, XLA forms included, runs under ``shard_map`` with
the sequence split in order, through ``ops.context_parallel``). A mesh whose axes do not divide the
batch, the heads or the sequence is a ``ValueError``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
from jax.sharding import PartitionSpec as P

from xlstm_jax import ops
from xlstm_jax._validation import check_choice
from xlstm_jax.ops import context_parallel

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One implementation of a cell.

    Attributes:
      name: the backend name configs use.
      cell: ``"mlstm"`` or ``"slstm"``.
      platform: ``"tpu"``, ``"gpu"`` or ``"cpu"`` for a kernel (a TPU or GPU one runs in Pallas
        interpret mode on a CPU when ``interpret_on_cpu``), None for an XLA form (any platform).
      run: the cell over a sequence, in the calling convention of the module docstring.
      choose_blocks: the kernel module's block chooser (mLSTM ``(dhqk, dhv, chunk_size, *, interpret)``,
        sLSTM ``(batch, seq_len, dh, *, has_resets, interpret)``); raises ``ValueError`` for a shape
        the kernel cannot tile. None for an XLA form.
      interpret_on_cpu: whether the kernel has a Pallas interpret mode (the official Triton one has not).
    """

    name: str
    cell: str
    platform: str | None
    run: Callable
    choose_blocks: Callable | None = None
    interpret_on_cpu: bool = True


def _mlstm_chunkwise(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks=None, interpret=False):
    return ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)


def _mlstm_parallel(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks=None, interpret=False):
    if initial_state is not None:
        raise ValueError("the parallel mLSTM form takes no initial_state; use chunkwise")
    return ops.mlstm_parallel(q, k, v, i, f, eps=eps), None


def _mlstm_recurrent(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks=None, interpret=False):
    return ops.mlstm_recurrent(q, k, v, i, f, initial_state=initial_state, eps=eps)


def _mlstm_pallas(kernel, q, k, v, i, f, *, initial_state, chunk_size, eps, blocks=None, interpret=False):
    """A Pallas mLSTM kernel; ``blocks`` (when given) carry the chunk size."""
    chunk_size = None if blocks is not None else chunk_size
    return kernel(
        q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps, blocks=blocks, interpret=interpret
    )


def _mlstm_pallas_tpu(*args, **kwargs):
    from xlstm_jax.pallas_kernels.mlstm import tpu

    return _mlstm_pallas(tpu.mlstm_chunkwise_tpu, *args, **kwargs)


def _mlstm_pallas_tpu_blocks(dhqk, dhv, chunk_size, *, interpret):
    from xlstm_jax.pallas_kernels.mlstm import tpu

    return tpu.choose_blocks(dhqk, dhv, chunk_size, interpret=interpret)


def _mlstm_pallas_gpu(*args, **kwargs):
    from xlstm_jax.pallas_kernels.mlstm import gpu

    return _mlstm_pallas(gpu.mlstm_chunkwise_gpu, *args, **kwargs)


def _mlstm_pallas_gpu_blocks(dhqk, dhv, chunk_size, *, interpret):
    from xlstm_jax.pallas_kernels.mlstm import gpu

    return gpu.choose_blocks(dhqk, dhv, chunk_size, interpret=interpret)


def _mlstm_triton(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks=None, interpret=False):
    from xlstm_jax.pallas_kernels.mlstm.triton_tfla import mlstm_chunkwise_tfla

    return mlstm_chunkwise_tfla(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)


def _mlstm_cpu_ffi(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks=None, interpret=False):
    from xlstm_jax.pallas_kernels.mlstm import cpu

    return cpu.mlstm_chunkwise_cpu(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)


def _mlstm_cpu_ffi_blocks(dhqk, dhv, chunk_size, *, interpret):
    from xlstm_jax.pallas_kernels.mlstm import cpu

    return cpu.choose_blocks(dhqk, dhv, chunk_size, interpret=interpret)


@functools.cache
def _cpu_kernel_builds() -> bool:
    """Whether the C++ CPU kernels build here (checked once per process; why not is logged once)."""
    try:
        _mlstm_cpu_ffi_blocks(1, 1, 1, interpret=False)
    except ValueError as err:
        log.info("mLSTM backend 'auto' runs the XLA chunkwise form on this CPU: %s", err)
        return False
    return True


def _auto_runs_cpu_kernel(*arrays) -> bool:
    """``auto`` on a CPU: the C++ kernels for inputs computed in float32 (not float64), where they build.
    Measured against the XLA form on the 2-core CPU (``benchmarks/RESULTS.md``, session 32): as fast or
    faster in the training step, 1.3-2.0x (forward) and 2.7-3.1x (forward+backward) at S=4096."""
    if _platform() != "cpu" or jax.numpy.result_type(*arrays, jax.numpy.float32) != jax.numpy.float32:
        return False
    return _cpu_kernel_builds()


def _slstm_scan(gates_x, recurrent_kernel, bias, *, initial_state, resets, blocks=None, interpret=False):
    return ops.slstm_scan(gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets)


def _slstm_pallas_tpu(gates_x, recurrent_kernel, bias, *, initial_state, resets, blocks=None, interpret=False):
    from xlstm_jax.pallas_kernels.slstm import tpu

    return tpu.slstm_scan_tpu(
        gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets, blocks=blocks, interpret=interpret
    )


def _slstm_pallas_tpu_blocks(batch, seq_len, dh, *, has_resets, interpret):
    from xlstm_jax.pallas_kernels.slstm import tpu

    return tpu.choose_blocks(batch, seq_len, dh, has_resets=has_resets, interpret=interpret)


def _slstm_pallas_gpu(gates_x, recurrent_kernel, bias, *, initial_state, resets, blocks=None, interpret=False):
    from xlstm_jax.pallas_kernels.slstm import gpu

    return gpu.slstm_scan_gpu(
        gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets, blocks=blocks, interpret=interpret
    )


def _slstm_pallas_gpu_blocks(batch, seq_len, dh, *, has_resets, interpret):
    from xlstm_jax.pallas_kernels.slstm import gpu

    return gpu.choose_blocks(batch, seq_len, dh, has_resets=has_resets, interpret=interpret)


IMPLEMENTATIONS: dict[tuple[str, str], Implementation] = {
    (impl.cell, impl.name): impl
    for impl in (
        Implementation("chunkwise", "mlstm", None, _mlstm_chunkwise),
        Implementation("parallel", "mlstm", None, _mlstm_parallel),
        Implementation("recurrent", "mlstm", None, _mlstm_recurrent),
        Implementation("pallas_tpu", "mlstm", "tpu", _mlstm_pallas_tpu, _mlstm_pallas_tpu_blocks),
        Implementation("pallas_gpu", "mlstm", "gpu", _mlstm_pallas_gpu, _mlstm_pallas_gpu_blocks),
        Implementation("triton", "mlstm", "gpu", _mlstm_triton, interpret_on_cpu=False),
        Implementation("cpu_ffi", "mlstm", "cpu", _mlstm_cpu_ffi, _mlstm_cpu_ffi_blocks, interpret_on_cpu=False),
        Implementation("scan", "slstm", None, _slstm_scan),
        Implementation("pallas_tpu", "slstm", "tpu", _slstm_pallas_tpu, _slstm_pallas_tpu_blocks),
        Implementation("pallas_gpu", "slstm", "gpu", _slstm_pallas_gpu, _slstm_pallas_gpu_blocks),
    )
}
_ALIASES = ("auto", "xla")  # resolved by ``resolve``
MLSTM_XLA_FORMS = tuple(n for (c, n), impl in IMPLEMENTATIONS.items() if c == "mlstm" and impl.platform is None)
MLSTM_BACKENDS = (*_ALIASES, *(n for c, n in IMPLEMENTATIONS if c == "mlstm"))
SLSTM_BACKENDS = (*_ALIASES, *(n for c, n in IMPLEMENTATIONS if c == "slstm"))


def implementation(cell: str, name: str) -> Implementation:
    """The registered implementation ``name`` of ``cell`` (after ``resolve``)."""
    check_choice("cell", cell, ("mlstm", "slstm"))
    check_choice(f"{cell} backend", name, (n for c, n in IMPLEMENTATIONS if c == cell))
    return IMPLEMENTATIONS[cell, name]


def check_mlstm_backend(name: str) -> str:
    check_choice("mLSTM backend", name, MLSTM_BACKENDS)
    return name


def check_slstm_backend(name: str) -> str:
    check_choice("sLSTM backend", name, SLSTM_BACKENDS)
    return name


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _platform() -> str:
    platform = jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


# The XLA chunkwise form's chunk length for ``chunk_size="auto"``, per platform (the default:
# ``DEFAULT_CHUNK_SIZE``). On a TPU that form is bound by HBM traffic, most of it the float32
# (DHQK x DHV) memory of every chunk, written and read back per chunk: fewer, longer chunks move
# less. On the CPU 64 is fastest (both from benchmarks/RESULTS.md: "Chunk size per platform" for
# the CPU, "The training step's hot spots in the compiled TPU program" for the TPU).
DEFAULT_CHUNK_SIZE = 64
CHUNK_SIZES = {"tpu": 256}


def target_platform() -> str:
    """The platform the program being traced is for: the devices of the mesh set with
    ``jax.set_mesh`` (so an ahead-of-time compile for a TPU topology on a CPU host is for the TPU),
    else ``jax.default_backend()``."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = getattr(device, "platform", None) or jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def chunk_size_for(chunk_size: int | str, platform: str | None = None) -> int:
    """``chunk_size`` itself, or for ``"auto"`` the XLA chunkwise form's chunk length on ``platform``
    (default: ``target_platform()``), ``CHUNK_SIZES`` or ``DEFAULT_CHUNK_SIZE``."""
    if chunk_size != "auto":
        return chunk_size
    return CHUNK_SIZES.get(platform or target_platform(), DEFAULT_CHUNK_SIZE)


def resolve(name: str, *, xla: str) -> str:
    """``auto`` -> the Pallas kernel for this platform, or the XLA form ``xla`` on CPU; ``xla`` -> ``xla``.
    (``mlstm`` then runs the C++ kernels for ``auto`` on a CPU where they apply: ``_auto_runs_cpu_kernel``.)"""
    if name == "xla":
        return xla
    if name != "auto":
        return name
    return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(_platform(), xla)


def interpret_flag(impl: Implementation) -> bool:
    """The ``interpret`` argument for a kernel here: False on its platform, True on a CPU (Pallas
    interpret mode, for tests); a ``ValueError`` on another accelerator or where it has no interpret mode."""
    platform = _platform()
    if platform == impl.platform:
        return False
    if platform == "cpu" and impl.interpret_on_cpu:
        return True
    raise ValueError(f"backend {impl.name!r} needs a {impl.platform.upper()}; this is a {platform}")


# ------------------------------------------------------------------------------------ mesh sharding

DEFAULT_AXIS_RULES: Mapping[str, tuple[str, ...]] = {"batch": ("data", "fsdp"), "heads": ("tensor",), "length": ()}
_AXIS_RULES = contextvars.ContextVar("xlstm_jax_axis_rules", default=DEFAULT_AXIS_RULES)


def _rule_axes(rules: Mapping[str, str | Sequence[str]], logical: str) -> tuple[str, ...]:
    axes = rules.get(logical, ())
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    if not all(isinstance(a, str) for a in axes):
        raise ValueError(f"axis_rules[{logical!r}] must be a mesh axis name or a sequence of them, got {axes!r}")
    return axes


@contextlib.contextmanager
def axis_rules(rules: Mapping[str, str | Sequence[str]]) -> Iterator[None]:
    """Map the logical axes ``batch``, ``heads`` and ``length`` to mesh axes for the kernels' shard_map.

    Other keys (the parameter rules of a trainer config: ``embed``, ``mlp``, ...) are ignored, so a
    trainer's ``mesh.rules`` can be passed as they are; a logical axis not given maps to no mesh axis.
    Defaults (outside this context): ``DEFAULT_AXIS_RULES``, the trainer's default mesh mapping.
    """
    token = _AXIS_RULES.set({name: _rule_axes(rules, name) for name in DEFAULT_AXIS_RULES})
    try:
        yield
    finally:
        _AXIS_RULES.reset(token)


def current_axis_rules() -> Mapping[str, tuple[str, ...]]:
    """The rules in effect: those of the innermost ``axis_rules`` context, else ``DEFAULT_AXIS_RULES``."""
    return _AXIS_RULES.get()


def mesh_axes(batch: int, heads: int) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None:
    """(batch axes, head axes) of the current mesh under the axis rules, or None when nothing is sharded.

    Raises ``ValueError`` when the batch or the heads are not divisible by their mesh axes.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return None
    return _split("batch", batch), _split("heads", heads)


def length_axes(seq_len: int) -> tuple[str, ...] | None:
    """The mesh axes the sequence is split over (axis rule ``length``, axes of size > 1), or None.

    Raises ``ValueError`` when they do not divide ``seq_len``.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return None
    return _split("length", seq_len)


def leading_axes_merge_locally(x: jax.Array) -> bool:
    """Whether merging x's leading axes (all but the last) into one moves no data between devices.

    A matmul over the last axis runs as one 2-D dot on the merged rows (``nn.Linear``): XLA:CPU
    computes the weight gradient of a dot that contracts two axes (B and S) by writing the output
    gradient transposed, fused with its producers (the residual stream's sum of contributions) into
    a strided copy. Merging is local when only the first axis (the batch) is split: True unless a
    later leading axis is split over the mesh, by the axis rule ``length`` (Auto axes of size > 1)
    or by x's typed sharding (Explicit axes). Inside ``shard_map`` x is one device's block (Manual
    axes), and merging it is local.
    """
    spec = getattr(jax.typeof(x).sharding, "spec", None) or ()
    if any(p is not None for p in tuple(spec)[1:-1]):
        return False
    mesh = jax.sharding.get_abstract_mesh()
    return x.ndim < 3 or mesh.empty or not _auto_rule_axes(mesh, _AXIS_RULES.get(), "length")


def _auto_rule_axes(mesh, rules: Mapping[str, Sequence[str]], logical: str) -> tuple[str, ...]:
    """The Auto axes of size > 1 of ``mesh`` that ``rules`` map ``logical`` to (GSPMD places data on
    them; Manual axes are inside ``shard_map``, Explicit ones typed)."""
    auto = {a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Auto}
    return tuple(a for a in _rule_axes(rules, logical) if a in auto and mesh.shape[a] > 1)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding to its logical dims' mesh axes under the axis rules; x unchanged
    outside a mesh.

    ``names`` gives one logical name (``batch``, ``length``, ``heads``) or None per dim of x, e.g.
    ``("batch", "length", None)`` for the (B, S, D) residual stream. Only Auto mesh axes (the
    trainer's; GSPMD chooses the rest) of size > 1 that divide the dim are used; a dim whose axes do
    not divide it, Manual axes (inside ``shard_map``) and Explicit axes (sharded by type) are left
    to the compiler. Without this, GSPMD may meet a weight sharded over ``fsdp`` by gathering the
    batch and summing partial products (an activation-sized all-reduce per matmul) instead of
    gathering the weight.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    rules, used, spec = _AXIS_RULES.get(), set(), []
    for name, size in zip(names, x.shape, strict=True):
        axes = () if name is None else _auto_rule_axes(mesh, rules, name)
        axes = tuple(a for a in axes if a not in used)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes)
        else:
            spec.append(None)
    if not used:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))


def _split(logical: str, size: int) -> tuple[str, ...] | None:
    """The mesh axes of size > 1 that ``logical`` maps to, checked to divide ``size``; None if none."""
    mesh = jax.sharding.get_abstract_mesh()
    rules = _AXIS_RULES.get()

    axes = tuple(a for a in _rule_axes(rules, logical) if mesh.shape.get(a, 1) > 1)
    sizes = {a: mesh.shape[a] for a in axes}
    if size % math.prod(sizes.values()):
        raise ValueError(
            f"{logical} {size} is not divisible by its mesh axes {sizes} (axis rule {logical!r}: "
            f"{_rule_axes(rules, logical)}, mesh {dict(mesh.shape)}); choose a {logical} size or mesh that divides"
        )
    return axes or None


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


# ------------------------------------------------------------------------------------------ mLSTM


def _mlstm_kernel(impl: Implementation, q, k, v, i, f, chunk_size: int, initial_state, eps: float):
    """(h, state) from a kernel, or None when it cannot tile this shape (reason logged)."""
    b, nh, _, dhqk = q.shape
    dhv = v.shape[-1]
    interpret = interpret_flag(impl)
    axes = mesh_axes(b, nh)
    blocks = None
    if impl.choose_blocks is not None:
        try:
            blocks = impl.choose_blocks(dhqk, dhv, chunk_size, interpret=interpret)
        except ValueError as err:
            log.warning("mLSTM backend %r cannot run q %s, v %s (%s); using the XLA chunkwise form", impl.name,
                        q.shape, v.shape, err)  # fmt: skip
            return None

    def run(q, k, v, i, f, state):
        return impl.run(q, k, v, i, f, initial_state=state, chunk_size=chunk_size, eps=eps, blocks=blocks,
                        interpret=interpret)  # fmt: skip

    if initial_state is None:
        initial_state = ops.MLSTMState.zeros(b, nh, dhqk, dhv, jax.numpy.promote_types(q.dtype, jax.numpy.float32))
    state = ops.MLSTMState(*initial_state)
    if axes is None:
        return run(q, k, v, i, f, state)
    bs, hs = axes

    def spec(x):  # (B, NH, ...) arrays
        return P(bs, hs, *([None] * (x.ndim - 2)))

    in_specs = (*(spec(a) for a in (q, k, v, i, f)), jax.tree.map(spec, state))
    out_specs = (P(bs, hs, None, None), jax.tree.map(spec, state))  # h (B, NH, S, DHV); the state as it came in
    return _shard_map(run, (q, k, v, i, f, state), in_specs, out_specs)


def _mlstm_context(impl: Implementation, q, k, v, i, f, chunk_size: int, initial_state, eps: float, length):
    """The sequence split over the mesh axes ``length`` (context parallelism): under ``shard_map``,
    ``ops.context_parallel.context_states`` gives each shard its exact initial state, then ``impl``
    runs the local tokens from it (a kernel, or the XLA form). Returns (h, the final state)."""
    b, nh, _, dhqk = q.shape
    dhv = v.shape[-1]
    blocks, interpret = None, False
    if impl.platform is not None:
        interpret = interpret_flag(impl)
        try:
            blocks = impl.choose_blocks(dhqk, dhv, chunk_size, interpret=interpret)
        except ValueError as err:
            log.warning("mLSTM backend %r cannot run q %s, v %s (%s); using the XLA chunkwise form", impl.name,
                        q.shape, v.shape, err)  # fmt: skip
            impl = IMPLEMENTATIONS["mlstm", "chunkwise"]
    dtype = jax.numpy.promote_types(q.dtype, jax.numpy.float32)
    if initial_state is None:
        initial_state = ops.MLSTMState.zeros(b, nh, dhqk, dhv, dtype)

    def run(q, k, v, i, f, state):
        cast = lambda x: x.astype(dtype)
        before, final = context_parallel.context_states(
            cast(k), cast(v), jax.nn.log_sigmoid(cast(f)), cast(i), state, length
        )
        h, _ = impl.run(q, k, v, i, f, initial_state=before, chunk_size=chunk_size, eps=eps, blocks=blocks,
                        interpret=interpret)  # fmt: skip
        return h, final

    bs, hs = mesh_axes(b, nh)
    seq = lambda x: P(bs, hs, length, *([None] * (x.ndim - 3)))
    state = ops.MLSTMState(*initial_state)
    state_specs = jax.tree.map(lambda x: P(bs, hs, *([None] * (x.ndim - 2))), state)
    in_specs = (*(seq(a) for a in (q, k, v, i, f)), state_specs)
    return _shard_map(run, (q, k, v, i, f, state), in_specs, (seq(v), state_specs))


def mlstm(
    q,
    k,
    v,
    i,
    f,
    *,
    backend: str = "chunkwise",
    chunk_size: int | str = DEFAULT_CHUNK_SIZE,
    initial_state: ops.MLSTMState | None = None,
    return_state: bool = False,
    eps: float = 1e-6,
):
    """mLSTM over a sequence with the named backend.

    ``chunk_size="auto"`` is ``chunk_size_for("auto")`` for the XLA forms (256 on a TPU, 64
    elsewhere) and ``DEFAULT_CHUNK_SIZE`` for the kernels (which choose their own blocks).

    Shapes as in ``xlstm_jax.ops``: q, k (B, NH, S, DHQK), v (B, NH, S, DHV), i, f (B, NH, S).
    A single token with a state runs ``ops.mlstm_step`` whatever the backend (the
    same function, without the sequence machinery). The parallel form has no state:
    with ``initial_state`` or ``return_state`` it runs as ``chunkwise`` (the same
    function), so a model configured for parallel training can still generate.

    Returns:
      h (B, NH, S, DHV), or ``(h, state)`` if ``return_state``.
    """
    asked = check_mlstm_backend(backend)
    name = resolve(asked, xla="chunkwise")
    if asked == "auto" and name == "pallas_gpu" and not all(_pow2(d) for d in (q.shape[-1], v.shape[-1])):
        # The GPU kernel was measured on an H200 (correct, 2.6x the XLA form at S=8192) at power-of-2
        # head dims only; other dims run zero-padded (backend="pallas_gpu"), whose cost is not measured.
        log.info("mLSTM backend 'auto' runs the XLA form for head dims %s on GPU (the kernel would pad them); "
                 "backend='pallas_gpu' runs the padded kernel", (q.shape[-1], v.shape[-1]))  # fmt: skip
        name = "chunkwise"
    if asked == "auto" and name == "chunkwise" and _auto_runs_cpu_kernel(q, k, v, i, f):
        name = "cpu_ffi"
    stateful = initial_state is not None or return_state
    if name == "parallel" and stateful:
        name = "chunkwise"
    impl = implementation("mlstm", name)
    if chunk_size == "auto":
        chunk_size = chunk_size_for(chunk_size) if impl.platform is None else DEFAULT_CHUNK_SIZE
    out = None
    if q.shape[2] == 1 and stateful:
        h, state = ops.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], initial_state, eps=eps)
        out = (h[:, :, None], state)
    elif (length := length_axes(q.shape[2])) is not None:
        impl = IMPLEMENTATIONS["mlstm", "chunkwise"] if name == "parallel" else impl  # the same function, stateful
        out = _mlstm_context(impl, q, k, v, i, f, chunk_size, initial_state, eps, length)
    elif impl.platform is not None:
        out = _mlstm_kernel(impl, q, k, v, i, f, chunk_size, initial_state, eps)
        impl = IMPLEMENTATIONS["mlstm", "chunkwise"]  # the fallback when the kernel cannot tile
    if out is None:
        out = impl.run(q, k, v, i, f, initial_state=initial_state, chunk_size=chunk_size, eps=eps)
    return out if return_state else out[0]


# ------------------------------------------------------------------------------------------ sLSTM


def _slstm_kernel(impl: Implementation, gates_x, recurrent_kernel, bias, initial_state, resets):
    """(h, state) from a fused sLSTM kernel, or None when it cannot tile this shape (reason logged)."""
    b, s, _, nh, dh = gates_x.shape
    interpret = interpret_flag(impl)
    axes = mesh_axes(b, nh)
    mesh = jax.sharding.get_abstract_mesh()
    local_b = b // math.prod(mesh.shape[a] for a in axes[0] or ()) if axes else b
    try:
        blocks = impl.choose_blocks(local_b, s, dh, has_resets=resets is not None, interpret=interpret)
    except ValueError as err:
        log.warning("sLSTM backend %r cannot run gates %s (%s); using the XLA scan", impl.name, gates_x.shape, err)
        return None

    def run(gates_x, recurrent_kernel, bias, state, resets):
        return impl.run(
            gates_x, recurrent_kernel, bias, initial_state=state, resets=resets, blocks=blocks, interpret=interpret
        )

    if axes is None:
        return run(gates_x, recurrent_kernel, bias, initial_state, resets)
    if initial_state is None:
        initial_state = ops.SLSTMState(*(jax.numpy.zeros((b, nh, dh), jax.numpy.float32) for _ in range(4)))
    bs, hs = axes
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


def _slstm_context(impl: Implementation, gates_x, recurrent_kernel, bias, initial_state, resets, length):
    """The sequence split over the mesh axes ``length``: under ``shard_map``, an all_to_all to
    head-sharded around ``impl`` and back (``ops.context_parallel.heads_parallel``)."""
    b, s, _, nh, dh = gates_x.shape
    bs, hs = mesh_axes(b, nh)
    blocks, interpret = None, False
    if impl.platform is not None:
        interpret = interpret_flag(impl)
        mesh = jax.sharding.get_abstract_mesh()
        local_b = b // math.prod(mesh.shape[a] for a in bs or ())
        try:
            blocks = impl.choose_blocks(local_b, s, dh, has_resets=resets is not None, interpret=interpret)
        except ValueError as err:
            log.warning("sLSTM backend %r cannot run gates %s (%s); using the XLA scan", impl.name, gates_x.shape, err)
            impl = IMPLEMENTATIONS["slstm", "scan"]
    if initial_state is None:
        initial_state = ops.SLSTMState.zeros(b, nh, dh, jax.numpy.promote_types(gates_x.dtype, jax.numpy.float32))

    def cell(gates_x, recurrent_kernel, bias, state, resets):
        return impl.run(gates_x, recurrent_kernel, bias, initial_state=state, resets=resets, blocks=blocks,
                        interpret=interpret)  # fmt: skip

    def run(gates_x, recurrent_kernel, bias, state, resets):
        return context_parallel.heads_parallel(cell, gates_x, recurrent_kernel, bias, state, resets, length)

    state_specs = ops.SLSTMState(*(P(bs, hs, None),) * 4)
    in_specs = (
        P(bs, length, None, hs, None),  # gates_x (B, S, 4, NH, DH)
        P(hs, None, None, None),  # recurrent_kernel (NH, DH, 4, DH)
        P(hs, None, None),  # bias (NH, 4, DH)
        state_specs,
        None if resets is None else P(bs, length),
    )
    args = (gates_x, recurrent_kernel, bias, ops.SLSTMState(*initial_state), resets)
    return _shard_map(run, args, in_specs, (P(bs, length, hs, None), state_specs))


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

    A kernel backend runs ``pallas_kernels.slstm`` with its module's ``choose_blocks`` (inside
    ``jax.shard_map`` under a mesh, see ``axis_rules``); a shape it cannot tile (for example a head
    dim that is not a multiple of 16 on GPU) runs the XLA scan, with the reason logged.
    """
    asked = check_slstm_backend(backend)
    name = resolve(asked, xla="scan")
    if asked == "auto" and name == "pallas_gpu":
        # Measured on an H200 (benchmarks/RESULTS.md, "The kernels on an H200"; B=16, S=1024, NH=4):
        # the float32 kernel is correct (1e-6) but slower than the XLA scan for forward+backward at
        # every head dim (DH=64: 28.5 vs 20.0 ms; DH=128: 545 vs 21 ms, its weights spill), so
        # training takes the scan. backend="pallas_gpu" runs the kernel (forward alone at DH=64:
        # 4.2 vs 6.6 ms); recurrent_dtype="bfloat16" blocks change the numbers (bfloat16 precision).
        log.info("sLSTM backend 'auto' runs the XLA scan on GPU; backend='pallas_gpu' runs the kernel")
        name = "scan"
    impl = implementation("slstm", name)
    out = None
    if (length := length_axes(gates_x.shape[1])) is not None:
        resets = None if resets is None else jax.numpy.asarray(resets)
        out = _slstm_context(impl, gates_x, recurrent_kernel, bias, initial_state, resets, length)
    elif impl.platform is not None:
        out = _slstm_kernel(impl, gates_x, recurrent_kernel, bias, initial_state, resets)
    if out is None:
        out = ops.slstm_scan(gates_x, recurrent_kernel, bias, initial_state=initial_state, resets=resets)
    return out
