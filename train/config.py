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
import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from xlstm_jax._validation import check_bool, check_choice, check_int, check_known_keys, check_number
from xlstm_jax.nn import REMAT_POLICIES


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


_int = functools.partial(check_int, error=ConfigError)
_number = functools.partial(check_number, error=ConfigError)
_bool = functools.partial(check_bool, error=ConfigError)
_choice = functools.partial(check_choice, error=ConfigError)


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
        _number("optim.lr", self.lr, 0, low_open=True)
        _choice("optim.schedule", self.schedule, ("cosine", "linear", "constant"))
        _int("optim.warmup_steps", self.warmup_steps, 0)
        _number("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        for name in ("b1", "b2"):
            _number(f"optim.{name}", getattr(self, name), 0, 1, high_open=True)
        _number("optim.eps", self.eps, 0, low_open=True)
        _number("optim.weight_decay", self.weight_decay, 0)
        for name in ("decay_norms_and_biases", "decay_embeddings"):
            _bool(f"optim.{name}", getattr(self, name))
        _number("optim.grad_clip", self.grad_clip, 0)  # 0 disables
        _int("optim.grad_accum_steps", self.grad_accum_steps, 1)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, context, tensor) and the logical-axis rules that map onto it.

    ``context`` > 1 splits every sequence over that many devices (context parallelism): the
    ``length`` rule maps the sequence dimension of batches and activations onto it.
    """

    data: int = -1  # -1: all devices left over
    fsdp: int = 1
    context: int = 1  # devices one sequence is split over
    tensor: int = 1
    # logical axis name -> mesh axes (a list shards over several). Names not listed are replicated.
    rules: Mapping[str, Sequence[str]] = dataclasses.field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "length": ["context"],
            "embed": ["fsdp"],
            "heads": ["tensor"],
            "mlp": ["tensor"],
            "vocab": ["tensor"],
        }
    )

    def __post_init__(self):
        sizes = {"data": self.data, "fsdp": self.fsdp, "context": self.context, "tensor": self.tensor}
        for name, size in sizes.items():
            _int(f"mesh.{name}", size, -1)
            _check(size != 0, f"mesh.{name} must be an integer >= 1 or -1 (all devices left over), got {size!r}")
        _check(list(sizes.values()).count(-1) <= 1, f"at most one mesh axis may be -1, got {sizes}")
        _check(isinstance(self.rules, Mapping), f"mesh.rules must be a mapping, got {self.rules!r}")
        for logical, axes in self.rules.items():
            axes = [axes] if isinstance(axes, str) else list(axes)
            for axis in axes:
                _check(
                    axis in sizes,
                    f"mesh.rules.{logical}: unknown mesh axis {axis!r}; use {', '.join(sizes)}",
                )
        length = self.rules.get("length", [])
        length = [length] if isinstance(length, str) else list(length)
        _check(
            self.context == 1 or "context" in length,
            f"mesh.rules.length must include 'context' when mesh.context={self.context} (the sequence is split "
            f"over that axis), got {length!r}",
        )

    def check_seq_len(self, seq_len: int, field: str) -> None:
        """``ConfigError`` unless a fixed ``context`` size divides ``seq_len`` (the value of ``field``)."""
        _check(
            self.context == -1 or seq_len % self.context == 0,
            f"{field}={seq_len} must be divisible by mesh.context={self.context} (each device of the context axis "
            f"holds {field}/mesh.context tokens of every row)",
        )


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
    max_consecutive_nonfinite: int = 10  # stop (non-zero exit) after this many non-finite steps in a row

    def __post_init__(self):
        for name in ("steps", "global_batch_size", "seq_len", "log_every", "eval_batches", "keep_checkpoints"):
            _int(f"train.{name}", getattr(self, name), 1)
        _int("train.max_consecutive_nonfinite", self.max_consecutive_nonfinite, 1)
        for name in ("stop_after_steps", "eval_seq_len"):
            _int(f"train.{name}", getattr(self, name), 1, optional=True)
        for name in ("eval_every", "checkpoint_every", "sample_tokens"):
            _int(f"train.{name}", getattr(self, name), 0)
        _int("train.seed", self.seed, 0, 2**32 - 1)
        for name in ("compute_dtype", "param_dtype"):
            _choice(f"train.{name}", getattr(self, name), ("float32", "bfloat16"))
        _choice("train.remat_policy", self.remat_policy, tuple(REMAT_POLICIES))
        for name in ("remat", "tensorboard"):
            _bool(f"train.{name}", getattr(self, name))
        _check(
            isinstance(self.out_dir, str) and bool(self.out_dir), f"train.out_dir must be a path, got {self.out_dir!r}"
        )


def build_dataclass(cls, values: Mapping[str, Any] | None, prefix: str):
    """``cls(**values)`` with unknown keys rejected by their dotted name."""
    values = dict(values or {})
    check_known_keys(prefix.rstrip("."), values, (f.name for f in dataclasses.fields(cls)), error=ConfigError)
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


def apply_overrides(config: dict, overrides: Sequence[str] | Mapping[str, Any]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML: ``3e-4``, ``[0, 2]``, ``true``), or a
    mapping of dotted keys to values (``{"train.steps": 5}``; a mapping value is merged into the
    section it names: ``{"train": {"steps": 5}}``)."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings or a mapping, got {overrides!r}")
    if isinstance(overrides, Mapping):
        items = [(str(key), value, f"{key}={value!r}") for key, value in overrides.items()]
    else:
        items = []
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"override {item!r} must look like key.sub=value")
            key, raw = item.split("=", 1)
            items.append((key, parse_yaml(raw) if raw.strip() else None, item))
    for key, value, item in items:
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = config
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            value = deep_merge(node[parts[-1]], value)
        node[parts[-1]] = value
    return config


def load_config(config: str | Path | Mapping, overrides: Sequence[str] | Mapping[str, Any] | None = None) -> dict:
    """A run config as a plain dict from a preset name, a YAML path or a mapping (copied), with
    ``overrides`` applied (see ``apply_overrides``)."""
    if isinstance(config, (str, Path)):
        raw = load_yaml(config)
    elif isinstance(config, Mapping):
        raw = json.loads(json.dumps(config, default=_plain))
    else:
        raise ConfigError(f"config must be a preset name, a YAML path or a mapping, got {type(config).__name__}")
    return apply_overrides(raw, overrides or [])


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise ConfigError(f"config values must be plain data (numbers, strings, lists, mappings), got {value!r}")


def to_json(config: Mapping) -> str:
    """Stable JSON of a resolved config (saved with every checkpoint)."""
    return json.dumps(config, indent=2, sort_keys=True, default=str)
