"""Trainer configuration (layering, overrides, validation) and the optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlstm_jax.train.config import (
    ConfigError,
    MeshConfig,
    OptimConfig,
    RunConfig,
    apply_overrides,
    build_dataclass,
    load_yaml,
)
from xlstm_jax.train.optim import decay_mask, make_optimizer, schedule, skipped_steps


def test_yaml_layering_and_overrides(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "base.yaml").write_text("train: {steps: 10, seq_len: 64}\noptim: {lr: 1.0e-3}\n")
    (tmp_path / "model" / "tiny.yaml").write_text("model: {arch: xlstm_lm, embedding_dim: 32}\ntrain: {seq_len: 32}\n")
    (tmp_path / "run.yaml").write_text("defaults: [base.yaml, model/tiny.yaml]\ntrain: {steps: 20}\n")
    cfg = load_yaml(tmp_path / "run.yaml")
    assert cfg == {"train": {"steps": 20, "seq_len": 32}, "optim": {"lr": 1e-3},
                   "model": {"arch": "xlstm_lm", "embedding_dim": 32}}  # fmt: skip
    cfg = apply_overrides(cfg, ["optim.lr=3e-4", "model.slstm_at=[0, 2]", "train.remat=true", "new.key=x"])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["slstm_at"] == [0, 2] and cfg["train"]["remat"] is True
    assert cfg["new"] == {"key": "x"}


def test_yaml_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="train.steps is not a section"):
        apply_overrides({"train": {"steps": 3}}, ["train.steps.x=1"])


@pytest.mark.parametrize(
    "cls,values,message",
    [
        (OptimConfig, {"lr": -1.0}, r"optim.lr must be a finite number > 0, got -1.0"),
        (OptimConfig, {"schedule": "step"}, r"optim.schedule must be one of .cosine.*, got .step."),
        (OptimConfig, {"lrr": 1.0}, r"unknown key\(s\) optim.lrr"),
        (RunConfig, {"steps": 0}, r"train.steps must be an integer >= 1, got 0"),
        (RunConfig, {"steps": 1.5}, r"train.steps must be an integer >= 1, got 1.5"),
        (RunConfig, {"steps": True}, r"train.steps must be an integer >= 1, got True"),
        (RunConfig, {"steps": "abc"}, r"train.steps must be an integer >= 1, got .abc."),
        (RunConfig, {"max_consecutive_nonfinite": 0}, r"train.max_consecutive_nonfinite must be an integer >= 1"),
        (OptimConfig, {"lr": float("inf")}, r"optim.lr must be a finite number > 0, got inf"),
        (OptimConfig, {"b2": 1.0}, r"optim.b2 must be a finite number >= 0 and < 1, got 1.0"),
        (MeshConfig, {"tensor": 0}, r"mesh.tensor must be an integer >= 1 or -1"),
        (RunConfig, {"compute_dtype": "float16"}, r"train.compute_dtype must be one of .*, got .float16."),
        (MeshConfig, {"data": -1, "fsdp": -1}, r"at most one mesh axis may be -1"),
        (MeshConfig, {"rules": {"embed": ["model"]}}, r"mesh.rules.embed: unknown mesh axis 'model'"),
    ],
)
def test_section_validation(cls, values, message):
    prefix = {OptimConfig: "optim.", RunConfig: "train.", MeshConfig: "mesh."}[cls]
    with pytest.raises(ConfigError, match=message):
        build_dataclass(cls, values, prefix)


def test_schedule_warmup_then_cosine_to_min():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    sched = schedule(cfg, total_steps=110)
    np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(sched(110), 0.1, atol=1e-6)
    assert sched(60) == pytest.approx(0.55, abs=1e-6)  # halfway down the cosine
    linear = schedule(OptimConfig(lr=1.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0), 100)
    assert linear(50) == pytest.approx(0.5)
    assert schedule(OptimConfig(lr=2.0, warmup_steps=0, schedule="constant"), 100)(99) == 2.0


def test_decay_mask_follows_the_official_rule():
    params = {
        "embed": {"embedding": jnp.ones((8, 4))},
        "proj": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
        "norm": {"weight": jnp.ones(4)},
        "headwise": {"weight": jnp.ones((2, 2, 2))},
        "cell": {"recurrent_kernel": jnp.ones((2, 2, 4, 2)), "bias": jnp.ones((2, 4, 2))},
    }
    mask = decay_mask(params, OptimConfig())
    assert mask == {
        "embed": {"embedding": False},
        "proj": {"kernel": True, "bias": False},
        "norm": {"weight": False},
        "headwise": {"weight": True},
        "cell": {"recurrent_kernel": False, "bias": False},
    }
    mask = decay_mask(params, OptimConfig(decay_embeddings=True, decay_norms_and_biases=True))
    assert mask["embed"]["embedding"] and mask["proj"]["bias"] and mask["norm"]["weight"]


def test_decay_mask_on_real_model_parameters():
    """On an nnx.State (each leaf a Variable's ``.value``), as the trainer passes it."""
    from flax import nnx

    from xlstm_jax.models.xlstm_lm import sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel

    cfg = xLSTMLMConfig(vocab_size=40, embedding_dim=32, num_blocks=2, slstm=sLSTMLayerConfig(num_heads=2),
                        slstm_at=(1,))  # fmt: skip
    params = nnx.state(xLSTMLMModel(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    mask = decay_mask(params, OptimConfig())
    flat = {
        "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path[:-1]): bool(v)
        for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    decayed = sorted(k for k, v in flat.items() if v)
    assert "blocks/0/xlstm/proj_up/kernel" in decayed and "lm_head/kernel" in decayed
    assert "blocks/0/xlstm/igate/kernel" in decayed and "blocks/0/xlstm/q_proj/weight" in decayed
    assert "blocks/1/xlstm/igate/weight" in decayed  # the sLSTM's headwise gate projections
    for never in ("token_embedding/embedding", "blocks/1/xlstm/recurrent_kernel", "blocks/1/xlstm/bias",
                  "blocks/0/xlstm_norm/weight", "blocks/0/xlstm/learnable_skip"):  # fmt: skip
        assert not flat[never], never


def test_non_finite_steps_are_skipped_and_counted():
    params = {"w": jnp.ones((2, 2))}
    tx = make_optimizer(OptimConfig(lr=0.1, warmup_steps=0), 10, params)
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.full((2, 2), jnp.nan)}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0) and int(skipped_steps(state)) == 1
    updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["w"]) < 1) and int(skipped_steps(state)) == 1
    g = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    assert np.all(np.isfinite(np.asarray(tx.update(g, state, params)[0]["w"])))
