"""The NeurIPS ``xLSTMLMModel`` as a checkpoint folder of ours: ``config.json`` + safetensors.

Hugging Face has no class for this architecture, so the format is this project's own, in
the Hugging Face folder conventions:

* ``config.json``: ``{"model_type": "xlstm_jax_lm", "architectures": ["xLSTMLMModel"],
  "xlstm_lm_config": dataclasses.asdict(xLSTMLMConfig), "slstm_layout": "vanilla",
  "bos_token_id"/"eos_token_id"/"pad_token_id", "torch_dtype"}``.
* ``model.safetensors`` (or shards + ``model.safetensors.index.json``): the OFFICIAL
  ``xlstm.xLSTMLMModel`` state dict (``to_torch_xlstm_lm_state_dict``, vanilla sLSTM layout;
  with ``tie_weights`` also ``lm_head.weight``), so that
  ``official.load_state_dict(safetensors.torch.load_file(...))`` takes it unchanged.
* ``generation_config.json`` as for every checkpoint.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from xlstm_jax._validation import CheckpointError
from xlstm_jax.models.xlstm_lm import xLSTMLMConfig, xLSTMLMModel

from .torch_xlstm_lm import model_from_state_dict, to_torch_xlstm_lm_state_dict

MODEL_TYPE = "xlstm_jax_lm"
SLSTM_LAYOUT = "vanilla"


def _nested_classes() -> dict[str, type]:
    """The config classes of the nested fields (mlstm, slstm, feedforward), from the annotations."""
    hints = typing.get_type_hints(xLSTMLMConfig)
    return {
        name: next(a for a in typing.get_args(hints[name]) if dataclasses.is_dataclass(a))
        for name in ("mlstm", "slstm", "feedforward")
    }


def config_to_json(model: xLSTMLMModel, *, torch_dtype: str, special_ids: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dataclasses.asdict(model.config)
    cfg["slstm_at"] = list(model.config.slstm_at)
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["xLSTMLMModel"],
        "xlstm_lm_config": cfg,
        "slstm_layout": SLSTM_LAYOUT,
        "torch_dtype": torch_dtype,
        **special_ids,
    }


def config_from_json(d: Mapping[str, Any], source: str, **overrides) -> xLSTMLMConfig:
    """The ``xLSTMLMConfig`` of a ``config.json`` dict written by ``config_to_json``."""
    cfg = d.get("xlstm_lm_config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source} has no 'xlstm_lm_config' object: expected a config.json of an xLSTMLMModel")
    if d.get("slstm_layout", SLSTM_LAYOUT) != SLSTM_LAYOUT:
        raise CheckpointError(f"{source}: slstm_layout must be {SLSTM_LAYOUT!r}, got {d['slstm_layout']!r}")
    kwargs = {**cfg, **overrides}
    try:
        for name, cls in _nested_classes().items():
            if isinstance(kwargs.get(name), dict):
                kwargs[name] = cls(**kwargs[name])
        if isinstance(kwargs.get("slstm_at"), list):
            kwargs["slstm_at"] = tuple(kwargs["slstm_at"])
        return xLSTMLMConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: xlstm_lm_config is not a valid xLSTMLMConfig ({e})") from e


def export(model: xLSTMLMModel) -> list[tuple]:
    """(official name, fetch, shape, dtype) for every tensor, for ``safetensors_io.write``."""
    state = to_torch_xlstm_lm_state_dict(model, slstm_layout=SLSTM_LAYOUT)
    return [(k, lambda v=v: v, v.shape, v.dtype) for k, v in state.items()]


def load(cfg: xLSTMLMConfig, tensors: Mapping[str, Any]) -> xLSTMLMModel:
    """Our model from ``cfg`` and the folder's tensors (official names)."""
    return model_from_state_dict(cfg, tensors, SLSTM_LAYOUT)
