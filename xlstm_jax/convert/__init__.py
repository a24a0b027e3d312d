"""Checkpoint conversion: official PyTorch models and Hugging Face folders -> our NNX models."""

from .hf import from_pretrained, save_pretrained
from .torch_xlstm_large import from_torch_xlstm_large
from .torch_xlstm_lm import from_torch_xlstm_lm, to_torch_xlstm_lm_state_dict

__all__ = [
    "from_pretrained",
    "from_torch_xlstm_large",
    "from_torch_xlstm_lm",
    "save_pretrained",
    "to_torch_xlstm_lm_state_dict",
]
