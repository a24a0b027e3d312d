"""Reading the official config dict, ``dataclasses.asdict(xlstm.xLSTMLMModelConfig(...))``.

Every official key is used, checked or ignored; any other key is rejected by name
(all unknown keys in one error). Missing keys take the official defaults.

Ignored, and why:
  * ``context_length``: size of the official mLSTM cell's causal-mask buffer (the
    official model needs S <= context_length); this port has no buffer and runs any S.
  * ``weight_decay_on_embedding``: an optimizer setting, for the trainer.
  * ``add_embedding_dropout``: dropout must be 0 here, so it does nothing.
  * ``_block_map``, ``_num_blocks``, ``_block_idx``, ``_inner_embedding_dim``,
    ``_proj_up_dim`` and the sub-configs' ``embedding_dim``, ``hidden_size``, ``bias``,
    ``context_length``: derived from the top-level fields by the official ``__post_init__``.
  * sLSTM ``batch_size``, ``constants``, ``dtype``, ``dtype_{a,b,g,r,s,w}``,
    ``enable_automatic_mixed_precision``, ``internal_input_shape``: compile-time
    settings and internal layout of the CUDA kernel (numerics here follow ``dtype``
    and ``param_dtype``).
  * sLSTM ``backend``: "vanilla" and "cuda" compute the same function; it only
    decides the layout of the cell's state-dict tensors (read by the converter).
  * sLSTM ``forward_clipval``, ``initial_val``: read by neither official backend.

Checked (other values raise): every ``dropout`` == 0; sLSTM ``function="slstm"``,
``num_gates=4``, ``num_states=4``, ``gradient_recurrent_cut=False``,
``gradient_recurrent_clipval=None`` (when set, the CUDA kernel also clips the forward
output with it), ``input_shape="BSGNH"``, ``output_shape="BNSH"``, ``backend`` in
("cuda", "vanilla"); feedforward ``ff_type="ffn_gated"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._config import FeedForwardConfig, mLSTMLayerConfig, sLSTMLayerConfig

_DERIVED = ("_num_blocks", "_block_idx")
_NO_DROPOUT = {"dropout": (0.0,)}
_UP_PROJ = ("proj_factor", "round_proj_up_dim_up", "round_proj_up_to_multiple_of")

_TOP_USED = ("vocab_size", "embedding_dim", "num_blocks", "add_post_blocks_norm", "bias", "tie_weights", "slstm_at")
_TOP_IGNORED = ("context_length", "weight_decay_on_embedding", "add_embedding_dropout", "_block_map")

_MLSTM_USED = ("num_heads", "conv1d_kernel_size", "qkv_proj_blocksize", *_UP_PROJ)
_MLSTM_IGNORED = ("embedding_dim", "bias", "context_length", "_num_blocks", "_inner_embedding_dim", "_proj_up_dim")

_SLSTM_USED = ("num_heads", "conv1d_kernel_size", "group_norm_weight", "bias_init", "recurrent_weight_init")
_SLSTM_CHECKED = {
    **_NO_DROPOUT,
    "function": ("slstm",),
    "num_gates": (4,),
    "num_states": (4,),
    "gradient_recurrent_cut": (False,),
    "gradient_recurrent_clipval": (None,),
    "input_shape": ("BSGNH",),
    "output_shape": ("BNSH",),
    "backend": ("cuda", "vanilla"),
}
_SLSTM_IGNORED = (
    "hidden_size",
    "embedding_dim",
    *_DERIVED,
    "batch_size",
    "constants",
    "dtype",
    "dtype_a",
    "dtype_b",
    "dtype_g",
    "dtype_r",
    "dtype_s",
    "dtype_w",
    "enable_automatic_mixed_precision",
    "internal_input_shape",
    "forward_clipval",
    "initial_val",
)

_FF_USED = ("act_fn", "bias", *_UP_PROJ)
_FF_CHECKED = {**_NO_DROPOUT, "ff_type": ("ffn_gated",)}
_FF_IGNORED = ("embedding_dim", "_num_blocks", "_proj_up_dim")


class _Reader:
    """Splits a config dict into used values, collecting unknown keys across the whole tree."""

    def __init__(self):
        self.unknown: list[str] = []

    def read(self, d, path: str, used=(), checked=None, ignored=(), nested=()) -> dict[str, Any]:
        if not isinstance(d, Mapping):
            raise ValueError(f"{path or 'config'} must be a dict, got {type(d).__name__}")
        checked = checked or {}
        out = {}
        for key, value in d.items():
            name = f"{path}.{key}" if path else key
            if key in used or key in nested:
                out[key] = value
            elif key in checked:
                accepted = checked[key]
                if not any(value == a if a is not None else value is None for a in accepted):
                    raise ValueError(f"{name}={value!r} is not supported; accepted: {accepted}")
            elif key not in ignored:
                self.unknown.append(name)
        return out


def config_kwargs(d: Mapping[str, Any], *, own_fields: tuple[str, ...]) -> dict[str, Any]:
    """Keyword arguments of ``xLSTMLMConfig`` from the official dict."""
    reader = _Reader()
    top = reader.read(
        d,
        "",
        used=_TOP_USED + own_fields,
        checked=_NO_DROPOUT,
        ignored=_TOP_IGNORED,
        nested=("mlstm_block", "slstm_block"),
    )
    mlstm = slstm = feedforward = None
    if top.pop("mlstm_block", None) is not None:
        block = reader.read(d["mlstm_block"], "mlstm_block", ignored=_DERIVED, nested=("mlstm",))
        layer = reader.read(
            block.get("mlstm", {}),
            "mlstm_block.mlstm",
            used=_MLSTM_USED,
            checked=_NO_DROPOUT,
            ignored=_MLSTM_IGNORED,
        )
        mlstm = mLSTMLayerConfig(**layer)
    if top.pop("slstm_block", None) is not None:
        block = reader.read(d["slstm_block"], "slstm_block", ignored=_DERIVED, nested=("slstm", "feedforward"))
        layer = reader.read(
            block.get("slstm", {}),
            "slstm_block.slstm",
            used=_SLSTM_USED,
            checked=_SLSTM_CHECKED,
            ignored=_SLSTM_IGNORED,
        )
        slstm = sLSTMLayerConfig(**layer)
        ff = block.get("feedforward", {})
        if ff is not None:
            ff = reader.read(ff, "slstm_block.feedforward", used=_FF_USED, checked=_FF_CHECKED, ignored=_FF_IGNORED)
            feedforward = FeedForwardConfig(**ff)
    if reader.unknown:
        raise ValueError(f"unknown keys in the official xLSTMLMModelConfig dict: {reader.unknown}")
    if mlstm is None:  # the official __post_init__: no mLSTM config means every block is an sLSTM block
        top["slstm_at"] = "all"
    if "slstm_at" in top and not isinstance(top["slstm_at"], str):
        top["slstm_at"] = tuple(top["slstm_at"])
    if "vocab_size" not in top:
        raise ValueError("vocab_size is missing (the official default -1 is not a vocabulary size)")
    return {**top, "mlstm": mlstm, "slstm": slstm, "feedforward": feedforward}
