"""Configuration of the xLSTM-7B architecture (official ``xlstm.xlstm_large.xLSTMLargeConfig``).

A frozen dataclass, validated on construction: a bad value raises a ValueError
that names the field and the accepted values. ``xLSTMLargeConfig.from_dict``
reads ``dataclasses.asdict`` of the official config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from xlstm_jax._validation import check_bool, check_choice, check_int, check_number
from xlstm_jax.backends import MLSTM_BACKENDS
from xlstm_jax.nn import REMAT_POLICIES

from .._dtypes import dtype_name

WEIGHT_MODES = ("single", "fused")

# Official keys that choose *how* the official code runs, not *what* it computes.
# ``from_dict`` checks them and drops them:
#   chunkwise_kernel, sequence_kernel, step_kernel, mode: every non-"siging" kernel and every
#     mode compute the same function; here ``backend`` picks the form, any S works, and a
#     state is returned on request (``return_state``). The "siging" kernels are a different
#     cell (sigmoid input gate, no max-state) and are rejected.
#   return_last_states: chosen per call (``model(ids, return_state=True)``).
#   autocast_kernel_dtype: the cell always computes in float32.
#   inference_state_dtype: recurrent states are always float32.
#   norm_reduction_force_float32: norms always reduce in float32 (the official default
#     True); False only lowers the precision of bfloat16 runs.
OFFICIAL_CHUNKWISE_KERNELS = (
    "chunkwise--native_autograd",
    "chunkwise--native_custbw",
    "chunkwise--triton_limit_chunk",
    "chunkwise--triton_xl_chunk",
    "parallel--native_autograd",
    "parallel--native_custbw",
    "parallel--native_stablef_autograd",
    "parallel--native_stablef_custbw",
    "parallel--triton_limit_headdim",
)
OFFICIAL_RUNTIME_KEYS = {
    "chunkwise_kernel": OFFICIAL_CHUNKWISE_KERNELS,
    "sequence_kernel": ("native_sequence__native", "native_sequence__triton"),
    "step_kernel": ("native", "triton"),
    "mode": ("train", "train_with_padding", "inference"),
    "return_last_states": (True, False),
    "autocast_kernel_dtype": ("float32", "bfloat16", "float16"),
    "inference_state_dtype": ("float32", "bfloat16", "float16"),
    "norm_reduction_force_float32": (True, False),
}


def round_up(x: float, multiple_of: int) -> int:
    """Smallest multiple of ``multiple_of`` >= x (official ``round_up_to_next_multiple_of``)."""
    return int(((x + multiple_of - 1) // multiple_of) * multiple_of)


@dataclass(frozen=True)
class mLSTMBlockConfig:  # noqa: N801 (the official naming)
    """One xLSTM-7B block (``mLSTMLayer``, ``FeedForward``, ``mLSTMBlock``) on its own.

    ``xLSTMLargeConfig.block`` gives the one of a model; the attributes mean the same as there.
    ``num_blocks`` (the depth of the model it belongs to) only scales the init of the output projections.
    """

    embedding_dim: int
    num_heads: int
    num_blocks: int = 1
    use_bias: bool = False
    norm_eps: float = 1e-6
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    ffn_proj_factor: float = 2.6667
    ffn_round_up_to_multiple_of: int = 64
    gate_soft_cap: float | None = 15.0
    weight_mode: str = "single"
    eps: float = 1e-6
    backend: str = "chunkwise"
    chunk_size: int = 64
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        check_int("embedding_dim", self.embedding_dim, 1)
        check_int("num_heads", self.num_heads, 1)
        check_int("num_blocks", self.num_blocks, 1)
        check_bool("use_bias", self.use_bias)
        check_number("norm_eps", self.norm_eps, 0, low_open=True)
        check_number("qk_dim_factor", self.qk_dim_factor, 0, low_open=True)
        check_number("v_dim_factor", self.v_dim_factor, 0, low_open=True)
        for name, dim in (("qk_dim", self.qk_dim), ("v_dim", self.v_dim)):
            if dim < 1 or dim % self.num_heads:
                factor = f"{name[:-4]}_dim_factor"
                raise ValueError(
                    f"num_heads={self.num_heads} must divide {name}=int(embedding_dim * {factor})="
                    f"int({self.embedding_dim} * {getattr(self, factor)})={dim} (and {name} must be >= 1)"
                )
        check_number("ffn_proj_factor", self.ffn_proj_factor, 0, low_open=True)
        check_int("ffn_round_up_to_multiple_of", self.ffn_round_up_to_multiple_of, 1)
        check_number("gate_soft_cap", self.gate_soft_cap, 0, low_open=True, optional=True)
        check_choice("weight_mode", self.weight_mode, WEIGHT_MODES)
        check_number("eps", self.eps, 0, low_open=True)
        check_choice("backend", self.backend, MLSTM_BACKENDS)
        check_int("chunk_size", self.chunk_size, 1)
        object.__setattr__(self, "dtype", dtype_name("dtype", self.dtype))
        object.__setattr__(self, "param_dtype", dtype_name("param_dtype", self.param_dtype))

    @property
    def qk_dim(self) -> int:
        return int(self.embedding_dim * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        return int(self.embedding_dim * self.v_dim_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round_up(self.embedding_dim * self.ffn_proj_factor, self.ffn_round_up_to_multiple_of)


@dataclass(frozen=True)
class xLSTMLargeConfig:
    """The xLSTM-7B architecture.

    Attributes (official names and defaults):
      embedding_dim, num_heads, num_blocks, vocab_size: D, NH, number of blocks, V.
      use_bias: biases on every projection and norm (the i/f gates always have one).
      norm_eps: eps of the RMSNorms and of the per-head LayerNorm.
      add_out_norm: RMSNorm after the last block.
      qk_dim_factor, v_dim_factor: ``qk_dim = int(D * qk_dim_factor)``, ``v_dim = int(D * v_dim_factor)``.
      ffn_proj_factor, ffn_round_up_to_multiple_of: SwiGLU width ``round_up(D * factor, multiple)``.
      gate_soft_cap: ``cap * tanh(x / cap)`` on the i/f gate pre-activations (None: no cap).
      output_logit_soft_cap: the same on the logits (None: no cap).
      weight_mode: "single" (separate q, k, v, o, i, f and up-gate/up weights) or "fused"
        (concatenated ``qkv_opreact``, ``ifgate_preact``, ``proj_up_gate_z``); same function.
      eps: eps of the mLSTM cell's normalizer.
    Attributes of this port:
      backend: mLSTM form for sequences, one of ``backends.MLSTM_BACKENDS``.
      chunk_size: chunk length of the chunkwise form.
      dtype: compute dtype of the matmuls and the residual stream; gates, norms,
        the cell and its states stay float32. param_dtype: storage dtype of the parameters.
      scan_blocks: run the blocks with ``lax.scan`` (compile time constant in depth);
        otherwise an unrolled loop. Parameters are stacked (leading block axis) either way.
      remat: ``jax.checkpoint`` each block.
    """

    embedding_dim: int
    num_heads: int
    num_blocks: int
    vocab_size: int
    use_bias: bool = False
    norm_eps: float = 1e-6
    add_out_norm: bool = True
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    ffn_proj_factor: float = 2.6667
    ffn_round_up_to_multiple_of: int = 64
    gate_soft_cap: float | None = 15.0
    output_logit_soft_cap: float | None = 30.0
    weight_mode: str = "single"
    eps: float = 1e-6
    backend: str = "chunkwise"
    chunk_size: int = 64
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_blocks: bool = True
    remat: bool = False
    remat_policy: str = "full"  # with remat: full | dots | dots_no_batch (xlstm_jax.nn.REMAT_POLICIES)

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, 1)
        check_bool("add_out_norm", self.add_out_norm)
        check_number("output_logit_soft_cap", self.output_logit_soft_cap, 0, low_open=True, optional=True)
        check_bool("scan_blocks", self.scan_blocks)
        check_bool("remat", self.remat)
        check_choice("remat_policy", self.remat_policy, tuple(REMAT_POLICIES))
        block = self.block  # checks the block's fields
        object.__setattr__(self, "dtype", block.dtype)
        object.__setattr__(self, "param_dtype", block.param_dtype)

    @property
    def block(self) -> mLSTMBlockConfig:
        """The config of each of the ``num_blocks`` blocks."""
        return mLSTMBlockConfig(**{f.name: getattr(self, f.name) for f in fields(mLSTMBlockConfig)})

    @property
    def qk_dim(self) -> int:
        return self.block.qk_dim

    @property
    def v_dim(self) -> int:
        return self.block.v_dim

    @property
    def qk_head_dim(self) -> int:
        return self.block.qk_head_dim

    @property
    def v_head_dim(self) -> int:
        return self.block.v_head_dim

    @property
    def ffn_dim(self) -> int:
        return self.block.ffn_dim

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> xLSTMLargeConfig:
        """Config from ``dataclasses.asdict(xlstm.xlstm_large.xLSTMLargeConfig(...))``.

        Also accepts this class's own fields (``backend``, ``dtype``...). ``overrides``
        replace entries of ``d``. Unknown keys raise a ValueError naming them; the official
        runtime keys (see ``OFFICIAL_RUNTIME_KEYS``) are checked and dropped.
        """
        d = {**d, **overrides}
        own = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in own and k not in OFFICIAL_RUNTIME_KEYS)
        if unknown:
            raise ValueError(
                f"unknown xLSTMLargeConfig keys {unknown}; accepted: {sorted(own | set(OFFICIAL_RUNTIME_KEYS))}"
            )
        for key, accepted in OFFICIAL_RUNTIME_KEYS.items():
            if key in d:
                if key == "chunkwise_kernel" and "siging" in str(d[key]):
                    raise ValueError(
                        f"chunkwise_kernel={d[key]!r} is the mLSTMsig cell (sigmoid input gate), which this "
                        f"model does not implement; choose one of {accepted}"
                    )
                check_choice(key, d[key], accepted)
        return cls(**{k: v for k, v in d.items() if k in own})
