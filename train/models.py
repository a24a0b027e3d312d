"""Model section of a run config -> an xlstm-jax model config and module.

    model:
      arch: xlstm_lm            # or xlstm_large
      embedding_dim: 128
      num_blocks: 4
      slstm_at: [1]
      mlstm: {num_heads: 4}     # xlstm_lm sub-configs as mappings
      slstm: {num_heads: 4}

``vocab_size`` comes from the data unless the model section sets it; dtypes and
remat come from the ``train`` section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax import nnx

from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from xlstm_jax.models.xlstm_lm import FeedForwardConfig, mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel

from .config import ConfigError, build_dataclass

ARCHS = {"xlstm_lm": (xLSTMLMConfig, xLSTMLMModel), "xlstm_large": (xLSTMLargeConfig, xLSTMLarge)}
_LM_SUBCONFIGS = {"mlstm": mLSTMLayerConfig, "slstm": sLSTMLayerConfig, "feedforward": FeedForwardConfig}


def model_config(
    section: Mapping[str, Any],
    *,
    vocab_size: int,
    dtype: str,
    param_dtype: str,
    remat: bool,
    remat_policy: str = "full",
):
    """The model config of a run; errors name ``model.<field>``."""
    fields = dict(section)
    arch = fields.pop("arch", None)
    if arch not in ARCHS:
        raise ConfigError(f"model.arch must be one of {sorted(ARCHS)}, got {arch!r}")
    config_cls = ARCHS[arch][0]
    if arch == "xlstm_lm":
        for name, sub_cls in _LM_SUBCONFIGS.items():
            if isinstance(fields.get(name), Mapping):
                fields[name] = build_dataclass(sub_cls, fields[name], f"model.{name}.")
        if isinstance(fields.get("slstm_at"), list):
            fields["slstm_at"] = tuple(fields["slstm_at"])
    fields.setdefault("vocab_size", vocab_size)
    if fields["vocab_size"] < vocab_size:
        raise ConfigError(f"model.vocab_size={fields['vocab_size']} is smaller than the data's vocabulary {vocab_size}")
    fields.update(dtype=dtype, param_dtype=param_dtype, remat=remat, remat_policy=remat_policy)
    try:
        return build_dataclass(config_cls, fields, "model.")
    except ValueError as err:
        raise ConfigError(f"model: {err}") from err


def build_model(config, seed: int):
    for config_cls, model_cls in ARCHS.values():
        if isinstance(config, config_cls):
            return model_cls(config, rngs=nnx.Rngs(seed))
    raise TypeError(f"not a model config: {type(config).__name__}")


def config_to_dict(config) -> dict:
    arch = next(name for name, (cls, _) in ARCHS.items() if isinstance(config, cls))
    return {"arch": arch, **dataclasses.asdict(config)}
