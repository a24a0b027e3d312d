"""Official PyTorch ``xlstm.xLSTMLMModel`` checkpoints <-> ``xlstm_jax.models.xlstm_lm.xLSTMLMModel``.

``from_torch_xlstm_lm(config, state_dict)`` builds our model from the official
config dict (``dataclasses.asdict(xLSTMLMModelConfig)``) and state dict (numpy
arrays or torch tensors; torch is never imported here). ``to_torch_xlstm_lm_state_dict``
goes back (vanilla sLSTM layout), for ``xLSTMLMModel.load_state_dict``.

Layouts (torch -> ours):
  * ``nn.Linear`` weights (out, in) are transposed to our kernels (in, out).
  * Conv1d weight (C, 1, K) -> kernel (K, C).
  * sLSTM gate projections: the official ``fgate`` produces the input gate and
    ``igate`` the forget gate; they become our ``igate`` and ``fgate``.
  * sLSTM cell tensors, to our (NH, DH, 4, DH) recurrent kernel and (NH, 4, DH) bias:
      vanilla ``_recurrent_kernel_`` (NH, 4 DH, DH) = ext.permute(0, 2, 3, 1); ``_bias_`` gate-major (4, NH, DH)
      cuda    ``_recurrent_kernel_`` (NH, DH, 4 DH) = ext.reshape;           ``_bias_`` head-major (NH, 4, DH)
    The biases have the same shape in both, so the layout cannot be told from the
    tensors: it follows the config's ``slstm_block.slstm.backend`` unless
    ``slstm_layout`` says otherwise.
  * With ``tie_weights`` the official state dict also holds ``lm_head.weight`` (the
    same tensor as the embedding); it is accepted and must equal the embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlstm_jax.models.xlstm_lm import xLSTMLMConfig, xLSTMLMModel

SLSTM_LAYOUTS = ("vanilla", "cuda")
_STACK = "xlstm_block_stack."


class _Entry(NamedTuple):
    key: str  # official state-dict name
    shape: tuple[int, ...]  # official shape
    path: tuple  # our parameter path
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _same(x):
    return x


def _t(x):
    return np.swapaxes(x, -1, -2)


def _linear(key, path, d_in, d_out, bias: bool) -> list[_Entry]:
    entries = [_Entry(f"{key}.weight", (d_out, d_in), (*path, "kernel"), _t, _t)]
    if bias:
        entries.append(_Entry(f"{key}.bias", (d_out,), (*path, "bias"), _same, _same))
    return entries


def _vector(key, path, n) -> _Entry:
    return _Entry(key, (n,), path, _same, _same)


def _conv(key, path, channels, k) -> list[_Entry]:
    return [
        _Entry(f"{key}.conv.weight", (channels, 1, k), (*path, "kernel"), lambda w: w[:, 0].T, lambda w: w.T[:, None]),
        _vector(f"{key}.conv.bias", (*path, "bias"), channels),
    ]


def _headwise(key, path, blocks, size, bias: bool) -> list[_Entry]:
    entries = [_Entry(f"{key}.weight", (blocks, size, size), (*path, "weight"), _same, _same)]
    if bias:
        entries.append(_vector(f"{key}.bias", (*path, "bias"), blocks * size))
    return entries


def _slstm_cell(key, path, nh, dh, layout: str) -> list[_Entry]:
    if layout == "vanilla":
        kernel = _Entry(
            f"{key}._recurrent_kernel_",
            (nh, 4 * dh, dh),
            (*path, "recurrent_kernel"),
            lambda r: r.reshape(nh, 4, dh, dh).transpose(0, 3, 1, 2),
            lambda e: e.transpose(0, 2, 3, 1).reshape(nh, 4 * dh, dh),
        )
        bias = _Entry(
            f"{key}._bias_",
            (4 * nh * dh,),
            (*path, "bias"),
            lambda b: b.reshape(4, nh, dh).transpose(1, 0, 2),
            lambda e: e.transpose(1, 0, 2).reshape(-1),
        )
    else:
        kernel = _Entry(
            f"{key}._recurrent_kernel_",
            (nh, dh, 4 * dh),
            (*path, "recurrent_kernel"),
            lambda r: r.reshape(nh, dh, 4, dh),
            lambda e: e.reshape(nh, dh, 4 * dh),
        )
        bias = _Entry(
            f"{key}._bias_", (4 * nh * dh,), (*path, "bias"), lambda b: b.reshape(nh, 4, dh), lambda e: e.reshape(-1)
        )
    return [kernel, bias]


def _mlstm_layer(cfg: xLSTMLMConfig, key: str, path: tuple) -> list[_Entry]:
    m, d = cfg.mlstm, cfg.embedding_dim
    inner = m.inner_dim(d)
    blocks, bs = inner // m.qkv_proj_blocksize, m.qkv_proj_blocksize
    entries = _linear(f"{key}.proj_up", (*path, "proj_up"), d, 2 * inner, cfg.bias)
    entries += _conv(f"{key}.conv1d", (*path, "conv1d"), inner, m.conv1d_kernel_size)
    for name in ("q_proj", "k_proj", "v_proj"):
        entries += _headwise(f"{key}.{name}", (*path, name), blocks, bs, cfg.bias)
    for name in ("igate", "fgate"):
        entries += _linear(f"{key}.mlstm_cell.{name}", (*path, name), 3 * inner, m.num_heads, True)
    entries.append(_vector(f"{key}.mlstm_cell.outnorm.weight", (*path, "outnorm", "weight"), inner))
    entries.append(_vector(f"{key}.learnable_skip", (*path, "learnable_skip"), inner))
    entries += _linear(f"{key}.proj_down", (*path, "proj_down"), inner, d, cfg.bias)
    return entries


def _slstm_layer(cfg: xLSTMLMConfig, key: str, path: tuple, layout: str) -> list[_Entry]:
    s, d = cfg.slstm, cfg.embedding_dim
    nh, dh = s.num_heads, d // s.num_heads
    entries = _conv(f"{key}.conv1d", (*path, "conv1d"), d, s.conv1d_kernel_size) if s.conv1d_kernel_size else []
    for official, ours in (("fgate", "igate"), ("igate", "fgate"), ("zgate", "zgate"), ("ogate", "ogate")):
        entries += _headwise(f"{key}.{official}", (*path, ours), nh, dh, False)
    entries += _slstm_cell(f"{key}.slstm_cell", path, nh, dh, layout)
    if s.group_norm_weight:
        entries.append(_vector(f"{key}.group_norm.weight", (*path, "group_norm", "weight"), d))
    return entries


def _layout(cfg: xLSTMLMConfig, slstm_layout: str) -> list[_Entry]:
    """Every official tensor of the model, in state-dict order, with our path and the two transforms."""
    d = cfg.embedding_dim
    entries = []
    for idx, kind in enumerate(cfg.block_types):
        key, path = f"{_STACK}blocks.{idx}", ("blocks", idx)
        entries.append(_vector(f"{key}.xlstm_norm.weight", (*path, "xlstm_norm", "weight"), d))
        if kind == "m":
            entries += _mlstm_layer(cfg, f"{key}.xlstm", (*path, "xlstm"))
            continue
        entries += _slstm_layer(cfg, f"{key}.xlstm", (*path, "xlstm"), slstm_layout)
        if cfg.feedforward is not None:
            p = cfg.feedforward.hidden_dim(d)
            entries.append(_vector(f"{key}.ffn_norm.weight", (*path, "ffn_norm", "weight"), d))
            entries += _linear(f"{key}.ffn.proj_up", (*path, "ffn", "proj_up"), d, 2 * p, cfg.feedforward.bias)
            entries += _linear(f"{key}.ffn.proj_down", (*path, "ffn", "proj_down"), p, d, cfg.feedforward.bias)
    if cfg.add_post_blocks_norm:
        entries.append(_vector(f"{_STACK}post_blocks_norm.weight", ("post_blocks_norm", "weight"), d))
    entries.append(
        _Entry("token_embedding.weight", (cfg.vocab_size, d), ("token_embedding", "embedding"), _same, _same)
    )
    if not cfg.tie_weights:
        entries += _linear("lm_head", ("lm_head",), d, cfg.vocab_size, False)
    return entries


def _numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16: go through float32
            x = x.float()
    return np.asarray(x)


def _config_slstm_layout(config: Mapping[str, Any]) -> str | None:
    """The sLSTM state-dict layout an official config dict implies: its cell's ``backend`` field ("cuda",
    the official default, or "vanilla") decides how the cell tensors are stored; None without sLSTM blocks."""
    block = config.get("slstm_block")
    if block is None:
        return None
    return block.get("slstm", {}).get("backend", "cuda")


def _check_layout(layout: str | None, config: Mapping[str, Any]) -> str:
    layout = layout if layout is not None else _config_slstm_layout(config) or "vanilla"
    if layout not in SLSTM_LAYOUTS:
        raise ValueError(f"slstm_layout={layout!r} is not supported; choose one of {SLSTM_LAYOUTS}")
    return layout


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _set(tree, path, value) -> None:
    _get(tree, path[:-1])[path[-1]] = value


def from_torch_xlstm_lm(
    config: Mapping[str, Any], state_dict: Mapping[str, Any], *, slstm_layout: str | None = None, **overrides
) -> xLSTMLMModel:
    """Our model from an official config dict and state dict.

    Args:
      config: ``dataclasses.asdict`` of the official ``xLSTMLMModelConfig``.
      state_dict: official parameter names -> numpy arrays or torch tensors.
      slstm_layout: "vanilla" or "cuda": the layout of the sLSTM cell tensors; by
        default the config's ``slstm_block.slstm.backend``.
      overrides: fields of ``xLSTMLMConfig`` of this port (backend, chunk_size,
        dtype, param_dtype, scan_blocks, remat).

    Raises:
      ValueError: listing every missing and unexpected key and every shape mismatch.
    """
    cfg = xLSTMLMConfig.from_dict(config, **overrides)
    return model_from_state_dict(cfg, state_dict, _check_layout(slstm_layout, config))


def model_from_state_dict(cfg: xLSTMLMConfig, state_dict: Mapping[str, Any], slstm_layout: str) -> xLSTMLMModel:
    """Our model for ``cfg`` from official state-dict tensors (every key checked, all problems listed)."""
    entries = _layout(cfg, slstm_layout)
    arrays = {key: _numpy(value) for key, value in state_dict.items()}
    expected = {e.key for e in entries}
    problems = [f"missing: {e.key} {e.shape}" for e in entries if e.key not in arrays]
    tied_head = cfg.tie_weights and "lm_head.weight" in arrays
    for key in arrays:
        if key not in expected and not (tied_head and key == "lm_head.weight"):
            problems.append(f"unexpected: {key} {arrays[key].shape}")
    for e in entries:
        if e.key in arrays and arrays[e.key].shape != e.shape:
            problems.append(f"shape mismatch: {e.key} is {arrays[e.key].shape}, expected {e.shape}")
    if tied_head and "token_embedding.weight" in arrays:
        head, emb = arrays["lm_head.weight"], arrays["token_embedding.weight"]
        if head.shape != emb.shape or not np.array_equal(head, emb):
            problems.append("tie_weights=True but lm_head.weight differs from token_embedding.weight")
    if problems:
        raise ValueError("the state dict does not match the config:\n  " + "\n  ".join(problems))

    abstract = nnx.eval_shape(lambda: xLSTMLMModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = nnx.to_pure_dict(state)
    for e in entries:
        _set(params, e.path, jnp.asarray(e.to_ours(arrays[e.key]), cfg.parameter_dtype))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def to_torch_xlstm_lm_state_dict(model: xLSTMLMModel, *, slstm_layout: str = "vanilla") -> dict[str, np.ndarray]:
    """The official state dict of ``model`` (numpy arrays in the parameter dtype; sLSTM cell
    tensors in ``slstm_layout``).

    With ``tie_weights`` it includes ``lm_head.weight`` (equal to the embedding), as
    the official ``state_dict()`` does. Load with
    ``{k: torch.from_numpy(v) for k, v in sd.items()}`` into ``xLSTMLMModel.load_state_dict``.
    """
    if slstm_layout not in SLSTM_LAYOUTS:
        raise ValueError(f"slstm_layout={slstm_layout!r} is not supported; choose one of {SLSTM_LAYOUTS}")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    entries = _layout(model.config, slstm_layout)
    out = {e.key: np.array(e.to_torch(np.asarray(_get(params, e.path)))) for e in entries}
    if model.config.tie_weights:
        out["lm_head.weight"] = out["token_embedding.weight"]
    return out
