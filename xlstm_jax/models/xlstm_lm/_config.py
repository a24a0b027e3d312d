"""Configuration of the NeurIPS xLSTM language model (xLSTM[a:b]).

Frozen dataclasses, validated on construction: a bad value raises a ValueError
that names the field and the accepted values. ``xLSTMLMConfig.from_dict`` reads
the official ``dataclasses.asdict(xlstm.xLSTMLMModelConfig(...))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp

from xlstm_jax.backends import MLSTM_BACKENDS, SLSTM_BACKENDS
from xlstm_jax.nn import REMAT_POLICIES

from .._validate import check_bool, check_choice, check_int, check_positive, dtype_name

ACT_FNS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")
SLSTM_BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
SLSTM_RECURRENT_INITS = ("zeros", "standard")


def up_projection_dim(factor: float, dim: int, multiple_of: int, round_up: bool) -> int:
    """``factor * dim`` rounded to a multiple of ``multiple_of`` (official ``UpProjConfigMixin``)."""
    multiplier = factor * dim / multiple_of
    return int((math.ceil(multiplier) if round_up else math.floor(multiplier)) * multiple_of)


@dataclass(frozen=True)
class mLSTMLayerConfig:
    """The pre-up-projection mLSTM layer (official ``mLSTMLayerConfig``).

    Attributes:
      num_heads: cell heads NH; must divide the inner dim.
      conv1d_kernel_size: causal depthwise conv width K >= 1 (the official layer breaks for K < 2).
      qkv_proj_blocksize: block size of the block-diagonal q/k/v projections.
      proj_factor, round_proj_up_dim_up, round_proj_up_to_multiple_of: inner dim
        ``I = round(proj_factor * D)`` to a multiple (up or down).
    """

    num_heads: int = 4
    conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    proj_factor: float = 2.0
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64

    def __post_init__(self):
        check_int("mlstm.num_heads", self.num_heads, 1)
        check_int("mlstm.conv1d_kernel_size", self.conv1d_kernel_size, 1)
        check_int("mlstm.qkv_proj_blocksize", self.qkv_proj_blocksize, 1)
        check_positive("mlstm.proj_factor", self.proj_factor)
        check_bool("mlstm.round_proj_up_dim_up", self.round_proj_up_dim_up)
        check_int("mlstm.round_proj_up_to_multiple_of", self.round_proj_up_to_multiple_of, 1)

    def inner_dim(self, embedding_dim: int) -> int:
        return up_projection_dim(
            self.proj_factor, embedding_dim, self.round_proj_up_to_multiple_of, self.round_proj_up_dim_up
        )


@dataclass(frozen=True)
class sLSTMLayerConfig:
    """The sLSTM layer (official ``sLSTMLayerConfig``; hidden size = embedding dim).

    Attributes:
      num_heads: heads NH of the block-diagonal gates and recurrence; must divide D.
      conv1d_kernel_size: causal conv width for the i/f gate branch; 0 disables it.
      group_norm_weight: learnable (1 + w) scale of the per-head output norm.
      bias_init: forget-gate bias init, one of ``SLSTM_BIAS_INITS``.
      recurrent_weight_init: ``"zeros"`` or ``"standard"`` (U(+-1/sqrt(D))).
    """

    num_heads: int = 4
    conv1d_kernel_size: int = 4
    group_norm_weight: bool = True
    bias_init: str = "powerlaw_blockdependent"
    recurrent_weight_init: str = "zeros"

    def __post_init__(self):
        check_int("slstm.num_heads", self.num_heads, 1)
        check_int("slstm.conv1d_kernel_size", self.conv1d_kernel_size, 0)
        check_bool("slstm.group_norm_weight", self.group_norm_weight)
        check_choice("slstm.bias_init", self.bias_init, SLSTM_BIAS_INITS)
        check_choice("slstm.recurrent_weight_init", self.recurrent_weight_init, SLSTM_RECURRENT_INITS)


@dataclass(frozen=True)
class FeedForwardConfig:
    """The gated FFN of the sLSTM blocks (official ``FeedForwardConfig``, ``ff_type="ffn_gated"``)."""

    proj_factor: float = 1.3
    act_fn: str = "gelu"
    bias: bool = False
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64

    def __post_init__(self):
        check_positive("feedforward.proj_factor", self.proj_factor)
        check_choice("feedforward.act_fn", self.act_fn, ACT_FNS)
        check_bool("feedforward.bias", self.bias)
        check_bool("feedforward.round_proj_up_dim_up", self.round_proj_up_dim_up)
        check_int("feedforward.round_proj_up_to_multiple_of", self.round_proj_up_to_multiple_of, 1)

    def hidden_dim(self, embedding_dim: int) -> int:
        return up_projection_dim(
            self.proj_factor, embedding_dim, self.round_proj_up_to_multiple_of, self.round_proj_up_dim_up
        )


@dataclass(frozen=True)
class xLSTMLMConfig:  # noqa: N801 (the official name)
    """xLSTM[a:b]: a stack of mLSTM and sLSTM blocks between a token embedding and an LM head.

    Attributes:
      vocab_size: V.
      embedding_dim: model width D.
      num_blocks: number of residual blocks.
      mlstm: layer config of the mLSTM blocks (None: all blocks are sLSTM blocks).
      slstm: layer config of the sLSTM blocks (None: no sLSTM blocks).
      feedforward: the FFN inside each sLSTM block (None: sLSTM blocks without FFN).
        mLSTM blocks never have an FFN in this architecture.
      slstm_at: indices of the sLSTM blocks, or ``"all"``; stored as a sorted tuple.
      add_post_blocks_norm: LayerNorm after the last block.
      bias: biases in the mLSTM layers' projections (proj_up, q/k/v, proj_down).
      tie_weights: the LM head reuses the token embedding.
      backend: mLSTM form for sequences, one of ``backends.MLSTM_BACKENDS``.
      chunk_size: chunk length of the chunkwise form.
      slstm_backend: sLSTM implementation, one of ``backends.SLSTM_BACKENDS`` (``scan`` is the
        XLA ``lax.scan``; ``auto`` picks the fused Pallas kernel on TPU and GPU).
      dtype: compute dtype of the matmuls; gates, norms, recurrent states and the
        residual stream stay float32.
      param_dtype: storage dtype of the parameters.
      scan_blocks: run each stretch of consecutive same-type blocks as one ``lax.scan``
        (compile time independent of depth). The parameters stay stored per block
        (one checkpoint layout for both settings) and are stacked inside the call.
      remat: ``jax.checkpoint`` each block (recompute activations in the backward pass).
    """

    vocab_size: int
    embedding_dim: int = 128
    num_blocks: int = 1
    mlstm: mLSTMLayerConfig | None = field(default_factory=mLSTMLayerConfig)
    slstm: sLSTMLayerConfig | None = None
    feedforward: FeedForwardConfig | None = field(default_factory=FeedForwardConfig)
    slstm_at: tuple[int, ...] | str = ()
    add_post_blocks_norm: bool = True
    bias: bool = False
    tie_weights: bool = False
    backend: str = "chunkwise"
    chunk_size: int = 64
    slstm_backend: str = "scan"
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_blocks: bool = False
    remat: bool = False
    remat_policy: str = "full"  # with remat: full | dots | dots_no_batch (xlstm_jax.nn.REMAT_POLICIES)

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, 1)
        check_int("embedding_dim", self.embedding_dim, 1)
        check_int("num_blocks", self.num_blocks, 1)
        for name, kind in (
            ("mlstm", mLSTMLayerConfig),
            ("slstm", sLSTMLayerConfig),
            ("feedforward", FeedForwardConfig),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}")
        for name in ("add_post_blocks_norm", "bias", "tie_weights", "scan_blocks", "remat"):
            check_bool(name, getattr(self, name))
        check_choice("remat_policy", self.remat_policy, tuple(REMAT_POLICIES))
        check_choice("backend", self.backend, MLSTM_BACKENDS)
        check_choice("slstm_backend", self.slstm_backend, SLSTM_BACKENDS)
        check_int("chunk_size", self.chunk_size, 1)
        object.__setattr__(self, "dtype", dtype_name("dtype", self.dtype))
        object.__setattr__(self, "param_dtype", dtype_name("param_dtype", self.param_dtype))
        object.__setattr__(self, "slstm_at", self._normalized_slstm_at())
        self._check_layers()

    def _normalized_slstm_at(self) -> tuple[int, ...]:
        at = self.slstm_at
        if at == "all":
            return tuple(range(self.num_blocks))
        if isinstance(at, str) or not all(isinstance(i, int) and not isinstance(i, bool) for i in at):
            raise ValueError(f"slstm_at={at!r} must be 'all' or a sequence of block indices")
        bad = [i for i in at if not 0 <= i < self.num_blocks]
        if bad:
            raise ValueError(f"slstm_at={list(at)}: indices {bad} are outside 0..{self.num_blocks - 1} (num_blocks)")
        if len(set(at)) != len(at):
            raise ValueError(f"slstm_at={list(at)} lists a block twice")
        return tuple(sorted(at))

    def _check_layers(self) -> None:
        d = self.embedding_dim
        if self.slstm_at and self.slstm is None:
            raise ValueError(f"slstm_at={list(self.slstm_at)} places sLSTM blocks, but slstm=None")
        if len(self.slstm_at) < self.num_blocks and self.mlstm is None:
            raise ValueError(f"slstm_at={list(self.slstm_at)} leaves mLSTM blocks, but mlstm=None; use slstm_at='all'")
        if self.mlstm is not None and len(self.slstm_at) < self.num_blocks:
            inner = self.mlstm.inner_dim(d)
            if inner < 1:
                raise ValueError(f"mlstm.proj_factor={self.mlstm.proj_factor} gives an empty inner dim for D={d}")
            if inner % self.mlstm.num_heads:
                raise ValueError(f"mlstm.num_heads={self.mlstm.num_heads} must divide the mLSTM inner dim {inner}")
            if inner % self.mlstm.qkv_proj_blocksize:
                raise ValueError(
                    f"mlstm.qkv_proj_blocksize={self.mlstm.qkv_proj_blocksize} must divide the mLSTM inner dim {inner}"
                )
        if self.slstm is not None and self.slstm_at:
            if d % self.slstm.num_heads:
                raise ValueError(f"slstm.num_heads={self.slstm.num_heads} must divide embedding_dim={d}")
            if self.slstm.bias_init == "powerlaw_blockdependent" and d // self.slstm.num_heads < 2:
                raise ValueError(
                    "slstm.bias_init='powerlaw_blockdependent' needs a head dim >= 2 "
                    f"(embedding_dim={d}, slstm.num_heads={self.slstm.num_heads})"
                )
            if self.feedforward is not None and self.feedforward.hidden_dim(d) < 1:
                raise ValueError(f"feedforward.proj_factor={self.feedforward.proj_factor} gives an empty FFN for D={d}")

    @property
    def block_types(self) -> tuple[str, ...]:
        """``"m"`` or ``"s"`` for each block."""
        return tuple("s" if i in self.slstm_at else "m" for i in range(self.num_blocks))

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> xLSTMLMConfig:
        """From the official config dict (``dataclasses.asdict(xLSTMLMModelConfig)``).

        Missing keys take the official defaults. ``overrides`` (and keys of ``d``) may
        set this port's own fields: backend, chunk_size, slstm_backend, dtype, param_dtype,
        scan_blocks, remat. See ``_official.py`` for the keys that are checked or ignored.
        """
        from ._official import config_kwargs

        unknown = sorted(set(overrides) - set(_OWN_FIELDS))
        if unknown:
            raise ValueError(f"overrides {unknown} are not fields of this port; choose from {_OWN_FIELDS}")
        return cls(**{**config_kwargs(d, own_fields=_OWN_FIELDS), **overrides})


_OWN_FIELDS = ("backend", "chunk_size", "slstm_backend", "dtype", "param_dtype", "scan_blocks", "remat", "remat_policy")
