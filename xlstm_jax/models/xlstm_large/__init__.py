"""xLSTM-7B architecture (official ``xlstm.xlstm_large``; Hugging Face ``xLSTMForCausalLM``)."""

from .config import xLSTMLargeConfig
from .model import xLSTMLarge

__all__ = ["xLSTMLarge", "xLSTMLargeConfig"]
