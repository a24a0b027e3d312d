"""Block sizes of the chunkwise mLSTM kernels, validated, with per-platform defaults."""

from __future__ import annotations

import dataclasses

PLATFORMS = ("tpu", "gpu")


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class MLSTMBlocks:
    """Tiles of the chunkwise mLSTM kernels.

    Attributes:
      chunk_size: L, tokens per chunk: the inter-chunk pass keeps one (DHQK, DHV) memory per chunk,
        the intra-chunk pass attends within it.
      block_q: query tokens per tile of the intra-chunk pass (divides chunk_size).
      block_kv: key/value tokens per tile of the intra-chunk pass (divides chunk_size).
      block_dqk: DHQK tile of the memory in the inter-chunk pass.
      block_dv: DHV tile of the memory and of the outputs.
      num_warps, num_stages: GPU (Triton) launch parameters; ignored on TPU.
    """

    chunk_size: int = 64
    block_q: int = 64
    block_kv: int = 64
    block_dqk: int = 64
    block_dv: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MLSTMBlocks.{f.name} must be a positive integer, got {value!r}")
        for name in ("block_q", "block_kv"):
            if self.chunk_size % getattr(self, name):
                raise ValueError(f"MLSTMBlocks.{name}={getattr(self, name)} must divide chunk_size={self.chunk_size}")

    def validate_for(self, platform: str, dhqk: int, dhv: int) -> MLSTMBlocks:
        """Check the tiles against a platform and head dims; returns self."""
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
        for name, dim in (("block_dqk", dhqk), ("block_dv", dhv)):
            if dim % getattr(self, name):
                raise ValueError(f"MLSTMBlocks.{name}={getattr(self, name)} must divide the head dim {dim}")
        if platform == "gpu":
            for name in ("chunk_size", "block_q", "block_kv", "block_dqk", "block_dv"):
                if not _pow2(getattr(self, name)):
                    raise ValueError(f"MLSTMBlocks.{name}={getattr(self, name)} must be a power of 2 on GPU (Triton)")
        else:  # Mosaic: the last two dims of a block are multiples of (8, 128) or the whole array dim
            for name in ("chunk_size", "block_q", "block_kv"):
                if getattr(self, name) % 8:
                    raise ValueError(f"MLSTMBlocks.{name}={getattr(self, name)} must be a multiple of 8 on TPU")
            for name, dim in (("block_dqk", dhqk), ("block_dv", dhv)):
                tile = getattr(self, name)
                if tile != dim and tile % 128:
                    raise ValueError(f"MLSTMBlocks.{name}={tile} must be a multiple of 128 or all of {dim} on TPU")
        return self


def default_blocks(platform: str, dhqk: int, dhv: int, chunk_size: int | None = None) -> MLSTMBlocks:
    """Production defaults: TPU tiles of 128 where the head dims allow (MXU), GPU tiles of 64
    (TFLA's intra-chunk tiles), chunks of 128 (TPU) and 64 (GPU) unless given."""
    if platform == "tpu":
        chunk = chunk_size or 128
        tile = lambda d: 128 if d % 128 == 0 else d
        blocks = MLSTMBlocks(chunk, min(chunk, 128), min(chunk, 128), tile(dhqk), tile(dhv))
    elif platform == "gpu":
        chunk = chunk_size or 64
        tile = lambda d, cap: min(cap, d) if d & (d - 1) == 0 else d
        blocks = MLSTMBlocks(chunk, min(chunk, 64), min(chunk, 64), tile(dhqk, 64), tile(dhv, 128))
    else:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    return blocks.validate_for(platform, dhqk, dhv)
