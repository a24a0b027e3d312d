"""The NeurIPS xLSTM language model, xLSTM[a:b] (mLSTM and sLSTM blocks), in Flax NNX."""

from .config import FeedForwardConfig, MLSTMLayerConfig, SLSTMLayerConfig, xLSTMLMConfig
from .mlstm_layer import MLSTMBlockState
from .model import xLSTMLMModel
from .slstm_layer import SLSTMBlockState

__all__ = [
    "FeedForwardConfig",
    "MLSTMBlockState",
    "MLSTMLayerConfig",
    "SLSTMBlockState",
    "SLSTMLayerConfig",
    "xLSTMLMConfig",
    "xLSTMLMModel",
]
