"""Block sizes of the fused sLSTM kernels, validated, with per-platform defaults."""

from __future__ import annotations

import dataclasses

PLATFORMS = ("tpu", "gpu")
RECURRENT_DTYPES = ("float32", "bfloat16")


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class SLSTMBlocks:
    """Tiles of the fused sLSTM kernels: one kernel instance per (head, batch tile) runs the whole
    time loop with that head's recurrent weights resident on chip.

    Attributes:
      block_b: batch rows per kernel instance (the M of the per-step (block_b, DH) x (DH, DH) matmuls).
        The batch is padded to a multiple of it.
      block_t: tokens per step of the sequential time axis of the grid (TPU): the gate and state
        tiles of block_t tokens are pipelined through VMEM while the state stays in VMEM.
        The sequence is padded to a multiple of it (padded steps leave the state unchanged).
        Ignored on GPU, where one program walks the whole sequence.
      block_dh: GPU only: the head dim is processed in column tiles of this width (a power of 2
        >= 16 dividing DH): the state lives as DH / block_dh tiles and the recurrent matmul as
        (block_b, block_dh) x (block_dh, block_dh) dots, which bounds registers and shared memory
        at any DH. TPU kernels take the whole head dim.
      unroll: time steps unrolled in the kernel's inner loop.
      num_warps: GPU (Triton) warps per program; ignored on TPU.
      recurrent_dtype: operand dtype of the recurrent matmuls (h and R): "float32" (IEEE float32,
        exactly the scan's math) or "bfloat16" (tensor cores / the MXU's native input, float32
        accumulation; the precision of the official CUDA sLSTM kernel's default dtype, and its
        numbers differ from the scan's at the bfloat16 level).
      resident_weights: GPU only: load the head's (4, DH, DH) recurrent weights once, before the time
        loop (registers / on-chip memory as Triton allocates them), instead of once per step from L2.
        TPU kernels always keep them in VMEM for the whole sequence.
    """

    block_b: int = 8
    block_t: int = 32
    block_dh: int = 64
    unroll: int = 1
    num_warps: int = 4
    resident_weights: bool = True
    recurrent_dtype: str = "float32"

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "recurrent_dtype":
                if value not in RECURRENT_DTYPES:
                    raise ValueError(f"SLSTMBlocks.recurrent_dtype must be one of {RECURRENT_DTYPES}, got {value!r}")
            elif f.name == "resident_weights":
                if not isinstance(value, bool):
                    raise ValueError(f"SLSTMBlocks.resident_weights must be a bool, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SLSTMBlocks.{f.name} must be a positive integer, got {value!r}")

    def validate_for(self, platform: str, dh: int) -> SLSTMBlocks:
        """Check the tiles against a platform and the head dim; returns self."""
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
        if platform == "tpu":  # Mosaic: the second-minor dim of a block is a multiple of 8
            if self.block_b % 8:
                raise ValueError(f"SLSTMBlocks.block_b={self.block_b} must be a multiple of 8 on TPU")
        else:  # Triton: power-of-2 tensors, and tl.dot needs every dim >= 16
            if not _pow2(self.block_b) or self.block_b < 16:
                raise ValueError(f"SLSTMBlocks.block_b={self.block_b} must be a power of 2 >= 16 on GPU (Triton)")
            if dh % 16:
                raise ValueError(f"the head dim DH={dh} must be a multiple of 16 for the GPU (Triton) sLSTM kernel")
            if not _pow2(self.block_dh) or self.block_dh < 16:
                raise ValueError(f"SLSTMBlocks.block_dh={self.block_dh} must be a power of 2 >= 16 on GPU (Triton)")
            if dh % self.block_dh:
                raise ValueError(
                    f"the head dim DH={dh} must be a multiple of SLSTMBlocks.block_dh={self.block_dh} "
                    "for the GPU (Triton) sLSTM kernel"
                )
            if not _pow2(self.num_warps):
                raise ValueError(f"SLSTMBlocks.num_warps={self.num_warps} must be a power of 2")
        return self


def _largest_tile(dh: int, cap: int = 64) -> int:
    """The largest power of 2 <= cap dividing dh (at least 1; ``validate_for`` rejects < 16)."""
    tile = cap
    while tile > 1 and dh % tile:
        tile //= 2
    return tile


def default_blocks(platform: str, batch: int, dh: int) -> SLSTMBlocks:
    """Production defaults.

    TPU: batch tiles of up to 64 rows (a multiple of 8: more rows per step cost the MXU almost nothing,
    the recurrence is latency-bound), and time tiles of 8 to 128 tokens such that a (block_t, block_b, DH)
    float32 tile is at most 256 KiB (the backward kernel double-buffers 13 of them: ~7 MiB of VMEM).
    GPU: batch tiles of 16 rows (Triton's smallest dot; more programs run on more SMs), head-dim tiles
    of the largest power of 2 <= 64 dividing DH, and 8 warps (benchmarks/RESULTS.md: compiled for
    sm_90, untiled (DH, DH) float32 weights spilled 10-60 KB per thread at DH=128 and needed 272 KiB
    of shared memory at DH=256; 4 warps spilled at DH=64). The weights are hoisted out of the time
    loop while they fit in the register file (4 * DH * DH float32 <= 64 KiB, i.e. DH <= 64), else
    re-read from L2 every step.
    """
    if platform == "tpu":
        block_b = min(-(-batch // 8) * 8, 64)
        block_t = max(8, min(128, (64 * 1024) // (block_b * max(dh, 128))))
        blocks = SLSTMBlocks(block_b=block_b, block_t=block_t)
    elif platform == "gpu":
        resident = 4 * dh * dh * 4 <= 64 * 1024
        blocks = SLSTMBlocks(block_b=16, block_dh=_largest_tile(dh), num_warps=8, resident_weights=resident)
    else:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    return blocks.validate_for(platform, dh)
