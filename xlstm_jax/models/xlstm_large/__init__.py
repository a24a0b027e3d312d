"""xLSTM-7B architecture (official ``xlstm.xlstm_large``; Hugging Face ``xLSTMForCausalLM``).

Names follow the official ``xlstm.xlstm_large.model``: ``mLSTMLayer``, ``FeedForward``, ``mLSTMBlock``,
all built from an ``mLSTMBlockConfig`` (``xLSTMLargeConfig.block``).
"""

from .._output import xLSTMOutput
from ._config import mLSTMBlockConfig, xLSTMLargeConfig
from ._layers import FeedForward, mLSTMBlock, mLSTMLayer
from ._model import xLSTMLarge

__all__ = [
    "FeedForward",
    "mLSTMBlock",
    "mLSTMBlockConfig",
    "mLSTMLayer",
    "xLSTMLarge",
    "xLSTMLargeConfig",
    "xLSTMOutput",
]
