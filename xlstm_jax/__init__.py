"""xlstm-jax: xLSTM (sLSTM and mLSTM cells, NeurIPS xLSTM and xLSTM-7B) in JAX."""

from xlstm_jax.convert import from_pretrained, save_pretrained
from xlstm_jax.generation import Generation, GenerationConfig, generate, stream
from xlstm_jax.tokenizer import load_tokenizer

__version__ = "0.1.0"
__all__ = [
    "Generation",
    "GenerationConfig",
    "from_pretrained",
    "generate",
    "load_tokenizer",
    "save_pretrained",
    "stream",
]
