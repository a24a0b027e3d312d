"""xlstm-jax: xLSTM (sLSTM and mLSTM cells, NeurIPS xLSTM and xLSTM-7B) in JAX."""

from xlstm_jax.convert import from_pretrained, save_pretrained
from xlstm_jax.generation import Generation, generate

__version__ = "0.1.0"
__all__ = ["Generation", "from_pretrained", "generate", "save_pretrained"]
