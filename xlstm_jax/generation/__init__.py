"""Text generation for the xLSTM models (both architectures) and its configuration."""

from ._generate import Generation, generate, stream
from .config import GenerationConfig

__all__ = ["Generation", "GenerationConfig", "generate", "stream"]
