"""Fused Pallas kernels for the xLSTM cells (TPU Mosaic and GPU), each behind a ``jax.custom_vjp``
with exactly the contract of its pure-JAX twin in ``xlstm_jax.ops``, which the tests compare it to.

Nothing here imports model code. Models reach these kernels only through
``xlstm_jax.backends``, which imports them lazily.
"""
