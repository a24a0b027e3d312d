"""xlstm-jax trainer."""
