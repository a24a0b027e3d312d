"""Parameter layout shared by the torch and Hugging Face converters of ``xLSTMLarge``.

Checkpoint names are the Hugging Face ones (``backbone.embeddings.weight``,
``backbone.blocks.{i}...``, ``backbone.out_norm...``, ``lm_head.weight``), which equal the
official ``xlstm_large`` state_dict except ``embedding.weight``; torch Linear weights are
(out, in) and our kernels (in, out). Our block parameters carry a leading block axis and
are allocated on their device(s) and filled block by block, so a load holds one checkpoint
tensor at a time on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

Path = tuple[str, ...]
# Alternative names found in checkpoints -> our canonical (Hugging Face) names.
_ALIASES = {
    "embedding.weight": "backbone.embeddings.weight",  # official xlstm_large state_dict
}
# The upstream HF fallback (no ``xlstm`` package) of some transformers versions names q/k/v so.
_PROJ_ALIASES = {
    ".mlstm_layer.query.": ".mlstm_layer.q.",
    ".mlstm_layer.key.": ".mlstm_layer.k.",
    ".mlstm_layer.value.": ".mlstm_layer.v.",
}


class TensorSource(Protocol):
    """Named tensors readable one at a time."""

    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def read(self, key: str) -> np.ndarray: ...


def canonical_name(key: str) -> str:
    key = _ALIASES.get(key, key)
    for old, new in _PROJ_ALIASES.items():
        key = key.replace(old, new)
    return key


@dataclass(frozen=True)
class Entry:
    """One parameter of ours: its path, checkpoint name(s), and whether it is a transposed kernel."""

    path: Path
    key: str  # canonical checkpoint name; contains "{i}" for stacked block parameters
    stacked: bool
    transpose: bool
    shape: tuple[int, ...]  # our shape (with the leading block axis if stacked)
    dtype: Any

    def keys(self, num_blocks: int) -> list[str]:
        return [self.key.format(i=i) for i in range(num_blocks)] if self.stacked else [self.key]

    def checkpoint_shape(self) -> tuple[int, ...]:
        shape = self.shape[1:] if self.stacked else self.shape
        return shape[::-1] if self.transpose else shape


def _checkpoint_key(path: Path) -> str:
    *prefix, leaf = (str(p) for p in path)
    leaf = "weight" if leaf in ("kernel", "embedding") else leaf
    if prefix == ["embedding"]:
        return "backbone.embeddings.weight"
    if prefix[0] == "blocks":
        return ".".join(["backbone.blocks.{i}", *prefix[1:], leaf])
    if prefix[0] == "out_norm":
        return f"backbone.out_norm.{leaf}"
    return ".".join([*prefix, leaf])


def entries(state: nnx.State) -> list[Entry]:
    """The checkpoint entries of an (abstract) ``xLSTMLarge`` state."""
    out = []
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param):
            raise TypeError(f"unexpected non-parameter state at {path}: {type(var).__name__}")
        out.append(
            Entry(
                path=tuple(path),
                key=_checkpoint_key(tuple(path)),
                stacked=path[0] == "blocks",
                transpose=path[-1] == "kernel",
                shape=tuple(var.shape),
                dtype=var.dtype,
            )
        )
    return out


def checkpoint_names(source_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """canonical name -> name in the checkpoint; a name present under two spellings is an error."""
    names: dict[str, str] = {}
    for key in source_shapes:
        canon = canonical_name(key)
        if canon in names:
            raise ValueError(f"checkpoint has both {names[canon]!r} and {key!r} for the same parameter")
        names[canon] = key
    return names


def check(
    layout: list[Entry],
    num_blocks: int,
    source_shapes: Mapping[str, tuple[int, ...]],
    defaults: Mapping[str, str | None] = (),
) -> dict[str, str]:
    """Raise one ValueError listing every missing, unexpected and mis-shaped tensor.

    Args:
      defaults: canonical name -> another canonical name to read instead when it is
        missing (e.g. a tied ``lm_head.weight``), or None to fill zeros.

    Returns:
      canonical name -> checkpoint name, for the tensors present.
    """
    names = checkpoint_names(source_shapes)
    defaults = dict(defaults)
    expected = {k: e.checkpoint_shape() for e in layout for k in e.keys(num_blocks)}
    missing = sorted(k for k in expected if k not in names and k not in defaults)
    unexpected = sorted(names[k] for k in names if k not in expected)
    mismatched = sorted(
        f"{names[k]}: checkpoint {tuple(source_shapes[names[k]])}, model expects {shape}"
        for k, shape in expected.items()
        if k in names and tuple(source_shapes[names[k]]) != shape
    )
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing: {missing}"] if missing else []
        parts += [f"{len(unexpected)} unexpected: {unexpected}"] if unexpected else []
        parts += [f"{len(mismatched)} with wrong shapes: {mismatched}"] if mismatched else []
        if any(".qkv_opreact." in k for k in [*missing, *unexpected]):
            parts.append("the checkpoint's weight_mode ('single' or 'fused') differs from the config's")
        raise ValueError("checkpoint does not match the xLSTMLarge config; " + "; ".join(parts))
    return names


def _sharding_lookup(sharding) -> Callable[[Path, nnx.Variable], jax.sharding.Sharding | None]:
    """None, one Sharding for all, a callable (path, abstract Param) -> Sharding, or a pytree
    (``nnx.State`` or nested dict like ``nnx.state(model)``) of Shardings."""
    if sharding is None:
        return lambda path, var: None
    if isinstance(sharding, jax.sharding.Sharding):
        return lambda path, var: sharding
    if callable(sharding) and not isinstance(sharding, Mapping):
        return sharding
    if isinstance(sharding, nnx.State):
        flat = nnx.to_flat_state(sharding)
    else:
        is_leaf = lambda _, x: not isinstance(x, Mapping)
        flat = traverse_util.flatten_dict(sharding, is_leaf=is_leaf).items()
    table = {tuple(path): leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf for path, leaf in flat}
    return lambda path, var: table[path]


def _host(entry: Entry, tensor: np.ndarray) -> np.ndarray:
    """A checkpoint tensor in our layout and dtype (one block of a stacked parameter)."""
    return np.ascontiguousarray(tensor.T if entry.transpose else tensor, dtype=np.dtype(entry.dtype))


@partial(jax.jit, donate_argnums=0)
def _set_block(stacked: jax.Array, block: jax.Array, index: jax.Array) -> jax.Array:
    """stacked (L, ...) with stacked[index] = block, in place (the input buffer is donated)."""
    return jax.lax.dynamic_update_index_in_dim(stacked, block.astype(stacked.dtype), index, 0)


def _place(entry: Entry, num_blocks: int, read: Callable[[str], np.ndarray], target) -> jax.Array:
    """Our parameter on its device(s), filled one checkpoint tensor at a time.

    A stacked parameter is allocated on the device(s) and written block by block, so the
    host holds one block's tensor at a time, never the stacked parameter.
    """
    if not entry.stacked:
        return jax.device_put(_host(entry, read(entry.key)), target, may_alias=False)
    out = jnp.zeros(entry.shape, entry.dtype, device=target)
    for i, key in enumerate(entry.keys(num_blocks)):
        out = _set_block(out, _host(entry, read(key)), i)
    return out


def load(
    config: xLSTMLargeConfig,
    source: TensorSource,
    *,
    sharding=None,
    defaults: Mapping[str, str | None] = (),
) -> xLSTMLarge:
    """Build an ``xLSTMLarge`` from ``source`` without ever allocating random weights.

    The model is built abstractly (``nnx.eval_shape``); each parameter is placed with its
    sharding (if any) and filled tensor by tensor: the host holds one checkpoint tensor at a time.
    """
    abstract = nnx.eval_shape(lambda: xLSTMLarge(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    layout = entries(state)
    names = check(layout, config.num_blocks, source.shapes(), defaults)

    def read(canon: str) -> np.ndarray:
        if canon in names:
            return source.read(names[canon])
        fallback = dict(defaults)[canon]
        if fallback is None:
            return np.zeros(next(e for e in layout if canon in e.keys(config.num_blocks)).checkpoint_shape())
        return read(fallback)

    shard = _sharding_lookup(sharding)
    variables = dict(nnx.to_flat_state(state))
    for entry in layout:
        var = variables[entry.path]
        # Wait for each parameter: in-flight transfers keep their host buffers alive.
        var.set_value(jax.block_until_ready(_place(entry, config.num_blocks, read, shard(entry.path, var))))
    return nnx.merge(graphdef, state)


def export(model: xLSTMLarge) -> Iterator[tuple[str, Callable[[], np.ndarray], tuple[int, ...], np.dtype]]:
    """(checkpoint name, lazy host tensor, shape, dtype) for every tensor, in checkpoint order.

    Each tensor is fetched from the device only when its thunk is called.
    """
    state = nnx.state(model, nnx.Param)
    num_blocks = model.config.num_blocks
    layout = entries(state)
    values = dict(nnx.to_flat_state(state))
    head = [e for e in layout if e.key == "backbone.embeddings.weight"]
    blocks = [e for e in layout if e.stacked]
    tail = [e for e in layout if not e.stacked and e not in head]
    for entry in head:
        yield _export_one(entry, values[entry.path], None)
    for i in range(num_blocks):
        for entry in blocks:
            yield _export_one(entry, values[entry.path], i)
    for entry in tail:
        yield _export_one(entry, values[entry.path], None)


def _export_one(entry: Entry, var: nnx.Variable, block: int | None):
    key = entry.key if block is None else entry.key.format(i=block)

    def fetch() -> np.ndarray:
        x = var[...] if block is None else var[...][block]
        x = np.asarray(jax.device_get(x))
        return np.ascontiguousarray(x.T if entry.transpose else x)

    return key, fetch, entry.checkpoint_shape(), np.dtype(entry.dtype)
