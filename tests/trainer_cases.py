"""Shared by the trainer tests: the quickstart preset shrunk to a one-block mLSTM model that
compiles in seconds, and helpers to read a run folder."""

from __future__ import annotations

import json
from pathlib import Path

# quickstart (parity) with a one-block, 16-wide model, 12-token rows and no TensorBoard.
TINY = [
    "model.embedding_dim=16",
    "model.num_blocks=1",
    "model.slstm_at=[]",
    "model.mlstm.qkv_proj_blocksize=4",
    "train.global_batch_size=8",
    "train.seq_len=12",
    "data.train_max_len=12",
    "data.eval_min_len=3",
    "data.eval_max_len=12",
    "data.num_eval_examples=16",
    "train.eval_batches=1",
    "train.log_every=1",
    "train.eval_every=0",
    "train.tensorboard=false",
    "optim.warmup_steps=1",
]


def metrics_rows(out_dir: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def checkpoint_steps(out_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (Path(out_dir) / "checkpoints").iterdir() if p.name.isdigit())


def jit_cache_env(cache_dir: Path) -> dict[str, str]:
    """Environment variables that give trainer subprocesses one persistent compilation cache.

    The runs of a test file train the same tiny model, so every process after the first loads
    its compiled steps instead of compiling them again (about 4x less CPU per process on 2 cores);
    the runs themselves, and what the tests check about them, are unchanged."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
