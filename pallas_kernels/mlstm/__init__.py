"""Chunkwise mLSTM kernels (TPU Mosaic, GPU)."""
