"""Run configuration: layered YAML files, dotted ``key=value`` overrides, validation.

A config file may name others under ``defaults`` (paths relative to it); they are
merged in order, then the file itself, then command-line overrides::

    # configs/parity_xlstm11.yaml
    defaults: [base.yaml, model/xlstm_tiny.yaml]
    data: {kind: parity}
    train: {steps: 2000}

    python -m xlstm_jax.train --config configs/parity_xlstm11.yaml train.steps=100 optim.lr=3e-3

Every section is a frozen dataclass; an unknown key or a bad value raises a
``ConfigError`` naming it (``optim.lr must be > 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class ConfigError(ValueError):
    """A bad configuration: the message names the offending key."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup and a decay schedule."""

    lr: float = 1e-3
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine and linear
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_biases: bool = False
    decay_embeddings: bool = False
    grad_clip: float = 1.0  # global norm; 0 disables
    grad_accum_steps: int = 1

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(
            self.schedule in ("cosine", "linear", "constant"),
            f"optim.schedule must be one of cosine, linear, constant; got {self.schedule!r}",
        )
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("b1", "b2"):
            _check(0 <= getattr(self, name) < 1, f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        _check(self.eps > 0, f"optim.eps must be > 0, got {self.eps}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        _check(self.grad_accum_steps >= 1, f"optim.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor) and the logical-axis rules that map onto it."""

    data: int = -1  # -1: all devices left over
    fsdp: int = 1
    tensor: int = 1
    # logical axis name -> mesh axes (a list shards over several). Names not listed are replicated.
    rules: Mapping[str, Sequence[str]] = dataclasses.field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "embed": ["fsdp"],
            "heads": ["tensor"],
            "mlp": ["tensor"],
            "vocab": ["tensor"],
        }
    )

    def __post_init__(self):
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in sizes.items():
            _check(size == -1 or size >= 1, f"mesh.{name} must be >= 1 or -1, got {size}")
        _check(list(sizes.values()).count(-1) <= 1, f"at most one mesh axis may be -1, got {sizes}")
        for logical, axes in self.rules.items():
            axes = [axes] if isinstance(axes, str) else list(axes)
            for axis in axes:
                _check(axis in sizes, f"mesh.rules.{logical}: unknown mesh axis {axis!r}; use data, fsdp, tensor")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Steps, batch, precision, logging, evaluation and checkpoint cadence."""

    steps: int = 1000
    stop_after_steps: int | None = None  # end this invocation after this many steps (job time limits); resume later
    global_batch_size: int = 32
    seq_len: int = 128
    seed: int = 0
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"  # full | dots | dots_no_batch (what jax.checkpoint keeps per block)
    log_every: int = 10
    eval_every: int = 200  # 0 disables
    eval_batches: int = 8
    eval_seq_len: int | None = None  # None: seq_len (longer for length-generalization tasks)
    checkpoint_every: int = 200  # 0 disables periodic saves (a final one is still written)
    keep_checkpoints: int = 3
    out_dir: str = "runs/default"
    sample_tokens: int = 32  # tokens generated at the end (0 disables)
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("steps", "global_batch_size", "seq_len", "log_every", "eval_batches", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stop_after_steps", "eval_seq_len"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"train.{name} must be >= 1 or null, got {value}")
        for name in ("eval_every", "checkpoint_every", "sample_tokens"):
            _check(getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("compute_dtype", "param_dtype"):
            _check(
                getattr(self, name) in ("float32", "bfloat16"),
                f"train.{name} must be float32 or bfloat16, got {getattr(self, name)!r}",
            )


def build_dataclass(cls, values: Mapping[str, Any] | None, prefix: str):
    """``cls(**values)`` with unknown keys rejected by their dotted name."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as err:  # e.g. a mapping where a number belongs
        raise ConfigError(f"{prefix.rstrip('.')}: {err}") from err


def deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file from a path (``configs/quickstart.yaml``) or a shipped preset name (``quickstart``).

    An existing file wins; otherwise a name without a directory part is looked up among the presets
    of ``xlstm_jax.configs``. ``ConfigError`` lists the presets when neither exists.
    """
    from xlstm_jax.configs import list_presets, preset_path

    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    if len(path.parts) != 1:
        raise ConfigError(f"config file not found: {path.resolve()}")
    try:
        return preset_path(path.name)
    except ValueError:
        raise ConfigError(
            f"config file not found: {path.resolve()}, and {path.name!r} is not a preset; "
            f"presets: {', '.join(list_presets())}"
        ) from None


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML file (or preset name, see ``resolve_config``) merged over its ``defaults`` (recursively)."""
    path = resolve_config(path) if not _seen else Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, (*_seen, path)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    merged: dict = {}
    defaults = data.pop("defaults", [])
    for ref in [defaults] if isinstance(defaults, str) else defaults:
        merged = deep_merge(merged, load_yaml(path.parent / ref, (*_seen, path)))
    return deep_merge(merged, data)


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML (``3e-4``, ``[0, 2]``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        value = parse_yaml(raw) if raw.strip() else None
        node = config
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return config


def to_json(config: Mapping) -> str:
    """Stable JSON of a resolved config (saved with every checkpoint)."""
    return json.dumps(config, indent=2, sort_keys=True, default=str)
