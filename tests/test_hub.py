"""Hub ids: ``from_pretrained("org/name")`` through a real Hugging Face cache layout, offline.

The cache is built by hand in a temporary folder as ``huggingface_hub`` lays it out
(``models--org--name/refs/main`` holding a commit hash, the files under
``snapshots/<hash>/``), with a tiny model written by ``save_pretrained``; the network is
never used (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pytest
from flax import nnx

import xlstm_jax
from xlstm_jax._validation import CheckpointError
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-xlstm"


@pytest.fixture(scope="module")
def model():
    cfg = xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=40, chunk_size=4)
    return xLSTMLarge(cfg, rngs=nnx.Rngs(0))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time


def hub_cache(root, model, repo=REPO, commit=COMMIT, ref="main"):
    """A Hugging Face Hub cache folder holding ``repo`` at ``commit`` (tagged ``ref``)."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    xlstm_jax.save_pretrained(model, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return root


def logits(model):
    return np.asarray(model(np.arange(12).reshape(2, 6) % model.config.vocab_size))


def test_hub_id_loads_from_the_cache_offline(tmp_path, model, offline):
    cache = hub_cache(tmp_path, model)
    loaded = xlstm_jax.from_pretrained(REPO, cache_dir=cache)
    np.testing.assert_array_equal(logits(loaded), logits(model))
    # a revision given by commit hash finds the same snapshot
    again = xlstm_jax.from_pretrained(REPO, cache_dir=cache, revision=COMMIT, local_files_only=True)
    np.testing.assert_array_equal(logits(again), logits(model))


def test_a_missing_repo_says_what_and_where(tmp_path, offline):
    with pytest.raises(CheckpointError) as err:
        xlstm_jax.from_pretrained("nobody/nothing", cache_dir=tmp_path)
    msg = str(err.value)
    assert "'nobody/nothing'" in msg and str(tmp_path) in msg and "revision 'main'" in msg


def test_a_missing_revision_says_what_and_where(tmp_path, model, offline):
    cache = hub_cache(tmp_path, model)
    with pytest.raises(CheckpointError, match="revision 'v2'"):
        xlstm_jax.from_pretrained(REPO, cache_dir=cache, revision="v2")


def test_a_missing_file_in_the_snapshot_is_named(tmp_path, model, offline):
    cache = hub_cache(tmp_path, model)
    config = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / "config.json"
    config.unlink()
    with pytest.raises(CheckpointError) as err:
        xlstm_jax.from_pretrained(REPO, cache_dir=cache)
    assert str(config) in str(err.value) and "does not exist" in str(err.value)


def test_a_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(CheckpointError, match=str(missing)):
        xlstm_jax.from_pretrained(missing)
    with pytest.raises(CheckpointError, match="revision='v1' is only for Hub repo ids"):
        xlstm_jax.from_pretrained(tmp_path, revision="v1")
