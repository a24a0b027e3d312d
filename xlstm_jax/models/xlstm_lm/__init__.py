"""The NeurIPS xLSTM language model, xLSTM[a:b] (mLSTM and sLSTM blocks), in Flax NNX.

Names follow the official ``xlstm`` package: ``mLSTMLayer``, ``mLSTMBlock``, ``sLSTMLayer``,
``sLSTMBlock`` with ``mLSTMLayerConfig``, ``sLSTMLayerConfig``, ``FeedForwardConfig``.
"""

from .._deprecated import deprecated_aliases
from .._output import xLSTMOutput
from ._config import FeedForwardConfig, mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig
from ._feedforward import GatedFeedForward
from ._mlstm_layer import mLSTMBlockState, mLSTMLayer
from ._model import mLSTMBlock, sLSTMBlock, xLSTMLMModel
from ._slstm_layer import sLSTMBlockState, sLSTMLayer

__all__ = [
    "FeedForwardConfig",
    "GatedFeedForward",
    "mLSTMBlock",
    "mLSTMBlockState",
    "mLSTMLayer",
    "mLSTMLayerConfig",
    "sLSTMBlock",
    "sLSTMBlockState",
    "sLSTMLayer",
    "sLSTMLayerConfig",
    "xLSTMLMConfig",
    "xLSTMLMModel",
    "xLSTMOutput",
]

# The names before the official spelling was adopted (0.1.0).
__getattr__ = deprecated_aliases(
    __name__,
    globals(),
    {
        "MLSTMLayerConfig": "mLSTMLayerConfig",
        "SLSTMLayerConfig": "sLSTMLayerConfig",
        "MLSTMBlockState": "mLSTMBlockState",
        "SLSTMBlockState": "sLSTMBlockState",
    },
)
