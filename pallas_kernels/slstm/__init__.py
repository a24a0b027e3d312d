"""Fused sLSTM kernels (TPU Mosaic, GPU)."""
