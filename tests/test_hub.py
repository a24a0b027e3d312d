"""Hub ids: ``from_pretrained("org/name")`` through a real Hugging Face cache layout, offline.

The cache is built by hand in a temporary folder as ``huggingface_hub`` lays it out
(``models--org--name/refs/main`` holding a commit hash, the files under
``snapshots/<hash>/``), with a tiny model written by ``save_pretrained``; the network is
never used (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import re

import huggingface_hub.constants
import numpy as np
import pytest
from flax import nnx

import xlstm_jax
from xlstm_jax._validation import CheckpointError
from xlstm_jax.generation import GenerationConfig
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from xlstm_jax.tokenizer import load_tokenizer

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
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        xlstm_jax.from_pretrained(missing)
    with pytest.raises(CheckpointError, match="revision='v1' is only for Hub repo ids"):
        xlstm_jax.from_pretrained(tmp_path, revision="v1")


# ---------------------------------------------------------------- tokenizers


def word_tokenizer(vocab_size: int = 40):
    """A word-level ``tokenizers.Tokenizer``: "w0".."w{V-1}" are ids 0..V-1, split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_load_tokenizer_from_a_file_a_folder_and_a_hub_id(tmp_path, offline):
    word_tokenizer().save(str(tmp_path / "tokenizer.json"))
    for source in (tmp_path / "tokenizer.json", tmp_path):
        assert load_tokenizer(source).encode("w3 w7 w1").ids == [3, 7, 1]
    snapshot = tmp_path / "cache" / "models--org--tok" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    word_tokenizer().save(str(snapshot / "tokenizer.json"))
    (tmp_path / "cache" / "models--org--tok" / "refs").mkdir()
    (tmp_path / "cache" / "models--org--tok" / "refs" / "main").write_text(COMMIT)
    assert load_tokenizer("org/tok", cache_dir=tmp_path / "cache").encode("w5").ids == [5]


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'tokenizer.json'} does not exist")):
        load_tokenizer(tmp_path)  # a folder without tokenizer.json
    (tmp_path / "sub" / "tokenizer.json").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'sub' / 'tokenizer.json'} is a directory")):
        load_tokenizer(tmp_path / "sub")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(CheckpointError, match=re.escape(str(bad)) + ".* is not a tokenizer"):
        load_tokenizer(bad)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'missing.json'} does not exist")):
        load_tokenizer(tmp_path / "missing.json")


# ---------------------------------------------------------------- special ids and generation_config.json


def test_special_ids_survive_save_and_load(tmp_path, model):
    ids = GenerationConfig(bos_token_id=5, eos_token_id=[7, 9], pad_token_id=3)
    assert ids.eos_token_id == (7, 9)
    model.generation_config = ids
    try:
        xlstm_jax.save_pretrained(model, tmp_path / "a")
    finally:
        del model.generation_config
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (5, [7, 9], 3)
    assert json.loads((tmp_path / "a" / "generation_config.json").read_text()) == {
        "bos_token_id": 5,
        "eos_token_id": [7, 9],
        "pad_token_id": 3,
    }
    loaded = xlstm_jax.from_pretrained(tmp_path / "a")
    assert loaded.generation_config == ids
    xlstm_jax.save_pretrained(loaded, tmp_path / "b")  # a second round keeps them
    assert xlstm_jax.from_pretrained(tmp_path / "b").generation_config == ids


def test_ids_come_from_config_json_and_generation_config_json_overrides(tmp_path, model):
    xlstm_jax.save_pretrained(model, tmp_path)  # no generation_config: Hugging Face's 0/2/1
    (tmp_path / "generation_config.json").unlink()
    assert xlstm_jax.from_pretrained(tmp_path).generation_config == GenerationConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1
    )
    generation = {"eos_token_id": [2, 11], "do_sample": True, "temperature": 0.7, "transformers_version": "4.9"}
    (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    loaded = xlstm_jax.from_pretrained(tmp_path).generation_config
    assert (loaded.eos_token_ids, loaded.do_sample, loaded.temperature, loaded.pad_token_id) == ((2, 11), True, 0.7, 1)
    assert loaded.to_dict() == {"bos_token_id": 0, "pad_token_id": 1, **generation}  # nothing lost


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("temperature", float("nan"), "generation_config.temperature must be a finite number >= 0, got nan"),
        ("top_p", 0.0, "generation_config.top_p must be a finite number > 0 and <= 1"),
        ("eos_token_id", [2, -1], "generation_config.eos_token_id must be an integer >= 0"),
        ("pad_token_id", True, "generation_config.pad_token_id must be an integer >= 0 or None"),
    ],
)
def test_bad_generation_config_values_are_named(tmp_path, model, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GenerationConfig(**{field: value})
    xlstm_jax.save_pretrained(model, tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({field: value}))
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "generation_config.json"))):
        xlstm_jax.from_pretrained(tmp_path)
