"""Device mesh and shardings from logical axis names.

Parameters carry logical names (``embed``, ``heads``, ``mlp``, ``vocab``; see
``xlstm_jax.nn.params``); the config's rules map them to mesh axes
(``data``, ``fsdp``, ``context``, ``tensor``). A dimension whose size the mesh axes do not
divide is replicated instead (and reported once), so any model fits any mesh.

Batches (B, S) are split over the ``batch`` rule's axes in B and over the ``length`` rule's
axes in S (context parallelism: each device of the ``context`` axis holds a contiguous slice
of every row, and the cells combine the slices through ``xlstm_jax.backends``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "context", "tensor")  # outermost (slowest links) to innermost


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """Sizes of ``AXES`` on ``num_devices`` devices (the one -1 axis takes the devices left over)."""
    sizes = [getattr(cfg, axis) for axis in AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices are not divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, {num_devices} are present")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, context, tensor) mesh with GSPMD-style (Auto) axes.

    On multi-slice TPU pods the data axis spans slices (slow links carry only the
    gradient all-reduce); within a slice and on GPUs, the device order of
    ``jax.make_mesh`` keeps fsdp, context and tensor groups on fast interconnects.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices > 1:
        from jax.experimental import mesh_utils

        if shape[0] % num_slices:
            raise ConfigError(f"mesh.data={shape[0]} must be a multiple of the {num_slices} slices")
        per_slice = (shape[0] // num_slices, *shape[1:])
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, (num_slices,) + (1,) * (len(AXES) - 1), devices)
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    return Mesh(np.array(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def describe(mesh: Mesh) -> dict[str, int]:
    """The mesh's axis sizes for messages; the ``context`` axis only when it splits sequences."""
    return {axis: size for axis, size in mesh.shape.items() if axis != "context" or size > 1}


def logical_spec(
    names: Sequence[str | None], shape: Sequence[int], rules: Mapping[str, Sequence[str]], mesh: Mesh
) -> PartitionSpec:
    """Mesh PartitionSpec for one array with logical dimension names."""
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axes = rules.get(name, []) if name is not None else []
        axes = [axes] if isinstance(axes, str) else [a for a in axes if a not in used and mesh.shape[a] > 1]
        if axes and size % math.prod(mesh.shape[a] for a in axes):
            log.info("replicating a dim of size %d (%s): not divisible by mesh axes %s", size, name, axes)
            axes = []
        used.update(axes)
        spec.append(_entry(axes))
    return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh: Mesh, rules: Mapping[str, Sequence[str]]):
    """NamedShardings for an ``nnx.State`` whose Variables carry ``out_sharding`` names."""

    def one(variable):
        value = variable.get_value() if hasattr(variable, "get_value") else variable.value
        names = variable.get_metadata().get("out_sharding") or (None,) * len(value.shape)
        return variable.replace(NamedSharding(mesh, logical_spec(names, value.shape, rules, mesh)))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: hasattr(x, "get_metadata"))


def _rule_axes(mesh: Mesh, rules: Mapping[str, Sequence[str]], logical: str, taken=()) -> list[str]:
    """The mesh axes of size > 1 that the rule ``logical`` names, less those in ``taken``."""
    axes = rules.get(logical, [])
    axes = [axes] if isinstance(axes, str) else list(axes)
    return [a for a in axes if a not in taken and mesh.shape[a] > 1]


def _entry(axes: Sequence[str]):
    return tuple(axes) if len(axes) > 1 else (axes[0] if axes else None)


def batch_axes(mesh: Mesh, rules: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """(mesh axes of B, mesh axes of S) of a batch: the ``batch`` and ``length`` rules' axes of size > 1
    (an axis named by both splits B only)."""
    rows = _rule_axes(mesh, rules, "batch")
    return rows, _rule_axes(mesh, rules, "length", rows)


def batch_sharding(mesh: Mesh, rules: Mapping[str, Sequence[str]], ndim: int = 2) -> NamedSharding:
    """Batch-major arrays (B, S, ...): B over the ``batch`` rule's axes, S over the ``length`` rule's
    axes (context parallelism), the rest replicated."""
    rows, length = batch_axes(mesh, rules)
    return NamedSharding(mesh, PartitionSpec(_entry(rows), _entry(length), *([None] * (ndim - 2))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def process_rows(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """(index, count) of the block of batch rows this process's devices hold, among ``count`` blocks.

    Each process loads only its block's rows. Without context parallelism every process holds its own
    rows (index = process index). When an axis that does not split rows (``context``, ``tensor``)
    spans processes, those processes hold the same rows, load the same block and
    ``jax.make_array_from_process_local_data`` takes each device's slice of it.
    """
    rows_only = NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0] if sharding.spec else None))
    rows = [(d.process_index, *index[0].indices(global_rows)[:2]) for d, index in
            rows_only.devices_indices_map((global_rows,)).items()]  # fmt: skip
    return row_blocks(rows, jax.process_index())


def row_blocks(rows: Sequence[tuple[int, int, int]], process_index: int) -> tuple[int, int]:
    """``process_rows`` from (process, first row, end row) per device: the rows of each process form
    one block; processes with the same block share it. ``ConfigError`` when blocks overlap or differ in size."""
    spans: dict[int, tuple[int, int]] = {}
    for process, start, stop in rows:
        low, high = spans.get(process, (start, stop))
        spans[process] = (min(low, start), max(high, stop))
    blocks = sorted(set(spans.values()))
    if len({b - a for a, b in blocks}) != 1 or any(b[1] > c[0] for b, c in zip(blocks, blocks[1:])):
        raise ConfigError(f"the mesh gives the processes overlapping or unequal blocks of batch rows {blocks}; "
                          "order the mesh so that each process's devices hold one contiguous block")  # fmt: skip
    return blocks.index(spans[process_index]), len(blocks)
