"""Configuration of the NeurIPS xLSTM language model (xLSTM[a:b]).

Frozen dataclasses, validated on construction: a bad value raises a ValueError
that names the field and the accepted values. ``xLSTMLMConfig.from_dict`` reads
the official ``dataclasses.asdict(xlstm.xLSTMLMModelConfig(...))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jax.numpy as jnp

from xlstm_jax._validation import check_bool, check_choice, check_int, check_number
from xlstm_jax.backends import MLSTM_BACKENDS, SLSTM_BACKENDS
from xlstm_jax.nn import REMAT_POLICIES

from .._dtypes import dtype_name

ACT_FNS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")
SLSTM_BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
SLSTM_RECURRENT_INITS = ("zeros", "standard")


def up_projection_dim(factor: float, dim: int, multiple_of: int, round_up: bool) -> int:
    """``factor * dim`` rounded to a multiple of ``multiple_of`` (official ``UpProjConfigMixin``)."""
    multiplier = factor * dim / multiple_of
    return int((math.ceil(multiplier) if round_up else math.floor(multiplier)) * multiple_of)


_MODEL_WIDE_DOC = """
    Model-wide attributes (an ``xLSTMLMConfig`` sets them from its own fields; set them only for a
    layer or block used on its own):
      embedding_dim: model width D (required on its own; None inside an ``xLSTMLMConfig``).
      num_blocks: depth of the model it belongs to; only scales the init of the output projection.
      dtype, param_dtype: compute and parameter dtypes (see ``xLSTMLMConfig``)."""


@dataclass(frozen=True)
class mLSTMLayerConfig:  # noqa: N801 (the official name)
    """The pre-up-projection mLSTM layer and its block (official ``mLSTMLayerConfig``).

    Attributes:
      num_heads: cell heads NH; must divide the inner dim.
      conv1d_kernel_size: causal depthwise conv width K >= 1 (the official layer breaks for K < 2).
      qkv_proj_blocksize: block size of the block-diagonal q/k/v projections.
      proj_factor, round_proj_up_dim_up, round_proj_up_to_multiple_of: inner dim
        ``I = round(proj_factor * D)`` to a multiple (up or down).
      bias, backend, chunk_size: model-wide (``xLSTMLMConfig``'s ``bias``, ``backend``, ``chunk_size``).
    """

    num_heads: int = 4
    conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    proj_factor: float = 2.0
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64
    embedding_dim: int | None = None
    num_blocks: int = 1
    bias: bool = False
    backend: str = "chunkwise"
    chunk_size: int | str = 64
    dtype: str = "float32"
    param_dtype: str = "float32"

    __doc__ += _MODEL_WIDE_DOC

    def __post_init__(self):
        check_int("mlstm.num_heads", self.num_heads, 1)
        check_int("mlstm.conv1d_kernel_size", self.conv1d_kernel_size, 1)
        check_int("mlstm.qkv_proj_blocksize", self.qkv_proj_blocksize, 1)
        check_number("mlstm.proj_factor", self.proj_factor, 0, low_open=True)
        check_bool("mlstm.round_proj_up_dim_up", self.round_proj_up_dim_up)
        check_int("mlstm.round_proj_up_to_multiple_of", self.round_proj_up_to_multiple_of, 1)
        check_bool("mlstm.bias", self.bias)
        check_choice("mlstm.backend", self.backend, MLSTM_BACKENDS)
        _check_chunk_size("mlstm.chunk_size", self.chunk_size)
        _check_model_wide(self, "mlstm")
        if self.embedding_dim is not None:
            self.check_dims(self.embedding_dim)

    def inner_dim(self, embedding_dim: int) -> int:
        return up_projection_dim(
            self.proj_factor, embedding_dim, self.round_proj_up_to_multiple_of, self.round_proj_up_dim_up
        )

    def check_dims(self, d: int) -> None:
        """The inner dim for width ``d`` is non-empty and split evenly into heads and q/k/v blocks."""
        inner = self.inner_dim(d)
        if inner < 1:
            raise ValueError(f"mlstm.proj_factor={self.proj_factor} gives an empty inner dim for D={d}")
        if inner % self.num_heads:
            raise ValueError(f"mlstm.num_heads={self.num_heads} must divide the mLSTM inner dim {inner}")
        if inner % self.qkv_proj_blocksize:
            raise ValueError(
                f"mlstm.qkv_proj_blocksize={self.qkv_proj_blocksize} must divide the mLSTM inner dim {inner}"
            )


@dataclass(frozen=True)
class sLSTMLayerConfig:  # noqa: N801 (the official name)
    """The sLSTM layer (official ``sLSTMLayerConfig``; hidden size = embedding dim).

    Attributes:
      num_heads: heads NH of the block-diagonal gates and recurrence; must divide D.
      conv1d_kernel_size: causal conv width for the i/f gate branch; 0 disables it.
      group_norm_weight: learnable (1 + w) scale of the per-head output norm.
      bias_init: forget-gate bias init, one of ``SLSTM_BIAS_INITS``.
      recurrent_weight_init: ``"zeros"`` or ``"standard"`` (U(+-1/sqrt(D))).
      backend: model-wide (``xLSTMLMConfig.slstm_backend``), one of ``backends.SLSTM_BACKENDS``.
    """

    num_heads: int = 4
    conv1d_kernel_size: int = 4
    group_norm_weight: bool = True
    bias_init: str = "powerlaw_blockdependent"
    recurrent_weight_init: str = "zeros"
    embedding_dim: int | None = None
    num_blocks: int = 1
    backend: str = "scan"
    dtype: str = "float32"
    param_dtype: str = "float32"

    __doc__ += _MODEL_WIDE_DOC

    def __post_init__(self):
        check_int("slstm.num_heads", self.num_heads, 1)
        check_int("slstm.conv1d_kernel_size", self.conv1d_kernel_size, 0)
        check_bool("slstm.group_norm_weight", self.group_norm_weight)
        check_choice("slstm.bias_init", self.bias_init, SLSTM_BIAS_INITS)
        check_choice("slstm.recurrent_weight_init", self.recurrent_weight_init, SLSTM_RECURRENT_INITS)
        check_choice("slstm.backend", self.backend, SLSTM_BACKENDS)
        _check_model_wide(self, "slstm")
        if self.embedding_dim is not None:
            self.check_dims(self.embedding_dim)

    def check_dims(self, d: int) -> None:
        """The heads split width ``d`` evenly (and into at least 2 features for the power-law init)."""
        if d % self.num_heads:
            raise ValueError(f"slstm.num_heads={self.num_heads} must divide embedding_dim={d}")
        if self.bias_init == "powerlaw_blockdependent" and d // self.num_heads < 2:
            raise ValueError(
                "slstm.bias_init='powerlaw_blockdependent' needs a head dim >= 2 "
                f"(embedding_dim={d}, slstm.num_heads={self.num_heads})"
            )


@dataclass(frozen=True)
class FeedForwardConfig:
    """The gated FFN of the sLSTM blocks (official ``FeedForwardConfig``, ``ff_type="ffn_gated"``)."""

    proj_factor: float = 1.3
    act_fn: str = "gelu"
    bias: bool = False
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64
    embedding_dim: int | None = None
    num_blocks: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    __doc__ += _MODEL_WIDE_DOC

    def __post_init__(self):
        check_number("feedforward.proj_factor", self.proj_factor, 0, low_open=True)
        check_choice("feedforward.act_fn", self.act_fn, ACT_FNS)
        check_bool("feedforward.bias", self.bias)
        check_bool("feedforward.round_proj_up_dim_up", self.round_proj_up_dim_up)
        check_int("feedforward.round_proj_up_to_multiple_of", self.round_proj_up_to_multiple_of, 1)
        _check_model_wide(self, "feedforward")
        if self.embedding_dim is not None:
            self.check_dims(self.embedding_dim)

    def hidden_dim(self, embedding_dim: int) -> int:
        return up_projection_dim(
            self.proj_factor, embedding_dim, self.round_proj_up_to_multiple_of, self.round_proj_up_dim_up
        )

    def check_dims(self, d: int) -> None:
        if self.hidden_dim(d) < 1:
            raise ValueError(f"feedforward.proj_factor={self.proj_factor} gives an empty FFN for D={d}")


def _check_model_wide(config, section: str) -> None:
    """Check (and canonicalize the dtypes of) the model-wide fields of a layer config."""
    if config.embedding_dim is not None:
        check_int(f"{section}.embedding_dim", config.embedding_dim, 1)
    check_int(f"{section}.num_blocks", config.num_blocks, 1)
    object.__setattr__(config, "dtype", dtype_name(f"{section}.dtype", config.dtype))
    object.__setattr__(config, "param_dtype", dtype_name(f"{section}.param_dtype", config.param_dtype))


def required_width(config, section: str) -> int:
    """``config.embedding_dim``, which a layer built on its own must be given."""
    if config.embedding_dim is None:
        raise ValueError(
            f"{section}.embedding_dim must be set for a layer or block built on its own "
            "(an xLSTMLMConfig sets it from its embedding_dim), got None"
        )
    return config.embedding_dim


def inherit(config, section: str, owner: str, **model_wide):
    """``config`` with its model-wide fields set to ``model_wide`` (the values of ``owner``'s config).

    A field the user set on ``config`` (not its default) to another value is refused: the model's
    value would replace it silently.
    """
    conflicts = []
    for name, value in model_wide.items():
        own, default = getattr(config, name), type(config).__dataclass_fields__[name].default
        if own != default and own != value:
            conflicts.append(f"{section}.{name}={own!r} differs from {owner}'s {name}={value!r}")
    if conflicts:
        raise ValueError("; ".join(conflicts) + f" (inside a model, set them on {owner})")
    return replace(config, **model_wide)


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
      chunk_size: chunk length of the chunkwise form, or ``"auto"``: chosen per platform when the
        step is traced (``backends.chunk_size_for``: 256 on a TPU, 64 elsewhere).
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
    chunk_size: int | str = 64
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
        _check_chunk_size("chunk_size", self.chunk_size)
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
        if self.slstm_at and self.slstm is None:
            raise ValueError(f"slstm_at={list(self.slstm_at)} places sLSTM blocks, but slstm=None")
        if len(self.slstm_at) < self.num_blocks and self.mlstm is None:
            raise ValueError(f"slstm_at={list(self.slstm_at)} leaves mLSTM blocks, but mlstm=None; use slstm_at='all'")
        if self.mlstm is not None and len(self.slstm_at) < self.num_blocks:
            self.mlstm_config()
        if self.slstm is not None and self.slstm_at:
            self.slstm_config()
            if self.feedforward is not None:
                self.feedforward_config()

    def _model_wide(self) -> dict[str, Any]:
        return dict(
            embedding_dim=self.embedding_dim, num_blocks=self.num_blocks, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def mlstm_config(self) -> mLSTMLayerConfig:
        """``mlstm`` completed with this model's width, depth, bias, backend, chunk size and dtypes."""
        return inherit(
            self.mlstm, "mlstm", "xLSTMLMConfig", **self._model_wide(), bias=self.bias, backend=self.backend,
            chunk_size=self.chunk_size,
        )  # fmt: skip

    def slstm_config(self) -> sLSTMLayerConfig:
        """``slstm`` completed with this model's width, depth, sLSTM backend and dtypes."""
        return inherit(self.slstm, "slstm", "xLSTMLMConfig", **self._model_wide(), backend=self.slstm_backend)

    def feedforward_config(self) -> FeedForwardConfig:
        """``feedforward`` completed with this model's width, depth and dtypes."""
        return inherit(self.feedforward, "feedforward", "xLSTMLMConfig", **self._model_wide())

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


def _check_chunk_size(field: str, value) -> None:
    """A chunk length: an integer >= 1, or "auto" (chosen per platform by ``backends.chunk_size_for``)."""
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{field} must be an integer >= 1 or 'auto', got {value!r}")
