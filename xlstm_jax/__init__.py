"""xlstm-jax: xLSTM (sLSTM and mLSTM cells, NeurIPS xLSTM and xLSTM-7B) in JAX and Flax NNX.

The public names (one line each in ``docs/api.md``)::

    import xlstm_jax

    xlstm_jax.xLSTMLMModel, xlstm_jax.xLSTMLMConfig      # NeurIPS xLSTM[a:b] language model
    xlstm_jax.mLSTMBlock, xlstm_jax.sLSTMBlock, ...      # its layers and blocks (official ``xlstm`` names)
    xlstm_jax.xLSTMLarge, xlstm_jax.xLSTMLargeConfig     # xLSTM-7B
    xlstm_jax.xlstm_large.mLSTMBlock, ...                # its layers and blocks (``xlstm.xlstm_large`` names)
    xlstm_jax.ops                                        # the pure cells (mlstm_chunkwise, slstm_scan, ...)
    xlstm_jax.generate, xlstm_jax.from_pretrained, xlstm_jax.save_pretrained
    xlstm_jax.load_run, xlstm_jax.fit                    # the trainer, imported on first use

As in the official package, the top level carries the NeurIPS architecture's layer names and
``xlstm_jax.xlstm_large`` the xLSTM-7B ones (the same names: one convention for both).
"""

from __future__ import annotations

import importlib

from xlstm_jax import ops
from xlstm_jax._validation import CheckpointError
from xlstm_jax.convert import from_pretrained, save_pretrained
from xlstm_jax.generation import Generation, GenerationConfig, generate, stream
from xlstm_jax.models import checked, xlstm_large, xlstm_lm, xLSTMOutput
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from xlstm_jax.models.xlstm_lm import (
    FeedForwardConfig,
    GatedFeedForward,
    mLSTMBlock,
    mLSTMBlockState,
    mLSTMLayer,
    mLSTMLayerConfig,
    sLSTMBlock,
    sLSTMBlockState,
    sLSTMLayer,
    sLSTMLayerConfig,
    xLSTMLMConfig,
    xLSTMLMModel,
)
from xlstm_jax.tokenizer import load_tokenizer

__version__ = "0.1.0"

# Resolved on first use, so that ``import xlstm_jax`` does not import the trainer (optax, orbax, grain).
_LAZY = {"fit": "xlstm_jax.train", "load_run": "xlstm_jax.train"}

__all__ = [
    "CheckpointError",
    "FeedForwardConfig",
    "GatedFeedForward",
    "Generation",
    "GenerationConfig",
    "checked",
    "fit",
    "from_pretrained",
    "generate",
    "load_run",
    "load_tokenizer",
    "mLSTMBlock",
    "mLSTMBlockState",
    "mLSTMLayer",
    "mLSTMLayerConfig",
    "ops",
    "sLSTMBlock",
    "sLSTMBlockState",
    "sLSTMLayer",
    "sLSTMLayerConfig",
    "save_pretrained",
    "stream",
    "xLSTMLMConfig",
    "xLSTMLMModel",
    "xLSTMLarge",
    "xLSTMLargeConfig",
    "xLSTMOutput",
    "xlstm_large",
    "xlstm_lm",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'xlstm_jax' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(
            f"xlstm_jax.{name} is provided by {_LAZY[name]}, which does not define {name!r} in this installation"
        ) from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
