"""xLSTM language models: the NeurIPS xLSTM (``xlstm_lm``) and xLSTM-7B (``xlstm_large``).

Both packages use the official spelling (``mLSTMLayer``, ``mLSTMBlock``, ...); the same name
in the two packages is the same concept in the two architectures.
"""

from ._inputs import checked
from ._output import xLSTMOutput

__all__ = ["checked", "xLSTMOutput"]
