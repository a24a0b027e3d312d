"""xlstm-jax: xLSTM (sLSTM and mLSTM cells, NeurIPS xLSTM and xLSTM-7B) in JAX."""

__version__ = "0.1.0"
