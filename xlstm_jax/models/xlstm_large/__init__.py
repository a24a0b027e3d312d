"""xLSTM-7B architecture (official ``xlstm.xlstm_large``; Hugging Face ``xLSTMForCausalLM``).

Names follow the official ``xlstm.xlstm_large.model``: ``mLSTMLayer``, ``FeedForward``, ``mLSTMBlock``.
"""

from ._config import xLSTMLargeConfig
from ._layers import FeedForward, mLSTMBlock, mLSTMLayer
from ._model import xLSTMLarge

__all__ = ["FeedForward", "mLSTMBlock", "mLSTMLayer", "xLSTMLarge", "xLSTMLargeConfig"]
