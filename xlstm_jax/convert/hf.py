"""Hugging Face xLSTM checkpoints (``xLSTMForCausalLM``, e.g. NX-AI/xLSTM-7b) <-> ``xLSTMLarge``, without torch.

A checkpoint folder holds ``config.json`` (``model_type`` "xlstm") and either
``model.safetensors`` or shards listed in ``model.safetensors.index.json``, and optionally
``generation_config.json`` (special token ids and decoding defaults, attached to the loaded
model as ``model.generation_config``).

Hugging Face quirks handled here:
  * HF's ``xLSTMModel`` always applies ``backbone.out_norm`` (whatever ``add_out_norm``
    says) and that norm never has a bias: a loaded model gets ``add_out_norm=True``, and a
    zero out_norm bias when ``use_bias``; ``save_pretrained`` refuses models HF cannot represent.
  * Keys missing from ``config.json`` take HF's defaults, which differ from the official
    ``xLSTMLargeConfig`` (``ffn_proj_factor`` 2.667, not 2.6667).
  * ``tie_word_embeddings=True`` checkpoints may omit ``lm_head.weight``: it is then read from
    the embedding (the loaded model keeps an untied copy).
  * Projection names ``mlstm_layer.query/key/value`` (the upstream fallback of some
    transformers versions) are read as ``q/k/v``; we write ``q/k/v`` as the Hub checkpoints
    and the installed transformers do.
  * HF's generation cache sizes the state with ``round_up(hidden * qk_dim_factor, 64)`` while
    the layers use ``int(hidden * qk_dim_factor)``: HF ``use_cache=True`` works only when
    ``hidden_size * qk_dim_factor`` is a multiple of 64 (our model has no such limit).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xlstm_jax import hub
from xlstm_jax._validation import CheckpointError, read_json
from xlstm_jax.generation.config import (
    HF_SPECIAL_IDS,
    GenerationConfig,
    generation_config_of,
    read_generation_config,
    write_generation_config,
)
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from xlstm_jax.models.xlstm_lm import xLSTMLMModel

from . import safetensors_io, xlstm_lm_folder
from ._xlstm_large_layout import export, load

# HF xLSTMConfig fields that define the function, with HF's defaults for keys absent from config.json.
HF_DEFAULTS = {
    "vocab_size": 50304,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_heads": 8,
    "use_bias": False,
    "norm_eps": 1e-6,
    "qk_dim_factor": 0.5,
    "v_dim_factor": 1.0,
    "ffn_proj_factor": 2.667,
    "ffn_round_up_to_multiple_of": 64,
    "gate_soft_cap": 15.0,
    "output_logit_soft_cap": 30.0,
    "weight_mode": "single",
    "eps": 1e-6,
    "chunk_size": 64,
    "tie_word_embeddings": False,
}
# Every other key of config.json is ignored: either an xLSTMConfig field that only chooses how
# the torch code runs (kernels, mode, autocast/state dtypes, cache, max_inference_chunksize,
# token ids, add_out_norm, which HF's xLSTMModel ignores) or a generic PretrainedConfig attribute.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FLOAT_CODES = ("F32", "BF16", "F16", "F64")  # safetensors dtypes a weight may be stored in (cast to param_dtype)
INDEX_NAME = "model.safetensors.index.json"


def config_from_hf(hf: Mapping[str, Any], **overrides) -> xLSTMLargeConfig:
    """``xLSTMLargeConfig`` from a Hugging Face xLSTM ``config.json`` dict; ``overrides`` set our fields."""
    if hf.get("model_type", "xlstm") != "xlstm":
        raise ValueError(f"model_type={hf['model_type']!r} is not supported; expected 'xlstm'")
    g = {k: hf.get(k, v) for k, v in HF_DEFAULTS.items()}
    # HF resolves the aliases in favour of hidden_size / num_hidden_layers.
    if "hidden_size" not in hf and "embedding_dim" in hf:
        g["hidden_size"] = hf["embedding_dim"]
    if "num_hidden_layers" not in hf and "num_blocks" in hf:
        g["num_hidden_layers"] = hf["num_blocks"]
    fields = dict(
        embedding_dim=g["hidden_size"],
        num_heads=g["num_heads"],
        num_blocks=g["num_hidden_layers"],
        vocab_size=g["vocab_size"],
        use_bias=g["use_bias"],
        norm_eps=g["norm_eps"],
        add_out_norm=True,
        qk_dim_factor=g["qk_dim_factor"],
        v_dim_factor=g["v_dim_factor"],
        ffn_proj_factor=g["ffn_proj_factor"],
        ffn_round_up_to_multiple_of=g["ffn_round_up_to_multiple_of"],
        gate_soft_cap=g["gate_soft_cap"],
        output_logit_soft_cap=g["output_logit_soft_cap"],
        weight_mode=g["weight_mode"],
        eps=g["eps"],
        chunk_size=g["chunk_size"],
    )
    return xLSTMLargeConfig(**{**fields, **overrides})


def config_to_hf(config: xLSTMLargeConfig, *, torch_dtype: str, special_ids: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict (``xLSTMConfig`` fields) for ``config``, with the
    bos/eos/pad ids ``special_ids`` (``GenerationConfig.special_ids()``)."""
    c = config
    return {
        "architectures": ["xLSTMForCausalLM"],
        "model_type": "xlstm",
        "vocab_size": c.vocab_size,
        "hidden_size": c.embedding_dim,
        "embedding_dim": c.embedding_dim,
        "num_hidden_layers": c.num_blocks,
        "num_blocks": c.num_blocks,
        "num_heads": c.num_heads,
        "use_bias": c.use_bias,
        "norm_reduction_force_float32": True,
        "tie_word_embeddings": False,
        "add_out_norm": True,
        "norm_eps": c.norm_eps,
        "qk_dim_factor": c.qk_dim_factor,
        "v_dim_factor": c.v_dim_factor,
        "chunkwise_kernel": "chunkwise--native_autograd",
        "sequence_kernel": "native_sequence__native",
        "step_kernel": "native",
        "mode": "inference",
        "chunk_size": c.chunk_size,
        "return_last_states": True,
        "autocast_kernel_dtype": "bfloat16",
        "eps": c.eps,
        "inference_state_dtype": "float32",
        "ffn_proj_factor": c.ffn_proj_factor,
        "ffn_round_up_to_multiple_of": c.ffn_round_up_to_multiple_of,
        "gate_soft_cap": float(c.gate_soft_cap),
        "output_logit_soft_cap": float(c.output_logit_soft_cap),
        "weight_mode": c.weight_mode,
        "use_cache": True,
        **special_ids,
        "max_inference_chunksize": 16384,
        "torch_dtype": torch_dtype,
    }


class CheckpointSource:
    """The tensors of a checkpoint folder (one file or index + shards), read one at a time."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if (path / WEIGHTS_NAME).exists():
            files = [WEIGHTS_NAME]
        elif (path / INDEX_NAME).exists():
            index = read_json(path / INDEX_NAME, "a safetensors index with a 'weight_map' object")
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{path / INDEX_NAME} has no 'weight_map' object: expected a safetensors index")
            files = sorted(set(weight_map.values()))
        else:
            raise CheckpointError(f"{path} has neither {WEIGHTS_NAME} nor {INDEX_NAME}: expected the model's weights")
        self.files: dict[str, safetensors_io.SafetensorsFile] = {}
        for name in files:
            f = safetensors_io.SafetensorsFile(path / name)
            for key, info in f.header.items():
                if info["dtype"] not in FLOAT_CODES:
                    raise CheckpointError(
                        f"{f.path}: tensor {key!r} is stored as {info['dtype']}; expected a floating-point "
                        f"dtype ({', '.join(FLOAT_CODES)}): model weights are never integers or booleans"
                    )
                if key in self.files:
                    raise ValueError(f"tensor {key!r} is in both {self.files[key].path} and {f.path}")
                self.files[key] = f
        if (path / INDEX_NAME).exists() and len(files) > 1:
            listed = set(weight_map)
            if listed != set(self.files):
                raise ValueError(
                    f"{INDEX_NAME} lists {sorted(listed - set(self.files))} not found in the shards, "
                    f"and the shards hold {sorted(set(self.files) - listed)} it does not list"
                )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(f.header[k]["shape"]) for k, f in self.files.items()}

    def read(self, key: str) -> np.ndarray:
        return self.files[key].read(key)


def from_pretrained(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    dtype=None,
    param_dtype=None,
    sharding=None,
    **overrides,
) -> xLSTMLarge:
    """Load a Hugging Face xLSTM checkpoint (a local folder or a Hub repo id) into an ``xLSTMLarge``, streaming.

    The model is built abstractly (no random weights); each parameter is allocated on its
    device(s) with its sharding and filled tensor by tensor, converted to ``param_dtype``:
    the host holds one checkpoint tensor at a time, never the checkpoint.

    Args:
      path_or_id: a folder with ``config.json`` and ``model.safetensors`` or sharded
        safetensors, or a Hub repo id such as ``"NX-AI/xLSTM-7b"`` (its config, generation
        config and safetensors files are fetched with ``huggingface_hub`` into its cache).
      revision, cache_dir, local_files_only, token: for a Hub repo id, as in
        ``huggingface_hub.snapshot_download`` (``HF_HUB_OFFLINE=1`` also keeps it offline).
      dtype, param_dtype: compute and parameter dtypes (None: float32, whatever the
        checkpoint stores; bfloat16 checkpoints are read exactly).
      sharding: None (default device), one ``jax.sharding.Sharding`` for every parameter, a
        callable ``(path, abstract_param) -> Sharding`` (path like
        ``("blocks", "mlstm_layer", "q", "kernel")``; ``abstract_param`` has ``.shape`` and
        the logical names in ``.get_metadata()["out_sharding"]``), or a pytree of Shardings shaped like
        ``nnx.state(model)``.
      overrides: other ``xLSTMLargeConfig`` fields (``backend``, ``chunk_size``, ``scan_blocks``...).

    Raises:
      CheckpointError: a missing folder, repo or file, or a file that is not what it should be
        (the message names it).
    """
    folder = hub.resolve(
        path_or_id,
        allow_patterns=hub.MODEL_FILES,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    config_path = hub.require_file(folder, CONFIG_NAME, "from_pretrained")
    hf = read_json(config_path, "a Hugging Face model config")
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    if hf.get("model_type") == xlstm_lm_folder.MODEL_TYPE:
        if sharding is not None:
            raise ValueError(
                "sharding= is supported for xLSTMLarge checkpoints only; place an xLSTMLMModel after loading"
            )
        source = CheckpointSource(folder)
        cfg = xlstm_lm_folder.config_from_json(hf, str(config_path), **overrides)
        model = xlstm_lm_folder.load(cfg, {k: source.read(k) for k in source.files})
        model.generation_config = read_generation_config(folder, hf)
        return model
    config = config_from_hf(hf, **overrides)
    defaults: dict[str, str | None] = {}
    if hf.get("tie_word_embeddings", HF_DEFAULTS["tie_word_embeddings"]):
        defaults["lm_head.weight"] = "backbone.embeddings.weight"
    if config.use_bias:
        defaults["backbone.out_norm.bias"] = None  # HF's out_norm has no bias
    model = load(config, CheckpointSource(folder), sharding=sharding, defaults=defaults)
    model.generation_config = read_generation_config(folder, hf)
    return model


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB", "500MB", "2GiB" (HF's units)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]I?B|B)", str(size).strip().upper())
    if not m:
        raise ValueError(f"max_shard_size={size!r} must be a positive int (bytes) or like '5GB', '500MB', '2GiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def save_pretrained(
    model: xLSTMLarge | xLSTMLMModel, path: str | os.PathLike, *, max_shard_size: int | str = "5GB"
) -> None:
    """Write ``model`` as a Hugging Face xLSTM checkpoint (loads with ``xLSTMForCausalLM.from_pretrained``),
    or an ``xLSTMLMModel`` as a folder of ours (official state-dict names; see ``xlstm_lm_folder``).

    The special token ids go to ``config.json`` and ``generation_config.json`` from
    ``model.generation_config`` (``from_pretrained`` attaches the checkpoint's), or are
    Hugging Face's xLSTM defaults (bos 0, eos 2, pad 1) for a model without one.
    Tensors are stored in the model's ``param_dtype``, fetched from the device one at a
    time. Shards (``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``)
    are written when the tensors exceed ``max_shard_size``.

    Raises:
      ValueError: if HF cannot represent the model: ``add_out_norm=False`` (HF always
        applies an out_norm), a non-zero out_norm bias (HF's has none), or no soft cap.
    """
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float64"}
    c = model.config
    generation = generation_config_of(model) or GenerationConfig(**HF_SPECIAL_IDS)
    if isinstance(model, xLSTMLMModel):
        hf = xlstm_lm_folder.config_to_json(
            model, torch_dtype=torch_dtype[c.param_dtype], special_ids=generation.special_ids()
        )
        _write_folder(Path(path), hf, generation, xlstm_lm_folder.export(model), max_shard_size)
        return
    if not c.add_out_norm:
        raise ValueError("add_out_norm=False cannot be saved: Hugging Face's xLSTMModel always applies out_norm")
    for name in ("gate_soft_cap", "output_logit_soft_cap"):
        if getattr(c, name) is None:
            raise ValueError(f"{name}=None cannot be saved: Hugging Face's xLSTMConfig needs a number")
    tensors = list(export(model))
    if c.use_bias:
        bias = next(t for t in tensors if t[0] == "backbone.out_norm.bias")
        if np.any(bias[1]() != 0):
            raise ValueError("a non-zero out_norm bias cannot be saved: Hugging Face's out_norm has no bias")
        tensors.remove(bias)
    hf = config_to_hf(c, torch_dtype=torch_dtype[c.param_dtype], special_ids=generation.special_ids())
    _write_folder(Path(path), hf, generation, tensors, max_shard_size)


def _write_folder(path: Path, config: dict, generation: GenerationConfig, tensors: list, max_shard_size) -> None:
    """config.json, generation_config.json and the tensors (one file, or shards + index)."""
    limit = parse_size(max_shard_size)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    write_generation_config(generation, path)
    for stale in [WEIGHTS_NAME, INDEX_NAME, *(p.name for p in path.glob("model-*-of-*.safetensors"))]:
        (path / stale).unlink(missing_ok=True)

    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t[2], dtype=np.int64)) * np.dtype(t[3]).itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        safetensors_io.write(path / WEIGHTS_NAME, shards[0], metadata)
        return
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        safetensors_io.write(path / name, shard, metadata)
        weight_map.update({t[0]: name for t in shard})
    total = sum(int(np.prod(t[2], dtype=np.int64)) * np.dtype(t[3]).itemsize for t in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2))
