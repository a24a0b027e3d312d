"""Block sizes of the fused sLSTM kernels, validated, with per-platform defaults."""

from __future__ import annotations

import dataclasses

PLATFORMS = ("tpu", "gpu")
# Triton stages each gate's (DH, DH) float32 weight tile in shared memory: DH=256 compiles to 272 KiB
# per program for sm_90, over the H100's 227 KiB; DH=128 to 72 KiB (benchmarks/gpu_compile_report.py).
GPU_MAX_DH = 128


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
      unroll: time steps unrolled in the kernel's inner loop.
      num_warps: GPU (Triton) warps per program; ignored on TPU.
      resident_weights: GPU only: load the head's (4, DH, DH) recurrent weights once, before the time
        loop (registers / on-chip memory as Triton allocates them), instead of once per step from L2.
        TPU kernels always keep them in VMEM for the whole sequence.
    """

    block_b: int = 8
    block_t: int = 32
    unroll: int = 1
    num_warps: int = 4
    resident_weights: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "resident_weights":
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
            if not _pow2(dh) or dh < 16:
                raise ValueError(f"the head dim DH={dh} must be a power of 2 >= 16 for the GPU (Triton) sLSTM kernel")
            if dh > GPU_MAX_DH:
                raise ValueError(
                    f"the head dim DH={dh} is above {GPU_MAX_DH} for the GPU (Triton) sLSTM kernel: a gate's "
                    f"({dh}, {dh}) float32 weight tile does not fit in an H100's shared memory"
                )
            if not _pow2(self.num_warps):
                raise ValueError(f"SLSTMBlocks.num_warps={self.num_warps} must be a power of 2")
        return self


def default_blocks(platform: str, batch: int, dh: int) -> SLSTMBlocks:
    """Production defaults.

    TPU: batch tiles of up to 64 rows (a multiple of 8: more rows per step cost the MXU almost nothing,
    the recurrence is latency-bound), and time tiles of 8 to 128 tokens such that a (block_t, block_b, DH)
    float32 tile is at most 256 KiB (the backward kernel double-buffers 13 of them: ~7 MiB of VMEM).
    GPU: batch tiles of 16 rows (Triton's smallest dot; more programs run on more SMs) and 8 warps
    (compiled for sm_90, 4 warps spill 384-468 bytes per thread at DH=64, 8 warps none:
    benchmarks/gpu_compile_report.py); the weights are hoisted out of the time loop while they fit
    in the register file (4 * DH * DH float32 <= 64 KiB, i.e. DH <= 64), else re-read from L2 every
    step. DH is at most ``GPU_MAX_DH``.
    """
    if platform == "tpu":
        block_b = min(-(-batch // 8) * 8, 64)
        block_t = max(8, min(128, (64 * 1024) // (block_b * max(dh, 128))))
        blocks = SLSTMBlocks(block_b=block_b, block_t=block_t)
    elif platform == "gpu":
        blocks = SLSTMBlocks(block_b=16, num_warps=8, resident_weights=4 * dh * dh * 4 <= 64 * 1024)
    else:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    return blocks.validate_for(platform, dh)
