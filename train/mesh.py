"""Device mesh and shardings from logical axis names.

Parameters carry logical names (``embed``, ``heads``, ``mlp``, ``vocab``; see
``xlstm_jax.nn.params``); the config's rules map them to mesh axes
(``data``, ``fsdp``, ``tensor``). A dimension whose size the mesh axes do not
divide is replicated instead (and reported once), so any model fits any mesh.
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

AXES = ("data", "fsdp", "tensor")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices are not divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, {num_devices} are present")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with GSPMD-style (Auto) axes.

    On multi-slice TPU pods the data axis spans slices (slow links carry only the
    gradient all-reduce); within a slice and on GPUs, the device order of
    ``jax.make_mesh`` keeps fsdp and tensor groups on fast interconnects.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices > 1:
        from jax.experimental import mesh_utils

        if shape[0] % num_slices:
            raise ConfigError(f"mesh.data={shape[0]} must be a multiple of the {num_slices} slices")
        per_slice = (shape[0] // num_slices, shape[1], shape[2])
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, (num_slices, 1, 1), devices)
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 3)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.array(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * 3)


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
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh: Mesh, rules: Mapping[str, Sequence[str]]):
    """NamedShardings for an ``nnx.State`` whose Variables carry ``out_sharding`` names."""

    def one(variable):
        value = variable.get_value() if hasattr(variable, "get_value") else variable.value
        names = variable.get_metadata().get("out_sharding") or (None,) * len(value.shape)
        return variable.replace(NamedSharding(mesh, logical_spec(names, value.shape, rules, mesh)))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: hasattr(x, "get_metadata"))


def batch_sharding(mesh: Mesh, rules: Mapping[str, Sequence[str]], ndim: int = 2) -> NamedSharding:
    """Batch-major arrays (B, S, ...): B over the ``batch`` rule's axes, the rest replicated."""
    axes = [a for a in rules.get("batch", []) if mesh.shape[a] > 1]
    first = tuple(axes) if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
