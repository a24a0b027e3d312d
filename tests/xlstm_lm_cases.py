"""Official PyTorch ``xlstm.xLSTMLMModel`` cases for the parity tests of ``xlstm_jax.models.xlstm_lm``.

The cases, the official model built for each (torch imported lazily), and the fixture files
``tests/fixtures/xlstm_lm_<case>.npz`` (the official config as JSON, the perturbed official state
dict in the vanilla sLSTM layout, the token ids and the official float32 logits), which
``tests/generate_xlstm_lm_fixtures.py`` writes and ``load_fixture`` reads.

Every case runs on CPU in float32 with the vanilla sLSTM backend, S = 19 tokens
(``context_length`` 32 >= S), and weights perturbed away from their init so that
zero-initialized parameters (norms, gate weights, recurrent kernels) matter.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEQ_LEN = 19
BATCH = 2
CONTEXT_LENGTH = 32
NOISE = 0.1

# name -> official config pieces: stack (xLSTMLMModelConfig fields), mlstm / slstm / feedforward layer kwargs
# (a missing or None mlstm / slstm means no such blocks; feedforward None means sLSTM blocks without FFN).
CASES: dict[str, dict[str, Any]] = {
    "mlstm_only": dict(
        stack=dict(num_blocks=2, slstm_at=[], embedding_dim=32, vocab_size=64),
        mlstm=dict(num_heads=2),
    ),
    "slstm_first_tied": dict(
        stack=dict(num_blocks=2, slstm_at=[0], embedding_dim=32, vocab_size=64, tie_weights=True),
        mlstm=dict(num_heads=4),
        slstm=dict(num_heads=2),
        feedforward=dict(),
    ),
    "slstm_mid_bias": dict(
        stack=dict(num_blocks=3, slstm_at=[1], embedding_dim=32, vocab_size=80, bias=True),
        mlstm=dict(num_heads=2, conv1d_kernel_size=3, qkv_proj_blocksize=8),
        slstm=dict(num_heads=4, bias_init="small_init", recurrent_weight_init="standard"),
        feedforward=dict(bias=True, proj_factor=1.6),
    ),
    "slstm_023_noconv": dict(
        stack=dict(num_blocks=4, slstm_at=[0, 2, 3], embedding_dim=32, vocab_size=64, add_post_blocks_norm=False),
        mlstm=dict(num_heads=4),
        slstm=dict(num_heads=2, conv1d_kernel_size=0, group_norm_weight=False),
        feedforward=dict(act_fn="swish"),
    ),
    "slstm_only_noffn": dict(
        stack=dict(num_blocks=2, embedding_dim=32, vocab_size=64),
        slstm=dict(num_heads=4),
        feedforward=None,
    ),
}


def official_config(case: dict[str, Any], backend: str = "vanilla"):
    """The official ``xLSTMLMModelConfig`` of a case."""
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMLMModelConfig,
    )

    mlstm = case.get("mlstm")
    slstm = case.get("slstm")
    mlstm_block = None if mlstm is None else mLSTMBlockConfig(mlstm=mLSTMLayerConfig(**mlstm))
    slstm_block = None
    if slstm is not None:
        ff = case.get("feedforward")
        slstm_block = sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend=backend, **slstm),
            feedforward=None if ff is None else FeedForwardConfig(**ff),
        )
    return xLSTMLMModelConfig(
        mlstm_block=mlstm_block, slstm_block=slstm_block, context_length=CONTEXT_LENGTH, **case["stack"]
    )


def official_model(name: str, seed: int = 0, *, perturb: bool = True):
    """(official model in eval mode, its config) with ``reset_parameters()`` and optional noise."""
    import torch
    from xlstm import xLSTMLMModel

    config = official_config(CASES[name])
    torch.manual_seed(seed)
    model = xLSTMLMModel(config)
    model.reset_parameters()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(NOISE * torch.randn_like(p))
    return model.eval(), config


def official_case(name: str, seed: int = 0) -> dict[str, Any]:
    """config (official asdict), state_dict (numpy), ids (B, S) int32, logits (B, S, V) float32."""
    import torch

    model, config = official_model(name, seed)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(BATCH, SEQ_LEN)).astype(np.int32)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids).long()).numpy()
    state_dict = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    return dict(config=dataclasses.asdict(config), state_dict=state_dict, ids=ids, logits=logits)


def save_fixture(name: str, case: dict[str, Any]) -> Path:
    path = FIXTURES / f"xlstm_lm_{name}.npz"
    arrays = {f"sd/{k}": v for k, v in case["state_dict"].items()}
    np.savez_compressed(
        path, config=np.array(json.dumps(case["config"])), ids=case["ids"], logits=case["logits"], **arrays
    )
    return path


def load_fixture(name: str) -> dict[str, Any]:
    with np.load(FIXTURES / f"xlstm_lm_{name}.npz") as data:
        return dict(
            config=json.loads(str(data["config"])),
            state_dict={k[3:]: data[k] for k in data.files if k.startswith("sd/")},
            ids=data["ids"],
            logits=data["logits"],
        )
