"""Hugging Face xLSTM checkpoints: ``from_pretrained`` / ``save_pretrained`` and parity with
``transformers.xLSTMForCausalLM``.

Tests that need torch + transformers are skipped without them; the round trip through our
own writer and reader, the safetensors format, key reporting, streaming and sharding run
without torch. Parity tolerance as in test_xlstm_large: ``1e-4 * max(1, |ref|)`` elementwise.

``build_hf_and_ours`` is the shared helper for other tests (generation): a tiny HF model and
our converted model with the same perturbed weights.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_xlstm_large import assert_logits_parity, forward, load_fixture

from helpers import assert_close
from xlstm_jax._validation import CheckpointError
from xlstm_jax.convert import from_pretrained, from_torch_xlstm_large, safetensors_io, save_pretrained
from xlstm_jax.convert import hf as hf_io
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from xlstm_large_cases import perturbed_weights

try:
    import torch
    from transformers import xLSTMConfig, xLSTMForCausalLM

    HAVE_HF, WHY_NOT = True, ""
except Exception as e:  # ImportError, or a broken install
    HAVE_HF, WHY_NOT = False, f"torch/transformers xLSTM not importable ({type(e).__name__}: {e})"
requires_hf = pytest.mark.skipif(not HAVE_HF, reason=WHY_NOT)

# hidden * qk_dim_factor must be a multiple of 64 for HF's generation cache (see convert/hf.py).
HF_ARCH = dict(hidden_size=128, num_hidden_layers=2, num_heads=2, vocab_size=96, chunk_size=8)


def build_hf_and_ours(seed: int = 0, *, igate_bias: str = "normal", noise: float = 0.1, **hf_config):
    """A tiny HF ``xLSTMForCausalLM`` and our ``xLSTMLarge`` with the same weights.

    Weights: the 7B init recipe plus N(0, noise) on every tensor (``perturbed_weights``), as
    float16-representable float32 values. ``hf_config`` overrides ``HF_ARCH`` / ``xLSTMConfig``
    fields (single weight mode only: HF's ``_init_weights`` crashes for "fused" in transformers 5.23).

    Returns:
      (hf_model float32 in eval mode, our model, weights {HF name: float32 numpy array}).
    """
    cfg = xLSTMConfig(**{**HF_ARCH, **hf_config})
    hf_model = xLSTMForCausalLM(cfg).float().eval()
    shapes = {k: tuple(v.shape) for k, v in hf_model.state_dict().items()}
    arch = dict(embedding_dim=cfg.hidden_size, num_blocks=cfg.num_hidden_layers, num_heads=cfg.num_heads)
    weights = perturbed_weights(shapes, arch, seed, noise=noise, igate_bias=igate_bias)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    ours = from_torch_xlstm_large(hf_io.config_from_hf(cfg.to_dict()), weights)
    return hf_model, ours, weights


def hf_logits(hf_model, ids, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.from_numpy(np.asarray(ids, np.int64)), **kwargs).logits.float().numpy()


def tiny_model(**kwargs) -> xLSTMLarge:
    """Our model with the 'single' fixture weights (no torch needed)."""
    data = load_fixture("single")
    return from_torch_xlstm_large(data["arch"], data["weights"], **kwargs)


def ids_for(model: xLSTMLarge, shape=(2, 13), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, size=shape)


def params_of(model) -> dict:
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype, k
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


# ---------------------------------------------------------------- parity with transformers


@requires_hf
@pytest.mark.parametrize("use_bias", [False, True])
def test_hf_logits_and_states_match(use_bias):
    hf_model, ours, _ = build_hf_and_ours(use_bias=use_bias)
    ids = ids_for(ours)
    ref = hf_logits(hf_model, ids, use_cache=False)
    logits, state = forward(ours, ids)
    assert_logits_parity(logits, ref)
    # continue from the state: HF's cache against ours
    with torch.no_grad():
        out = hf_model(torch.from_numpy(ids), use_cache=True)
        more = ids_for(ours, (2, 5), seed=1)
        ref2 = hf_model(torch.from_numpy(more), cache_params=out.cache_params, use_cache=True)
    assert_logits_parity(forward(ours, more, state)[0], ref2.logits.numpy(), "continued logits")
    for i, (c, n, m) in ref2.cache_params.rnn_state.items():
        ours_state = forward(ours, more, state)[1][i]
        for name, a, r in zip("cnm", ours_state, (c, n, m[..., 0])):
            assert_close(a, r.numpy(), 1e-4, f"state[{i}].{name}")


@requires_hf
@pytest.mark.parametrize("max_shard_size", ["5GB", "150KB"])
def test_save_pretrained_loads_in_transformers(tmp_path, max_shard_size):
    _, ours, _ = build_hf_and_ours(seed=3)
    save_pretrained(ours, tmp_path, max_shard_size=max_shard_size)
    sharded = (tmp_path / hf_io.INDEX_NAME).exists()
    assert sharded == (max_shard_size == "150KB")
    assert sharded or (tmp_path / hf_io.WEIGHTS_NAME).exists()
    loaded = xLSTMForCausalLM.from_pretrained(tmp_path).float().eval()
    ids = ids_for(ours)
    assert_logits_parity(forward(ours, ids)[0], hf_logits(loaded, ids))


@requires_hf
def test_save_pretrained_bfloat16_loads_in_transformers(tmp_path):
    _, ours, weights = build_hf_and_ours(seed=4)
    arch = hf_io.config_from_hf(xLSTMConfig(**HF_ARCH).to_dict())
    bf16 = from_torch_xlstm_large(arch, weights, param_dtype="bfloat16")
    save_pretrained(bf16, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = xLSTMForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    ids = ids_for(ours)
    assert_logits_parity(forward(bf16, ids)[0], hf_logits(loaded.float().eval(), ids))
    assert_same_params(from_pretrained(tmp_path, param_dtype="bfloat16"), bf16)


@requires_hf
@pytest.mark.parametrize(
    "torch_dtype, max_shard_size", [("float32", "5GB"), ("float32", "100KB"), ("bfloat16", "200KB")]
)
def test_from_pretrained_reads_transformers_checkpoints(tmp_path, torch_dtype, max_shard_size):
    hf_model, ours, _ = build_hf_and_ours(seed=5)
    hf_model.to(getattr(torch, torch_dtype)).save_pretrained(tmp_path, max_shard_size=max_shard_size)
    loaded = from_pretrained(tmp_path, param_dtype=torch_dtype)
    for path, x in params_of(loaded).items():
        assert x.dtype == jnp.dtype(torch_dtype), path
    ids = ids_for(ours)
    assert_logits_parity(forward(loaded, ids)[0], hf_logits(hf_model.float(), ids))
    if torch_dtype == "float32":
        assert_same_params(loaded, ours)


# ---------------------------------------------------------------- our writer and reader, without torch


def test_roundtrip_and_safetensors_compatibility(tmp_path):
    model = tiny_model(param_dtype="float32")
    save_pretrained(model, tmp_path, max_shard_size=40_000)
    index = json.loads((tmp_path / hf_io.INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(s.startswith("model-000") for s in shards)
    loaded = from_pretrained(tmp_path)
    assert_same_params(loaded, model)
    assert loaded.config == model.config
    # the files are plain safetensors: the reference reader agrees with ours
    from safetensors.numpy import load_file

    total = 0
    for shard in shards:
        ref = load_file(tmp_path / shard)
        ours = safetensors_io.SafetensorsFile(tmp_path / shard)
        assert ours.metadata == {"format": "pt"}
        for key, x in ref.items():
            np.testing.assert_array_equal(ours.read(key), x, err_msg=key)
            total += x.nbytes
    assert index["metadata"]["total_size"] == total


def test_bfloat16_roundtrip_without_torch(tmp_path):
    model = tiny_model(param_dtype="bfloat16")
    save_pretrained(model, tmp_path)
    header = safetensors_io.SafetensorsFile(tmp_path / hf_io.WEIGHTS_NAME).header
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    assert_same_params(from_pretrained(tmp_path, param_dtype="bfloat16"), model)
    widened = from_pretrained(tmp_path)  # float32 parameters holding the same values
    for k, x in params_of(widened).items():
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, params_of(model)[k].astype(np.float32))


def test_config_conversion():
    c = xLSTMLargeConfig(
        embedding_dim=96,
        num_heads=3,
        num_blocks=5,
        vocab_size=77,
        use_bias=True,
        norm_eps=1e-5,
        qk_dim_factor=0.25,
        v_dim_factor=0.5,
        ffn_proj_factor=1.3,
        ffn_round_up_to_multiple_of=32,
        gate_soft_cap=7.0,
        output_logit_soft_cap=9.0,
        weight_mode="fused",
        eps=1e-5,
        chunk_size=32,
    )
    assert hf_io.config_from_hf(hf_io.config_to_hf(c, torch_dtype="float32", special_ids={})) == c
    # keys absent from config.json take HF's defaults (2.667, not the official 2.6667)
    minimal = hf_io.config_from_hf({"model_type": "xlstm", "embedding_dim": 96, "num_blocks": 2, "num_heads": 2})
    assert (minimal.embedding_dim, minimal.num_blocks, minimal.ffn_proj_factor) == (96, 2, 2.667)
    # the official round-up floors fractional parts below 1: round_up(96 * 2.667 = 256.03, 64) == 256
    assert minimal.ffn_dim == 256
    assert hf_io.config_from_hf({"hidden_size": 64, "embedding_dim": 32}).embedding_dim == 64
    with pytest.raises(ValueError, match="model_type='llama'"):
        hf_io.config_from_hf({"model_type": "llama"})
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        hf_io.config_from_hf({"hidden_size": 64, "num_heads": 3})


@requires_hf
def test_our_config_json_is_read_by_transformers(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path)
    hf_cfg = xLSTMConfig.from_pretrained(tmp_path)
    assert (hf_cfg.hidden_size, hf_cfg.num_hidden_layers, hf_cfg.vocab_size) == (32, 2, 64)
    assert hf_io.config_from_hf(hf_cfg.to_dict()) == dataclasses.replace(model.config)


def test_missing_unexpected_and_misshaped_tensors_are_reported_together(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path)
    tensors = {k: f for k, f, _, _ in hf_io.export(model)}
    del tensors["backbone.blocks.0.ffn.proj_down.weight"]
    tensors["backbone.blocks.0.ffn.proj_sideways.weight"] = lambda: np.zeros((2, 2), np.float32)
    tensors["backbone.out_norm.weight"] = lambda: np.zeros((31,), np.float32)
    specs = [(k, f, f().shape, np.dtype(np.float32)) for k, f in tensors.items()]
    safetensors_io.write(tmp_path / hf_io.WEIGHTS_NAME, specs, {"format": "pt"})
    with pytest.raises(ValueError) as err:
        from_pretrained(tmp_path)
    msg = str(err.value)
    assert "1 missing: ['backbone.blocks.0.ffn.proj_down.weight']" in msg
    assert "1 unexpected: ['backbone.blocks.0.ffn.proj_sideways.weight']" in msg
    assert "backbone.out_norm.weight: checkpoint (31,), model expects (32,)" in msg


def test_tied_embeddings_and_alternative_names(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    rename = {"backbone.embeddings.weight": "embedding.weight", "backbone.blocks.1.mlstm_layer.q.weight": (
        "backbone.blocks.1.mlstm_layer.query.weight")}  # fmt: skip
    specs = [(rename.get(k, k), f, s, d) for k, f, s, d in hf_io.export(model) if k != "lm_head.weight"]
    safetensors_io.write(tmp_path / hf_io.WEIGHTS_NAME, specs, {"format": "pt"})
    loaded = from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.lm_head.kernel[...], model.embedding.embedding[...].T)
    np.testing.assert_array_equal(loaded.blocks.mlstm_layer.q.kernel[...], model.blocks.mlstm_layer.q.kernel[...])


def test_save_pretrained_refuses_what_hf_cannot_represent(tmp_path):
    data = load_fixture("no_out_norm_capped")
    with pytest.raises(ValueError, match="add_out_norm=False"):
        save_pretrained(from_torch_xlstm_large(data["arch"], data["weights"]), tmp_path)
    biased = load_fixture("fused_bias")
    model = from_torch_xlstm_large(biased["arch"], biased["weights"])
    with pytest.raises(ValueError, match="non-zero out_norm bias"):
        save_pretrained(model, tmp_path)
    model.out_norm.bias[...] = jnp.zeros_like(model.out_norm.bias[...])
    save_pretrained(model, tmp_path)  # zero bias: HF's bias-free out_norm is the same function
    assert "backbone.out_norm.bias" not in safetensors_io.SafetensorsFile(tmp_path / hf_io.WEIGHTS_NAME).header
    assert_same_params(from_pretrained(tmp_path), model)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_pretrained(model, tmp_path, max_shard_size="big")


# ---------------------------------------------------------------- streaming and placement


def test_from_pretrained_streams_tensor_by_tensor(tmp_path, monkeypatch):
    cfg = xLSTMLargeConfig(embedding_dim=64, num_heads=2, num_blocks=12, vocab_size=128)
    model = xLSTMLarge(cfg, rngs=nnx.Rngs(0))
    save_pretrained(model, tmp_path, max_shard_size="300KB")
    total = sum(x.nbytes for x in params_of(model).values())
    reads: list[str] = []
    read = safetensors_io.SafetensorsFile.read

    def counting_read(self, key):
        reads.append(key)
        return read(self, key)

    monkeypatch.setattr(safetensors_io.SafetensorsFile, "read", counting_read)
    from_pretrained(tmp_path)  # warm up: compile the placement, import lazily loaded modules
    reads.clear()
    tracemalloc.start()
    try:
        loaded = from_pretrained(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(reads) == sorted(hf_io.CheckpointSource(tmp_path).shapes()), "each tensor read exactly once"
    # Host allocations: one checkpoint tensor at a time plus fixed overhead (headers, tracing);
    # measured ~0.35 MB for this 2.6 MB checkpoint (0.30 MB with 6 blocks), never a full copy.
    assert peak < total / 4, f"peak host allocation {peak} B for a {total} B checkpoint"
    assert_same_params(loaded, model)


def test_from_pretrained_places_parameters_with_the_given_sharding(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path)
    device = jax.devices()[0]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    single = jax.sharding.SingleDeviceSharding(device)
    named = lambda *spec: jax.sharding.NamedSharding(mesh, jax.P(*spec))

    def by_name(path, var):  # callable: logical names -> mesh axes
        assert var.shape and len(var.get_metadata()["out_sharding"]) == len(var.shape)
        return named(*("fsdp" if n == "embed" else None for n in var.get_metadata()["out_sharding"]))

    for sharding in (single, by_name):
        loaded = from_pretrained(tmp_path, sharding=sharding)
        for path, var in nnx.to_flat_state(nnx.state(loaded, nnx.Param)):
            expected = sharding if sharding is single else by_name(path, var)
            assert var[...].sharding == expected, path
    abstract = nnx.eval_shape(lambda: xLSTMLarge(model.config, rngs=nnx.Rngs(0)))
    tree = jax.tree.map(lambda _: named(), nnx.state(abstract))  # a pytree of shardings
    loaded = from_pretrained(tmp_path, sharding=tree)
    assert all(x.sharding == named() for x in jax.tree.leaves(nnx.state(loaded)))
    assert_same_params(loaded, model)


# ---------------------------------------------------------------- the NeurIPS xLSTMLMModel


def test_xlstm_lm_model_saves_and_loads(tmp_path):
    """``save_pretrained``/``from_pretrained`` of the NeurIPS model: our config.json + the official
    state dict as safetensors (what ``xLSTMLMModel.load_state_dict`` of the official code takes)."""
    from safetensors.numpy import load_file

    from xlstm_jax.convert import to_torch_xlstm_lm_state_dict
    from xlstm_jax.generation import GenerationConfig
    from xlstm_jax.models import xlstm_lm
    from xlstm_jax.models.xlstm_lm import xLSTMLMConfig, xLSTMLMModel

    mlstm_cfg = getattr(xlstm_lm, "mLSTMLayerConfig", None) or xlstm_lm.mLSTMLayerConfig  # renamed on main
    slstm_cfg = getattr(xlstm_lm, "sLSTMLayerConfig", None) or xlstm_lm.sLSTMLayerConfig
    cfg = xLSTMLMConfig(vocab_size=50, embedding_dim=32, num_blocks=3, slstm_at=(1,), tie_weights=True,
                        mlstm=mlstm_cfg(num_heads=2), slstm=slstm_cfg(num_heads=2))  # fmt: skip
    model = xLSTMLMModel(cfg, rngs=nnx.Rngs(0))
    model.generation_config = GenerationConfig(bos_token_id=3, eos_token_id=4, pad_token_id=5)
    save_pretrained(model, tmp_path / "one")
    save_pretrained(model, tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / hf_io.INDEX_NAME).exists()
    official = to_torch_xlstm_lm_state_dict(model)
    stored = load_file(tmp_path / "one" / hf_io.WEIGHTS_NAME)
    assert stored.keys() == official.keys()
    for key, x in official.items():
        np.testing.assert_array_equal(stored[key], x, err_msg=key)
    ids = np.arange(14).reshape(2, 7) % 50
    for folder in ("one", "shards"):
        loaded = from_pretrained(tmp_path / folder)
        assert type(loaded) is xLSTMLMModel and loaded.config == cfg
        assert loaded.generation_config == model.generation_config
        assert_same_params(loaded, model)
        np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))
    assert from_pretrained(tmp_path / "one", param_dtype="bfloat16").config.param_dtype == "bfloat16"


# ---------------------------------------------------------------- files that are not what they should be


def _saved(tmp_path):
    save_pretrained(tiny_model(), tmp_path)
    return tmp_path / hf_io.WEIGHTS_NAME


def _rewrite_header(path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (n - len(new))
    assert len(new) == n
    path.write_bytes(raw[:8] + new + raw[8 + n :])


def test_a_tensor_stored_with_an_integer_dtype_is_refused(tmp_path):
    weights = _saved(tmp_path)
    key = "lm_head.weight"

    def to_int32(header):
        header[key]["dtype"] = "I32"  # same size as F32: the bytes alone cannot tell

    _rewrite_header(weights, to_int32)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path)
    assert str(weights) in str(err.value) and f"{key!r} is stored as I32" in str(err.value)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda raw: raw[:40], "declares a .*-byte header but holds 40 bytes"),  # cut inside the header
        (lambda raw: raw[:5], "is 5 bytes, too short for a header"),
        (lambda raw: (2**62).to_bytes(8, "little") + raw[8:], f"declares a {2**62}-byte header"),
        (lambda raw: raw[:8] + b"{not json" + raw[17:], "the header is not JSON"),
        (lambda raw: raw[: len(raw) - 100], "within the .* data bytes"),  # cut inside the data
    ],
)
def test_a_damaged_safetensors_file_is_named(tmp_path, damage, message):
    weights = _saved(tmp_path)
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as err:
        from_pretrained(tmp_path)
    assert str(weights) in str(err.value)


def test_a_config_json_that_is_not_json_is_named(tmp_path):
    _saved(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "xlstm", ')
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value) and "is not JSON" in str(err.value)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="holds a JSON list: expected a Hugging Face model config"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json does not exist: from_pretrained needs the file"):
        from_pretrained(tmp_path)
