"""Official PyTorch ``xlstm.xlstm_large.xLSTMLarge`` (or HF ``xLSTMForCausalLM``) weights -> ``xLSTMLarge``.

Torch is never imported at module import time: a state_dict of torch tensors is read
tensor by tensor (``np.asarray(t.detach().cpu())``; bfloat16 through its raw bits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

from ._xlstm_large_layout import load


def to_numpy(t: Any) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (bfloat16 kept as ``ml_dtypes.bfloat16``)."""
    if type(t).__module__.startswith("torch"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch  # a torch tensor exists, so torch is importable

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(t)


class StateDictSource:
    """A ``{name: tensor}`` mapping read one tensor at a time."""

    def __init__(self, state_dict: Mapping[str, Any]):
        self.state_dict = state_dict

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict.items()}

    def read(self, key: str) -> np.ndarray:
        return to_numpy(self.state_dict[key])


def from_torch_xlstm_large(
    config: Mapping[str, Any] | xLSTMLargeConfig, state_dict: Mapping[str, Any], *, sharding=None, **overrides
) -> xLSTMLarge:
    """``xLSTMLarge`` with the weights of an official ``xLSTMLarge`` (or HF ``xLSTMForCausalLM``).

    Args:
      config: ``dataclasses.asdict`` of the official ``xLSTMLargeConfig``, that config itself, or ours.
      state_dict: name -> numpy array or torch tensor, in the config's ``weight_mode``
        ("single" or "fused" names); the embedding as ``embedding.weight`` (xlstm_large)
        or ``backbone.embeddings.weight`` (HF; HF has no ``backbone.out_norm.bias``, read as zeros).
      sharding: where to place each parameter (see ``xlstm_jax.convert.from_pretrained``).
      overrides: fields of ``xLSTMLargeConfig`` to set (``dtype``, ``backend``, ``scan_blocks``...).

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped tensor at once.
    """
    if isinstance(config, xLSTMLargeConfig):
        cfg = dataclasses.replace(config, **overrides)
    elif dataclasses.is_dataclass(config):  # the official config object itself
        cfg = xLSTMLargeConfig.from_dict(dataclasses.asdict(config), **overrides)
    else:
        cfg = xLSTMLargeConfig.from_dict(config, **overrides)
    defaults = {}
    if cfg.use_bias and cfg.add_out_norm and "backbone.embeddings.weight" in state_dict:
        defaults["backbone.out_norm.bias"] = None  # HF's out_norm has no bias: zeros reproduce it
    return load(cfg, StateDictSource(state_dict), sharding=sharding, defaults=defaults)
